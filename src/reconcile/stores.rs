//! Which stores this reconciler processes (`spec.controller`) and which namespaces may use
//! a `ClusterSecretStore` (`spec.conditions`), as ESO's `ShouldProcessStore` and
//! `shouldProcessSecret` decide.

use std::collections::BTreeMap;

use crate::resources::external_secret::{ClusterSecretStoreCondition, LabelSelector};

/// The label Kubernetes sets on every Namespace to its own name (immutable); ESO turns each
/// `conditions[].namespaces` entry into a selector on it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Most conditions, names, regexps and selector terms looked at per store (bounds work).
const MAX_TERMS: usize = 1000;
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Whether a store with `spec.controller` = `store_class` is this reconciler's: an empty
/// or absent class is everyone's; otherwise it must equal `--controller-class` exactly.
pub fn manages(store_class: Option<&str>, controller_class: &str) -> bool {
    match store_class {
        None | Some("") => true,
        Some(c) => c == controller_class,
    }
}

/// Whether `namespace` (with its `labels`) may use a ClusterSecretStore with these
/// `conditions`: no conditions allow every namespace; otherwise one condition must match
/// by `namespaceSelector`, by a `namespaces` entry, or by a `namespaceRegexes` entry
/// (unanchored, as Go's `regexp.MatchString`). A condition that cannot be evaluated (an
/// unknown selector operator, an invalid regexp) is an error: the store is refused.
pub fn namespace_allowed(
    conditions: &[ClusterSecretStoreCondition],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if conditions.is_empty() {
        return Ok(true);
    }
    if conditions.len() > MAX_TERMS {
        return Err(format!("more than {MAX_TERMS} conditions"));
    }
    for (i, c) in conditions.iter().enumerate() {
        if let Some(sel) = &c.namespace_selector
            && selector_matches(sel, labels)
                .map_err(|e| format!("conditions[{i}].namespaceSelector: {e}"))?
        {
            return Ok(true);
        }
        if c.namespaces.len() > MAX_TERMS || c.namespace_regexes.len() > MAX_TERMS {
            return Err(format!(
                "conditions[{i}] lists more than {MAX_TERMS} entries"
            ));
        }
        if c.namespaces
            .iter()
            .any(|n| labels.get(NAMESPACE_NAME_LABEL) == Some(n))
        {
            return Ok(true);
        }
        for (j, re) in c.namespace_regexes.iter().enumerate() {
            if re.len() > MAX_REGEX_LEN {
                return Err(format!("conditions[{i}].namespaceRegexes[{j}] is too long"));
            }
            let compiled = regex::RegexBuilder::new(re)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|_| {
                    format!(
                        "conditions[{i}].namespaceRegexes[{j}] is not a valid regular expression"
                    )
                })?;
            if compiled.is_match(namespace) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Kubernetes label selector semantics: every `matchLabels` pair and every
/// `matchExpressions` term must hold (`In`, `NotIn`, `Exists`, `DoesNotExist`); an empty
/// selector matches everything.
pub fn selector_matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if sel.match_labels.len() + sel.match_expressions.len() > MAX_TERMS {
        return Err(format!("more than {MAX_TERMS} terms"));
    }
    for (k, v) in &sel.match_labels {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let value = labels.get(&e.key);
        let holds = match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} needs values",
                    e.operator
                ));
            }
            "In" => value.is_some_and(|v| e.values.contains(v)),
            "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
            "Exists" | "DoesNotExist" if !e.values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} takes no values",
                    e.operator
                ));
            }
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => return Err(format!("matchExpressions[{i}]: unknown operator {other:?}")),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::external_secret::LabelSelectorRequirement;

    fn labels(ns: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
        l
    }

    #[test]
    fn controller_classes() {
        assert!(manages(None, ""));
        assert!(manages(Some(""), "mine"));
        assert!(manages(Some("mine"), "mine"));
        assert!(!manages(Some("theirs"), "mine"));
        assert!(!manages(Some("mine"), ""));
        assert!(!manages(Some("Mine"), "mine"));
    }

    #[test]
    fn conditions_allow_by_name_regex_or_selector() {
        let cond = |json: serde_json::Value| -> Vec<ClusterSecretStoreCondition> {
            serde_json::from_value(json).unwrap()
        };
        assert!(namespace_allowed(&[], "any", &labels("any", &[])).unwrap());
        let by_name = cond(serde_json::json!([{"namespaces": ["team-a"]}]));
        assert!(namespace_allowed(&by_name, "team-a", &labels("team-a", &[])).unwrap());
        assert!(!namespace_allowed(&by_name, "team-b", &labels("team-b", &[])).unwrap());
        // Unanchored, as Go's MatchString.
        let by_re = cond(
            serde_json::json!([{"namespaceRegexes": ["^team-"]}, {"namespaceRegexes": ["prod"]}]),
        );
        assert!(namespace_allowed(&by_re, "team-x", &labels("team-x", &[])).unwrap());
        assert!(namespace_allowed(&by_re, "my-prod-1", &labels("my-prod-1", &[])).unwrap());
        assert!(!namespace_allowed(&by_re, "dev", &labels("dev", &[])).unwrap());
        let by_sel = cond(
            serde_json::json!([{"namespaceSelector": {"matchLabels": {"tier": "db"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}}]),
        );
        assert!(namespace_allowed(&by_sel, "x", &labels("x", &[("tier", "db")])).unwrap());
        assert!(
            !namespace_allowed(
                &by_sel,
                "x",
                &labels("x", &[("tier", "db"), ("env", "dev")])
            )
            .unwrap()
        );
        assert!(!namespace_allowed(&by_sel, "x", &labels("x", &[])).unwrap());
        // Broken conditions refuse, with the place named.
        let bad = cond(serde_json::json!([{"namespaceRegexes": ["("]}]));
        assert!(
            namespace_allowed(&bad, "x", &labels("x", &[]))
                .unwrap_err()
                .contains("namespaceRegexes[0]")
        );
        let bad_op = cond(
            serde_json::json!([{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}]),
        );
        assert!(namespace_allowed(&bad_op, "x", &labels("x", &[])).is_err());
    }

    #[test]
    fn selector_operators() {
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: op.into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
            ..Default::default()
        };
        let with = labels("n", &[("k", "v")]);
        let without = labels("n", &[]);
        assert!(selector_matches(&req("In", &["v"]), &with).unwrap());
        assert!(!selector_matches(&req("In", &["v"]), &without).unwrap());
        assert!(!selector_matches(&req("NotIn", &["v"]), &with).unwrap());
        assert!(selector_matches(&req("NotIn", &["v"]), &without).unwrap());
        assert!(selector_matches(&req("Exists", &[]), &with).unwrap());
        assert!(selector_matches(&req("DoesNotExist", &[]), &without).unwrap());
        assert!(selector_matches(&req("In", &[]), &with).is_err());
        assert!(selector_matches(&req("Exists", &["v"]), &with).is_err());
        assert!(selector_matches(&LabelSelector::default(), &without).unwrap());
    }
}
