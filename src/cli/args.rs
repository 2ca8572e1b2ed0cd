//! The ESE `esi-cli` flags (CONTRACT.md, "esi-cli") and their validation into a [`Plan`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::duration::parse_duration;
use crate::template::{Engine, TemplateSettings};

/// Where a projected ServiceAccount token lives in a Pod.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the cluster CA lives in a Pod.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Fetch once, then exec the application with the secrets.
    Init,
    /// Keep `--inject-on-file` files current until SIGTERM.
    Daemon,
}

/// The command line, exactly the flags existing ESE Pod specs carry.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "esi-cli",
    version,
    about = "Fetches secrets from an ESI Federation Server (or the local cluster) and injects them",
    after_help = "`esi-cli install --to=PATH` copies this binary to PATH (mode 0555) and exits: \
                  the injection webhook's init container does this (docs/webhook.md)."
)]
pub struct Args {
    /// init: fetch, then exec --binary-path; daemon: keep --inject-on-file files current.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Secrets whose keys all become environment variables (local mode: ExternalSecret names).
    #[arg(long, value_delimiter = ',')]
    pub external_secrets: Vec<String>,
    /// `ENV=secret.key` (one key each), or `*` for every key of every named secret.
    #[arg(long, value_delimiter = ',')]
    pub inject_on_env: Vec<String>,
    /// `/path=secret.key` (one key), `/path=secret` (the whole secret as YAML), or
    /// `/path=@/template/file` (a Go template over the secrets it names: docs/templates.md).
    #[arg(long, value_delimiter = ',')]
    pub inject_on_file: Vec<String>,
    /// Init mode: the program to exec with the secrets.
    #[arg(long)]
    pub binary_path: Option<PathBuf>,
    /// Init mode: its arguments, comma separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Daemon mode: how often to re-fetch (Go duration: 30s, 2m, 1h30m).
    #[arg(long, default_value = "2m")]
    pub daemon_refresh_interval: String,
    /// Local mode: the namespace of the ExternalSecrets (default: the Pod's namespace).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The Federation Server (https). Without it, secrets come from the local cluster.
    #[arg(long)]
    pub federated_server_url: Option<String>,
    /// The ClusterSecretStore on the Federation Server that names remote secrets.
    #[arg(long)]
    pub federated_store: Option<String>,
    /// Generators on the Federation Server, `NAMESPACE/KIND/NAME`, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub federated_generators: Vec<String>,
    /// How esi-cli proves who it is (ESE's `federated-auth`): `kubernetes` (the Pod's
    /// ServiceAccount token), `oidc` (a token of an OIDC issuer the server federates with,
    /// such as a CI system's job token, from --federated-token or --federated-token-env) or
    /// `spiffe` (a SPIFFE X.509-SVID from --federated-x509-svid and --federated-x509-svid-key
    /// as the TLS client certificate, or a JWT-SVID from --federated-token; files as
    /// spiffe-helper writes them).
    #[arg(long, default_value = "kubernetes")]
    pub federated_auth: String,
    /// The token file, read afresh for every request (default: the Pod's ServiceAccount
    /// token; with --federated-auth=oidc, required unless --federated-token-env is given;
    /// with --federated-auth=spiffe, a JWT-SVID file such as spiffe-helper's
    /// `jwt_svid.token`).
    #[arg(long, visible_alias = "token-file")]
    pub federated_token: Option<PathBuf>,
    /// With --federated-auth=spiffe: the X.509-SVID certificate chain (PEM, leaf first;
    /// spiffe-helper's `svid.pem`), presented as the TLS client certificate instead of a
    /// bearer token. Read afresh for every request (spiffe-helper rotates it in place).
    #[arg(long)]
    pub federated_x509_svid: Option<PathBuf>,
    /// With --federated-x509-svid: its private key (PEM: PKCS#8, SEC1 or PKCS#1;
    /// spiffe-helper's `svid_key.pem`).
    #[arg(long)]
    pub federated_x509_svid_key: Option<PathBuf>,
    /// ESE's SPIFFE Workload API socket: not supported (refused with the alternative: the
    /// files spiffe-helper writes from that socket; docs/identities.md).
    #[arg(long)]
    pub federated_socket_path: Option<String>,
    /// The environment variable holding the token (read for every request), e.g. GitLab's
    /// `id_tokens` variable: instead of --federated-token.
    #[arg(long, visible_alias = "token-env")]
    pub federated_token_env: Option<String>,
    /// The client cluster's CA (PEM): sent to the server as `ca.crt` and trusted for its TLS.
    #[arg(long)]
    pub federated_ca_crt: Option<PathBuf>,
    /// Overall time allowed for one round of fetching, retries included.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// Daemon mode: renew a generator's credential when this percentage of its lease has
    /// passed (as Vault Secrets Operator's `renewalPercent`; Vault Agent uses about 67).
    #[arg(long, default_value_t = 67, value_parser = clap::value_parser!(u8).range(10..=90))]
    pub renewal_percent: u8,
    /// Daemon mode: how long a rotated-out credential stays valid after its replacement is
    /// written, so the application can re-read the file (Go duration).
    #[arg(long, default_value = "30s")]
    pub rotation_grace: String,
    /// Daemon mode: on SIGTERM leave the credentials it holds live (default: revoke them).
    #[arg(long)]
    pub keep_credentials_on_exit: bool,
    /// Handoff of generator credentials between an init step and a daemon sidecar: init
    /// mode issues them with handles and writes the handles (never values) here; daemon
    /// mode renews the handles it finds here and revokes them when it stops.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
}

/// A flag combination or value that cannot work; reported before anything is fetched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A flag value is malformed.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong (never a secret value: flags hold names and paths).
        reason: String,
    },
}

/// Why an esi-cli command line cannot work, as esi-cli would report it at start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    /// The parser refused it (an unknown flag, a value of the wrong form, a stray word).
    #[error("{message}")]
    Syntax {
        /// The flag concerned (`--federated-token`), when the parser names one.
        flag: Option<String>,
        /// The parser's one-line message.
        message: String,
    },
    /// [`Plan::from_args`] refused a value or a combination.
    #[error(transparent)]
    Invalid(#[from] ArgsError),
}

