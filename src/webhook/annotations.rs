//! The `secretless.externalsecrets.com/` annotations (ESE's names, CONTRACT.md "Pod
//! annotations"), read and checked one by one. Whether they make sense together, and as
//! esi-cli flags, is [`super::mutate`]'s business.

use std::collections::BTreeMap;

use super::Denial;

/// The prefix of every annotation of ours.
pub const PREFIX: &str = "secretless.externalsecrets.com/";

/// Longest annotation value accepted (names, paths and lists of them), in bytes.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// Most bytes of all our annotations' values together: each esi-cli command line of the
/// Pod carries them, so they bound the work and the patch (with
/// [`super::mutate::MAX_CONTAINERS`]).
pub const MAX_TOTAL_BYTES: usize = 32 * 1024;

/// One annotation we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// `externalsecret`: the secret names (`--external-secrets`).
    ExternalSecret,
    /// `federated-server-url` (`--federated-server-url`, https only).
    FederatedServerUrl,
    /// `federated-auth`: `kubernetes` (the injected ServiceAccount token) or `spiffe`
    /// (SVID files in the Pod, as spiffe-helper writes them).
    FederatedAuth,
    /// `federated-generators` (`--federated-generators`).
    FederatedGenerators,
    /// `federated-store` (`--federated-store`).
    FederatedStore,
    /// `federated-token`: a token path in the Pod instead of the injected one (with
    /// `federated-auth: spiffe`: the JWT-SVID file).
    FederatedToken,
    /// `federated-x509-svid`: with `federated-auth: spiffe`, the X.509-SVID chain file in
    /// the Pod (`--federated-x509-svid`). An extension of this webhook.
    FederatedX509Svid,
    /// `federated-x509-svid-key`: its key file (`--federated-x509-svid-key`). An extension.
    FederatedX509SvidKey,
    /// `federated-ca-crt`: a CA path in the Pod instead of the injected one.
    FederatedCaCrt,
    /// `daemon-refresh-interval`: adds the daemon sidecar.
    DaemonRefreshInterval,
    /// `inject-on-env` (default `*` with `env-vars`).
    InjectOnEnv,
    /// `inject-on-file`: selects file injection.
    InjectOnFile,
    /// `env-vars`: `"true"` selects environment injection.
    EnvVars,
    /// `file-secrets`: `"true"` selects file injection (`/secrets/secrets.json`).
    FileSecrets,
    /// `skip`: `"true"` leaves the Pod alone.
    Skip,
    /// `image-pull-secrets`: Secret names appended to `spec.imagePullSecrets`.
    ImagePullSecrets,
    /// `injected`: set by the webhook on the Pods it changed.
    Injected,
    /// `containers`: the `spec.containers` to inject into (default all). An extension of
    /// this webhook, not an ESE annotation.
    Containers,
}

impl Key {
    /// Every key, in the order of the docs.
    pub const ALL: [Key; 18] = [
        Key::ExternalSecret,
        Key::FederatedServerUrl,
        Key::FederatedAuth,
        Key::FederatedGenerators,
        Key::FederatedStore,
        Key::FederatedToken,
        Key::FederatedX509Svid,
        Key::FederatedX509SvidKey,
        Key::FederatedCaCrt,
        Key::DaemonRefreshInterval,
        Key::InjectOnEnv,
        Key::InjectOnFile,
        Key::EnvVars,
        Key::FileSecrets,
        Key::Skip,
        Key::ImagePullSecrets,
        Key::Injected,
        Key::Containers,
    ];

