//! ESO's `fake` provider: static data from the store spec, for tests and demos.
//!
//! ```yaml
//! provider:
//!   fake:
//!     data:
//!       - {key: db, value: '{"user":"u","pass":"p"}'}
//!       - {key: db, value: old, version: "1"}
//!       - {key: map, valueMap: {a: b}}
//! ```

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::property;
use super::{
    BuildContext, FindRequest, KeyFilter, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider,
};

const PROVIDER: &str = "fake";

/// Longest key (and find path) accepted from a caller.
const MAX_KEY_LEN: usize = 1024;

/// Bounds on caller-supplied regular expressions.
pub(crate) const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `spec.provider.fake`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FakeSpec {
    #[serde(default)]
    data: Vec<FakeEntry>,
}

/// One `data` entry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FakeEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    version: Option<String>,
}

/// Serves the entries of a `fake` store.
pub struct FakeProvider {
    /// (key, version or "") -> entry; ESO keys entries the same way.
    entries: BTreeMap<(String, String), Entry>,
}

struct Entry {
    value: Option<String>,
    value_map: Option<BTreeMap<String, String>>,
}

// Values never appear in Debug output.
impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("keys", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Compiles a caller's name regexp with bounded size.
pub(crate) fn compile_name_regexp(pattern: &str) -> Result<Regex, ProviderError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(ProviderError::InvalidRequest(
            "find.name.regexp is too long".into(),
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|_| ProviderError::InvalidRequest("find.name.regexp is not a valid regexp".into()))
}

impl FakeProvider {
    /// Parses `spec.provider.fake`.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        block: &Value,
    ) -> Result<Self, ProviderConfigError> {
        let spec: FakeSpec = ctx.parse(PROVIDER, block)?;
        let mut entries = BTreeMap::new();
        for (i, e) in spec.data.into_iter().enumerate() {
            if e.key.is_empty() {
                return Err(ctx.invalid(PROVIDER, format!("data[{i}].key is empty")));
            }
            let id = (e.key, e.version.unwrap_or_default());
            if entries.contains_key(&id) {
                return Err(ctx.invalid(
                    PROVIDER,
                    format!("data[{i}] repeats key {:?} with the same version", id.0),
                ));
            }
            entries.insert(
                id,
                Entry {
                    value: e.value,
                    value_map: e.value_map,
                },
            );
        }
        Ok(FakeProvider { entries })
    }

    /// Refuses a reference that is not canonical: the API decided on the canonical form,
    /// and only that form may reach the data.
    fn require_canonical(&self, remote: &RemoteRef) -> Result<(), ProviderError> {
        if self.canonical_ref(remote)? == *remote {
            Ok(())
        } else {
            Err(ProviderError::InvalidRequest(
                "reference is not in canonical form".into(),
            ))
        }
    }

    fn entry(&self, remote: &RemoteRef) -> Result<&Entry, ProviderError> {
        self.require_canonical(remote)?;
        let version = remote.version.clone().unwrap_or_default();
        self.entries
            .get(&(remote.key.clone(), version))
            .ok_or(ProviderError::NotFound)
    }
}

/// A caller's key or path as given, bounded and without control characters.
fn canonical_text(text: &str, what: &str) -> Result<String, ProviderError> {
    if text.len() > MAX_KEY_LEN {
        return Err(ProviderError::InvalidRequest(format!("{what} is too long")));
    }
    if text.chars().any(char::is_control) {
        return Err(ProviderError::InvalidRequest(format!(
            "{what} has control characters"
        )));
    }
    Ok(text.to_string())
}

