//! Secret values in memory: a type whose `Debug` never shows the bytes, so a stray
//! `{:?}` in a log line or an error cannot leak a value.

use std::collections::BTreeMap;
use std::fmt;

/// The bytes of one secret value. `Debug` prints only the length; there is no `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps bytes that must never be printed.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The bytes, for the few places that inject them (env, files).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

/// One fetched secret: its keys, and for a federated store secret the raw value too
/// (a store value need not be a JSON object; `ENV=secret` and `/path=secret` use it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretData {
    /// The raw value as the server answered it (federated store secrets only).
    pub raw: Option<SecretValue>,
    /// Key → value: the properties of a store secret's JSON object, a generator's
    /// output, or a Kubernetes Secret's `data`.
    pub keys: BTreeMap<String, SecretValue>,
}

impl SecretData {
    /// A store secret: the raw text, and its properties when it is a JSON object
    /// (strings as they are, other JSON values as their JSON text).
    pub fn from_store_value(raw: String) -> Self {
        let keys = match serde_json::from_str::<serde_json::Value>(&raw) {
            Ok(serde_json::Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, SecretValue::new(text))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        Self {
            raw: Some(SecretValue::new(raw)),
            keys,
        }
    }

    /// A secret made only of keys (generator output, Kubernetes Secret data).
    pub fn from_keys(keys: BTreeMap<String, SecretValue>) -> Self {
        Self { raw: None, keys }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::new("hunter2-very-secret");
        let shown = format!("{v:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("19 bytes"));
        let data = SecretData::from_store_value(r#"{"password":"hunter2-very-secret"}"#.into());
        let shown = format!("{data:?} {:#?}", data);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password"), "key names may show: {shown}");
    }

    #[test]
    fn store_value_properties() {
        let d = SecretData::from_store_value(r#"{"u":"app","n":3,"o":{"a":true}}"#.into());
        assert_eq!(d.keys["u"].as_str(), Some("app"));
        assert_eq!(d.keys["n"].as_str(), Some("3"));
        assert_eq!(d.keys["o"].as_str(), Some(r#"{"a":true}"#));
        let plain = SecretData::from_store_value("just-a-token".into());
        assert!(plain.keys.is_empty());
        assert_eq!(plain.raw.unwrap().as_str(), Some("just-a-token"));
    }
}
