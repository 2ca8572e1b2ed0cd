//! `service: SecretsManager`: GetSecretValue (string or binary secrets, a version id or a
//! staging label), and `find` over ListSecrets.
//!
//! Canonical forms (`docs/security.md`): the key is the secret's **name**, byte for byte
//! (1..=512 of `A-Za-z0-9/_+=.@-`, as Secrets Manager allows). An ARN (anything with `:`)
//! is refused: one secret would have two spellings (name and ARN, full or partial) and an
//! ARN can name another account's secret; use a store whose `role` is in that account.
//! The version is ESO's: none or `AWSCURRENT` (the same: the current version), `uuid/<id>`
//! (a version id), or any other text as a staging label (`AWSPREVIOUS`, custom labels).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::super::fake::compile_name_regexp;
use super::{Backend, check_find, map_of, read_allowed, value_of};
use crate::providers::{
    FindRequest, KeyFilter, ProviderError, RemoteRef, SecretProvider, property,
};

pub(super) const KIND: &str = "aws/SecretsManager";
/// Longest secret name Secrets Manager allows.
const MAX_NAME: usize = 512;
/// Version ids are 32 to 64 characters.
const VERSION_ID_LEN: std::ops::RangeInclusive<usize> = 32..=64;
/// Longest staging label.
const MAX_STAGE: usize = 256;
/// ESO's spelling of a version id in `remoteRef.version`.
const UUID_PREFIX: &str = "uuid/";
/// The current version's label (the same as no version).
const CURRENT: &str = "AWSCURRENT";
/// ListSecrets page size (AWS's maximum) and filter count.
const PAGE_SIZE: u32 = 100;
const MAX_FILTERS: usize = 10;

/// Serves secrets from Secrets Manager in one region.
#[derive(Debug)]
pub(super) struct SecretsManagerProvider {
    backend: Backend,
}

