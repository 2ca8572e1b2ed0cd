//! `service: SecretsManager`: GetSecretValue (string or binary secrets, a version id or a
//! staging label), and `find` over ListSecrets.
//!
//! Canonical forms (`docs/security.md`): the key is the secret's **name**, byte for byte
//! (1..=512 of `A-Za-z0-9/_+=.@-`, as Secrets Manager allows). An ARN (anything with `:`)
//! is refused: one secret would have two spellings (name and ARN, full or partial) and an
//! ARN can name another account's secret; use a store whose `role` is in that account.
//! The version is ESO's: none or `AWSCURRENT` (the same: the current version), `uuid/<id>`
//! (a version id), or any other text as a staging label (`AWSPREVIOUS`, custom labels).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{Service, check_name_text, different_secret};
use crate::providers::{FindRequest, ProviderError};

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

/// Secrets Manager, as a [`Service`] of the `aws` store.
pub(super) struct SecretsManager;

/// Checks a secret name (or a `find.path` prefix of one): see the module doc.
fn check_name(name: &str, what: &str) -> Result<(), ProviderError> {
    check_name_text(
        name,
        what,
        MAX_NAME,
        "is an ARN: use the secret's name (one secret has one spelling; for another account's secrets use a store with a role there)",
        "/_+=.@-",
    )
}

impl Service for SecretsManager {
    const KIND: &'static str = "aws/SecretsManager";
    const GET: &'static str = "GetSecretValue";
    const LIST: (&'static str, &'static str, &'static str, u32) =
        ("ListSecrets", "Filters", "SecretList", PAGE_SIZE);

    fn canonical_key(key: &str) -> Result<String, ProviderError> {
        check_name(key, "key")?;
        Ok(key.to_string())
    }

    /// A name prefix (as ESO's `name` filter), kept byte for byte.
    fn canonical_path(path: &str) -> Result<Option<String>, ProviderError> {
        check_name(path, "find.path")?;
        Ok(Some(path.to_string()))
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
                        return bad(
                            "uuid/… must carry a version id (32 to 64 letters, digits or -)",
                        );
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

    /// The answer's `Name` is the name asked; with a version id its `VersionId` is that id,
    /// with a staging label (none: `AWSCURRENT`) its `VersionStages` hold the label.
    fn check_answer(
        answer: &Value,
        name: &str,
        version: Option<&str>,
    ) -> Result<(), ProviderError> {
        if answer.get("Name").and_then(Value::as_str) != Some(name) {
            return Err(different_secret());
        }
        let stages = answer.get("VersionStages").and_then(Value::as_array);
        let has_stage =
            |stage: &str| stages.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(stage)));
        let ok = match version {
            // AWS's default is the current version; an answer without stages is accepted.
            None => stages.is_none() || has_stage(CURRENT),
            Some(v) => match v.strip_prefix(UUID_PREFIX) {
                Some(id) => answer.get("VersionId").and_then(Value::as_str) == Some(id),
                None => has_stage(v),
            },
        };
        if ok { Ok(()) } else { Err(different_secret()) }
    }

    /// The ListSecrets filters of a canonical find: the name prefix and as many tag filters as
    /// fit (AWS allows 10, and matches them loosely: results are checked exactly anyway).
    fn list_filters(find: &FindRequest) -> Vec<Value> {
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
        filters
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::providers::RemoteRef;

    fn canonical(key: &str, version: Option<&str>) -> Result<RemoteRef, ProviderError> {
        let remote = RemoteRef {
            key: key.into(),
            property: None,
            version: version.map(str::to_string),
        };
        check_name(&remote.key, "key")?;
        Ok(RemoteRef {
            version: SecretsManager::canonical_version(remote.version.as_deref())?,
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
        let v = |s: Option<&str>| SecretsManager::canonical_version(s);
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
            SecretsManager::get_request("db", None),
            json!({"SecretId": "db"}),
            "AWSCURRENT is AWS's default"
        );
        assert_eq!(
            SecretsManager::get_request("db", Some("AWSPREVIOUS")),
            json!({"SecretId": "db", "VersionStage": "AWSPREVIOUS"})
        );
        assert_eq!(
            SecretsManager::get_request("db", Some(id)),
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
        let filters = SecretsManager::list_filters(&find);
        assert_eq!(filters.len(), 9, "name + 4 tag pairs: AWS allows 10");
        assert_eq!(filters[0], json!({"Key": "name", "Values": ["team/"]}));
        assert_eq!(filters[1], json!({"Key": "tag-key", "Values": ["k0"]}));
        assert!(SecretsManager::list_filters(&FindRequest::default()).is_empty());

        let re = regex::Regex::new("db").unwrap();
        let find = FindRequest {
            path: Some("team/".into()),
            name_regexp: Some("db".into()),
            tags: [("env".to_string(), "prod".to_string())].into(),
        };
        let entry = |name: &str, tags: Value| json!({"Name": name, "Tags": tags});
        let prod = json!([{"Key": "env", "Value": "prod"}, {"Key": "x", "Value": "y"}]);
        assert_eq!(
            SecretsManager::matching_name(&entry("team/db", prod.clone()), &find, Some(&re)),
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
            assert_eq!(
                SecretsManager::matching_name(&e, &find, Some(&re)),
                None,
                "{why}"
            );
        }
    }

    #[test]
    fn answers_must_be_for_the_secret_asked() {
        let id = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111";
        let answer = json!({"Name": "team/db", "VersionId": id,
            "VersionStages": ["AWSCURRENT", "blue"], "SecretString": "v"});
        let check =
            |a: &Value, name: &str, v: Option<&str>| SecretsManager::check_answer(a, name, v);
        assert_eq!(check(&answer, "team/db", None), Ok(()));
        assert_eq!(check(&answer, "team/db", Some("blue")), Ok(()));
        assert_eq!(
            check(&answer, "team/db", Some(&format!("uuid/{id}"))),
            Ok(())
        );
        // No stages in the answer: only the current version is taken on trust.
        assert_eq!(check(&json!({"Name": "team/db"}), "team/db", None), Ok(()));
        let refused = Err(different_secret());
        for (a, name, v) in [
            (&answer, "team/admin", None),
            (&answer, "Team/db", None),
            (&json!({"SecretString": "v"}), "team/db", None),
            (&json!({"Name": 1}), "team/db", None),
            (&answer, "team/db", Some("AWSPREVIOUS")),
            (
                &answer,
                "team/db",
                Some("uuid/b1b2c3d4-5678-90ab-cdef-EXAMPLE11111"),
            ),
            (
                &json!({"Name": "team/db", "VersionStages": ["AWSPREVIOUS"]}),
                "team/db",
                None,
            ),
            (&json!({"Name": "team/db"}), "team/db", Some("blue")),
        ] {
            assert_eq!(check(a, name, v), refused, "{a} {name} {v:?}");
        }
    }

    #[test]
    fn payloads_string_or_binary() {
        assert_eq!(
            SecretsManager::payload(&json!({"SecretString": "{\"a\":1}"})).unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(
            SecretsManager::payload(&json!({"SecretBinary": STANDARD.encode([0u8, 159, 255])}))
                .unwrap(),
            [0u8, 159, 255]
        );
        assert!(matches!(
            SecretsManager::payload(&json!({"SecretBinary": "%%%"})),
            Err(ProviderError::Backend(_))
        ));
        assert!(matches!(
            SecretsManager::payload(&json!({})),
            Err(ProviderError::Backend(_))
        ));
    }
}