/// A fake value as a JSON object, or None when it is not one.
fn as_object(value: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(value) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

#[async_trait::async_trait]
impl SecretProvider for FakeProvider {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    /// The fake store's rule: a key names exactly the entry with that key, byte for byte
    /// (ESO's fake provider matches keys exactly), so the canonical key is the key as
    /// given: no trimming, no case folding, no path logic. Empty keys, keys over 1024
    /// bytes and keys with control characters are refused. `version` is likewise exact
    /// (empty means none); `property` follows [`property::canonical_property`].
    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        let key = canonical_text(&remote.key, "key")?;
        if key.is_empty() {
            return Err(ProviderError::InvalidRequest("key is empty".into()));
        }
        Ok(RemoteRef {
            key,
            property: property::canonical_property(remote.property.as_deref())?,
            version: remote.version.clone().filter(|v| !v.is_empty()),
        })
    }

    /// `path` is a plain prefix of keys, exact like keys (empty means none).
    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        let path = match find.path.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(canonical_text(p, "find.path")?),
            None => None,
        };
        Ok(FindRequest {
            path,
            name_regexp: find.name_regexp.clone().filter(|r| !r.is_empty()),
            tags: find.tags.clone(),
        })
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        let entry = self.entry(remote)?;
        let value = match (&entry.value, &entry.value_map) {
            (Some(v), _) => v.clone(),
            (None, Some(map)) => serde_json::to_string(map)
                .map_err(|_| ProviderError::Backend("cannot encode value".into()))?,
            (None, None) => String::new(),
        };
        match remote.property.as_deref().filter(|p| !p.is_empty()) {
            None => Ok(value.into_bytes()),
            Some(p) => {
                let data = as_object(&value).ok_or(ProviderError::NotFound)?;
                property::value_bytes(property::lookup(&data, p)?)
            }
        }
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let entry = self.entry(remote)?;
        let data = match (&entry.value_map, &entry.value) {
            (Some(map), _) => map
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            (None, Some(v)) => as_object(v).ok_or_else(|| {
                ProviderError::InvalidRequest("secret value is not a JSON object".into())
            })?,
            (None, None) => Map::new(),
        };
        property::secret_map(&data, remote.property.as_deref())
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        if self.canonical_find(find)? != *find {
            return Err(ProviderError::InvalidRequest(
                "find is not in canonical form".into(),
            ));
        }
        if !find.tags.is_empty() {
            return Err(ProviderError::Unsupported(
                "the fake provider has no tags".into(),
            ));
        }
        let regex = find
            .name_regexp
            .as_deref()
            .map(compile_name_regexp)
            .transpose()?;
        let mut out = BTreeMap::new();
        let mut decided: BTreeMap<&str, bool> = BTreeMap::new();
        // The unversioned entry ("" sorts first) is the current value: walking in reverse
        // meets it last for each key, so it overwrites any versioned one.
        for ((key, version), entry) in self.entries.iter().rev() {
            if out.contains_key(key) && !version.is_empty() {
                continue;
            }
            if let Some(prefix) = find.path.as_deref()
                && !key.starts_with(prefix)
            {
                continue;
            }
            if let Some(re) = &regex
                && !re.is_match(key)
            {
                continue;
            }
            // One decision per key, whatever number of versions it has.
            let allowed = *decided
                .entry(key.as_str())
                .or_insert_with(|| allow(key.as_str()));
            if !allowed {
                continue;
            }
            let value = match (&entry.value, &entry.value_map) {
                (Some(v), _) => v.clone().into_bytes(),
                (None, Some(map)) => serde_json::to_vec(map)
                    .map_err(|_| ProviderError::Backend("cannot encode value".into()))?,
                (None, None) => Vec::new(),
            };
            out.insert(key.clone(), value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::resources::SecretIndex;
    use serde_json::json;

    fn provider(block: Value) -> Result<FakeProvider, ProviderConfigError> {
        let secrets = SecretIndex::default();
        let settings = ProviderSettings::default();
        let ctx = BuildContext {
            store: "fake-store",
            namespace: None,
            secrets: &secrets,
            settings: &settings,
        };
        FakeProvider::from_spec(&ctx, &block)
    }

    fn sample() -> FakeProvider {
        provider(json!({"data": [
            {"key": "db", "value": "{\"user\":\"u\",\"pass\":\"p\",\"port\":5432,\"nested\":{\"a\":\"b\"}}"},
            {"key": "db", "value": "{\"user\":\"old\"}", "version": "1"},
            {"key": "plain", "value": "just text"},
            {"key": "map", "valueMap": {"a": "1", "b": "2"}},
            {"key": "app/api", "value": "k1"},
            {"key": "versioned-only", "value": "v", "version": "3"}
        ]}))
        .unwrap()
    }

    fn rr(key: &str, property: Option<&str>, version: Option<&str>) -> RemoteRef {
        RemoteRef {
            key: key.into(),
            property: property.map(Into::into),
            version: version.map(Into::into),
        }
    }

    #[tokio::test]
    async fn get_by_key_version_and_property() {
        let p = sample();
        assert_eq!(
            p.get_secret(&rr("plain", None, None)).await.unwrap(),
            b"just text"
        );
        assert_eq!(
            p.get_secret(&rr("db", Some("user"), None)).await.unwrap(),
            b"u"
        );
        assert_eq!(
            p.get_secret(&rr("db", Some("user"), Some("1")))
                .await
                .unwrap(),
            b"old"
        );
        assert_eq!(
            p.get_secret(&rr("db", Some("port"), None)).await.unwrap(),
            b"5432"
        );
        assert_eq!(
            p.get_secret(&rr("db", Some("nested.a"), None))
                .await
                .unwrap(),
            b"b"
        );
        assert_eq!(
            p.get_secret(&rr("db", Some("missing"), None)).await,
            Err(ProviderError::NotFound)
        );
        assert_eq!(
            p.get_secret(&rr("plain", Some("x"), None)).await,
            Err(ProviderError::NotFound)
        );
        assert_eq!(
            p.get_secret(&rr("db", None, Some("2"))).await,
            Err(ProviderError::NotFound)
        );
        assert_eq!(
            p.get_secret(&rr("nope", None, None)).await,
            Err(ProviderError::NotFound)
        );
        // ESO keys by (key, version): an unversioned ref does not see versioned-only entries.
        assert_eq!(
            p.get_secret(&rr("versioned-only", None, None)).await,
            Err(ProviderError::NotFound)
        );
    }

    #[tokio::test]
    async fn secret_map_from_value_map_or_json() {
        let p = sample();
        let m = p.get_secret_map(&rr("map", None, None)).await.unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["a"], b"1");
        let m = p.get_secret_map(&rr("db", None, None)).await.unwrap();
        assert_eq!(m["user"], b"u");
        assert_eq!(m["port"], b"5432");
        assert_eq!(m["nested"], br#"{"a":"b"}"#);
        assert!(matches!(
            p.get_secret_map(&rr("plain", None, None)).await,
            Err(ProviderError::InvalidRequest(_))
        ));
    }

    #[tokio::test]
    async fn find_by_regexp_and_path() {
        let p = sample();
        let found = p
            .find(&FindRequest {
                name_regexp: Some("^d".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        // The current (unversioned) value wins over older versions.
        assert!(found["db"].starts_with(br#"{"user":"u""#));
        let found = p
            .find(&FindRequest {
                path: Some("app/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["app/api"]);
        let all = p.find(&FindRequest::default()).await.unwrap();
        assert_eq!(all.len(), 5);
        assert!(matches!(
            p.find(&FindRequest {
                name_regexp: Some("(".into()),
                ..Default::default()
            })
            .await,
            Err(ProviderError::InvalidRequest(_))
        ));
        assert!(matches!(
            p.find(&FindRequest {
                tags: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            })
            .await,
            Err(ProviderError::Unsupported(_))
        ));
    }

    #[test]
    fn rejects_bad_specs_without_values() {
        assert!(provider(json!({"data": [{"key": ""}]})).is_err());
        assert!(
            provider(json!({"data": [{"key": "a", "value": "x"}, {"key": "a", "value": "y"}]}))
                .is_err()
        );
        let err = provider(json!({"data": [{"key": "a", "value": ["topsecret"]}]}))
            .err()
            .unwrap();
        assert!(!err.to_string().contains("topsecret"));
        let p = sample();
        assert!(!format!("{p:?}").contains("just text"));
    }
}
