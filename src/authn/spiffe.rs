//! SPIFFE IDs (the SPIFFE-ID specification, `standards/SPIFFE-ID.md`) and the Kubernetes
//! workload a SPIFFE ID's path names by ESE's convention.
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>`: the scheme exactly `spiffe`, a trust
//! domain of lowercase letters, digits, `.`, `-` and `_` (no port, no user info), a path of
//! `/`-separated segments of letters, digits, `.`, `-` and `_`, none empty and none `.` or
//! `..`, no query, no fragment, no percent-encoding, at most 2048 bytes in all.

use super::identity::ServiceAccount;

/// Longest SPIFFE ID (SPIFFE-ID §2.3: URIs up to 2048 bytes must be supported; longer
/// ones are refused here).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// Longest trust domain name (SPIFFE-ID §2.1: 255 bytes).
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Why a string is not a SPIFFE ID (never echoes the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Longer than [`MAX_SPIFFE_ID_BYTES`].
    #[error("longer than {MAX_SPIFFE_ID_BYTES} bytes")]
    TooLong,
    /// Does not start with `spiffe://` (the scheme is lowercase).
    #[error("the scheme must be spiffe://")]
    Scheme,
    /// The trust domain is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character outside `[a-z0-9._-]` (upper case, `:` of a port,
    /// `@` of user info, `%`).
    #[error("the trust domain may only hold a-z, 0-9, '.', '-' and '_'")]
    TrustDomainChar,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_BYTES`].
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong,
    /// A path segment is empty (`//`, or a trailing `/`).
    #[error("a path segment is empty")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("a path segment is '.' or '..'")]
    DotSegment,
    /// A path has a character outside `[a-zA-Z0-9._-]` (`?` of a query, `#` of a
    /// fragment, `%` of percent-encoding).
    #[error("a path segment may only hold letters, digits, '.', '-' and '_'")]
    PathChar,
    /// The ID names a trust domain (no path) where a workload is wanted.
    #[error("no path: a trust domain ID names no workload")]
    NoPath,
}

/// A valid SPIFFE ID, split into its trust domain and path (empty, or starting with `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId<'a> {
    /// The trust domain.
    pub trust_domain: &'a str,
    /// The path: empty for a trust domain ID, else `/seg/seg…`.
    pub path: &'a str,
}

/// Whether `td` is a valid trust domain name (SPIFFE-ID §2.1).
pub fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::TrustDomainChar);
    }
    Ok(())
}

/// Parses a SPIFFE ID (a workload's or a trust domain's: the path may be empty).
///
/// # Errors
/// [`SpiffeIdError`] naming the first rule broken.
pub fn parse_spiffe_id(id: &str) -> Result<SpiffeId<'_>, SpiffeIdError> {
    if id.len() > MAX_SPIFFE_ID_BYTES {
        return Err(SpiffeIdError::TooLong);
    }
    let rest = id.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
    let (trust_domain, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    check_trust_domain(trust_domain)?;
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            if segment.is_empty() {
                return Err(SpiffeIdError::EmptySegment);
            }
            if segment == "." || segment == ".." {
                return Err(SpiffeIdError::DotSegment);
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(SpiffeIdError::PathChar);
            }
        }
    }
    Ok(SpiffeId { trust_domain, path })
}

/// Parses a workload's SPIFFE ID: as [`parse_spiffe_id`], and the path must not be empty.
///
/// # Errors
/// [`SpiffeIdError`], [`SpiffeIdError::NoPath`] for a trust domain ID.
pub fn parse_workload_id(id: &str) -> Result<SpiffeId<'_>, SpiffeIdError> {
    let parsed = parse_spiffe_id(id)?;
    if parsed.path.is_empty() {
        return Err(SpiffeIdError::NoPath);
    }
    Ok(parsed)
}

