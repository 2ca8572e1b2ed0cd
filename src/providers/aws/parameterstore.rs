//! `service: ParameterStore`: GetParameter with decryption (a version or label as ESO's
//! `name:version`), and `find` over DescribeParameters.
//!
//! Canonical forms (`docs/security.md`): the key is the **fully qualified** parameter name:
//! `/a/b/c` as given, and a top-level `name` is `/name` (AWS treats `name` and `/name` as one
//! parameter). Names are case-sensitive, `A-Za-z0-9_.-` in at most 15 `/`-separated
//! segments; empty, `.` and `..` segments are refused, as are ARNs and `name:version`
//! (anything with `:`: the version goes in `remoteRef.version`), and names whose first
//! segment starts with `aws` or `ssm` in any case (reserved by AWS:
//! `/aws/reference/secretsmanager/<id>` reads a Secrets Manager secret). The version is a number
//! (no leading zeros) or a label.
//!
//! `find` lists names with DescribeParameters (filters: `Path` recursive, `tag:<key>`
//! equals), not GetParametersByPath: the latter answers every value under the path,
//! those of keys the caller may not read included.

use serde_json::{Value, json};

use super::{Service, check_name_text, different_secret};
use crate::providers::{FindRequest, ProviderError};

/// Longest parameter name (AWS: 1011 characters).
const MAX_NAME: usize = 1011;
/// Deepest hierarchy AWS allows.
const MAX_DEPTH: usize = 15;
/// Longest version label.
const MAX_LABEL: usize = 100;
/// DescribeParameters page size (AWS's maximum).
const PAGE_SIZE: u32 = 50;

/// Parameter Store, as a [`Service`] of the `aws` store.
pub(super) struct ParameterStore;

/// Whether a first path segment is one AWS reserves: parameter names may not start with
/// `aws` or `ssm` in any case. What lives there is not a parameter of this account:
/// `/aws/reference/secretsmanager/<id>` makes GetParameter answer a *Secrets Manager*
/// secret (so a decision on a Parameter Store key would read another store's secret), and
/// `/aws/service/…` are AWS's public parameters. All of them are refused.
fn reserved(first_segment: &str) -> bool {
    let head = first_segment.as_bytes().get(..3).unwrap_or_default();
    head.eq_ignore_ascii_case(b"aws") || head.eq_ignore_ascii_case(b"ssm")
}

/// The canonical (fully qualified) name of `key`: see the module doc.
fn canonical_name(key: &str, what: &str) -> Result<String, ProviderError> {
    check_name_text(
        key,
        what,
        MAX_NAME,
        "is an ARN or carries a version: use the parameter's name (and remoteRef.version)",
        "_.-/",
    )?;
    let bad = |why: &str| Err(ProviderError::InvalidRequest(format!("{what} {why}")));
    // Before the other rules, so `aws/x` says why too.
    let first = key.strip_prefix('/').unwrap_or(key);
    if reserved(first.split('/').next().unwrap_or_default()) {
        return bad(
            "starts with aws or ssm, which are reserved by AWS (/aws/reference/secretsmanager/… reads a Secrets Manager secret); read Secrets Manager secrets through a SecretsManager store",
        );
    }
    let full = if key.starts_with('/') {
        key.to_string()
    } else if key.contains('/') {
        return bad("is in a hierarchy and must start with /");
    } else {
        format!("/{key}")
    };
    if full.len() > MAX_NAME {
        return bad("is too long");
    }
    let segments: Vec<&str> = full[1..].split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return bad("has an empty path segment (// or a trailing /)");
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return bad("has a relative path segment");
    }
    if segments.len() > MAX_DEPTH {
        return bad("is deeper than 15 levels");
    }
    Ok(full)
}

impl Service for ParameterStore {
    const KIND: &'static str = "aws/ParameterStore";
    const GET: &'static str = "GetParameter";
    const LIST: (&'static str, &'static str, &'static str, u32) = (
        "DescribeParameters",
        "ParameterFilters",
        "Parameters",
        PAGE_SIZE,
    );

    fn canonical_key(key: &str) -> Result<String, ProviderError> {
        canonical_name(key, "key")
    }