    /// The name after the prefix.
    pub fn name(self) -> &'static str {
        match self {
            Key::ExternalSecret => "externalsecret",
            Key::FederatedServerUrl => "federated-server-url",
            Key::FederatedAuth => "federated-auth",
            Key::FederatedGenerators => "federated-generators",
            Key::FederatedStore => "federated-store",
            Key::FederatedToken => "federated-token",
            Key::FederatedX509Svid => "federated-x509-svid",
            Key::FederatedX509SvidKey => "federated-x509-svid-key",
            Key::FederatedCaCrt => "federated-ca-crt",
            Key::DaemonRefreshInterval => "daemon-refresh-interval",
            Key::InjectOnEnv => "inject-on-env",
            Key::InjectOnFile => "inject-on-file",
            Key::EnvVars => "env-vars",
            Key::FileSecrets => "file-secrets",
            Key::Skip => "skip",
            Key::ImagePullSecrets => "image-pull-secrets",
            Key::Injected => "injected",
            Key::Containers => "containers",
        }
    }

    /// Most items of a comma-separated list annotation (`None`: not a list). Each item
    /// costs a parse, a fetch or a file in esi-cli and a share of the checks here.
    pub fn max_items(self) -> Option<usize> {
        match self {
            Key::ExternalSecret => Some(32),
            Key::FederatedGenerators => Some(16),
            Key::InjectOnEnv => Some(128),
            Key::InjectOnFile => Some(32),
            Key::ImagePullSecrets => Some(16),
            Key::Containers => Some(super::mutate::MAX_CONTAINERS),
            _ => None,
        }
    }

    /// The whole annotation name.
    pub fn full(self) -> String {
        format!("{PREFIX}{}", self.name())
    }
}

/// ESE annotations this webhook does not carry out, with the reason given to the user.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "secretstore",
        "name the Federation Server's store with federated-store",
    ),
    ("federated-socket-path", NO_WORKLOAD_API),
    (
        "federated-server-spiffe-id",
        "esi-cli verifies the Federation Server's certificate by its DNS name (against \
         federated-ca-crt or the public roots), not by a SPIFFE ID",
    ),
    ("okta-client-id", SA_TOKEN_ONLY),
    ("okta-private-key", SA_TOKEN_ONLY),
    ("okta-domain", SA_TOKEN_ONLY),
    ("okta-auth-server", SA_TOKEN_ONLY),
    ("okta-scopes", SA_TOKEN_ONLY),
    ("pingidentity-client-id", SA_TOKEN_ONLY),
    ("pingidentity-private-key", SA_TOKEN_ONLY),
    ("pingidentity-region", SA_TOKEN_ONLY),
    ("pingidentity-environment-id", SA_TOKEN_ONLY),
    ("pingidentity-scopes", SA_TOKEN_ONLY),
    ("workload-token", SA_TOKEN_ONLY),
    ("workload-token-path", SA_TOKEN_ONLY),
];

const SA_TOKEN_ONLY: &str = "esi-cli authenticates with the Pod's ServiceAccount token \
                             (federated-auth: kubernetes) or SPIFFE SVID files (federated-auth: \
                             spiffe), not with Okta or PingIdentity";

/// Why `federated-socket-path` is refused, with what to do instead.
const NO_WORKLOAD_API: &str = "esi-cli does not read the SPIFFE Workload API socket (the one \
    the SPIFFE CSI driver csi.spiffe.io mounts): run spiffe-helper on that socket in an init or \
    sidecar container writing the SVIDs to a volume shared with the Pod (an emptyDir), and name \
    the files with federated-x509-svid and federated-x509-svid-key (svid.pem, svid_key.pem) or \
    federated-token (jwt_svid.token), with federated-auth: spiffe";

/// The annotations of one Pod, each checked on its own (values trimmed, never empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// `externalsecret`.
    pub external_secret: Option<String>,
    /// `federated-server-url`.
    pub server_url: Option<String>,
    /// `federated-generators`.
    pub generators: Option<String>,
    /// `federated-store`.
    pub store: Option<String>,
    /// `federated-token`.
    pub token: Option<String>,
    /// `federated-ca-crt`.
    pub ca_crt: Option<String>,
    /// Whether `federated-auth` was given.
    pub auth: bool,
    /// `federated-auth: spiffe`: esi-cli authenticates with SVID files of the Pod, and no
    /// ServiceAccount token is projected for it.
    pub spiffe: bool,
    /// `federated-x509-svid`.
    pub x509_svid: Option<String>,
    /// `federated-x509-svid-key`.
    pub x509_svid_key: Option<String>,
    /// `daemon-refresh-interval`.
    pub refresh: Option<String>,
    /// `inject-on-env`.
    pub inject_on_env: Option<String>,
    /// `inject-on-file`.
    pub inject_on_file: Option<String>,
    /// `env-vars: "true"`.
    pub env_vars: bool,
    /// `file-secrets: "true"`.
    pub file_secrets: bool,
    /// `image-pull-secrets`, split, without duplicates.
    pub image_pull_secrets: Vec<String>,
    /// `injected: "true"`: the webhook changed this Pod already.
    pub injected: bool,
    /// `containers`, split, without duplicates (empty: every container).
    pub containers: Vec<String>,
}

