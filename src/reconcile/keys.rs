//! Pure transformations of fetched data, as ESO's `pkg/utils` does them: decoding
//! strategies, key conversion, key validation and `rewrite` (regexp, merge).
//!
//! Every function takes a map and returns a new one or an error naming keys, never values.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

use crate::resources::external_secret::{
    ConversionStrategy, DecodingStrategy, MAX_SECRET_KEY_LEN, MergeConflictPolicy,
    MergePriorityPolicy, MergeStrategy, Rewrite, RewriteMerge, RewriteRegexp,
};

use super::SyncError;
use super::template::TemplateRenderer;

/// Fetched data: Secret key → raw bytes.
pub type DataMap = BTreeMap<String, Vec<u8>>;

/// Longest rewrite regexp source accepted (bytes), and the compiled size bound.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Go's `base64.StdEncoding` / `URLEncoding`: padding required, non-zero trailing bits
/// accepted (Go does not check them), `\r` and `\n` skipped.
fn go_engine(alphabet: &base64::alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    )
}

fn go_decode(alphabet: &base64::alphabet::Alphabet, input: &[u8]) -> Option<Vec<u8>> {
    let cleaned: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    go_engine(alphabet).decode(cleaned).ok()
}

/// Decodes one value as ESO's `utils.Decode`: `None` as is; `Base64` standard padded
/// base64; `Base64URL` URL-safe padded base64; `Auto` tries `Base64`, then `Base64URL`,
/// then keeps the value as is. `Err` names the encoding that failed.
pub fn decode(strategy: DecodingStrategy, value: &[u8]) -> Result<Vec<u8>, &'static str> {
    use base64::alphabet::{STANDARD, URL_SAFE};
    match strategy {
        DecodingStrategy::None => Ok(value.to_vec()),
        DecodingStrategy::Base64 => go_decode(&STANDARD, value).ok_or("base64"),
        DecodingStrategy::Base64Url => go_decode(&URL_SAFE, value).ok_or("base64url"),
        DecodingStrategy::Auto => Ok(go_decode(&STANDARD, value)
            .or_else(|| go_decode(&URL_SAFE, value))
            .unwrap_or_else(|| value.to_vec())),
    }
}

/// Decodes every value of `map` ([`decode`]); `what` names the entry in errors.
pub fn decode_map(
    strategy: DecodingStrategy,
    map: DataMap,
    what: &str,
) -> Result<DataMap, SyncError> {
    if strategy == DecodingStrategy::None {
        return Ok(map);
    }
    map.into_iter()
        .map(|(k, v)| match decode(strategy, &v) {
            Ok(d) => Ok((k, d)),
            Err(enc) => Err(SyncError::Decode {
                what: what.to_string(),
                key: k,
                strategy: enc,
            }),
        })
        .collect()
}

/// Whether ESO keeps `c` in a key (`unicode.IsLetter || unicode.IsNumber || - . _`).
fn valid_key_char(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || c == '-' || c == '.' || c == '_'
}

/// One key converted as ESO's `convert`: each other character becomes `_` (Default) or
/// `_U%04x_` of its code point (Unicode).
pub fn convert_key(strategy: ConversionStrategy, key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if valid_key_char(c) {
            out.push(c);
        } else {
            match strategy {
                ConversionStrategy::Default => out.push('_'),
                ConversionStrategy::Unicode => out.push_str(&format!("_U{:04x}_", c as u32)),
            }
        }
    }
    out
}

/// Converts every key ([`convert_key`]); two keys becoming one is an error (ESO: "secret
/// name collision during conversion").
pub fn convert_keys(
    strategy: ConversionStrategy,
    map: DataMap,
    what: &str,
) -> Result<DataMap, SyncError> {
    let mut out = DataMap::new();
    for (k, v) in map {
        let key = convert_key(strategy, &k);
        if out.contains_key(&key) {
            return Err(SyncError::KeyCollision {
                what: what.to_string(),
                step: "conversion strategy".into(),
                key,
            });
        }
        out.insert(key, v);
    }
    Ok(out)
}