/// Whether `subject`, proved by a federation that is not a `SpiffeFederation` (an OIDC or
/// Kubernetes federation's subject: `sub` or the federation's `subjectClaim`), is refused
/// because it could be read as a workload of a trust domain a `SpiffeFederation` serves, in
/// audit lines, the ledger or a policy that matches `principal.subject`: it begins with
/// `spiffe:` (any case) and is either no workload SPIFFE ID at all (`SPIFFE://…`,
/// `spiffe://Example.org/…`, a trailing `/`, `%`, a port, no path) or one of a served trust
/// domain. Only while some `SpiffeFederation` is served (`served_trust_domains`, the
/// `trustDomain` of every `SpiffeFederation` in force, non-empty): otherwise no workload
/// can be mistaken. A valid SPIFFE ID of a trust domain none serves stays an ordinary
/// subject. The trust domain's bundle is the only authority for its SPIFFE IDs (JWT-SVID
/// §3). The one rule the server (`Authenticator`) and the policy tools
/// (`crate::policy::explain`, `crate::policy::requests`) apply.
pub(crate) fn could_be_a_served_workload<'a>(
    served_trust_domains: impl IntoIterator<Item = &'a str>,
    subject: &str,
) -> bool {
    if !begins_with_spiffe_scheme(subject) {
        return false;
    }
    // Not a workload ID: refused while any trust domain is served; else only when its own is.
    let trust_domain = parse_workload_id(subject).ok().map(|id| id.trust_domain);
    served_trust_domains
        .into_iter()
        .any(|served| trust_domain.is_none_or(|td| served == td))
}

/// Whether `text` begins with `spiffe:` in any case.
fn begins_with_spiffe_scheme(text: &str) -> bool {
    text.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
}

/// Whether every subject that begins with `prefix` is refused by
/// [`could_be_a_served_workload`] (the literal text of a subject glob before its first `*`:
/// then every subject the glob matches is refused). Sound, not complete: `true` only when
/// no subject beginning with `prefix` can be accepted — the prefix begins with `spiffe:`
/// (any case) and fixes a scheme other than `spiffe://`, or a trust domain that is served
/// or that no trust domain can hold (a character outside `[a-z0-9._-]`, empty, too long);
/// `false` whenever the prefix can still become a workload ID of a trust domain none
/// serves, or a subject not beginning with `spiffe:`.
pub(crate) fn could_only_be_served_workloads<'a>(
    served_trust_domains: impl IntoIterator<Item = &'a str> + Clone,
    prefix: &str,
) -> bool {
    const SCHEME: &str = "spiffe://";
    let served = |td: Option<&str>| {
        served_trust_domains
            .clone()
            .into_iter()
            .any(|s| td.is_none_or(|td| s == td))
    };
    if !begins_with_spiffe_scheme(prefix) || !served(None) {
        return false;
    }
    let Some(rest) = prefix.strip_prefix(SCHEME) else {
        // `spiffe:` or `spiffe:/` may still become `spiffe://`; any other is a wrong scheme.
        return !SCHEME.starts_with(prefix);
    };
    match rest.find('/') {
        Some(end) => {
            let td = &rest[..end];
            check_trust_domain(td).is_err() || served(Some(td))
        }
        // The trust domain is still open: only a character no trust domain holds fixes it.
        None => check_trust_domain(rest).is_err_and(|e| e != SpiffeIdError::EmptyTrustDomain),
    }
}

