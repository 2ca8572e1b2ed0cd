//! Property extraction shared by providers, with ESO's (gjson-based) semantics:
//! an exact top-level key wins; otherwise the property is a dotted path into nested
//! JSON (`a.b.c`, array indices as numbers, `\.` escapes a dot). Strings come out raw,
//! anything else as its JSON encoding.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ProviderError;

/// Longest property path we walk (bounds work on caller input).
const MAX_PROPERTY_LEN: usize = 1024;

/// Encodes one JSON value as ESO does: strings raw, `null` empty, other JSON encoded.
pub fn value_bytes(value: &Value) -> Result<Vec<u8>, ProviderError> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Null => Ok(Vec::new()),
        other => serde_json::to_vec(other)
            .map_err(|_| ProviderError::Backend("cannot encode secret value".into())),
    }
}

/// The canonical form of a caller's `property`: absent and empty are both `None`
/// (the whole secret); otherwise the text as given, at most 1024 bytes and without
/// control characters (`InvalidRequest` otherwise). The property selects inside the one
/// object the key names, so it never widens what was decided.
pub fn canonical_property(property: Option<&str>) -> Result<Option<String>, ProviderError> {
    match property.filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(p) if p.len() > MAX_PROPERTY_LEN => {
            Err(ProviderError::InvalidRequest("property is too long".into()))
        }
        Some(p) if p.chars().any(char::is_control) => Err(ProviderError::InvalidRequest(
            "property has control characters".into(),
        )),
        Some(p) => Ok(Some(p.to_string())),
    }
}

/// Splits `a.b\.c` into `["a", "b.c"]`.
fn split_path(property: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = property.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => current.push(next),
                None => current.push('\\'),
            },
            '.' => parts.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    parts.push(current);
    parts
}

/// Finds `property` in `data`: exact top-level key first, then a dotted path.
pub fn lookup<'a>(
    data: &'a Map<String, Value>,
    property: &str,
) -> Result<&'a Value, ProviderError> {
    if property.len() > MAX_PROPERTY_LEN {
        return Err(ProviderError::InvalidRequest("property is too long".into()));
    }
    if let Some(v) = data.get(property) {
        return Ok(v);
    }
    let parts = split_path(property);
    let mut parts = parts.iter();
    let first = parts.next().ok_or(ProviderError::NotFound)?;
    let mut current = data.get(first.as_str()).ok_or(ProviderError::NotFound)?;
    for part in parts {
        current = match current {
            Value::Object(map) => map.get(part.as_str()),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or(ProviderError::NotFound)?;
    }
    Ok(current)
}

/// ESO GetSecret on JSON data: the whole object without property, else the property.
pub fn secret_value(
    data: &Map<String, Value>,
    property: Option<&str>,
) -> Result<Vec<u8>, ProviderError> {
    match property.filter(|p| !p.is_empty()) {
        None => serde_json::to_vec(data)
            .map_err(|_| ProviderError::Backend("cannot encode secret".into())),
        Some(p) => value_bytes(lookup(data, p)?),
    }
}

/// ESO GetSecretMap on JSON data: each top-level key of the data (or of the object
/// at `property`) to its value bytes.
pub fn secret_map(
    data: &Map<String, Value>,
    property: Option<&str>,
) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
    let map = match property.filter(|p| !p.is_empty()) {
        None => data,
        Some(p) => match lookup(data, p)? {
            Value::Object(m) => m,
            _ => {
                return Err(ProviderError::InvalidRequest(
                    "property does not hold a JSON object".into(),
                ));
            }
        },
    };
    map.iter()
        .map(|(k, v)| Ok((k.clone(), value_bytes(v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Map<String, Value> {
        match json!({
            "user": "admin",
            "a.b": "exact",
            "a": {"b": "nested", "c": {"d": 7}, "list": [{"x": "first"}, "second"]},
            "n": 3,
            "flag": true,
            "nothing": null,
            "dot.key": {"inner": "escaped"}
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn get(p: &str) -> Result<Vec<u8>, ProviderError> {
        secret_value(&data(), Some(p))
    }

    #[test]
    fn whole_object_without_property() {
        let bytes = secret_value(&data(), None).unwrap();
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, Value::Object(data()));
        assert_eq!(secret_value(&data(), Some("")).unwrap(), bytes);
    }

    #[test]
    fn exact_key_beats_dotted_path() {
        assert_eq!(get("a.b").unwrap(), b"exact");
    }

    #[test]
    fn nested_paths_and_arrays() {
        assert_eq!(get("a.c.d").unwrap(), b"7");
        assert_eq!(get("a.c").unwrap(), br#"{"d":7}"#);
        assert_eq!(get("a.list.0.x").unwrap(), b"first");
        assert_eq!(get("a.list.1").unwrap(), b"second");
        assert_eq!(get(r"dot\.key.inner").unwrap(), b"escaped");
    }

    #[test]
    fn non_strings_are_json() {
        assert_eq!(get("user").unwrap(), b"admin");
        assert_eq!(get("n").unwrap(), b"3");
        assert_eq!(get("flag").unwrap(), b"true");
        assert_eq!(get("nothing").unwrap(), b"");
    }

    #[test]
    fn missing_is_not_found() {
        for p in ["nope", "a.zz", "a.c.d.e", "a.list.9", "a.list.x", "user.x"] {
            assert_eq!(get(p), Err(ProviderError::NotFound), "{p}");
        }
        assert!(matches!(
            get(&"x".repeat(MAX_PROPERTY_LEN + 1)),
            Err(ProviderError::InvalidRequest(_))
        ));
    }

    #[test]
    fn canonical_property_rules() {
        assert_eq!(canonical_property(None), Ok(None));
        assert_eq!(canonical_property(Some("")), Ok(None));
        assert_eq!(canonical_property(Some("a.b")), Ok(Some("a.b".into())));
        for bad in ["a\nb".to_string(), "x".repeat(MAX_PROPERTY_LEN + 1)] {
            assert!(matches!(
                canonical_property(Some(&bad)),
                Err(ProviderError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn map_of_top_level_or_property() {
        let m = secret_map(&data(), None).unwrap();
        assert_eq!(m["user"], b"admin");
        assert_eq!(m["n"], b"3");
        assert_eq!(m["a"], serde_json::to_vec(&data()["a"]).unwrap());
        let inner = secret_map(&data(), Some("a.c")).unwrap();
        assert_eq!(inner.len(), 1);
        assert_eq!(inner["d"], b"7");
        assert!(matches!(
            secret_map(&data(), Some("user")),
            Err(ProviderError::InvalidRequest(_))
        ));
        assert_eq!(
            secret_map(&data(), Some("none")),
            Err(ProviderError::NotFound)
        );
    }
}