/// Parses and validates a whole esi-cli command line (`argv[0]` first) exactly as esi-cli
/// does at start ([`Args`], then [`Plan::from_args`]), reading nothing from disk (file
/// templates are not loaded). The injection webhook checks the command lines it writes
/// with this, so that a Pod it admits never fails on its flags.
pub fn check_argv<I, T>(argv: I) -> Result<Plan, ArgvError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(argv).map_err(|e| {
        use clap::error::{ContextKind, ContextValue};
        let flag = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.split_whitespace().next().map(str::to_string),
            _ => None,
        };
        let rendered = e.render().to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        ArgvError::Syntax { flag, message }
    })?;
    Ok(Plan::from_args(&args)?)
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ArgsError {
    ArgsError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// A reference to a secret, or one key of it (`secret` or `secret.key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// The secret's name (remote secret, generator NAME, or ExternalSecret).
    pub secret: String,
    /// One key of it, if named.
    pub key: Option<String>,
}

/// A generator on the Federation Server.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GeneratorRef {
    /// Its namespace.
    pub namespace: String,
    /// Its kind (`Password`, `UUID`, …).
    pub kind: String,
    /// Its name: how `secret.key` references name its output.
    pub name: String,
}

/// One thing to fetch, each fetched once however often it is referenced.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretId {
    /// A remote secret of the federated store.
    Store(String),
    /// A generator's output.
    Generator(GeneratorRef),
    /// The Secret managed by an ExternalSecret of the local cluster.
    Local(String),
}

impl std::fmt::Display for SecretId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretId::Store(n) => write!(f, "secret {n:?}"),
            SecretId::Generator(g) => {
                write!(f, "generator {}/{}/{}", g.namespace, g.kind, g.name)
            }
            SecretId::Local(n) => write!(f, "ExternalSecret {n:?}"),
        }
    }
}

/// `--federated-auth`: how esi-cli proves who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FederatedAuth {
    /// The Pod's ServiceAccount token (a `KubernetesFederation`).
    Kubernetes,
    /// A token of an OIDC issuer (an `OIDCFederation` or one of its presets).
    Oidc,
    /// A SPIFFE SVID (a `SpiffeFederation`): X.509 over mTLS, or a JWT-SVID.
    Spiffe,
}

/// How the calls prove who is calling: exactly one credential per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCredential {
    /// `Authorization: Bearer` with the token read afresh for every request (a
    /// ServiceAccount token, an OIDC token, a JWT-SVID).
    Bearer(TokenSource),
    /// A SPIFFE X.509-SVID presented as the TLS client certificate, no bearer token.
    X509Svid(X509SvidFiles),
}

/// The files of an X.509-SVID, as spiffe-helper writes them (`svid.pem`, `svid_key.pem`),
/// read afresh for every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509SvidFiles {
    /// `--federated-x509-svid`: the certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// `--federated-x509-svid-key`: the leaf's private key (PEM).
    pub key: PathBuf,
    /// `--federated-token` given as well: that JWT-SVID is neither read nor sent (the
    /// X.509-SVID wins: it proves possession of its key on every connection, where a
    /// JWT-SVID is a bearer token; the server refuses a request carrying both).
    pub jwt_svid_not_sent: Option<PathBuf>,
}

/// Where the bearer token is read from, afresh for every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A file (`--federated-token`): projected tokens rotate in place.
    File(PathBuf),
    /// An environment variable (`--federated-token-env`), as CI systems hand tokens out.
    Env(String),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "file {}", p.display()),
            TokenSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Where secrets come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// A Federation Server.
    Federated {
        /// Base URL, without a trailing slash.
        url: String,
        /// `--federated-store`.
        store: Option<String>,
        /// `--federated-auth`.
        auth: FederatedAuth,
        /// `--federated-token` or `--federated-token-env` (a bearer token), or
        /// `--federated-x509-svid` (a TLS client certificate).
        credential: ClientCredential,
        /// `--federated-ca-crt`, and whether the user named it (a missing default is tolerated).
        ca_path: PathBuf,
        /// True when `--federated-ca-crt` was given explicitly.
        ca_explicit: bool,
    },
    /// ExternalSecrets of the cluster this Pod runs in.
    Local {
        /// `--namespace`, else the Pod's own.
        namespace: Option<String>,
    },
}

/// One environment variable to set from one key (or a whole raw value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvSpec {
    /// The variable name, as given.
    pub var: String,
    /// What it holds.
    pub source: SecretRef,
}

/// One file to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute path.
    pub path: PathBuf,
    /// One key, the whole secret (YAML), or a template.
    pub source: FileSource,
}

/// What a file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// `/path=secret.key` (one key) or `/path=secret` (the whole secret).
    Secret(SecretRef),
    /// `/path=@/template/file`: the template rendered over the secrets it names
    /// (docs/templates.md, "esi-cli file templates").
    Template(FileTemplate),
}

/// A file template: its path, and once [`Plan::load_templates`] ran, its text and the
/// secrets it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTemplate {
    /// The template file, as given after `@`.
    pub file: PathBuf,
    /// Filled by [`Plan::load_templates`].
    pub loaded: Option<LoadedTemplate>,
}

/// A template file read and checked at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedTemplate {
    /// The template source (at most [`crate::template::TemplateLimits::max_source_bytes`]).
    pub text: String,
    /// The secrets it reads (`.secret.key`, `index . "secret"`), each fetched once.
    pub secrets: Vec<String>,
}