/// ESO's `ValidateKeys`: an empty key is dropped (its provider data did not exist); any
/// other key must be what the API server accepts as a Secret key (Kubernetes'
/// `IsConfigMapKey`): at most 253 bytes of ASCII letters, digits, `-`, `.`, `_`, and not
/// `.`, `..` or starting with `..` (ESO's conversion keeps non-ASCII letters; the API
/// server would refuse them later, here the error names the key first).
pub fn validate_keys(mut map: DataMap, what: &str) -> Result<DataMap, SyncError> {
    map.remove("");
    for key in map.keys() {
        let ascii = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if key.len() > MAX_SECRET_KEY_LEN || !ascii || key == "." || key.starts_with("..") {
            let mut shown = key.clone();
            if shown.len() > MAX_SECRET_KEY_LEN {
                let mut end = MAX_SECRET_KEY_LEN;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
            }
            return Err(SyncError::InvalidKey {
                what: what.to_string(),
                key: shown,
            });
        }
    }
    Ok(map)
}

/// Applies `rewrite` operations in order (ESO's `RewriteMap`). `transform` renders each
/// key with `renderer` (ESO: template `transform` over `{value: key}`); without one it is
/// refused.
pub fn rewrite_map(
    ops: &[Rewrite],
    mut map: DataMap,
    what: &str,
    renderer: Option<&dyn TemplateRenderer>,
) -> Result<DataMap, SyncError> {
    for (i, op) in ops.iter().enumerate() {
        let at = format!("{what}.rewrite[{i}]");
        let fail = |reason: String| SyncError::Rewrite {
            what: at.clone(),
            reason,
        };
        map = match (&op.regexp, &op.transform, &op.merge) {
            (None, None, Some(m)) => rewrite_merge(m, map).map_err(fail)?,
            (Some(r), None, None) => rewrite_regexp(r, map, &at)?,
            (None, Some(t), None) => {
                let Some(renderer) = renderer else {
                    return Err(SyncError::Unsupported(format!(
                        "{at}.transform needs the template engine, which this reconciler was not given"
                    )));
                };
                let mut out = DataMap::new();
                for (k, v) in map {
                    let scope: DataMap = [("value".to_string(), k.into_bytes())].into();
                    let key = renderer
                        .render("transform", &t.template, &scope)
                        .map_err(&fail)
                        .and_then(|b| {
                            String::from_utf8(b)
                                .map_err(|_| fail("transform output is not UTF-8".into()))
                        })?;
                    if out.contains_key(&key) {
                        return Err(SyncError::KeyCollision {
                            what: at.clone(),
                            step: "transform".into(),
                            key,
                        });
                    }
                    out.insert(key, v);
                }
                out
            }
            _ => return Err(fail("set exactly one of regexp, transform, merge".into())),
        };
    }
    Ok(map)
}

/// Renames every key by `source` → `target` (Go's `ReplaceAllString`: every match
/// replaced, `$1`/`${name}` expanded). Two keys becoming one is an error (ESO keeps one of
/// them at random).
pub fn rewrite_regexp(op: &RewriteRegexp, map: DataMap, what: &str) -> Result<DataMap, SyncError> {
    let fail = |reason: String| SyncError::Rewrite {
        what: what.to_string(),
        reason,
    };
    if op.source.len() > MAX_REGEX_LEN {
        return Err(fail("regexp.source is too long".into()));
    }
    let re = regex::RegexBuilder::new(&op.source)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|_| fail("regexp.source is not a valid regular expression".into()))?;
    let mut out = DataMap::new();
    for (k, v) in map {
        let key = re.replace_all(&k, op.target.as_str()).into_owned();
        if out.contains_key(&key) {
            return Err(SyncError::KeyCollision {
                what: what.to_string(),
                step: "regexp".into(),
                key,
            });
        }
        out.insert(key, v);
    }
    Ok(out)
}