    /// A hierarchy (`/a/b`; a trailing `/` is dropped; `/`: everything).
    fn canonical_path(path: &str) -> Result<Option<String>, ProviderError> {
        if path == "/" {
            return Ok(None);
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        if !path.starts_with('/') {
            return Err(ProviderError::InvalidRequest(
                "find.path must start with /".into(),
            ));
        }
        canonical_name(path, "find.path").map(Some)
    }

    fn payload(answer: &Value) -> Result<Vec<u8>, ProviderError> {
        match answer
            .get("Parameter")
            .and_then(|p| p.get("Value"))
            .and_then(Value::as_str)
        {
            Some(value) => Ok(value.as_bytes().to_vec()),
            None => Err(ProviderError::Backend(
                "AWS answered GetParameter without a value".into(),
            )),
        }
    }

    /// The answer's `Parameter.Name` canonicalizes to the name asked (AWS may answer a
    /// top-level `/name` as `name`, or a name with its `:version` selector); with a
    /// numeric version, a `Parameter.Version` in the answer is that number.
    fn check_answer(
        answer: &Value,
        name: &str,
        version: Option<&str>,
    ) -> Result<(), ProviderError> {
        let parameter = answer.get("Parameter");
        let answered = parameter
            .and_then(|p| p.get("Name"))
            .and_then(Value::as_str);
        let Some(answered) = answered else {
            return Err(different_secret());
        };
        let answered = match version {
            Some(v) => answered
                .strip_suffix(v)
                .and_then(|a| a.strip_suffix(':'))
                .unwrap_or(answered),
            None => answered,
        };
        if canonical_name(answered, "name").ok().as_deref() != Some(name) {
            return Err(different_secret());
        }
        if let Some(v) = version.filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
            && let Some(got) = parameter.and_then(|p| p.get("Version"))
            && got.as_u64().map(|n| n.to_string()).as_deref() != Some(v)
        {
            return Err(different_secret());
        }
        Ok(())
    }

    /// The canonical version: a decimal number without leading zeros, or a label (letters,
    /// digits, `_.-`, at most 100 bytes; AWS refuses the labels it does not allow).
    fn canonical_version(version: Option<&str>) -> Result<Option<String>, ProviderError> {
        let Some(v) = version.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let number = v.bytes().all(|b| b.is_ascii_digit());
        let ok = if number {
            v.len() <= 20 && !v.starts_with('0')
        } else {
            v.len() <= MAX_LABEL
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        if !ok {
            return Err(ProviderError::InvalidRequest(
                "version must be a number without leading zeros or a parameter label".into(),
            ));
        }
        Ok(Some(v.to_string()))
    }

    /// The GetParameter request for a canonical name and version (`name:version`).
    fn get_request(name: &str, version: Option<&str>) -> Value {
        let name = match version {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        json!({"Name": name, "WithDecryption": true})
    }

    /// The DescribeParameters filters of a canonical find.
    fn list_filters(find: &FindRequest) -> Vec<Value> {
        let mut filters = Vec::new();
        if let Some(path) = &find.path {
            filters.push(json!({"Key": "Path", "Option": "Recursive", "Values": [path]}));
        }
        for (k, v) in &find.tags {
            filters.push(json!({"Key": format!("tag:{k}"), "Option": "Equals", "Values": [v]}));
        }
        filters
    }

    /// The canonical name of a DescribeParameters entry if it matches the find (under the
    /// path, the regexp on the canonical name); tags are AWS's exact filters.
    fn matching_name(
        entry: &Value,
        find: &FindRequest,
        regex: Option<&regex::Regex>,
    ) -> Option<String> {
        let name = canonical_name(entry.get("Name").and_then(Value::as_str)?, "name").ok()?;
        if let Some(path) = &find.path
            && !name
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        {
            return None;
        }
        if regex.is_some_and(|re| !re.is_match(&name)) {
            return None;
        }
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fully_qualified_names() {
        for (key, want) in [
            ("db", "/db"),
            ("/db", "/db"),
            ("/app/prod/db-password", "/app/prod/db-password"),
            ("/a.b/c_d/E-F", "/a.b/c_d/E-F"),
        ] {
            assert_eq!(canonical_name(key, "key").unwrap(), want, "{key}");
            // Idempotent.
            assert_eq!(canonical_name(want, "key").unwrap(), want);
        }
        let deep = format!("/{}", vec!["a"; 15].join("/"));
        assert!(canonical_name(&deep, "key").is_ok());
        for key in [
            "",
            "/",
            "app/db",
            "/app//db",
            "/app/db/",
            "/app/../db",
            "/app/./db",
            "/db:3",
            "arn:aws:ssm:us-east-1:123456789012:parameter/db",
            "/with space",
            "/é",
            &format!("/{}", vec!["a"; 16].join("/")),
            &format!("/{}", "x".repeat(1011)),
        ] {
            assert!(
                matches!(
                    canonical_name(key, "key"),
                    Err(ProviderError::InvalidRequest(_))
                ),
                "{key}"
            );
        }
    }

    #[test]
    fn names_aws_reserves_are_refused() {
        // `/aws/reference/secretsmanager/<id>` would read a Secrets Manager secret through
        // GetParameter; `aws*` and `ssm*` first segments are AWS's, in any case.
        for key in [
            "/aws/reference/secretsmanager/db",
            "/AWS/reference/secretsmanager/db",
            "/aws/service/global-infrastructure/regions",
            "/ssm/x",
            "/SSMx/y",
            "/awsome/x",
            "aws",
            "ssm",
            "aws/x",
            "AWS-db",
        ] {
            let err = canonical_name(key, "key").unwrap_err();
            assert!(
                matches!(&err, ProviderError::InvalidRequest(m) if m.contains("reserved by AWS")),
                "{key}: {err}"
            );
        }
        for path in [
            "/aws",
            "/aws/",
            "/aws/reference",
            "/Ssm/x",
            "/aws/reference/secretsmanager",
        ] {
            let err = ParameterStore::canonical_path(path).unwrap_err();
            assert!(err.to_string().contains("reserved by AWS"), "{path}: {err}");
        }
        // Other names that merely contain the letters are parameters like any other.
        for key in ["/app/aws/db", "/my-aws", "/x/ssm", "db-aws"] {
            assert!(canonical_name(key, "key").is_ok(), "{key}");
        }
        // A listed reserved name (DescribeParameters never lists them, but an answer may)
        // has no canonical key, so a find leaves it out.
        assert_eq!(
            ParameterStore::matching_name(
                &json!({"Name": "/aws/reference/secretsmanager/db"}),
                &FindRequest::default(),
                None
            ),
            None
        );
    }

    #[test]
    fn answers_must_be_for_the_parameter_asked() {
        let answer = |name: &str, version: u64| json!({"Parameter": {"Name": name, "Value": "v", "Version": version}});
        let check =
            |a: &Value, name: &str, v: Option<&str>| ParameterStore::check_answer(a, name, v);
        for (a, name, v) in [
            (answer("/app/db", 3), "/app/db", None),
            (answer("db", 1), "/db", None),
            (answer("/app/db", 3), "/app/db", Some("3")),
            (answer("/app/db:3", 3), "/app/db", Some("3")),
            (answer("/app/db:blue", 7), "/app/db", Some("blue")),
            (answer("/app/db", 7), "/app/db", Some("blue")),
            (
                json!({"Parameter": {"Name": "/app/db", "Value": "v"}}),
                "/app/db",
                Some("3"),
            ),
        ] {
            assert_eq!(check(&a, name, v), Ok(()), "{a} {name} {v:?}");
        }
        for (a, name, v) in [
            (answer("/app/admin", 3), "/app/db", None),
            (answer("/App/db", 3), "/app/db", None),
            (answer("/app/db:3", 3), "/app/db", None),
            (answer("/app/db:4", 4), "/app/db", Some("3")),
            (answer("/app/db", 4), "/app/db", Some("3")),
            (answer("/aws/reference/secretsmanager/db", 1), "/db", None),
            (json!({"Parameter": {"Value": "v"}}), "/app/db", None),
            (json!({"Name": "/app/db", "Value": "v"}), "/app/db", None),
        ] {
            assert_eq!(
                check(&a, name, v),
                Err(different_secret()),
                "{a} {name} {v:?}"
            );
        }
    }

    #[test]
    fn versions_and_requests() {
        assert_eq!(ParameterStore::canonical_version(None), Ok(None));
        assert_eq!(ParameterStore::canonical_version(Some("")), Ok(None));
        assert_eq!(
            ParameterStore::canonical_version(Some("3")),
            Ok(Some("3".into()))
        );
        assert_eq!(
            ParameterStore::canonical_version(Some("prod")),
            Ok(Some("prod".into()))
        );
        for bad in ["0", "03", "a b", "x:y", &"l".repeat(101)] {
            assert!(
                ParameterStore::canonical_version(Some(bad)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            ParameterStore::get_request("/db", Some("3")),
            json!({"Name": "/db:3", "WithDecryption": true})
        );
        assert_eq!(
            ParameterStore::get_request("/db", None),
            json!({"Name": "/db", "WithDecryption": true})
        );
    }

    #[test]
    fn find_paths_filters_and_matching() {
        let find = FindRequest {
            path: Some("/app".into()),
            name_regexp: Some("pass".into()),
            tags: [("env".to_string(), "prod".to_string())].into(),
        };
        assert_eq!(
            Value::Array(ParameterStore::list_filters(&find)),
            json!([
                {"Key": "Path", "Option": "Recursive", "Values": ["/app"]},
                {"Key": "tag:env", "Option": "Equals", "Values": ["prod"]}
            ])
        );
        let re = regex::Regex::new("pass").unwrap();
        let entry = |name: &str| json!({"Name": name});
        assert_eq!(
            ParameterStore::matching_name(&entry("/app/db/password"), &find, Some(&re)),
            Some("/app/db/password".into())
        );
        for name in [
            "/application/password",
            "/app",
            "/other/password",
            "/app/db/user",
        ] {
            assert_eq!(
                ParameterStore::matching_name(&entry(name), &find, Some(&re)),
                None,
                "{name}"
            );
        }
        // Top-level names come back canonical.
        let all = FindRequest::default();
        assert_eq!(
            ParameterStore::matching_name(&entry("db"), &all, None),
            Some("/db".into())
        );
    }
}