impl FileSpec {
    /// The secrets this file needs (none for a template not loaded yet).
    pub fn secret_names(&self) -> Vec<&str> {
        match &self.source {
            FileSource::Secret(r) => vec![r.secret.as_str()],
            FileSource::Template(t) => t
                .loaded
                .as_ref()
                .map(|l| l.secrets.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        }
    }
}

/// Everything the command line asks for, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `--mode`.
    pub mode: Mode,
    /// Secrets whose every key becomes an env var: `--external-secrets`, and with `*`
    /// every `--federated-generators` entry too (the named secrets), in order.
    pub expand: Vec<String>,
    /// Explicit `--inject-on-env` entries (they win over expanded names).
    pub env: Vec<EnvSpec>,
    /// `--inject-on-file` entries.
    pub files: Vec<FileSpec>,
    /// `--binary-path`.
    pub binary: Option<PathBuf>,
    /// `--args`.
    pub args: Vec<String>,
    /// `--daemon-refresh-interval`.
    pub refresh: Duration,
    /// `--timeout`.
    pub timeout: Duration,
    /// Federated or local.
    pub source: SourceConfig,
    /// `--federated-generators`.
    pub generators: Vec<GeneratorRef>,
    /// `--renewal-percent` (10–90).
    pub renewal_percent: u8,
    /// `--rotation-grace`.
    pub grace: Duration,
    /// `--keep-credentials-on-exit`.
    pub keep_on_exit: bool,
    /// `--credentials-file`.
    pub credentials_file: Option<PathBuf>,
}

fn non_empty(items: &[String]) -> impl Iterator<Item = &str> {
    items.iter().map(|s| s.trim()).filter(|s| !s.is_empty())
}

impl Plan {
    /// Validates the flags. Nothing is read from disk or the network here.
    pub fn from_args(a: &Args) -> Result<Plan, ArgsError> {
        let refresh = parse_duration(&a.daemon_refresh_interval)
            .map_err(|e| invalid("daemon-refresh-interval", e.to_string()))?;
        if refresh < Duration::from_millis(100) {
            return Err(invalid("daemon-refresh-interval", "must be at least 100ms"));
        }
        let timeout = parse_duration(&a.timeout).map_err(|e| invalid("timeout", e.to_string()))?;
        let grace = parse_duration(&a.rotation_grace)
            .map_err(|e| invalid("rotation-grace", e.to_string()))?;
        let credentials_file = a
            .credentials_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be more than 0"));
        }

        let mut generators = Vec::new();
        for g in non_empty(&a.federated_generators) {
            let parts: Vec<&str> = g.split('/').collect();
            match parts.as_slice() {
                [ns, kind, name] if !ns.is_empty() && !kind.is_empty() && !name.is_empty() => {
                    let g = GeneratorRef {
                        namespace: ns.to_string(),
                        kind: kind.to_string(),
                        name: name.to_string(),
                    };
                    if generators.iter().any(|o: &GeneratorRef| o.name == g.name) {
                        return Err(invalid(
                            "federated-generators",
                            format!(
                                "two generators are named {:?}: references would be ambiguous",
                                g.name
                            ),
                        ));
                    }
                    generators.push(g);
                }
                _ => {
                    return Err(invalid(
                        "federated-generators",
                        format!("{g:?} is not NAMESPACE/KIND/NAME"),
                    ));
                }
            }
        }