/// Merges JSON-object values (ESO's `RewriteMerge`): keys in sorted order, then the
/// `priority` keys in their order (later wins); a key found in two values is a conflict
/// (an error unless `conflictPolicy: Ignore`). `Extract` makes the merged object's keys
/// the data (strings raw, other values JSON); `JSON` adds the merged object under `into`.
pub fn rewrite_merge(op: &RewriteMerge, map: DataMap) -> Result<DataMap, String> {
    let mut order: Vec<&String> = map.keys().filter(|k| !op.priority.contains(k)).collect();
    order.extend(op.priority.iter());
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    let mut conflicts: Vec<String> = Vec::new();
    for key in order {
        let Some(value) = map.get(key) else {
            if op.priority_policy == MergePriorityPolicy::IgnoreNotFound {
                continue;
            }
            return Err(format!(
                "merge failed with key {key:?} not found in input map"
            ));
        };
        let object: serde_json::Map<String, Value> = match serde_json::from_slice(value) {
            Ok(Value::Object(o)) => o,
            _ => {
                return Err(format!(
                    "merge failed: the value of {key:?} is not a JSON object"
                ));
            }
        };
        for (k, v) in object {
            if merged.contains_key(&k) {
                conflicts.push(k.clone());
            }
            merged.insert(k, v);
        }
    }
    if op.conflict_policy != MergeConflictPolicy::Ignore && !conflicts.is_empty() {
        return Err(format!(
            "merge failed with conflicts: {}",
            conflicts.join(", ")
        ));
    }
    match op.strategy {
        MergeStrategy::Extract => Ok(merged
            .into_iter()
            .map(|(k, v)| {
                let bytes = match v {
                    Value::String(s) => s.into_bytes(),
                    Value::Null => Vec::new(),
                    other => go_json(&other, true).into_bytes(),
                };
                (k, bytes)
            })
            .collect()),
        MergeStrategy::Json => {
            if op.into.is_empty() {
                return Err("merge failed with missing 'into' field".into());
            }
            let object = Value::Object(merged.into_iter().collect());
            let mut out = map;
            out.insert(op.into.clone(), go_json(&object, false).into_bytes());
            Ok(out)
        }
    }
}

/// JSON as Go's `encoding/json` writes it: object keys sorted, `<`, `>`, `&` escaped when
/// `escape_html` (`json.Marshal`; ESO's `JSONMarshal` turns it off), U+2028/U+2029 always
/// escaped.
pub fn go_json(value: &Value, escape_html: bool) -> String {
    let mut out = String::new();
    write_go_json(value, escape_html, &mut out);
    out
}