/// The Kubernetes workload a SPIFFE ID's path names, if it follows one of two conventions:
/// ESE's `/{app}/ns/{ns}/sa/{saUID}/{saName}/pod/{podUID}/{podName}` (ServiceAccount and
/// Pod, both with their UIDs), or SPIRE's common `/ns/{ns}/sa/{sa}` (the ServiceAccount
/// alone). Any other path names no Kubernetes workload (`None`): the workload is then
/// known by its SPIFFE ID only.
pub fn kubernetes_workload(path: &str) -> Option<ServiceAccount> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        ["ns", ns, "sa", sa] => Some(ServiceAccount {
            namespace: (*ns).to_owned(),
            name: (*sa).to_owned(),
            ..Default::default()
        }),
        [_app, "ns", ns, "sa", sa_uid, sa, "pod", pod_uid, pod] => Some(ServiceAccount {
            namespace: (*ns).to_owned(),
            name: (*sa).to_owned(),
            uid: Some((*sa_uid).to_owned()),
            pod_name: Some((*pod).to_owned()),
            pod_uid: Some((*pod_uid).to_owned()),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let id = parse_workload_id("spiffe://example.org/ns/default/sa/app").unwrap();
        assert_eq!(id.trust_domain, "example.org");
        assert_eq!(id.path, "/ns/default/sa/app");
        let id = parse_spiffe_id("spiffe://prod_1.example-2.org").unwrap();
        assert_eq!((id.trust_domain, id.path), ("prod_1.example-2.org", ""));
        assert!(parse_workload_id("spiffe://td/A.b-c_d/..x/x..").is_ok());
        let longest = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_BYTES - 12));
        assert_eq!(longest.len(), MAX_SPIFFE_ID_BYTES);
        assert!(parse_workload_id(&longest).is_ok());
    }

    #[test]
    fn each_malformed_form_is_refused() {
        use SpiffeIdError::*;
        let too_long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_BYTES - 11));
        let long_td = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_BYTES + 1));
        let cases: &[(&str, SpiffeIdError)] = &[
            (&too_long, TooLong),
            ("", Scheme),
            ("https://example.org/x", Scheme),
            ("SPIFFE://example.org/x", Scheme),
            ("spiffe:/example.org/x", Scheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///x", EmptyTrustDomain),
            ("spiffe://Example.org/x", TrustDomainChar),
            ("spiffe://example.org:8443/x", TrustDomainChar),
            ("spiffe://user@example.org/x", TrustDomainChar),
            ("spiffe://user:pw@example.org/x", TrustDomainChar),
            ("spiffe://exa%6Dple.org/x", TrustDomainChar),
            ("spiffe://example.org?q=1", TrustDomainChar),
            ("spiffe://example.org#f", TrustDomainChar),
            (&long_td, TrustDomainTooLong),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org/x/", EmptySegment),
            ("spiffe://example.org//x", EmptySegment),
            ("spiffe://example.org/./x", DotSegment),
            ("spiffe://example.org/x/..", DotSegment),
            ("spiffe://example.org/x?q=1", PathChar),
            ("spiffe://example.org/x#frag", PathChar),
            ("spiffe://example.org/x%2Fy", PathChar),
            ("spiffe://example.org/x y", PathChar),
            ("spiffe://example.org/x:1", PathChar),
            ("spiffe://example.org/\u{e9}", PathChar),
        ];
        for (id, want) in cases {
            assert_eq!(parse_workload_id(id).err(), Some(*want), "{id:?}");
        }
        assert_eq!(
            parse_workload_id("spiffe://example.org").err(),
            Some(NoPath)
        );
        assert!(parse_spiffe_id("spiffe://example.org").is_ok());
        // Messages never echo the input.
        assert!(!TrustDomainChar.to_string().contains("Example"));
    }

    /// The lookalike rule (shared by the authenticator and the policy tools): a `spiffe:`
    /// subject (any case) is refused while a trust domain is served when it is no workload
    /// ID, or a workload ID of a served trust domain; a workload ID of another trust domain
    /// and any other subject are not.
    #[test]
    fn lookalike_subjects_of_served_trust_domains() {
        let served = ["example.org"];
        for refused in [
            "spiffe://example.org/ns/prod/sa/api",
            "SPIFFE://example.org/ns/prod/sa/api",
            "Spiffe:x",
            "spiffe://Example.org/x",
            "spiffe://example.org/x/",
            "spiffe://example.org",
            "spiffe://other.org:8443/x",
            "spiffe://example.org/x%2Fy",
        ] {
            assert!(could_be_a_served_workload(served, refused), "{refused}");
        }
        for accepted in [
            "spiffe://other.org/ns/prod/sa/api",
            "repo:org/app:ref:refs/heads/main",
            "spiffe",
            "",
            "xspiffe://example.org/x",
        ] {
            assert!(!could_be_a_served_workload(served, accepted), "{accepted}");
        }
        // No trust domain served: no subject is refused.
        assert!(!could_be_a_served_workload([], "spiffe://example.org/x"));
        assert!(!could_be_a_served_workload([], "SPIFFE://x"));
    }

    /// A prefix is said to hold only refused subjects exactly when it fixes a served or
    /// impossible trust domain or a wrong scheme; and whenever it is said so, every
    /// subject beginning with it (here: it followed by a set of endings) is refused.
    #[test]
    fn prefixes_of_only_refused_subjects() {
        let served = ["example.org", "b.example"];
        let only_refused = [
            "spiffe://example.org/",
            "spiffe://example.org/ns/prod/",
            "spiffe://b.example/x",
            "SPIFFE://",
            "spiffe:x",
            "spiffe:/x",
            "Spiffe://other.org/",
            "spiffe://Example",
            "spiffe://example.org:",
            "spiffe:///",
            "spiffe://ex ample.org/x",
        ];
        // Each with an ending that makes a subject the server accepts.
        let not_only = [
            ("", "x"),
            ("s", "x"),
            ("spiffe", "x"),
            ("spiffe:", "//other.org/x"),
            ("spiffe:/", "/other.org/x"),
            ("spiffe://", "other.org/x"),
            ("spiffe://example.org", ".evil/x"),
            ("spiffe://example.or", "x/y"),
            ("spiffe://other.org/", "x"),
            ("repo:org/", "x"),
            ("xspiffe://example.org/", "x"),
        ];
        let endings = [
            "",
            "x",
            "/x",
            "x/y",
            ".x/y",
            "/",
            "#",
            "ns/prod/sa/api",
            ".evil/x",
        ];
        for prefix in only_refused {
            assert!(could_only_be_served_workloads(served, prefix), "{prefix}");
            for end in endings {
                let subject = format!("{prefix}{end}");
                assert!(could_be_a_served_workload(served, &subject), "{subject}");
            }
        }
        for (prefix, witness) in not_only {
            assert!(!could_only_be_served_workloads(served, prefix), "{prefix}");
            let subject = format!("{prefix}{witness}");
            assert!(!could_be_a_served_workload(served, &subject), "{subject}");
        }
        // Nothing is refused while no trust domain is served.
        assert!(!could_only_be_served_workloads([], "spiffe://example.org/"));
        assert!(!could_only_be_served_workloads([], "SPIFFE://"));
    }

    #[test]
    fn kubernetes_paths() {
        let sa = kubernetes_workload("/ns/default/sa/app").unwrap();
        assert_eq!(
            (sa.namespace.as_str(), sa.name.as_str()),
            ("default", "app")
        );
        assert_eq!((sa.uid, sa.pod_name, sa.pod_uid), (None, None, None));
        let sa = kubernetes_workload("/billing/ns/prod/sa/u-sa/api/pod/u-pod/api-7d9f").unwrap();
        assert_eq!(sa.namespace, "prod");
        assert_eq!(sa.name, "api");
        assert_eq!(sa.uid.as_deref(), Some("u-sa"));
        assert_eq!(sa.pod_name.as_deref(), Some("api-7d9f"));
        assert_eq!(sa.pod_uid.as_deref(), Some("u-pod"));
        for other in [
            "",
            "/",
            "/ns/default",
            "/ns/default/sa/app/extra",
            "/app/ns/prod/sa/uid/api/pod/uid",
            "/billing/api",
            "/x/ns/prod/sa/u/api/pods/u/p",
        ] {
            assert_eq!(kubernetes_workload(other), None, "{other:?}");
        }
    }
}
