//! JSONPath (RFC 9535, the `jsonpath-rust` crate) for `result.jsonPath` of the webhook
//! generator and the webhook store provider: ESO's paths, filters included
//! (`$.items[?(@.name=='db')].value`, `$..name`, `$['a-b'][0]`).
//!
//! Bounds: the path text is at most [`MAX_PATH`] bytes and the crate refuses nesting
//! deeper than its own limit before parsing; the document it runs on is bounded by the
//! caller (the webhook answer, at most 1 MiB). Regular expressions of `match()` /
//! `search()` use the `regex` crate (linear time). Messages never quote the document.

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

/// Bound on a path's text.
pub const MAX_PATH: usize = 4096;

/// A parsed JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    query: JpQuery,
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPathError {
    /// Longer than [`MAX_PATH`].
    #[error("must be at most {MAX_PATH} bytes")]
    TooLong,
    /// Not RFC 9535 JSONPath.
    #[error("is not a valid JSONPath (RFC 9535; e.g. $.data, $.items[?(@.name=='x')].value)")]
    Invalid,
}

impl JsonPath {
    /// Parses `text` (surrounding blanks ignored).
    pub fn parse(text: &str) -> Result<Self, JsonPathError> {
        let text = text.trim();
        if text.len() > MAX_PATH {
            return Err(JsonPathError::TooLong);
        }
        let query =
            jsonpath_rust::parser::parse_json_path(text).map_err(|_| JsonPathError::Invalid)?;
        Ok(JsonPath { query })
    }

    /// The values the path selects in `doc`, in document order (empty: nothing matches).
    pub fn select<'a>(&self, doc: &'a Value) -> Vec<&'a Value> {
        match jsonpath_rust::query::js_path_process(&self.query, doc) {
            Ok(found) => found.into_iter().map(|r| r.val()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// ESO's single result: the one value selected, or the first of several (ESO takes
    /// the first element when a filter answers a list). `None`: nothing matches.
    pub fn select_one<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.select(doc).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get(doc: &Value, p: &str) -> Vec<Value> {
        JsonPath::parse(p)
            .unwrap()
            .select(doc)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn paths_and_filters_like_eso() {
        let doc = json!({"a": {"b": [10, {"c": "deep"}], "d-e": 1}, "list": [1, 2, 3],
            "secrets": [{"name": "db", "value": "x"}, {"name": "api", "value": "y"}]});
        assert_eq!(get(&doc, "$"), vec![doc.clone()]);
        assert_eq!(get(&doc, "$.a.b[0]"), vec![json!(10)]);
        assert_eq!(get(&doc, "$.a.b[1].c"), vec![json!("deep")]);
        assert_eq!(get(&doc, "$['a']['d-e']"), vec![json!(1)]);
        assert_eq!(get(&doc, "$[\"list\"][-1]"), vec![json!(3)]);
        assert_eq!(get(&doc, "$.list[3]"), Vec::<Value>::new());
        assert_eq!(get(&doc, "$.missing"), Vec::<Value>::new());
        assert_eq!(
            get(&doc, "$.secrets[?(@.name=='api')].value"),
            vec![json!("y")]
        );
        assert_eq!(
            get(&doc, "$.secrets[?@.name==\"db\"].value"),
            vec![json!("x")]
        );
        assert_eq!(
            get(&doc, "$.secrets[?(@.name=='none')].value"),
            Vec::<Value>::new()
        );
        assert_eq!(get(&doc, "$..name"), vec![json!("db"), json!("api")]);
        assert_eq!(get(&doc, "$.list[0:2]"), vec![json!(1), json!(2)]);
        let p = JsonPath::parse("$..value").unwrap();
        assert_eq!(p.select_one(&doc), Some(&json!("x")));
        for bad in ["a.b", "$.a[", "$a", "$.a[?(@.x==]", ""] {
            assert_eq!(JsonPath::parse(bad), Err(JsonPathError::Invalid), "{bad}");
        }
        let long = format!("$.{}", "a".repeat(MAX_PATH));
        assert_eq!(JsonPath::parse(&long), Err(JsonPathError::TooLong));
        let deep = format!("$.a{}", "[?(".repeat(500));
        assert!(JsonPath::parse(&deep).is_err());
    }
}