fn write_go_json(value: &Value, escape_html: bool, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(k, escape_html, out);
                out.push(':');
                write_go_json(&map[k], escape_html, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(item, escape_html, out);
            }
            out.push(']');
        }
        Value::String(s) => write_go_string(s, escape_html, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_go_string(s: &str, escape_html: bool, out: &mut String) {
    let quoted = Value::String(s.to_string()).to_string();
    for c in quoted.chars() {
        match c {
            '<' | '>' | '&' if escape_html => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> DataMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn decoding_strategies_as_eso() {
        use DecodingStrategy::*;
        assert_eq!(decode(None, b"aGk=").unwrap(), b"aGk=");
        assert_eq!(decode(Base64, b"aGk=").unwrap(), b"hi");
        // Go skips newlines in base64 input.
        assert_eq!(decode(Base64, b"aG\nk=\r\n").unwrap(), b"hi");
        // Padding is required, as in Go's StdEncoding.
        assert_eq!(decode(Base64, b"aGk"), Err("base64"));
        // `-`/`_` are URL-safe only.
        assert_eq!(decode(Base64, b"-_8="), Err("base64"));
        assert_eq!(decode(Base64Url, b"-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode(Base64Url, b"+/8="), Err("base64url"));
        // Auto: base64, else base64url, else as is.
        assert_eq!(decode(Auto, b"aGk=").unwrap(), b"hi");
        assert_eq!(decode(Auto, b"-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode(Auto, b"not base64!").unwrap(), b"not base64!");
        // Binary output is kept byte for byte.
        assert_eq!(decode(Base64, b"AP8A").unwrap(), [0, 255, 0]);
        let err = decode_map(Base64, map(&[("k", "%%%")]), "spec.data[0]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not apply decoding strategy to spec.data[0]: key \"k\" is not valid base64"
        );
        assert!(!err.to_string().contains("%%%"));
    }

    #[test]
    fn conversion_default_and_unicode() {
        assert_eq!(
            convert_key(ConversionStrategy::Default, "app/db.url-x_y"),
            "app_db.url-x_y"
        );
        assert_eq!(
            convert_key(ConversionStrategy::Unicode, "a/b c"),
            "a_U002f_b_U0020_c"
        );
        // Letters and digits of any script are kept; other symbols converted.
        assert_eq!(convert_key(ConversionStrategy::Default, "clé٣€"), "clé٣_");
        assert_eq!(convert_key(ConversionStrategy::Unicode, "€"), "_U20ac_");
        assert_eq!(convert_key(ConversionStrategy::Unicode, "😀"), "_U1f600_");
        let err = convert_keys(
            ConversionStrategy::Default,
            map(&[("a/b", "1"), ("a_b", "2")]),
            "w",
        )
        .unwrap_err();
        assert!(matches!(err, SyncError::KeyCollision { ref key, .. } if key == "a_b"));
    }

    #[test]
    fn key_validation_drops_empty_and_refuses_bad() {
        let ok = validate_keys(map(&[("", "x"), ("a.b-c_d", "1")]), "w").unwrap();
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["a.b-c_d"]);
        assert!(matches!(
            validate_keys(map(&[("a/b", "1")]), "w"),
            Err(SyncError::InvalidKey { .. })
        ));
        let long = "k".repeat(254);
        let err = validate_keys(map(&[(&long, "1")]), "w").unwrap_err();
        assert!(matches!(err, SyncError::InvalidKey { ref key, .. } if key.len() == 253));
        assert!(validate_keys(map(&[(&"k".repeat(253), "1")]), "w").is_ok());
        // What the API server refuses as a Secret key (IsConfigMapKey).
        for bad in [".", "..", "..a", "..data", "é", "ключ", "a b"] {
            assert!(
                matches!(
                    validate_keys(map(&[(bad, "1")]), "w"),
                    Err(SyncError::InvalidKey { .. })
                ),
                "{bad}"
            );
        }
        for good in [".a", "a..b", "a.", "-", "_"] {
            assert!(validate_keys(map(&[(good, "1")]), "w").is_ok(), "{good}");
        }
    }

    fn regexp(source: &str, target: &str) -> Rewrite {
        Rewrite {
            regexp: Some(RewriteRegexp {
                source: source.into(),
                target: target.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rewrite_regexps_apply_in_order_with_groups() {
        let input = map(&[("app/db/user", "u"), ("app/db/pass", "p")]);
        // ESO docs' example: strip a prefix, then replace the separators.
        let out = rewrite_map(
            &[regexp("^app/", ""), regexp("/", "_")],
            input.clone(),
            "spec.dataFrom[0]",
            None,
        )
        .unwrap();
        assert_eq!(out, map(&[("db_user", "u"), ("db_pass", "p")]));
        // In the other order the first rewrite has consumed the prefix's slash.
        let out = rewrite_map(
            &[regexp("/", "_"), regexp("^app/", "")],
            input.clone(),
            "d",
            None,
        )
        .unwrap();
        assert_eq!(out, map(&[("app_db_user", "u"), ("app_db_pass", "p")]));
        // Groups expand as in Go (`${1}`, named groups).
        let out = rewrite_map(
            &[regexp("^app/(?P<rest>.*)$", "x-${rest}")],
            input.clone(),
            "d",
            None,
        )
        .unwrap();
        assert!(out.contains_key("x-db/user"));
        // Collisions and bad regexps are errors naming the operation.
        let err = rewrite_map(
            &[regexp(".*", "same")],
            input.clone(),
            "spec.dataFrom[1]",
            None,
        )
        .unwrap_err();
        assert!(matches!(err, SyncError::KeyCollision { .. }), "{err}");
        let err =
            rewrite_map(&[regexp("(", "x")], input.clone(), "spec.dataFrom[1]", None).unwrap_err();
        assert!(
            err.to_string().contains("spec.dataFrom[1].rewrite[0]"),
            "{err}"
        );
        // transform needs the template engine.
        let t = Rewrite {
            transform: Some(Default::default()),
            ..Default::default()
        };
        assert!(matches!(
            rewrite_map(&[t], input, "d", None),
            Err(SyncError::Unsupported(_))
        ));
    }

    #[test]
    fn rewrite_transform_renders_each_key() {
        use crate::reconcile::template::tests::Substitute;
        let t = |tpl: &str| Rewrite {
            transform: Some(crate::resources::external_secret::RewriteTransform {
                template: tpl.into(),
            }),
            ..Default::default()
        };
        let input = map(&[("db", "1"), ("api", "2")]);
        let out = rewrite_map(
            &[t("pre-{{ .value }}"), regexp("-", "_")],
            input.clone(),
            "d",
            Some(&Substitute),
        )
        .unwrap();
        assert_eq!(out, map(&[("pre_db", "1"), ("pre_api", "2")]));
        let err = rewrite_map(&[t("same")], input.clone(), "d", Some(&Substitute)).unwrap_err();
        assert!(matches!(err, SyncError::KeyCollision { .. }), "{err}");
        let err = rewrite_map(&[t("{{ .nope }}")], input, "d", Some(&Substitute)).unwrap_err();
        assert!(err.to_string().contains("d.rewrite[0]"), "{err}");
    }

    #[test]
    fn rewrite_merge_as_eso() {
        let input = map(&[
            ("b", r#"{"user":"b","port":5432,"tls":{"on":true}}"#),
            ("a", r#"{"user":"a","host":"<h>"}"#),
        ]);
        let conflicting = RewriteMerge::default();
        let err = rewrite_merge(&conflicting, input.clone()).unwrap_err();
        assert_eq!(err, "merge failed with conflicts: user");
        // Ignore: later keys win; sorted order, so `b` wins over `a`.
        let ignore = RewriteMerge {
            conflict_policy: MergeConflictPolicy::Ignore,
            ..Default::default()
        };
        let out = rewrite_merge(&ignore, input.clone()).unwrap();
        assert_eq!(out["user"], b"b");
        assert_eq!(out["port"], b"5432");
        assert_eq!(out["host"], b"<h>");
        assert_eq!(out["tls"], br#"{"on":true}"#);
        // Priority keys come last, in their order: `a` now wins.
        let prio = RewriteMerge {
            priority: vec!["a".into()],
            ..ignore.clone()
        };
        assert_eq!(rewrite_merge(&prio, input.clone()).unwrap()["user"], b"a");
        // Strict priority on an absent key is an error, IgnoreNotFound skips it.
        let strict = RewriteMerge {
            priority: vec!["zz".into()],
            ..ignore.clone()
        };
        assert!(
            rewrite_merge(&strict, input.clone())
                .unwrap_err()
                .contains("\"zz\" not found")
        );
        let lax = RewriteMerge {
            priority_policy: MergePriorityPolicy::IgnoreNotFound,
            ..strict
        };
        assert!(rewrite_merge(&lax, input.clone()).is_ok());
        // JSON: the merged object (sorted keys, HTML not escaped) under `into`, inputs kept.
        let json = RewriteMerge {
            strategy: MergeStrategy::Json,
            into: "all".into(),
            ..ignore
        };
        let out = rewrite_merge(&json, input.clone()).unwrap();
        assert_eq!(
            String::from_utf8(out["all"].clone()).unwrap(),
            r#"{"host":"<h>","port":5432,"tls":{"on":true},"user":"b"}"#
        );
        assert_eq!(out["a"], input["a"]);
        let no_into = RewriteMerge {
            strategy: MergeStrategy::Json,
            ..Default::default()
        };
        assert!(
            rewrite_merge(&no_into, map(&[("a", "{}")]))
                .unwrap_err()
                .contains("'into'")
        );
        // A value that is not a JSON object: an error naming the key, not the value.
        let err = rewrite_merge(&RewriteMerge::default(), map(&[("k", "s3cr3t")])).unwrap_err();
        assert!(err.contains("\"k\"") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn go_json_escapes_like_go() {
        let v: Value = serde_json::from_str(r#"{"b":"<&>","a":["\u2028"]}"#).unwrap();
        assert_eq!(
            go_json(&v, true),
            r#"{"a":["\u2028"],"b":"\u003c\u0026\u003e"}"#
        );
        assert_eq!(go_json(&v, false), r#"{"a":["\u2028"],"b":"<&>"}"#);
    }
}