/// Checks a secret name (or a `find.path` prefix of one): see the module doc.
fn check_name(name: &str, what: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| Err(ProviderError::InvalidRequest(format!("{what} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME {
        return bad("is too long");
    }
    if name.contains(':') {
        return bad(
            "is an ARN: use the secret's name (one secret has one spelling; for another account's secrets use a store with a role there)",
        );
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
    {
        return bad("has characters Secrets Manager names do not have (letters, digits, /_+=.@-)");
    }
    Ok(())
}

/// The canonical version: see the module doc.
fn canonical_version(version: Option<&str>) -> Result<Option<String>, ProviderError> {
    let bad = |why: &str| Err(ProviderError::InvalidRequest(format!("version {why}")));
    match version.filter(|v| !v.is_empty()) {
        None | Some(CURRENT) => Ok(None),
        Some(v) => match v.strip_prefix(UUID_PREFIX) {
            Some(id) => {
                if !VERSION_ID_LEN.contains(&id.len())
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return bad("uuid/… must carry a version id (32 to 64 letters, digits or -)");
                }
                Ok(Some(v.to_string()))
            }
            None => {
                if v.len() > MAX_STAGE || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    return bad(
                        "must be uuid/<version id> or a staging label (printable, at most 256 bytes)",
                    );
                }
                Ok(Some(v.to_string()))
            }
        },
    }
}

/// The GetSecretValue request for a canonical name and version.
fn get_request(name: &str, version: Option<&str>) -> Value {
    let mut body = json!({ "SecretId": name });
    match version {
        None => {}
        Some(v) => match v.strip_prefix(UUID_PREFIX) {
            Some(id) => body["VersionId"] = id.into(),
            None => body["VersionStage"] = v.into(),
        },
    }
    body
}

/// The ListSecrets filters of a canonical find: the name prefix and as many tag filters as
/// fit (AWS allows 10, and matches them loosely: results are checked exactly anyway).
fn list_request(find: &FindRequest) -> Map<String, Value> {
    let mut filters = Vec::new();
    if let Some(path) = &find.path {
        filters.push(json!({"Key": "name", "Values": [path]}));
    }
    for (k, v) in &find.tags {
        if filters.len() + 2 > MAX_FILTERS {
            break;
        }
        filters.push(json!({"Key": "tag-key", "Values": [k]}));
        filters.push(json!({"Key": "tag-value", "Values": [v]}));
    }
    let mut request = Map::new();
    if !filters.is_empty() {
        request.insert("Filters".into(), Value::Array(filters));
    }
    request
}

/// The name of a ListSecrets entry if it matches the find exactly (name prefix, regexp,
/// every tag) and is a canonical key.
fn matching_name(
    entry: &Value,
    find: &FindRequest,
    regex: Option<&regex::Regex>,
) -> Option<String> {
    let name = entry.get("Name").and_then(Value::as_str)?;
    check_name(name, "name").ok()?;
    if find.path.as_deref().is_some_and(|p| !name.starts_with(p)) {
        return None;
    }
    if regex.is_some_and(|re| !re.is_match(name)) {
        return None;
    }
    let tags = entry.get("Tags").and_then(Value::as_array);
    let has = |k: &str, v: &str| {
        tags.is_some_and(|tags| {
            tags.iter().any(|t| {
                t.get("Key").and_then(Value::as_str) == Some(k)
                    && t.get("Value").and_then(Value::as_str) == Some(v)
            })
        })
    };
    find.tags
        .iter()
        .all(|(k, v)| has(k, v))
        .then(|| name.to_string())
}

/// The value of a GetSecretValue answer: `SecretString`, or `SecretBinary` decoded.
fn payload(answer: &Value) -> Result<Vec<u8>, ProviderError> {
    if let Some(s) = answer.get("SecretString").and_then(Value::as_str) {
        return Ok(s.as_bytes().to_vec());
    }
    if let Some(b) = answer.get("SecretBinary").and_then(Value::as_str) {
        return STANDARD.decode(b).map_err(|_| {
            ProviderError::Backend("AWS answered GetSecretValue with malformed binary".into())
        });
    }
    Err(ProviderError::Backend(
        "AWS answered GetSecretValue without a value".into(),
    ))
}

impl SecretsManagerProvider {
    pub(super) fn new(backend: Backend) -> Self {
        SecretsManagerProvider { backend }
    }

    /// The value of a canonical name at a canonical version.
    async fn read(&self, name: &str, version: Option<&str>) -> Result<Vec<u8>, ProviderError> {
        let answer = self
            .backend
            .call("GetSecretValue", &get_request(name, version))
            .await?;
        payload(&answer)
    }

    /// The payload of a reference that must already be canonical.
    async fn read_canonical(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        if self.canonical_ref(remote)? != *remote {
            return Err(ProviderError::InvalidRequest(
                "reference is not in canonical form".into(),
            ));
        }
        self.read(&remote.key, remote.version.as_deref()).await
    }
}

#[async_trait::async_trait]
impl SecretProvider for SecretsManagerProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        check_name(&remote.key, "key")?;
        Ok(RemoteRef {
            key: remote.key.clone(),
            property: property::canonical_property(remote.property.as_deref())?,
            version: canonical_version(remote.version.as_deref())?,
        })
    }

    /// `path` is a name prefix (as ESO's `name` filter), kept byte for byte.
    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        let path = find.path.clone().filter(|p| !p.is_empty());
        if let Some(p) = &path {
            check_name(p, "find.path")?;
        }
        super::canonical_tags(&find.tags)?;
        Ok(FindRequest {
            path,
            name_regexp: find.name_regexp.clone().filter(|r| !r.is_empty()),
            tags: find.tags.clone(),
        })
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        let payload = self.read_canonical(remote).await?;
        value_of(payload, remote.property.as_deref())
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let payload = self.read_canonical(remote).await?;
        map_of(&payload, remote.property.as_deref())
    }

    async fn find(&self, find: &FindRequest) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.find_allowed(find, &|_| true).await
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        check_find(self.canonical_find(find)?, find)?;
        let regex = find
            .name_regexp
            .as_deref()
            .map(compile_name_regexp)
            .transpose()?;
        let entries = self
            .backend
            .list("ListSecrets", list_request(find), "SecretList", PAGE_SIZE)
            .await?;
        let names = entries
            .iter()
            .filter_map(|e| matching_name(e, find, regex.as_ref()))
            .collect();
        read_allowed(names, allow, |name: String| async move {
            self.read(&name, None).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(key: &str, version: Option<&str>) -> Result<RemoteRef, ProviderError> {
        let remote = RemoteRef {
            key: key.into(),
            property: None,
            version: version.map(str::to_string),
        };
        check_name(&remote.key, "key")?;
        Ok(RemoteRef {
            version: canonical_version(remote.version.as_deref())?,
            ..remote
        })
    }

    #[test]
    fn keys_are_names_byte_for_byte() {
        for key in ["db", "team/app/db-1", "a+b=c.d@e_f-g", &"x".repeat(512)] {
            assert_eq!(canonical(key, None).unwrap().key, key);
        }
        for key in [
            "",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
            "db:AWSCURRENT",
            "with space",
            "tab\t",
            "é",
            "a!b",
            &"x".repeat(513),
        ] {
            assert!(
                matches!(canonical(key, None), Err(ProviderError::InvalidRequest(_))),
                "{key}"
            );
        }
        let arn = canonical("arn:aws:secretsmanager:x", None).unwrap_err();
        assert!(arn.to_string().contains("is an ARN"), "{arn}");
    }

    #[test]
    fn versions_as_eso() {
        let v = |s: Option<&str>| canonical_version(s);
        assert_eq!(v(None), Ok(None));
        assert_eq!(v(Some("")), Ok(None));
        assert_eq!(v(Some("AWSCURRENT")), Ok(None));
        assert_eq!(v(Some("AWSPREVIOUS")), Ok(Some("AWSPREVIOUS".into())));
        let id = "uuid/a1b2c3d4-5678-90ab-cdef-EXAMPLE11111";
        assert_eq!(v(Some(id)), Ok(Some(id.into())));
        for bad in [
            "uuid/",
            "uuid/short",
            "uuid/has space in it and is long enough......",
            "with space",
            "\u{7f}",
        ] {
            assert!(v(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            get_request("db", None),
            json!({"SecretId": "db"}),
            "AWSCURRENT is AWS's default"
        );
        assert_eq!(
            get_request("db", Some("AWSPREVIOUS")),
            json!({"SecretId": "db", "VersionStage": "AWSPREVIOUS"})
        );
        assert_eq!(
            get_request("db", Some(id)),
            json!({"SecretId": "db", "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"})
        );
    }

    #[test]
    fn list_requests_and_exact_matching() {
        let find = FindRequest {
            path: Some("team/".into()),
            name_regexp: Some("db".into()),
            tags: (0..6).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
        };
        let request = list_request(&find);
        let filters = request["Filters"].as_array().unwrap();
        assert_eq!(filters.len(), 9, "name + 4 tag pairs: AWS allows 10");
        assert_eq!(filters[0], json!({"Key": "name", "Values": ["team/"]}));
        assert_eq!(filters[1], json!({"Key": "tag-key", "Values": ["k0"]}));
        assert!(list_request(&FindRequest::default()).is_empty());

        let re = regex::Regex::new("db").unwrap();
        let find = FindRequest {
            path: Some("team/".into()),
            name_regexp: Some("db".into()),
            tags: [("env".to_string(), "prod".to_string())].into(),
        };
        let entry = |name: &str, tags: Value| json!({"Name": name, "Tags": tags});
        let prod = json!([{"Key": "env", "Value": "prod"}, {"Key": "x", "Value": "y"}]);
        assert_eq!(
            matching_name(&entry("team/db", prod.clone()), &find, Some(&re)),
            Some("team/db".into())
        );
        for (e, why) in [
            (entry("Team/db", prod.clone()), "prefix is case-sensitive"),
            (entry("team/api", prod.clone()), "regexp"),
            (
                entry("team/db", json!([{"Key": "env", "Value": "production"}])),
                "tag values are exact (AWS's filter is a prefix)",
            ),
            (
                entry(
                    "team/db",
                    json!([{"Key": "env", "Value": "x"}, {"Key": "y", "Value": "prod"}]),
                ),
                "key and value of one tag",
            ),
            (entry("team/db:x", prod.clone()), "not a name"),
            (json!({"Tags": prod}), "no name"),
        ] {
            assert_eq!(matching_name(&e, &find, Some(&re)), None, "{why}");
        }
    }

    #[test]
    fn payloads_string_or_binary() {
        assert_eq!(
            payload(&json!({"SecretString": "{\"a\":1}"})).unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(
            payload(&json!({"SecretBinary": STANDARD.encode([0u8, 159, 255])})).unwrap(),
            [0u8, 159, 255]
        );
        assert!(matches!(
            payload(&json!({"SecretBinary": "%%%"})),
            Err(ProviderError::Backend(_))
        ));
        assert!(matches!(
            payload(&json!({})),
            Err(ProviderError::Backend(_))
        ));
    }
}