impl Annotations {
    /// The names of `externalsecret`, split at commas.
    pub fn external_secret_names(&self) -> Vec<&str> {
        split_list(self.external_secret.as_deref())
    }
}

/// Items of a comma-separated list, trimmed, empty ones left out (as esi-cli reads them).
pub fn split_list(value: Option<&str>) -> Vec<&str> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// What a Pod's annotations ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No annotation of ours (or only `skip: "false"`): leave the Pod alone.
    NotOurs,
    /// `skip: "true"`: leave the Pod alone, whatever else it says.
    Skipped,
    /// An injection (or a Pod already injected).
    Request(Box<Annotations>),
}

/// Reads the annotations under [`PREFIX`]: unknown keys, unsupported ESE keys, empty or
/// oversized values, control characters and malformed booleans are denied, naming the
/// annotation.
///
/// # Errors
/// A [`Denial`] (400) naming the first annotation at fault.
pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<Parsed, Denial> {
    let ours: Vec<(&str, &str)> = annotations
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k, v.as_str())))
        .collect();
    if ours.is_empty() {
        return Ok(Parsed::NotOurs);
    }
    // `skip` first: a skipped Pod is left alone even if other annotations are wrong.
    if let Some((_, v)) = ours.iter().find(|(k, _)| *k == Key::Skip.name()) {
        if boolean(Key::Skip, v)? {
            return Ok(Parsed::Skipped);
        }
        if ours.len() == 1 {
            return Ok(Parsed::NotOurs);
        }
    }
    let total: usize = ours.iter().map(|(_, v)| v.len()).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(Denial::invalid(
            "metadata.annotations",
            format!(
                "the {PREFIX} annotations hold {total} bytes together, more than \
                 {MAX_TOTAL_BYTES}"
            ),
        ));
    }
    let mut a = Annotations::default();
    for (name, raw) in ours {
        let Some(key) = Key::ALL.into_iter().find(|k| k.name() == name) else {
            let full = format!("{PREFIX}{name}");
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                return Err(Denial::invalid(
                    full,
                    format!("is an ESE annotation this webhook does not support: {why}"),
                ));
            }
            let known: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
            return Err(Denial::invalid(
                full,
                format!("unknown annotation (known: {})", known.join(", ")),
            ));
        };
        let value = text(key, raw)?;
        if let Some(max) = key.max_items() {
            let n = split_list(Some(&value)).len();
            if n > max {
                return Err(Denial::invalid(
                    key.full(),
                    format!("names {n} items, more than {max}"),
                ));
            }
        }
        let set = |slot: &mut Option<String>| *slot = Some(value.clone());
        match key {
            Key::ExternalSecret => set(&mut a.external_secret),
            Key::FederatedServerUrl => set(&mut a.server_url),
            Key::FederatedGenerators => set(&mut a.generators),
            Key::FederatedStore => set(&mut a.store),
            Key::FederatedToken => set(&mut a.token),
            Key::FederatedX509Svid => set(&mut a.x509_svid),
            Key::FederatedX509SvidKey => set(&mut a.x509_svid_key),
            Key::FederatedCaCrt => set(&mut a.ca_crt),
            Key::DaemonRefreshInterval => set(&mut a.refresh),
            Key::InjectOnEnv => set(&mut a.inject_on_env),
            Key::InjectOnFile => set(&mut a.inject_on_file),
            Key::FederatedAuth => {
                match value.as_str() {
                    "kubernetes" => {}
                    "spiffe" => a.spiffe = true,
                    other => {
                        let why = match other {
                            "okta" | "pingidentity" => SA_TOKEN_ONLY,
                            _ => {
                                "must be kubernetes (the Pod's ServiceAccount token) or spiffe \
                                 (SVID files in the Pod)"
                            }
                        };
                        return Err(Denial::invalid(key.full(), format!("{value:?}: {why}")));
                    }
                }
                a.auth = true;
            }
            Key::EnvVars => a.env_vars = boolean(key, &value)?,
            Key::FileSecrets => a.file_secrets = boolean(key, &value)?,
            Key::Injected => a.injected = boolean(key, &value)?,
            Key::Skip => {}
            Key::Containers => {
                for name in split_list(Some(&value)) {
                    if !is_dns_label(name) {
                        return Err(Denial::invalid(
                            key.full(),
                            format!("{name:?} is not a container name (a DNS-1123 label)"),
                        ));
                    }
                    if !a.containers.iter().any(|n| n == name) {
                        a.containers.push(name.to_string());
                    }
                }
            }
            Key::ImagePullSecrets => {
                for name in split_list(Some(&value)) {
                    if !is_dns_subdomain(name) {
                        return Err(Denial::invalid(
                            key.full(),
                            format!("{name:?} is not a Secret name (a DNS-1123 subdomain)"),
                        ));
                    }
                    if !a.image_pull_secrets.iter().any(|n| n == name) {
                        a.image_pull_secrets.push(name.to_string());
                    }
                }
            }
        }
    }
    Ok(Parsed::Request(Box::new(a)))
}