        let auth = match a.federated_auth.trim() {
            "kubernetes" => FederatedAuth::Kubernetes,
            "oidc" => FederatedAuth::Oidc,
            "okta" | "pingidentity" => {
                return Err(invalid(
                    "federated-auth",
                    format!(
                        "{:?} is not supported: obtain the token from the identity provider and give it with --federated-auth=oidc (the server's OktaFederation and PingIdentityFederation verify it)",
                        a.federated_auth.trim()
                    ),
                ));
            }
            "spiffe" => FederatedAuth::Spiffe,
            other => {
                return Err(invalid(
                    "federated-auth",
                    format!("{other:?}: must be kubernetes, oidc or spiffe"),
                ));
            }
        };
        if a.federated_socket_path.is_some() {
            return Err(invalid(
                "federated-socket-path",
                "the SPIFFE Workload API is not supported: run spiffe-helper on that socket \
                 to write the SVIDs to files, and give them with --federated-auth=spiffe \
                 --federated-x509-svid=FILE --federated-x509-svid-key=FILE (or \
                 --federated-token=FILE for a JWT-SVID)",
            ));
        }
        let x509_cert = a
            .federated_x509_svid
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let x509_key = a
            .federated_x509_svid_key
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let token_file = a
            .federated_token
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let token_env = a
            .federated_token_env
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if auth != FederatedAuth::Spiffe {
            if x509_cert.is_some() {
                return Err(invalid(
                    "federated-x509-svid",
                    "is a SPIFFE X.509-SVID: only with --federated-auth=spiffe",
                ));
            }
            if x509_key.is_some() {
                return Err(invalid(
                    "federated-x509-svid-key",
                    "is a SPIFFE X.509-SVID's key: only with --federated-auth=spiffe",
                ));
            }
        }
        if auth == FederatedAuth::Spiffe && token_env.is_some() {
            return Err(invalid(
                "federated-token-env",
                "a JWT-SVID expires within minutes and spiffe-helper rewrites its file: \
                 give the file with --federated-token (with --federated-auth=spiffe)",
            ));
        }
        let x509 = match (x509_cert, x509_key) {
            (Some(cert), Some(key)) => Some(X509SvidFiles {
                cert,
                key,
                jwt_svid_not_sent: token_file.clone(),
            }),
            (Some(_), None) => {
                return Err(invalid(
                    "federated-x509-svid-key",
                    "is required with --federated-x509-svid (the certificate's private key, \
                     spiffe-helper's svid_key.pem)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "federated-x509-svid",
                    "is required with --federated-x509-svid-key (the certificate chain, \
                     spiffe-helper's svid.pem)",
                ));
            }
            (None, None) => None,
        };
        let token = match (token_file, token_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "federated-token-env",
                    "give either --federated-token or --federated-token-env, not both",
                ));
            }
            (Some(path), None) => TokenSource::File(path),
            (None, Some(name)) => {
                if name.contains('=') || name.contains('\0') {
                    return Err(invalid(
                        "federated-token-env",
                        "is the name of an environment variable",
                    ));
                }
                TokenSource::Env(name.to_owned())
            }
            (None, None) if auth == FederatedAuth::Oidc => {
                return Err(invalid(
                    "federated-auth",
                    "oidc needs the token: --federated-token=FILE or --federated-token-env=NAME",
                ));
            }
            (None, None) if auth == FederatedAuth::Spiffe && x509.is_none() => {
                return Err(invalid(
                    "federated-auth",
                    "spiffe needs an SVID: --federated-x509-svid=FILE \
                     --federated-x509-svid-key=FILE (spiffe-helper's svid.pem and \
                     svid_key.pem) or --federated-token=FILE (a JWT-SVID, spiffe-helper's \
                     jwt_svid.token)",
                ));
            }
            (None, None) => TokenSource::File(PathBuf::from(DEFAULT_TOKEN_PATH)),
        };
        let credential = match x509 {
            Some(files) => ClientCredential::X509Svid(files),
            None => ClientCredential::Bearer(token),
        };
        let source = match a.federated_server_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| invalid("federated-server-url", e.to_string()))?;
                if parsed.scheme() != "https" {
                    // The bearer token must never travel in clear text.
                    return Err(invalid("federated-server-url", "must be an https:// URL"));
                }
                SourceConfig::Federated {
                    url: url.trim_end_matches('/').to_string(),
                    store: a
                        .federated_store
                        .as_deref()
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    auth,
                    credential,
                    ca_path: a
                        .federated_ca_crt
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_PATH)),
                    ca_explicit: a.federated_ca_crt.is_some(),
                }
            }
            _ => {
                if !generators.is_empty() || a.federated_store.is_some() {
                    return Err(invalid(
                        "federated-server-url",
                        "is required with --federated-store and --federated-generators",
                    ));
                }
                if auth == FederatedAuth::Oidc {
                    return Err(invalid(
                        "federated-server-url",
                        "is required with --federated-auth=oidc (an OIDC token is for a Federation Server)",
                    ));
                }
                if auth == FederatedAuth::Spiffe {
                    return Err(invalid(
                        "federated-server-url",
                        "is required with --federated-auth=spiffe (an SVID is for a Federation Server)",
                    ));
                }
                SourceConfig::Local {
                    namespace: a.namespace.clone().filter(|n| !n.trim().is_empty()),
                }
            }
        };
        let known: Vec<String> = generators
            .iter()
            .map(|g| g.name.clone())
            .chain(non_empty(&a.external_secrets).map(str::to_string))
            .collect();

        let mut expand: Vec<String> = Vec::new();
        for n in non_empty(&a.external_secrets) {
            if !expand.iter().any(|e| e == n) {
                expand.push(n.to_string());
            }
        }
        let mut env = Vec::new();
        let mut all = false;
        for item in non_empty(&a.inject_on_env) {
            if item == "*" {
                all = true;
                continue;
            }
            let (var, r) = item.split_once('=').ok_or_else(|| {
                invalid("inject-on-env", format!("{item:?} is not ENV=secret.key"))
            })?;
            let var = var.trim();
            if var.is_empty() || var.contains('\0') {
                return Err(invalid(
                    "inject-on-env",
                    format!("{item:?}: empty variable name"),
                ));
            }
            env.push(EnvSpec {
                var: var.to_string(),
                source: parse_ref(r.trim(), &known).ok_or_else(|| {
                    invalid("inject-on-env", format!("{item:?}: no secret named"))
                })?,
            });
        }
        if all {
            for g in &generators {
                if !expand.contains(&g.name) {
                    expand.push(g.name.clone());
                }
            }
        }
        let mut files = Vec::new();
        for item in non_empty(&a.inject_on_file) {
            let (path, r) = item.split_once('=').ok_or_else(|| {
                invalid(
                    "inject-on-file",
                    format!("{item:?} is not /path=secret[.key] or /path=@template"),
                )
            })?;
            let path = PathBuf::from(path.trim());
            if !path.is_absolute() {
                return Err(invalid(
                    "inject-on-file",
                    format!("{item:?}: the path must be absolute"),
                ));
            }
            if files.iter().any(|f: &FileSpec| f.path == path) {
                return Err(invalid(
                    "inject-on-file",
                    format!("{} is named twice", path.display()),
                ));
            }
            let source = match r.trim().strip_prefix('@') {
                Some(file) => {
                    let file = file.trim();
                    if file.is_empty() || file.contains('\0') {
                        return Err(invalid(
                            "inject-on-file",
                            format!("{item:?}: no template file named after @"),
                        ));
                    }
                    FileSource::Template(FileTemplate {
                        file: PathBuf::from(file),
                        loaded: None,
                    })
                }
                None => FileSource::Secret(parse_ref(r.trim(), &known).ok_or_else(|| {
                    invalid("inject-on-file", format!("{item:?}: no secret named"))
                })?),
            };
            files.push(FileSpec { path, source });
        }

        let binary = a.binary_path.clone().filter(|p| !p.as_os_str().is_empty());
        match a.mode {
            Mode::Init => {
                if binary.is_none() && (!expand.is_empty() || !env.is_empty()) {
                    return Err(invalid(
                        "binary-path",
                        "is required to inject environment variables in init mode",
                    ));
                }
                if binary.is_none() && files.is_empty() {
                    return Err(invalid(
                        "binary-path",
                        "init mode needs a program to exec or files to write",
                    ));
                }
            }
            Mode::Daemon => {
                if files.is_empty() && credentials_file.is_none() {
                    return Err(invalid(
                        "inject-on-file",
                        "daemon mode keeps files current (or --credentials-file handles): name at least one",
                    ));
                }
            }
        }
        if credentials_file.is_some() && matches!(source, SourceConfig::Local { .. }) {
            return Err(invalid(
                "credentials-file",
                "hands off generator credentials of a Federation Server: needs --federated-server-url",
            ));
        }
        let plan = Plan {
            mode: a.mode,
            expand,
            env,
            files,
            binary,
            args: a.args.clone(),
            refresh,
            timeout,
            source,
            generators,
            renewal_percent: a.renewal_percent,
            grace,
            keep_on_exit: a.keep_credentials_on_exit,
            credentials_file,
        };
        // Every referenced secret must be fetchable from the chosen source.
        for name in plan.referenced_names() {
            plan.resolve(name)?;
        }
        Ok(plan)
    }

    fn referenced_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let refs = self
            .expand
            .iter()
            .map(String::as_str)
            .chain(self.env.iter().map(|e| e.source.secret.as_str()))
            .chain(self.files.iter().flat_map(FileSpec::secret_names));
        for n in refs {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }

    /// Reads and checks every `--inject-on-file=/path=@template` file: at most
    /// [`crate::template::TemplateLimits::max_source_bytes`], UTF-8, valid syntax, only
    /// supported functions, and secrets named (`.secret.key`, `index . "secret"`), not the
    /// whole data (`range .`), so that exactly those are fetched. Each name must be
    /// fetchable from the chosen source. Separate from [`Plan::from_args`], which reads
    /// nothing from disk; `esi-cli` calls both at start, before anything is fetched.
    pub fn load_templates(&mut self) -> Result<(), ArgsError> {
        let engine = Engine::new(TemplateSettings::default())
            .map_err(|e| invalid("inject-on-file", e.to_string()))?;
        let limit = engine.settings().limits.max_source_bytes;
        for spec in &mut self.files {
            let FileSource::Template(t) = &mut spec.source else {
                continue;
            };
            let name = t.file.display().to_string();
            let text = read_template(&t.file, limit).map_err(|reason| {
                invalid("inject-on-file", format!("template {name}: {reason}"))
            })?;
            let refs = engine
                .data_refs(&name, &text)
                .map_err(|e| invalid("inject-on-file", e.to_string()))?;
            if let Some((line, col)) = refs.whole_data_at {
                return Err(invalid(
                    "inject-on-file",
                    format!(
                        "template {name}: {line}:{col}: the template uses the data as a whole \
                         (`.` or `$`); name each secret (`.secret.key`, `index . \"secret\"`) \
                         so that esi-cli knows what to fetch"
                    ),
                ));
            }
            t.loaded = Some(LoadedTemplate {
                text,
                secrets: refs.names.into_iter().collect(),
            });
        }
        for name in self.referenced_names() {
            self.resolve(name)?;
        }
        Ok(())
    }

    /// What a secret name means for the chosen source.
    pub fn resolve(&self, name: &str) -> Result<SecretId, ArgsError> {
        match &self.source {
            SourceConfig::Local { .. } => Ok(SecretId::Local(name.to_string())),
            SourceConfig::Federated { store, .. } => {
                if let Some(g) = self.generators.iter().find(|g| g.name == name) {
                    return Ok(SecretId::Generator(g.clone()));
                }
                if store.is_none() {
                    return Err(invalid(
                        "federated-store",
                        format!(
                            "is required to fetch {name:?} (it is not one of --federated-generators)"
                        ),
                    ));
                }
                Ok(SecretId::Store(name.to_string()))
            }
        }
    }

    /// Every distinct thing to fetch for the env vars and files of this mode, in
    /// first-mention order. Daemon mode fetches only what its files need.
    pub fn secrets(&self) -> Result<Vec<SecretId>, ArgsError> {
        let mut out: Vec<SecretId> = Vec::new();
        let names: Vec<&str> = match self.mode {
            Mode::Init => self.referenced_names(),
            Mode::Daemon => {
                let mut v: Vec<&str> = Vec::new();
                for name in self.files.iter().flat_map(FileSpec::secret_names) {
                    if !v.contains(&name) {
                        v.push(name);
                    }
                }
                v
            }
        };
        for n in names {
            let id = self.resolve(n)?;
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// Reads a template file of at most `limit` bytes, as UTF-8 text. The reason holds no
/// content of the file.
fn read_template(path: &std::path::Path, limit: usize) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut buf = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() > limit {
        return Err(format!("is larger than {limit} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "is not UTF-8 text".to_string())
}

/// Splits `secret.key`. Secret names and keys may both hold dots, so a prefix that is a
/// known secret name (a generator NAME or an `--external-secrets` entry) wins, longest
/// first; otherwise the split is at the first dot, as ESE does.
pub fn parse_ref(text: &str, known: &[String]) -> Option<SecretRef> {
    if text.is_empty() {
        return None;
    }
    let best = known
        .iter()
        .filter(|k| {
            !k.is_empty()
                && (text == k.as_str()
                    || (text.starts_with(k.as_str())
                        && text.as_bytes().get(k.len()) == Some(&b'.')))
        })
        .max_by_key(|k| k.len());
    let (secret, key) = match best {
        Some(k) if text == k.as_str() => (k.as_str(), None),
        Some(k) => (k.as_str(), Some(&text[k.len() + 1..])),
        None => match text.split_once('.') {
            Some((s, k)) => (s, Some(k)),
            None => (text, None),
        },
    };
    if secret.is_empty() || key == Some("") {
        return None;
    }
    Some(SecretRef {
        secret: secret.to_string(),
        key: key.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Plan, String> {
        let mut full = vec!["esi-cli"];
        full.extend_from_slice(args);
        let a = Args::try_parse_from(full).map_err(|e| e.to_string())?;
        Plan::from_args(&a).map_err(|e| e.to_string())
    }

    const FED: &[&str] = &[
        "--federated-server-url=https://esi.example.com/",
        "--federated-store=vault-prod",
    ];

    fn fed(extra: &[&str]) -> Result<Plan, String> {
        let mut v = FED.to_vec();
        v.extend_from_slice(extra);
        parse(&v)
    }

    /// Issue 18: `--federated-auth` (ESE's annotation name) picks the token: the Pod's
    /// ServiceAccount token by default; with `oidc` a file or an environment variable must
    /// be named.
    #[test]
    fn federated_auth_and_token_sources() {
        let source = |p: Plan| match p.source {
            SourceConfig::Federated {
                auth,
                credential: ClientCredential::Bearer(token),
                ..
            } => (auth, token),
            other => panic!("{other:?}"),
        };
        let init = [
            "--mode=init",
            "--inject-on-env=X=s.k",
            "--binary-path=/bin/true",
        ];
        let p = fed(&init).unwrap();
        assert_eq!(
            source(p),
            (
                FederatedAuth::Kubernetes,
                TokenSource::File(DEFAULT_TOKEN_PATH.into())
            )
        );
        let mut args = init.to_vec();
        args.extend(["--federated-auth=oidc", "--token-env=CI_JOB_JWT"]);
        assert_eq!(
            source(fed(&args).unwrap()),
            (FederatedAuth::Oidc, TokenSource::Env("CI_JOB_JWT".into()))
        );
        let mut args = init.to_vec();
        args.extend(["--federated-auth=oidc", "--token-file=/run/ci/token"]);
        assert_eq!(
            source(fed(&args).unwrap()),
            (
                FederatedAuth::Oidc,
                TokenSource::File("/run/ci/token".into())
            )
        );
        let mut args = init.to_vec();
        args.extend(["--federated-token-env=K8S_TOKEN"]);
        assert_eq!(
            source(fed(&args).unwrap()).1,
            TokenSource::Env("K8S_TOKEN".into())
        );
        for (extra, flag, words) in [
            (
                &["--federated-auth=oidc"][..],
                "--federated-auth",
                "--federated-token-env=NAME",
            ),
            (
                &["--federated-auth=okta"][..],
                "--federated-auth",
                "--federated-auth=oidc",
            ),
            (
                &["--federated-auth=spiffe"][..],
                "--federated-auth",
                "spiffe needs an SVID",
            ),
            (
                &["--federated-auth=x509"][..],
                "--federated-auth",
                "kubernetes, oidc or spiffe",
            ),
            (
                &["--federated-token=/t", "--federated-token-env=T"][..],
                "--federated-token-env",
                "not both",
            ),
            (
                &["--federated-auth=oidc", "--federated-token-env=A=B"][..],
                "--federated-token-env",
                "name of an environment variable",
            ),
        ] {
            let mut args = init.to_vec();
            args.extend_from_slice(extra);
            let e = fed(&args).unwrap_err();
            assert!(e.starts_with(flag) && e.contains(words), "{extra:?}: {e}");
        }
        // An OIDC token is for a Federation Server.
        let e = parse(&[
            "--mode=init",
            "--external-secrets=x",
            "--federated-auth=oidc",
            "--federated-token-env=T",
        ])
        .unwrap_err();
        assert!(e.contains("--federated-server-url"), "{e}");
    }

    /// Issue 18: `--federated-auth=spiffe` takes an X.509-SVID (the TLS client certificate)
    /// or a JWT-SVID file (the bearer token); the X.509-SVID wins when both are given; the
    /// Workload API socket, a JWT-SVID from a variable, half an X.509-SVID, SVID files
    /// without spiffe, and spiffe without a server are refused naming the flag and the fix.
    #[test]
    fn spiffe_svids_from_files() {
        let credential = |p: Plan| match p.source {
            SourceConfig::Federated {
                auth: FederatedAuth::Spiffe,
                credential,
                ..
            } => credential,
            other => panic!("{other:?}"),
        };
        let init = [
            "--mode=init",
            "--inject-on-env=X=s.k",
            "--binary-path=/bin/true",
            "--federated-auth=spiffe",
        ];
        let with = |extra: &[&str]| {
            let mut args = init.to_vec();
            args.extend_from_slice(extra);
            fed(&args)
        };
        assert_eq!(
            credential(with(&["--federated-token=/run/spiffe/jwt_svid.token"]).unwrap()),
            ClientCredential::Bearer(TokenSource::File("/run/spiffe/jwt_svid.token".into()))
        );
        let x509 = [
            "--federated-x509-svid=/run/spiffe/svid.pem",
            "--federated-x509-svid-key=/run/spiffe/svid_key.pem",
        ];
        assert_eq!(
            credential(with(&x509).unwrap()),
            ClientCredential::X509Svid(X509SvidFiles {
                cert: "/run/spiffe/svid.pem".into(),
                key: "/run/spiffe/svid_key.pem".into(),
                jwt_svid_not_sent: None,
            })
        );
        // Both: the X.509-SVID is used; the JWT-SVID is recorded as not sent.
        let mut both = x509.to_vec();
        both.push("--federated-token=/run/spiffe/jwt_svid.token");
        match credential(with(&both).unwrap()) {
            ClientCredential::X509Svid(f) => assert_eq!(
                f.jwt_svid_not_sent,
                Some(PathBuf::from("/run/spiffe/jwt_svid.token"))
            ),
            other => panic!("{other:?}"),
        }
        for (extra, flag, words) in [
            (&[][..], "--federated-auth", "--federated-x509-svid=FILE"),
            (
                &["--federated-x509-svid=/s.pem"][..],
                "--federated-x509-svid-key",
                "svid_key.pem",
            ),
            (
                &["--federated-x509-svid-key=/k.pem"][..],
                "--federated-x509-svid:",
                "svid.pem",
            ),
            (
                &["--federated-token-env=JWT_SVID"][..],
                "--federated-token-env",
                "--federated-token",
            ),
            (
                &["--federated-socket-path=/run/spire/agent.sock"][..],
                "--federated-socket-path",
                "spiffe-helper",
            ),
        ] {
            let e = with(extra).unwrap_err();
            assert!(e.starts_with(flag) && e.contains(words), "{extra:?}: {e}");
        }
        // SVID files are for spiffe only.
        let kube = [
            "--mode=init",
            "--inject-on-env=X=s.k",
            "--binary-path=/bin/true",
        ];
        for (extra, flag) in [
            ("--federated-x509-svid=/s.pem", "--federated-x509-svid:"),
            (
                "--federated-x509-svid-key=/k.pem",
                "--federated-x509-svid-key",
            ),
        ] {
            let mut args = kube.to_vec();
            args.push(extra);
            let e = fed(&args).unwrap_err();
            assert!(
                e.starts_with(flag) && e.contains("only with --federated-auth=spiffe"),
                "{e}"
            );
        }
        // The socket is refused whatever the mode (it would otherwise be ignored).
        let e = parse(&[
            "--mode=init",
            "--external-secrets=x",
            "--binary-path=/bin/true",
            "--federated-socket-path=/run/spire/agent.sock",
        ])
        .unwrap_err();
        assert!(e.starts_with("--federated-socket-path"), "{e}");
        // An SVID is for a Federation Server.
        let e = parse(&[
            "--mode=init",
            "--external-secrets=x",
            "--binary-path=/bin/true",
            "--federated-auth=spiffe",
            "--federated-token=/t",
        ])
        .unwrap_err();
        assert!(e.contains("--federated-server-url"), "{e}");
    }

    #[test]
    fn ese_pod_spec_flags() {
        let p = fed(&[
            "--mode=init",
            "--external-secrets=db-credentials,api-keys/service-a",
            "--inject-on-env=DB_PASS=db-credentials.password,TOKEN=api-keys/service-a",
            "--inject-on-file=/etc/app/db.yaml=db-credentials,/etc/app/pw=db-credentials.password",
            "--binary-path=/bin/prometheus",
            "--args=--config.file=/etc/prometheus.yml,--web.listen-address=:9090",
            "--federated-generators=monitoring/Password/pw",
            "--federated-token=/tmp/t",
            "--federated-ca-crt=/tmp/ca",
        ])
        .unwrap();
        assert_eq!(p.mode, Mode::Init);
        assert_eq!(p.expand, vec!["db-credentials", "api-keys/service-a"]);
        assert_eq!(p.env[0].var, "DB_PASS");
        assert_eq!(
            p.env[0].source,
            SecretRef {
                secret: "db-credentials".into(),
                key: Some("password".into())
            }
        );
        assert_eq!(p.env[1].source.key, None);
        assert!(matches!(&p.files[0].source, FileSource::Secret(r) if r.key.is_none()));
        assert_eq!(p.files[1].path, PathBuf::from("/etc/app/pw"));
        assert_eq!(
            p.args,
            vec![
                "--config.file=/etc/prometheus.yml",
                "--web.listen-address=:9090"
            ]
        );
        assert_eq!(p.refresh, Duration::from_secs(120));
        assert_eq!(p.timeout, Duration::from_secs(30));
        match &p.source {
            SourceConfig::Federated {
                url,
                store,
                ca_explicit,
                ..
            } => {
                assert_eq!(url, "https://esi.example.com");
                assert_eq!(store.as_deref(), Some("vault-prod"));
                assert!(ca_explicit);
            }
            other => panic!("{other:?}"),
        }
        let ids = p.secrets().unwrap();
        assert_eq!(
            ids,
            vec![
                SecretId::Store("db-credentials".into()),
                SecretId::Store("api-keys/service-a".into()),
            ]
        );
    }

    #[test]
    fn star_expands_generators_and_named_secrets() {
        let p = fed(&[
            "--mode=init",
            "--binary-path=/bin/true",
            "--inject-on-env=*,X=other.k",
            "--federated-generators=ns/Password/pw,ns/UUID/id",
        ])
        .unwrap();
        assert_eq!(p.expand, vec!["pw", "id"]);
        let ids = p.secrets().unwrap();
        assert_eq!(ids.len(), 3);
        assert!(matches!(&ids[0], SecretId::Generator(g) if g.kind == "Password"));
        assert_eq!(ids[2], SecretId::Store("other".into()));
    }

    #[test]
    fn generator_only_needs_no_store() {
        let p = parse(&[
            "--federated-server-url=https://x",
            "--mode=init",
            "--binary-path=/bin/env",
            "--inject-on-env=PW=pw.password",
            "--federated-generators=ns/Password/pw",
        ])
        .unwrap();
        assert!(matches!(&p.secrets().unwrap()[0], SecretId::Generator(_)));
        let err = parse(&[
            "--federated-server-url=https://x",
            "--mode=init",
            "--binary-path=/bin/env",
            "--inject-on-env=PW=db.password",
        ])
        .unwrap_err();
        assert!(err.contains("--federated-store"), "{err}");
    }

    #[test]
    fn local_mode() {
        let p = parse(&[
            "--mode=daemon",
            "--namespace=apps",
            "--inject-on-file=/s/db=db-es.password",
            "--daemon-refresh-interval=1h30m",
        ])
        .unwrap();
        assert_eq!(
            p.source,
            SourceConfig::Local {
                namespace: Some("apps".into())
            }
        );
        assert_eq!(p.refresh, Duration::from_secs(5400));
        assert_eq!(p.secrets().unwrap(), vec![SecretId::Local("db-es".into())]);
    }

    #[test]
    fn refusals() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "--mode=init",
                    "--binary-path=/x",
                    "--inject-on-env=NOEQUALS",
                ],
                "inject-on-env",
            ),
            (
                &["--mode=init", "--binary-path=/x", "--inject-on-env==a.b"],
                "empty variable",
            ),
            (
                &["--mode=init", "--inject-on-file=rel/path=a.b"],
                "absolute",
            ),
            (&["--mode=init", "--inject-on-file=/a=x,/a=y"], "twice"),
            (&["--mode=init", "--external-secrets=a"], "binary-path"),
            (&["--mode=init"], "binary-path"),
            (&["--mode=daemon", "--external-secrets=a"], "daemon mode"),
            (
                &[
                    "--mode=daemon",
                    "--inject-on-file=/a=b",
                    "--daemon-refresh-interval=10",
                ],
                "daemon-refresh-interval",
            ),
            (
                &["--mode=daemon", "--inject-on-file=/a=b", "--timeout=0"],
                "timeout",
            ),
            (
                &[
                    "--mode=init",
                    "--binary-path=/x",
                    "--federated-generators=a/b",
                ],
                "NAMESPACE/KIND/NAME",
            ),
            (
                &[
                    "--mode=init",
                    "--binary-path=/x",
                    "--federated-generators=a/b/c,d/e/c",
                ],
                "ambiguous",
            ),
            (
                &[
                    "--mode=init",
                    "--binary-path=/x",
                    "--federated-server-url=http://plain",
                    "--federated-store=s",
                ],
                "https",
            ),
            (&["--mode=bogus"], "invalid value"),
        ];
        for (args, needle) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        // Generators need a server.
        let err = parse(&[
            "--mode=init",
            "--binary-path=/x",
            "--federated-generators=a/b/c",
        ])
        .unwrap_err();
        assert!(err.contains("federated-server-url"), "{err}");
    }

    #[test]
    fn whole_command_lines_are_checked_as_esi_cli_does() {
        let p = check_argv([
            "esi-cli",
            "--mode=init",
            "--binary-path=/bin/app",
            "--args=-c,echo $(X)",
            "--external-secrets=db",
        ])
        .unwrap();
        assert_eq!(p.args, vec!["-c", "echo $(X)"]);
        assert_eq!(p.expand, vec!["db"]);
        match check_argv(["esi-cli", "--mode=init", "--bogus=1"]).unwrap_err() {
            ArgvError::Syntax { flag, message } => {
                assert_eq!(flag.as_deref(), Some("--bogus"), "{message}");
                assert!(message.contains("unexpected argument"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match check_argv(["esi-cli", "--mode=init", "--federated-token="]).unwrap_err() {
            ArgvError::Syntax { flag, .. } => {
                assert_eq!(flag.as_deref(), Some("--federated-token"))
            }
            other => panic!("{other:?}"),
        }
        let e = check_argv(["esi-cli", "--mode=init", "--inject-on-env=X"]).unwrap_err();
        assert!(
            matches!(
                &e,
                ArgvError::Invalid(ArgsError::Invalid {
                    flag: "inject-on-env",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn refs_with_dots() {
        let known = vec!["app.config".to_string(), "app".to_string()];
        let r = parse_ref("app.config.tls.crt", &known).unwrap();
        assert_eq!(
            (r.secret.as_str(), r.key.as_deref()),
            ("app.config", Some("tls.crt"))
        );
        let r = parse_ref("app.user", &known).unwrap();
        assert_eq!((r.secret.as_str(), r.key.as_deref()), ("app", Some("user")));
        let r = parse_ref("app.config", &known).unwrap();
        assert_eq!((r.secret.as_str(), r.key.as_deref()), ("app.config", None));
        let r = parse_ref("db.tls.crt", &[]).unwrap();
        assert_eq!(
            (r.secret.as_str(), r.key.as_deref()),
            ("db", Some("tls.crt"))
        );
        let r = parse_ref("api-keys/service-a", &[]).unwrap();
        assert_eq!((r.secret.as_str(), r.key), ("api-keys/service-a", None));
        assert!(parse_ref("", &[]).is_none());
        assert!(parse_ref("db.", &[]).is_none());
        assert!(parse_ref(".k", &[]).is_none());
    }

    #[test]
    fn daemon_fetches_only_what_files_need() {
        let p = fed(&[
            "--mode=daemon",
            "--external-secrets=envonly",
            "--inject-on-file=/f=filed.k",
        ])
        .unwrap();
        assert_eq!(p.secrets().unwrap(), vec![SecretId::Store("filed".into())]);
    }

    fn write_tmp(dir: &std::path::Path, name: &str, text: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    #[test]
    fn file_templates_are_parsed_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_tmp(
            dir.path(),
            "good.tmpl",
            br#"user={{ .db.user }} key={{ index . "api/keys" "k" }} pw={{ .pw.password }}"#,
        );
        let flag = format!("--inject-on-file=/etc/app/c.yaml=@{good}");
        let mut p = fed(&[
            "--mode=init",
            &flag,
            "--federated-generators=ns/Password/pw",
        ])
        .unwrap();
        // Flag parsing reads nothing: the template is not loaded yet.
        match &p.files[0].source {
            FileSource::Template(t) => {
                assert_eq!(t.file, PathBuf::from(&good));
                assert!(t.loaded.is_none());
            }
            other => panic!("{other:?}"),
        }
        p.load_templates().unwrap();
        let FileSource::Template(t) = &p.files[0].source else {
            panic!()
        };
        assert_eq!(
            t.loaded.as_ref().unwrap().secrets,
            vec!["api/keys", "db", "pw"]
        );
        assert_eq!(
            p.secrets().unwrap(),
            vec![
                SecretId::Store("api/keys".into()),
                SecretId::Store("db".into()),
                SecretId::Generator(GeneratorRef {
                    namespace: "ns".into(),
                    kind: "Password".into(),
                    name: "pw".into()
                }),
            ]
        );
    }

    #[test]
    fn broken_file_templates_fail_at_load_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, text: &[u8]| -> String {
            let path = write_tmp(dir.path(), name, text);
            let flag = format!("--inject-on-file=/etc/app/c=@{path}");
            let mut p = fed(&["--mode=init", &flag]).unwrap();
            p.load_templates().unwrap_err().to_string()
        };
        let e = load("now.tmpl", b"{{ if false }}{{ now }}{{ end }}");
        assert!(
            e.contains("now.tmpl: 1:18: function \"now\" is not supported"),
            "{e}"
        );
        let e = load("syntax.tmpl", b"a\n{{ if .x }}");
        assert!(e.contains("syntax.tmpl: 2:1: unexpected EOF"), "{e}");
        let e = load("whole.tmpl", b"{{ range $k, $v := . }}{{ end }}");
        assert!(e.contains("uses the data as a whole"), "{e}");
        let e = load("big.tmpl", &vec![b'x'; 64 * 1024 + 1]);
        assert!(e.contains("big.tmpl: is larger than 65536 bytes"), "{e}");
        let e = load("bin.tmpl", &[0xff, 0xfe]);
        assert!(e.contains("bin.tmpl: is not UTF-8 text"), "{e}");
        let flag = "--inject-on-file=/etc/app/c=@/nonexistent/x.tmpl";
        let e = fed(&["--mode=init", flag])
            .unwrap()
            .load_templates()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("template /nonexistent/x.tmpl: cannot read"),
            "{e}"
        );
        let e = fed(&["--mode=init", "--inject-on-file=/etc/app/c=@"]).unwrap_err();
        assert!(e.contains("no template file named after @"), "{e}");
        // A secret the template names must be fetchable: without a store it is not.
        let path = write_tmp(dir.path(), "store.tmpl", b"{{ .db.user }}");
        let flag = format!("--inject-on-file=/etc/app/c=@{path}");
        let mut p = parse(&[
            "--mode=init",
            "--federated-server-url=https://esi.example.com",
            "--federated-generators=ns/Password/pw",
            &flag,
        ])
        .unwrap();
        let e = p.load_templates().unwrap_err().to_string();
        assert!(
            e.contains("--federated-store") && e.contains("\"db\""),
            "{e}"
        );
    }
}