/// A value, trimmed: not empty, not oversized, no control characters.
fn text(key: Key, raw: &str) -> Result<String, Denial> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(Denial::invalid(
            key.full(),
            format!("is longer than {MAX_VALUE_BYTES} bytes"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(Denial::invalid(
            key.full(),
            "holds a control character (a newline?)",
        ));
    }
    let v = raw.trim();
    if v.is_empty() {
        return Err(Denial::invalid(key.full(), "is empty"));
    }
    Ok(v.to_string())
}

fn boolean(key: Key, value: &str) -> Result<bool, Denial> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Denial::invalid(
            key.full(),
            format!("{value:?} must be \"true\" or \"false\""),
        )),
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a container's name.
pub fn is_dns_label(s: &str) -> bool {
    crate::support::text::is_dns_label(s)
}

/// A DNS-1123 subdomain: what Kubernetes accepts as a Secret's name.
pub fn is_dns_subdomain(s: &str) -> bool {
    crate::support::text::is_dns_subdomain(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .chain([("other.example.com/x".to_string(), "y".to_string())])
            .collect()
    }

    fn parsed(pairs: &[(&str, &str)]) -> Result<Parsed, Denial> {
        parse(Some(&annotations(pairs)))
    }

    #[test]
    fn pods_without_ours_or_skipped_are_left_alone() {
        assert_eq!(parse(None), Ok(Parsed::NotOurs));
        assert_eq!(parsed(&[]), Ok(Parsed::NotOurs));
        assert_eq!(parsed(&[("skip", "false")]), Ok(Parsed::NotOurs));
        // Skipped even with annotations that would be denied.
        assert_eq!(
            parsed(&[("skip", "TRUE"), ("bogus", "1"), ("env-vars", "maybe")]),
            Ok(Parsed::Skipped)
        );
    }

    #[test]
    fn values_are_read_trimmed_and_lists_deduplicated() {
        let Ok(Parsed::Request(a)) = parsed(&[
            ("externalsecret", " db, api "),
            ("env-vars", "true"),
            ("file-secrets", "False"),
            ("federated-auth", "kubernetes"),
            ("federated-server-url", "https://esi.example.com"),
            ("image-pull-secrets", "regcred, other,regcred"),
            ("skip", "false"),
        ]) else {
            panic!()
        };
        assert_eq!(a.external_secret.as_deref(), Some("db, api"));
        assert_eq!(a.external_secret_names(), vec!["db", "api"]);
        assert!(a.env_vars && !a.file_secrets && a.auth && !a.injected);
        assert_eq!(a.image_pull_secrets, vec!["regcred", "other"]);
        let Ok(Parsed::Request(a)) = parsed(&[("containers", "app, worker,app")]) else {
            panic!()
        };
        assert_eq!(a.containers, vec!["app", "worker"]);
    }

    #[test]
    fn each_refusal_names_the_annotation() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                &[("bogus", "1")],
                "bogus",
                "unknown annotation (known: externalsecret,",
            ),
            (&[("okta-domain", "x")], "okta-domain", "does not support"),
            (&[("secretstore", "x")], "secretstore", "federated-store"),
            (
                &[("env-vars", "yes")],
                "env-vars",
                "must be \"true\" or \"false\"",
            ),
            (
                &[("env-vars", "true"), ("externalsecret", " ")],
                "externalsecret",
                "is empty",
            ),
            (
                &[("inject-on-env", "A=b\nB=c")],
                "inject-on-env",
                "control character",
            ),
            (
                &[("federated-auth", "okta")],
                "federated-auth",
                "not with Okta",
            ),
            (
                &[("federated-auth", "oidc")],
                "federated-auth",
                "must be kubernetes (the Pod's ServiceAccount token) or spiffe",
            ),
            (
                &[("federated-socket-path", "/run/spire/sockets/agent.sock")],
                "federated-socket-path",
                "run spiffe-helper on that socket",
            ),
            (
                &[("federated-server-spiffe-id", "spiffe://example.org/esi")],
                "federated-server-spiffe-id",
                "by its DNS name",
            ),
            (
                &[("image-pull-secrets", "Reg_Cred")],
                "image-pull-secrets",
                "not a Secret name",
            ),
            (&[("skip", "sometimes")], "skip", "must be"),
            (
                &[("containers", "app,Worker")],
                "containers",
                "not a container name",
            ),
        ];
        for (pairs, field, needle) in cases {
            let d = parsed(pairs).unwrap_err();
            assert_eq!(d.code, 400);
            assert_eq!(d.field, format!("{PREFIX}{field}"), "{d}");
            assert!(d.message.contains(needle), "{d}");
        }
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let d = parsed(&[("externalsecret", &long)]).unwrap_err();
        assert!(d.message.contains("longer than"), "{d}");
    }

    /// Review finding 1: lists and the annotations as a whole are bounded.
    #[test]
    fn lists_and_the_total_size_are_bounded() {
        let files: Vec<String> = (0..33).map(|i| format!("/s/f{i}=db.k")).collect();
        let d = parsed(&[("inject-on-file", &files.join(","))]).unwrap_err();
        assert_eq!(d.field, Key::InjectOnFile.full());
        assert!(d.message.contains("names 33 items, more than 32"), "{d}");
        let env: Vec<String> = (0..129).map(|i| format!("V{i}=db.k")).collect();
        let d = parsed(&[("inject-on-env", &env.join(","))]).unwrap_err();
        assert!(d.message.contains("more than 128"), "{d}");
        // At the bounds: fine.
        let Ok(Parsed::Request(_)) = parsed(&[("inject-on-file", &files[..32].join(","))]) else {
            panic!()
        };
        let big = "x".repeat(MAX_VALUE_BYTES);
        let d = parsed(&[
            ("externalsecret", &big),
            ("federated-store", &big),
            ("federated-server-url", &big),
            ("federated-token", &big),
            ("federated-ca-crt", "y"),
        ])
        .unwrap_err();
        assert_eq!(d.field, "metadata.annotations");
        assert!(d.message.contains("more than 32768"), "{d}");
    }

    #[test]
    fn dns_subdomains() {
        assert!(is_dns_subdomain("regcred"));
        assert!(is_dns_subdomain("a.b-c.d1"));
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
