//! `esi-server`: the ESI Federation Server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use esi::api;
use esi::authn::AuthnSettings;
use esi::config::DirectorySource;
use esi::providers::ProviderSettings;

#[derive(Parser)]
#[command(name = "esi-server", version, about = "ESI Federation Server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the federation API over HTTPS from a directory of manifests.
    Serve(Box<ServeArgs>),
    /// Load a directory of manifests and policies, report every problem, and exit
    /// non-zero if there is any load error (`policy validate` is stricter: it also fails
    /// on references to objects that do not exist, and shows file and line).
    Check(SourceArgs),
    /// See the policies before they reach production: compile, validate, explain, test,
    /// lint, diff, report. Every subcommand reads `--manifests`/`--policies` as `serve`
    /// does. See docs/policies.md.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// DEVELOPMENT ONLY: mint a ServiceAccount-like JWT signed with a local key
    /// (e.g. examples/quickstart/dev-signing-key.pem) for trying the server out.
    DevToken(DevTokenArgs),
    /// Turn ExternalSecrets into Secrets. Directory mode: `--manifests DIR --output OUT`
    /// writes each Secret (and each ExternalSecret's status) as YAML under OUT, rewriting
    /// only what changed; exits non-zero if any ExternalSecret failed (after writing every
    /// other one). See docs/reconciler.md.
    Reconcile(ReconcileArgs),
    /// Print the CustomResourceDefinitions of our kinds (Authorization, KubernetesFederation,
    /// AuthorizedIdentity) as multi-document YAML, for `kubectl apply -f -`.
    Crds,
    /// The Pod-injection webhook: a mutating admission webhook (HTTPS, `POST /mutate`)
    /// that adds esi-cli to Pods with ESE's `secretless.externalsecrets.com/` annotations.
    /// See docs/webhook.md.
    Webhook(Box<WebhookCmd>),
}

#[derive(Args)]
struct WebhookCmd {
    #[command(flatten)]
    args: esi::webhook::WebhookArgs,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "ESI_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Args, Clone)]
struct SourceArgs {
    /// Directory of manifests (recursive, multi-document YAML/JSON).
    #[arg(long, env = "ESI_MANIFESTS")]
    manifests: PathBuf,
    /// Directory of `.cedar` policy files loaded beside the compiled Authorizations.
    #[arg(long, env = "ESI_POLICIES")]
    policies: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print every policy in force as Cedar text: the policies compiled from the
    /// Authorizations, then the `.cedar` files', each with `@id("…")` holding the id
    /// decisions and the audit log report.
    Compile {
        #[command(flatten)]
        source: SourceArgs,
        /// JSON: id, source, effect and text of each policy.
        #[arg(long)]
        json: bool,
    },
    /// Check every Authorization and `.cedar` file (against schemas/esi.cedarschema) and
    /// every reference to a federation, store or generator; print each problem with its
    /// file and line; exit 1 if there is any error. For CI and pre-commit hooks.
    Validate {
        #[command(flatten)]
        source: SourceArgs,
        /// JSON: the problems (severity, file, line, column, message) and counts.
        #[arg(long)]
        json: bool,
    },
    /// Decide one request as the server would, and show the policies that determined it
    /// (their ids are those of the server's decision log for the same request).
    Explain(Box<ExplainArgs>),
    /// Run the YAML cases of DIR (principal, action, resource, expected decision and,
    /// optionally, policy ids) against the policies in force; exit 1 if any fails.
    Test {
        #[command(flatten)]
        source: SourceArgs,
        /// Directory of case files (`*.yaml`, `*.yml`; not recursive).
        dir: PathBuf,
    },
    /// Find what the policies grant that is probably not meant (a subject glob matching
    /// every ServiceAccount, a store others restrict granted whole, permits a forbid
    /// shadows) and what they cannot grant (unused federations, stores no one may read).
    /// Exit 1 on errors (what `validate` reports), or on warnings with --deny-warnings.
    Lint {
        #[command(flatten)]
        source: SourceArgs,
        /// JSON: the findings (rule, severity, file, span, object, message) and counts.
        #[arg(long)]
        json: bool,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// Most requests evaluated (the evaluated rules say when more were left out).
        #[arg(long, default_value_t = esi::policy::requests::DEFAULT_MAX_REQUESTS)]
        max_requests: usize,
    },
    /// Which principals gain or lose which access between an old tree and the new one,
    /// each request decided by each tree's engine. Exit 0, or with --exit-code: 0 no
    /// change, 1 changes; 2 when the trees could not be compared (or, with --exit-code,
    /// not completely).
    Diff(Box<DiffArgs>),
    /// Write one self-contained HTML page: the access matrix (principals × stores and
    /// generators), forbids highlighted, each cell linking to the policies that decide it;
    /// with an old tree, what was gained and lost, coloured.
    Report(Box<ReportArgs>),
}

/// The new tree and where the old one comes from (`diff`, `report`).
#[derive(Args)]
struct CompareArgs {
    /// The new tree (with --git: the directories, as paths in the working tree).
    #[command(flatten)]
    source: SourceArgs,
    /// The old tree's manifest directory.
    #[arg(long, conflicts_with = "git")]
    old_manifests: Option<PathBuf>,
    /// The old tree's `.cedar` directory.
    #[arg(long, requires = "old_manifests")]
    old_policies: Option<PathBuf>,
    /// `A..B`: the --manifests and --policies directories as they are at revisions A (old)
    /// and B (new; `A..` means `A..HEAD`); `A`: at A, against the working tree.
    #[arg(long, value_name = "A..B")]
    git: Option<String>,
    /// Most requests evaluated per tree (the output says when more were left out).
    #[arg(long, default_value_t = esi::policy::requests::DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
}

impl CompareArgs {
    fn baseline(&self) -> esi::policy::Baseline {
        use esi::policy::{Baseline, Sources};
        match (&self.git, &self.old_manifests) {
            (Some(range), _) => Baseline::Git(range.clone()),
            (None, Some(m)) => Baseline::Dirs(Sources {
                manifests: m.clone(),
                policies: self.old_policies.clone(),
            }),
            (None, None) => Baseline::None,
        }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("old").required(true).args(["old_manifests", "git"])))]
struct DiffArgs {
    #[command(flatten)]
    compare: CompareArgs,
    /// JSON: summary and every change with both answers and their policies.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Markdown, for a pull-request comment.
    #[arg(long)]
    markdown: bool,
    /// Exit 1 when access changed (as `git diff --exit-code`), 2 when not every request
    /// could be compared.
    #[arg(long)]
    exit_code: bool,
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    compare: CompareArgs,
    /// Where to write the page.
    #[arg(long, value_name = "OUT")]
    html: PathBuf,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["principal", "token"])))]
#[command(group(clap::ArgGroup::new("what").required(true).args(["store", "find", "generator", "revoke_states"])))]
struct ExplainArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The caller: FEDERATION/NAMESPACE/SERVICEACCOUNT, or FEDERATION/SUBJECT for an OIDC
    /// federation (OIDCFederation, OktaFederation, PingIdentityFederation).
    #[arg(long)]
    principal: Option<String>,
    /// The caller's token (a file holding a ServiceAccount JWT): verified offline when its
    /// federation has static keys (`jwks`, `publicKeys`); otherwise its claims are read and
    /// the output says the signature was NOT verified.
    #[arg(long, conflicts_with_all = ["issuer", "uid", "pod_name", "pod_uid", "claim"])]
    token: Option<PathBuf>,
    /// With --principal: the token's issuer (default: the federation's `spec.issuer`).
    #[arg(long)]
    issuer: Option<String>,
    /// With --principal: the ServiceAccount UID (`principal.uid`).
    #[arg(long)]
    uid: Option<String>,
    /// With --principal: the pod of a pod-bound token (`principal.podName`).
    #[arg(long)]
    pod_name: Option<String>,
    /// With --principal: the pod's UID (`principal.podUid`).
    #[arg(long)]
    pod_uid: Option<String>,
    /// With --principal of an OIDC federation: a claim of its token, NAME=VALUE
    /// (`principal.claims.NAME`; repeat for more).
    #[arg(long, value_name = "NAME=VALUE")]
    claim: Vec<String>,
    /// `get` of --key on this ClusterSecretStore.
    #[arg(long, requires = "key")]
    store: Option<String>,
    /// The remote key (with --store).
    #[arg(long, requires = "store")]
    key: Option<String>,
    /// The key's property (with --store; a store may fold it into the key's canonical form).
    #[arg(long, requires = "store")]
    property: Option<String>,
    /// The key's version (with --store).
    #[arg(long, requires = "store")]
    version: Option<String>,
    /// `find` on this ClusterSecretStore.
    #[arg(long)]
    find: Option<String>,
    /// A generator: NAMESPACE/KIND/NAME (action --action, default generate).
    #[arg(long)]
    generator: Option<String>,
    /// With --generator: generate, revoke or renew.
    #[arg(long, value_enum, default_value = "generate", requires = "generator")]
    action: GeneratorAction,
    /// `revokeStates` in this namespace.
    #[arg(long)]
    revoke_states: Option<String>,
    /// `context.sourceAddress`: the caller's IP address, as the server takes it from the TCP
    /// peer (IPv4-mapped IPv6 as IPv4). Default: none (policies testing
    /// `context has sourceAddress` see none).
    #[arg(long, value_name = "IP")]
    source_address: Option<String>,
    /// `context.time`: when the request is decided, RFC 3339 (`2026-06-01T00:00:00Z`).
    /// Default: now.
    #[arg(long, value_name = "RFC3339")]
    time: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum GeneratorAction {
    Generate,
    Revoke,
    Renew,
}

#[derive(Args)]
struct ReconcileArgs {
    /// Directory of manifests (recursive): ExternalSecrets, SecretStores,
    /// ClusterSecretStores, generators, Secrets, ConfigMaps, Namespaces.
    #[arg(
        long,
        env = "ESI_MANIFESTS",
        required_unless_present = "kubernetes",
        requires = "output"
    )]
    manifests: Option<PathBuf>,
    /// Output directory: `<namespace>/<secret>.yaml`,
    /// `<namespace>/<externalsecret>.externalsecret-status.yaml`, and a state file.
    #[arg(long, requires = "manifests")]
    output: Option<PathBuf>,
    /// Kubernetes mode: reconcile the cluster's ExternalSecrets into its Secrets (in-cluster
    /// configuration, or `KUBECONFIG`); only the holder of the leader-election Lease acts.
    #[arg(long, env = "ESI_KUBERNETES", conflicts_with_all = ["manifests", "output", "once", "interval"])]
    kubernetes: bool,
    /// ESO controller class: stores whose `spec.controller` is set to another class are
    /// not this reconciler's (their ExternalSecrets are left alone).
    #[arg(long, default_value = "")]
    controller_class: String,
    /// One pass, then exit (the default).
    #[arg(long, conflicts_with = "interval")]
    once: bool,
    /// Keep running: a pass every interval (e.g. `30s`), until SIGTERM or Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Timeout of each backend call.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backend_timeout: Duration,
    /// Kubernetes mode: most ExternalSecrets reconciled at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Kubernetes mode: the leader-election Lease's namespace (default: this Pod's).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Kubernetes mode: name of the leader-election Lease.
    #[arg(long, default_value = "esi-reconciler")]
    leader_election_name: String,
    /// Kubernetes mode: this replica's identity in the Lease (default: `POD_NAME`, else the
    /// host name and a random suffix, as client-go's leader election does).
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// Kubernetes mode: how long a Lease not renewed stays with its holder.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// Kubernetes mode: audiences the cluster's API server accepts; ServiceAccount tokens
    /// are never requested for them (a store or generator names the URL its token goes to).
    /// The API server's issuer is refused too: `--api-server-issuer`, else read from the
    /// cluster's `/.well-known/openid-configuration`; when neither gives it, no token is
    /// requested at all (fail closed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "https://kubernetes.default.svc.cluster.local,https://kubernetes.default.svc,kubernetes"
    )]
    api_server_audiences: Vec<String>,
    /// Kubernetes mode: the API server's ServiceAccount issuers (every `--service-account-issuer`
    /// it is started with: it accepts each as a token audience; repeat the flag or separate
    /// with commas, e.g. both issuers while migrating from one to another). Given, they are
    /// refused at once and the discovered one (`/.well-known/openid-configuration`, which
    /// names only the first; the `system:service-account-issuer-discovery` ClusterRole grants
    /// it) is added in the background when it can be read; not given, discovery decides.
    #[arg(long, value_delimiter = ',')]
    api_server_issuer: Vec<String>,
    /// Kubernetes mode: how long a generator credential that was replaced stays valid after
    /// the Secret holding its successor was written (workloads read the old value until the
    /// kubelet refreshes the mounted Secret, up to about 2 minutes, or until they restart);
    /// then it is revoked. At most the credential's own expiry; `0s` revokes at once.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    revocation_grace: Duration,
    /// Kubernetes mode: serve `/metrics` (ESO's `externalsecret_*` metrics and the
    /// server's) on this plain-HTTP address (e.g. `127.0.0.1:8080`); none by default.
    #[arg(long, env = "ESI_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// `--ledger` values.
#[derive(Clone, Copy, ValueEnum)]
enum LedgerKind {
    Embedded,
    Postgres,
    Kubernetes,
}

impl LedgerKind {
    fn name(self) -> &'static str {
        match self {
            LedgerKind::Embedded => "embedded",
            LedgerKind::Postgres => "postgres",
            LedgerKind::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ServeArgs {
    /// Directory of manifests (recursive, multi-document YAML/JSON): directory mode.
    #[arg(long, env = "ESI_MANIFESTS", required_unless_present = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Directory of `.cedar` policy files loaded beside the compiled Authorizations (in
    /// both modes).
    #[arg(long, env = "ESI_POLICIES")]
    policies: Option<PathBuf>,
    /// Kubernetes mode: read Authorizations, federations (Kubernetes, OIDC, Okta,
    /// PingIdentity, SPIFFE), ClusterSecretStores, generators and the Secrets they
    /// reference from the Kubernetes API (in-cluster
    /// configuration, or `KUBECONFIG`), and write their `Ready` status from the elected
    /// leader.
    #[arg(long, env = "ESI_KUBERNETES", conflicts_with = "manifests")]
    kubernetes: bool,
    /// The server's own namespace (default: this Pod's): the leader-election Lease and, with
    /// `--ledger kubernetes`, the ledger's GeneratorStates live there.
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Kubernetes mode: name of the leader-election Lease.
    #[arg(long, default_value = "esi-federation")]
    leader_election_name: String,
    /// Kubernetes mode: this replica's identity in the Lease (default: `POD_NAME`, else the
    /// host name and a random suffix, as client-go's leader election does).
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// Kubernetes mode: how long a Lease not renewed stays with its holder (renewed every
    /// third of it).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// Address to listen on (HTTPS). Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:8443", env = "ESI_LISTEN")]
    listen: SocketAddr,
    /// PEM certificate chain. Without it a self-signed CA and certificate are made.
    #[arg(long, requires = "tls_key", env = "ESI_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert", env = "ESI_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve `/metrics` on this plain-HTTP address instead of the main port.
    #[arg(long, env = "ESI_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "ESI_LOG_FORMAT")]
    log_format: LogFormat,
    /// Where generated files are kept: self-signed TLS material and the issued-credential
    /// ledger (`ledger.redb`). Default: `$STATE_DIRECTORY`, else
    /// `$XDG_STATE_HOME/esi-server`, else `~/.local/state/esi-server`, else
    /// `/var/lib/esi-server` (always absolute).
    #[arg(long, default_value_os_t = esi::ledger::default_data_dir(), env = "ESI_DATA_DIR")]
    data_dir: PathBuf,
    /// Where issued credentials are recorded: `embedded` (`ledger.redb` under
    /// `--data-dir`, one replica; the default), `postgres` (`--ledger-url`; the default when
    /// it is given) or `kubernetes` (GeneratorState and AuthorizedIdentity objects through
    /// the Kubernetes API; several replicas, no database).
    #[arg(long, value_enum, env = "ESI_LEDGER")]
    ledger: Option<LedgerKind>,
    /// A PostgreSQL ledger shared by several replicas, e.g.
    /// `postgresql://esi:…@db.example.com:5432/esi?sslrootcert=/etc/esi/ca.pem` (hosts other
    /// than loopback or a Unix socket only over TLS, `sslmode=verify-full` by default, or
    /// `verify-ca`; see docs/deploy.md; prefer the environment variable: it keeps the
    /// password out of the process list).
    #[arg(long, env = "ESI_LEDGER_URL", hide_env_values = true)]
    ledger_url: Option<String>,
    /// How often the manifest and policy directories are checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Timeout of each backend call.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backend_timeout: Duration,
    /// Retries of a store's backend call that failed as unavailable (unreachable,
    /// throttled, 5xx) or timed out, after a jittered exponential backoff; never of a
    /// definite answer (not found, forbidden, bad request). 0 to 5.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=5))]
    store_retries: u8,
    /// Failed attempts in a row (unavailable or timed out) that open a store's circuit
    /// breaker: its calls then answer 503 at once, without reaching the backend. At least 1.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    store_breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe is let through (its success
    /// closes the circuit). 100ms to 1h.
    #[arg(long, default_value = "5s", value_parser = parse_cool_down)]
    store_breaker_cool_down: Duration,
    /// Minimum time between two JWKS refreshes of one federation on unknown key ids.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    jwks_min_refresh_interval: Duration,
    /// Largest request body (bytes).
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// PEM CA bundle: require client certificates issued by it (mTLS) on the main listener.
    /// Without it, client certificates are optional and read as X.509-SVIDs
    /// (docs/identities.md).
    #[arg(long, env = "ESI_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// How often the TLS certificate, key and client CA files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_reload_interval: Duration,
    /// Audit log (one JSON line per decision and per issued/revoked credential): a file,
    /// or `-` for stdout. With it, decision lines leave the operational log (stderr), which
    /// would only repeat them, unless `RUST_LOG` names `esi::decision`.
    #[arg(long, env = "ESI_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Sustained requests per second from one source address (0: no limit).
    #[arg(long, default_value_t = 100)]
    rate_limit_per_source: u32,
    /// Burst of requests allowed from one source address.
    #[arg(long, default_value_t = 200)]
    rate_limit_per_source_burst: u32,
    /// Sustained requests per second of one caller identity (0: no limit).
    #[arg(long, default_value_t = 50)]
    rate_limit_per_identity: u32,
    /// Burst of requests allowed for one caller identity.
    #[arg(long, default_value_t = 100)]
    rate_limit_per_identity_burst: u32,
    /// Requests handled at once; more are refused with 503.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Requests one source address (IPv6: one /64) may have in flight; more are refused with 503.
    #[arg(long, default_value_t = 64)]
    max_concurrent_requests_per_source: usize,
    /// Time a client has to send a request body once its headers arrived; later → 408.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// Deadline of a whole request (body upload included).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Time a client has to send its request headers (slow-client defence).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Largest request header section (names plus values), in bytes; larger → 431.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: u32,
    /// Deadline for the TLS handshake of a new connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// Deadline for a new connection's first request to start (after the TLS handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 PINGs do not count).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections open at once (lowered below the process's open-file limit).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Connections open at once from one source address (IPv6: one /64); more are closed at accept.
    #[arg(long, default_value_t = 256)]
    max_connections_per_source: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = 64)]
    http2_max_concurrent_streams: u32,
    /// Longest accepted token lifetime (exp - iat); default one year and a day.
    #[arg(long, default_value = "8784h", value_parser = parse_duration)]
    max_token_lifetime: Duration,
    /// How often expired credentials are revoked and failed revocations retried.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sweep_interval: Duration,
}

#[derive(Args)]
struct DevTokenArgs {
    /// PEM private key (EC P-256 for ES256, RSA for RS256).
    #[arg(long)]
    key: PathBuf,
    /// `iss` claim.
    #[arg(long)]
    issuer: String,
    /// ServiceAccount namespace.
    #[arg(long)]
    namespace: String,
    /// ServiceAccount name.
    #[arg(long)]
    service_account: String,
    /// `aud` claim (repeatable).
    #[arg(long)]
    audience: Vec<String>,
    /// `kid` header.
    #[arg(long)]
    kid: Option<String>,
    /// Signature algorithm.
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// Lifetime.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Pod name bound into the token.
    #[arg(long)]
    pod: Option<String>,
}

/// Go-style durations (`30s`, `1h30m`, `250ms`), the one parser of the project.
fn parse_duration(s: &str) -> Result<Duration, String> {
    esi::cli::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// `--store-breaker-cool-down`: a duration within its bounds.
fn parse_cool_down(s: &str) -> Result<Duration, String> {
    use esi::providers::resilient::{MAX_COOL_DOWN, MIN_COOL_DOWN};
    let d = parse_duration(s)?;
    if (MIN_COOL_DOWN..=MAX_COOL_DOWN).contains(&d) {
        Ok(d)
    } else {
        Err("must be between 100ms and 1h".into())
    }
}

/// The provider settings of `serve`: the backend timeout and the stores' resilience.
fn serve_provider_settings(args: &ServeArgs) -> ProviderSettings {
    ProviderSettings {
        timeout: args.backend_timeout,
        resilience: esi::providers::resilient::StoreResilience {
            retries: usize::from(args.store_retries),
            breaker_failures: args.store_breaker_failures,
            breaker_cool_down: args.store_breaker_cool_down,
        },
        ..ProviderSettings::default()
    }
}

/// Directive appended to every log filter unless `RUST_LOG` names rustls itself: rustls warns
/// about client-controlled handshake details (an IP address sent as SNI, as curl and wrk do),
/// which at the default level is one line per connection, i.e. log flooding by any client.
const QUIET_LIBRARIES: &str = "rustls=error";

/// The operational log filter: `RUST_LOG` (default `info`) with [`QUIET_LIBRARIES`].
fn log_filter() -> tracing_subscriber::EnvFilter {
    log_filter_or("info")
}

/// [`log_filter`] with another default level than `info`.
fn log_filter_or(default: &str) -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.into());
    let spec = if spec.contains("rustls") {
        spec
    } else {
        format!("{spec},{QUIET_LIBRARIES}")
    };
    tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET_LIBRARIES}")))
}

fn init_logging(format: LogFormat) {
    init_logging_with(format, log_filter());
}

fn init_logging_with(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(esi::logging::stderr_colors())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .event_format(esi::logging::JsonLines)
            .fmt_fields(esi::logging::JsonSpanFields)
            .init(),
        LogFormat::Text => builder.fmt_fields(esi::logging::EscapedFields).init(),
    }
}

/// Operational logs (stderr, `RUST_LOG`) plus the audit log, which its own filter keeps
/// complete whatever `RUST_LOG` says.
/// Returns the audit log's reopener and the guard of the operational log's writer thread
/// (keep it until the end: dropping it writes out what is queued).
fn init_serve_logging(
    format: LogFormat,
    audit: Option<&std::path::Path>,
) -> Result<(Option<esi::audit::AuditReopener>, esi::logging::LogGuard)> {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::prelude::*;
    // Decisions are in the audit log when there is one: the operational log would repeat
    // each (twice the lines per request in `kubectl logs`), unless RUST_LOG asks for them.
    let decisions_too = audit.is_none()
        || std::env::var("RUST_LOG").is_ok_and(|s| s.contains(esi::audit::DECISION_TARGET));
    let filter = log_filter();
    let not_audited = move |meta: &tracing::Metadata<'_>| {
        decisions_too || meta.target() != esi::audit::DECISION_TARGET
    };
    let (stderr, guard) = esi::logging::non_blocking_stderr(matches!(format, LogFormat::Json))
        .context("cannot start the log writer thread")?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(esi::logging::stderr_colors())
        .with_writer(stderr);
    let fmt = match format {
        LogFormat::Json => fmt
            .event_format(esi::logging::JsonLines)
            .fmt_fields(esi::logging::JsonSpanFields)
            .with_filter(filter)
            .with_filter(filter_fn(not_audited))
            .boxed(),
        LogFormat::Text => fmt
            .fmt_fields(esi::logging::EscapedFields)
            .with_filter(filter)
            .with_filter(filter_fn(not_audited))
            .boxed(),
    };
    let audit = audit.map(esi::audit::AuditLayer::to_path).transpose()?;
    let reopener = audit.as_ref().map(esi::audit::AuditLayer::reopener);
    let audit = audit.map(|l| l.with_filter(filter_fn(esi::audit::is_audit_relevant)));
    tracing_subscriber::registry().with(fmt).with(audit).init();
    Ok((reopener, guard))
}

/// SIGHUP reopens the audit file (log rotation: `logrotate`'s `postrotate` sends it). The
/// handler is installed whatever the flags, so a SIGHUP never ends the server.
fn reopen_on_sighup(reopener: Option<esi::audit::AuditReopener>) -> Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reopener.as_ref().map(esi::audit::AuditReopener::reopen) {
                Some(Ok(true)) => tracing::info!("SIGHUP: audit log reopened"),
                Some(Ok(false)) | None => tracing::info!("SIGHUP: no audit file to reopen"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: cannot reopen the audit log; still writing to the old file")
                }
            }
        }
    });
    Ok(())
}

/// Every failure exit prints one clear message (`esi-server: error: …`, the cause chain on
/// one line) and exits 1; never a backtrace, whatever `RUST_BACKTRACE` says: an expected
/// failure (a problem in the manifests, a missing file) is not a crash.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "esi-server: error: {}",
                esi::support::text::printable_lines(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    // One crypto provider for every rustls user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Policy(cmd) => policy(cmd),
        command => run_command(command).map(|()| std::process::ExitCode::SUCCESS),
    }
}

fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Serve(args) => {
            let (reopener, _log_writer) =
                init_serve_logging(args.log_format, args.audit_log.as_deref())?;
            esi::audit::install_panic_hook();
            let flusher = reopener.clone();
            let served = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(async move {
                    reopen_on_sighup(reopener)?;
                    serve(*args).await
                });
            // Lines no request waited for (revocations by the background sweeps) are
            // written before the process ends.
            if let Some(flusher) = flusher
                && !flusher.flush(std::time::Duration::from_secs(10))
            {
                eprintln!("esi-server: audit log lines still queued at exit were not written");
            }
            served
        }
        Command::Check(args) => check(args),
        Command::Policy(_) => bail!("policy commands are run by run()"),
        Command::Reconcile(args) => reconcile(args),
        Command::DevToken(args) => dev_token(args),
        Command::Crds => {
            print!("{}", esi::resources::crd::all_yaml()?);
            Ok(())
        }
        Command::Webhook(cmd) => {
            init_logging(cmd.log_format);
            let config = cmd.args.into_config()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(esi::webhook::serve(
                    config,
                    |addr| println!("esi-server webhook listening on https://{addr}"),
                    shutdown_signal(),
                ))?;
            Ok(())
        }
    }
}

/// Prints the text output of a policy command with every control character but line breaks
/// and tabs escaped (`\u{1b}`): names, ids and file contents are user text, and an escape
/// sequence in them must not reach the terminal (review finding 8, issue 13).
fn print_text(text: &str) {
    print!("{}", esi::support::text::printable_lines(text));
}

fn sources(args: SourceArgs) -> esi::policy::Sources {
    esi::policy::Sources {
        manifests: args.manifests,
        policies: args.policies,
    }
}

/// `check`: the load's problems, one line each, from the loader of `serve` and `policy
/// validate`; fails on load errors only (references to what does not exist are warnings
/// here, errors in `policy validate`, which also shows file and line).
fn check(args: SourceArgs) -> Result<()> {
    init_logging(LogFormat::Text);
    let snapshot = esi::policy::load(&sources(args));
    for e in &snapshot.errors {
        println!("error: {e}");
    }
    for w in &snapshot.warnings {
        println!("warning: {w}");
    }
    println!(
        "{} stores, {} generators, {} federations, {} policies, {} errors",
        snapshot.stores.len(),
        snapshot.generators.len(),
        snapshot.federations.len(),
        snapshot.policies.policy_count(),
        snapshot.errors.len()
    );
    if !snapshot.errors.is_empty() {
        bail!("{} problems found", snapshot.errors.len());
    }
    Ok(())
}

/// `policy …`: parse, call `esi::policy`, print; the exit code is the command's answer.
fn policy(cmd: PolicyCommand) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    // `esi-server policy … | head` must end quietly when the reader goes away, as `grep` or
    // `git log` do: Rust ignores SIGPIPE at start (right for the server's sockets), which
    // turned every later print into a "Broken pipe" panic. These commands write only to
    // stdout/stderr and files, so the default disposition (end the process) is right here.
    // SAFETY: `signal` with SIG_DFL installs no handler; the disposition is process-wide and
    // set before this command writes anything.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Decisions are logged (target esi::decision) at info; the answer is on stdout.
    init_logging_with(LogFormat::Text, log_filter_or("warn"));
    match cmd {
        PolicyCommand::Lint {
            source,
            json,
            deny_warnings,
            max_requests,
        } => {
            let tree = esi::policy::Tree::load(
                sources(source.clone()),
                source.manifests.display().to_string(),
            );
            let report = esi::policy::lint::lint(&tree, max_requests);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_text(&report.render());
            }
            let failing = report.errors() + if deny_warnings { report.warnings() } else { 0 };
            Ok(if failing > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Diff(args) => Ok(match policy_diff(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!(
                    "esi-server: error: {}",
                    esi::support::text::printable_lines(&format!("{e:#}"))
                );
                ExitCode::from(2)
            }
        }),
        PolicyCommand::Report(args) => {
            let args = *args;
            let baseline = args.compare.baseline();
            let trees = esi::policy::Trees::load(sources(args.compare.source), baseline)?;
            let page = esi::policy::report::report(
                &trees.new,
                trees.old.as_ref(),
                args.compare.max_requests,
            )?;
            std::fs::write(&args.html, &page.html)
                .with_context(|| format!("cannot write {}", args.html.display()))?;
            println!(
                "wrote {}: {} principals × {} columns{}{}",
                args.html.display(),
                page.rows,
                page.columns,
                if trees.old.is_some() {
                    format!(", {} cells changed", page.changed)
                } else {
                    String::new()
                },
                if page.truncated {
                    " (NOT every request was evaluated: see --max-requests)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Explain(args) => policy_explain(*args),
        other => policy_basic(other).map(|()| ExitCode::SUCCESS),
    }
}

/// `policy diff`: exit 0 (or, with --exit-code, 1 on changes, 2 when incomplete).
fn policy_diff(args: DiffArgs) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let baseline = args.compare.baseline();
    let trees = esi::policy::Trees::load(sources(args.compare.source), baseline)?;
    let Some(old) = trees.old.as_ref() else {
        bail!("give --old-manifests or --git");
    };
    let diff = esi::policy::diff::diff(old, &trees.new, args.compare.max_requests);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else if args.markdown {
        print_text(&diff.markdown());
    } else {
        print_text(&diff.text());
    }
    if diff.truncated {
        eprintln!(
            "esi-server: warning: {} requests were not compared (raise --max-requests)",
            diff.compared.total - diff.compared.requests
        );
    }
    Ok(match (args.exit_code, diff.truncated, diff.is_empty()) {
        (false, _, _) => ExitCode::SUCCESS,
        (true, true, _) => ExitCode::from(2),
        (true, false, true) => ExitCode::SUCCESS,
        (true, false, false) => ExitCode::from(1),
    })
}

/// `policy explain` exits with this when the caller came from a token whose signature could
/// not be checked offline (a federation that fetches its keys): the decision is about the
/// token's claims, not about a verified caller.
const EXIT_UNVERIFIED: u8 = 3;

/// `policy explain`: 0, 1 on an error or a partial load (objects that did not load, so the
/// decision may not be the running server's), [`EXIT_UNVERIFIED`] for an unverified token.
fn policy_explain(args: ExplainArgs) -> Result<std::process::ExitCode> {
    use esi::policy::{self, explain};
    let who = match (args.principal, args.token) {
        (_, Some(file)) => explain::Who::Token(file),
        (Some(path), None) => {
            let mut claims = std::collections::BTreeMap::new();
            for c in &args.claim {
                let (k, v) = c
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--claim {c:?} is not NAME=VALUE"))?;
                claims.insert(k.to_owned(), v.to_owned());
            }
            explain::Who::Principal(explain::PrincipalSpec {
                path,
                issuer: args.issuer,
                uid: args.uid,
                pod_name: args.pod_name,
                pod_uid: args.pod_uid,
                claims,
            })
        }
        (None, None) => bail!("give --principal or --token"),
    };
    let target = match (
        args.store,
        args.key,
        args.find,
        args.generator,
        args.revoke_states,
    ) {
        (Some(store), Some(key), ..) => explain::Target::Key {
            store,
            key,
            property: args.property,
            version: args.version,
        },
        (_, _, Some(store), ..) => explain::Target::Find { store },
        (_, _, _, Some(path), _) => explain::Target::Generator {
            action: match args.action {
                GeneratorAction::Generate => esi::authz::Action::Generate,
                GeneratorAction::Revoke => esi::authz::Action::Revoke,
                GeneratorAction::Renew => esi::authz::Action::Renew,
            },
            path,
        },
        (_, _, _, _, Some(namespace)) => explain::Target::States { namespace },
        _ => bail!("give --store and --key, --find, --generator or --revoke-states"),
    };
    let mut context = esi::authz::RequestContext::now(None);
    if let Some(address) = &args.source_address {
        context.source_address = Some(
            explain::parse_source_address(address)
                .map_err(|e| anyhow::anyhow!("--source-address {e}"))?,
        );
    }
    if let Some(time) = &args.time {
        context.time = explain::parse_time(time).map_err(|e| anyhow::anyhow!("--time {e}"))?;
    }
    let snapshot = policy::load(&sources(args.source));
    let explanation = explain::explain_request(&snapshot, &who, &target, &context)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print_text(&explanation.text());
    }
    if explanation.partial_load {
        bail!(
            "{} objects did not load: the decision above is not necessarily the running server's (fix them first; see `esi-server policy validate`)",
            snapshot.errors.len()
        );
    }
    if explanation.token_verified == Some(false) {
        return Ok(std::process::ExitCode::from(EXIT_UNVERIFIED));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `policy compile|validate|explain|test`.
fn policy_basic(cmd: PolicyCommand) -> Result<()> {
    use esi::policy;
    match cmd {
        PolicyCommand::Compile { source, json } => {
            let snapshot = policy::load(&sources(source));
            let printed = policy::listing::print(&snapshot.policies.listing())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&printed)?);
            } else {
                print_text(&policy::listing::as_cedar(&printed));
            }
            if !snapshot.errors.is_empty() {
                eprintln!(
                    "esi-server: {} objects did not load and are not in the output (see `esi-server policy validate`)",
                    snapshot.errors.len()
                );
            }
            Ok(())
        }
        PolicyCommand::Validate { source, json } => {
            let dirs = sources(source);
            let snapshot = policy::load(&dirs);
            let report = policy::validate::report_with_files(&snapshot, &dirs);
            let errors = report.errors();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_text(&report.render());
                let warnings = report.problems.len() - errors;
                let c = report.counts;
                println!(
                    "{errors} errors, {warnings} warnings ({} policies, {} stores, {} generators, {} federations)",
                    c.policies, c.stores, c.generators, c.federations
                );
            }
            if errors > 0 {
                bail!("validation failed: {errors} errors");
            }
            Ok(())
        }
        PolicyCommand::Test { source, dir } => {
            let snapshot = policy::load(&sources(source));
            let load_errors = snapshot.errors.len();
            if load_errors > 0 {
                print_text(&policy::validate::report(&snapshot).render());
            }
            let outcomes = policy::cases::run(&snapshot, &dir)?;
            print_text(&outcomes.text());
            if load_errors > 0 {
                bail!("{load_errors} objects did not load; the cases ran without them");
            }
            if outcomes.failed() > 0 {
                bail!("{} cases failed", outcomes.failed());
            }
            Ok(())
        }
        PolicyCommand::Lint { .. }
        | PolicyCommand::Diff(_)
        | PolicyCommand::Report(_)
        | PolicyCommand::Explain(_) => {
            bail!("not a basic policy command")
        }
    }
}

/// Flags → [`esi::reconcile::output::OutputOptions`]; the library does the rest.
fn reconcile(args: ReconcileArgs) -> Result<()> {
    init_logging(args.log_format);
    if args.kubernetes {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(reconcile_kubernetes(args));
    }
    let (Some(manifests), Some(output)) = (args.manifests, args.output) else {
        bail!("give --manifests DIR --output OUT, or --kubernetes");
    };
    let opts = esi::reconcile::output::OutputOptions {
        manifests,
        output,
        controller_class: args.controller_class,
        // The reconciler is a client: `externalsecrets` stores and `Federation` generators
        // are its to use (the federation server refuses them).
        provider_settings: ProviderSettings {
            timeout: args.backend_timeout,
            client_side: true,
            ..ProviderSettings::default()
        },
    };
    let interval = if args.once { None } else { args.interval };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(esi::reconcile::output::run(
            opts,
            interval,
            shutdown_signal(),
        ))?;
    for p in &report.problems {
        println!("error: {p}");
    }
    for (es, message) in &report.failed {
        println!("failed: ExternalSecret {es}: {message}");
    }
    for r in &report.revocation_failures {
        println!("warning: revocation pending: {r}");
    }
    println!(
        "{} synced, {} unchanged, {} skipped (other controller class), {} failed, {} files changed",
        report.synced,
        report.unchanged,
        report.skipped,
        report.failed.len(),
        report.files_changed
    );
    if report.is_failure() {
        bail!(
            "{} ExternalSecrets failed, {} manifest problems",
            report.failed.len(),
            report.problems.len()
        );
    }
    Ok(())
}

/// `reconcile --kubernetes`: the client, the token source (refusing the API server's own
/// audiences), the metrics listener; [`esi::reconcile::kubernetes::run`] does the rest.
async fn reconcile_kubernetes(args: ReconcileArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let given = given_issuers(&args.api_server_issuer);
    let issuers = if given.is_empty() {
        discover_api_server_issuer(&client)
            .await
            .into_iter()
            .collect()
    } else {
        given.clone()
    };
    let tokens = esi::remote::token_request::KubeTokenRequest::new(client.clone());
    let tokens = match refused_audiences(&args.api_server_audiences, &issuers) {
        Some(audiences) => {
            tracing::info!(issuers = %issuers.join(", "), "the API server's issuers are refused as token audiences");
            let tokens = std::sync::Arc::new(tokens.with_refused_audiences(audiences));
            if !given.is_empty() {
                // The discovered issuer is refused too, once it can be read.
                tokio::spawn(rediscover_api_server_issuer(client.clone(), tokens.clone()));
            }
            tokens
        }
        None => {
            let audiences = args.api_server_audiences.clone();
            tracing::error!(
                "the API server's issuer is unknown (GET /.well-known/openid-configuration failed): no ServiceAccount token is requested until it is known (asked again in the background); grant the system:service-account-issuer-discovery ClusterRole or pass --api-server-issuer"
            );
            let tokens = std::sync::Arc::new(tokens.with_refused_audiences(audiences).refusing_all(
                "the Kubernetes API server's issuer is unknown, so a token might be valid against this cluster: \
                 grant GET /.well-known/openid-configuration (ClusterRole system:service-account-issuer-discovery) \
                 or pass --api-server-issuer",
            ));
            tokio::spawn(rediscover_api_server_issuer(client.clone(), tokens.clone()));
            tokens
        }
    };
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening (plain HTTP)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, api::metrics_router()).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(in_cluster_namespace)
        .unwrap_or_else(|| "default".into());
    let opts = esi::reconcile::kubernetes::KubeOptions {
        controller_class: args.controller_class,
        concurrency: args.concurrency,
        lease: esi::status::lease::LeaseSettings::with_duration(
            namespace,
            args.leader_election_name,
            args.leader_election_identity
                .unwrap_or_else(|| default_lease_identity("esi-reconciler")),
            args.leader_election_lease_duration,
        ),
        provider_settings: ProviderSettings {
            timeout: args.backend_timeout,
            client_side: true,
            service_account_tokens: Some(tokens),
            ..ProviderSettings::default()
        },
        revocation_grace: args.revocation_grace,
    };
    esi::reconcile::kubernetes::run(client, opts, shutdown_signal()).await;
    Ok(())
}

/// The issuers given by `--api-server-issuer`, without empty values (an unset Helm value
/// counts as not given: discovery runs).
fn given_issuers(given: &[String]) -> Vec<String> {
    given
        .iter()
        .filter(|i| !i.trim().trim_end_matches('/').is_empty())
        .cloned()
        .collect()
}

/// The audiences refused: `audiences` and every one of `issuers` (the API server accepts
/// each of its `--service-account-issuer`s as an audience); `None` when no issuer is known
/// (then every token is refused).
fn refused_audiences(audiences: &[String], issuers: &[String]) -> Option<Vec<String>> {
    if issuers.is_empty() {
        return None;
    }
    Some(audiences.iter().chain(issuers).cloned().collect())
}

/// [`api_server_issuer`], tried three times at start, 1 s then 2 s apart, each try bounded
/// to 10 s (at most about 33 s in all), so that a transient failure at start does not
/// disable TokenRequests; None when all failed ([`rediscover_api_server_issuer`] goes on).
async fn discover_api_server_issuer(client: &kube::Client) -> Option<String> {
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(1000 * u64::from(attempt))).await;
        }
        if let Some(issuer) = api_server_issuer(client).await {
            return Some(issuer);
        }
    }
    None
}

/// First delay of [`rediscover_api_server_issuer`].
const REDISCOVER_MIN: Duration = Duration::from_secs(5);
/// Longest delay of [`rediscover_api_server_issuer`].
const REDISCOVER_MAX: Duration = Duration::from_secs(300);

/// The issuer was unknown at start (or issuers were given, and the discovered one is added
/// to them): asked again in the background, 5 s after, the delay doubling up to 5 min,
/// until it is known; then `tokens` refuses it as an audience and stops refusing every token ([`esi::remote::token_request::KubeTokenRequest::learn_issuer`]).
async fn rediscover_api_server_issuer(
    client: kube::Client,
    tokens: std::sync::Arc<esi::remote::token_request::KubeTokenRequest>,
) {
    let mut delay = REDISCOVER_MIN;
    loop {
        tokio::time::sleep(delay).await;
        if let Some(issuer) = api_server_issuer(&client).await {
            tokens.learn_issuer(&issuer);
            tracing::info!(%issuer, "the API server's issuer is now known and refused as a token audience; ServiceAccount tokens are requested again");
            return;
        }
        delay = (delay * 2).min(REDISCOVER_MAX);
    }
}

/// The `issuer` of the API server's `/.well-known/openid-configuration` (bounded answer,
/// each request bounded to 10 s), or None when it cannot be read.
async fn api_server_issuer(client: &kube::Client) -> Option<String> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(10), client.request_text(request))
        .await
        .ok()?
        .ok()?;
    if answer.len() > 64 * 1024 {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_str(&answer).ok()?;
    doc.get("issuer")?
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 1024)
        .map(str::to_string)
}

/// Flags → [`esi::runtime::ServeConfig`]; the library does the rest.
async fn serve(args: ServeArgs) -> Result<()> {
    let provider_settings = serve_provider_settings(&args);
    // The server's own namespace: its Lease and its ledger's GeneratorStates live there.
    let own_namespace = args
        .leader_election_namespace
        .clone()
        .or_else(in_cluster_namespace)
        .unwrap_or_else(|| "default".into());
    let source = match args.manifests {
        Some(manifests) => esi::runtime::Source::Directory(DirectorySource {
            manifests,
            policies: args.policies,
            provider_settings,
        }),
        None => esi::runtime::Source::Kubernetes(esi::runtime::KubernetesMode {
            provider_settings,
            lease: esi::status::lease::LeaseSettings::with_duration(
                own_namespace.clone(),
                args.leader_election_name,
                args.leader_election_identity
                    .unwrap_or_else(|| default_lease_identity("esi-server")),
                args.leader_election_lease_duration,
            ),
            debounce: Duration::from_millis(100),
            policies: args.policies,
            policy_interval: args.reload_interval,
        }),
    };
    let config = esi::runtime::ServeConfig {
        source,
        listen: args.listen,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => esi::runtime::TlsSource::Files { cert, key },
            _ => esi::runtime::TlsSource::SelfSigned,
        },
        client_ca: args.client_ca,
        tls_reload_interval: args.tls_reload_interval,
        metrics_listen: args.metrics_listen,
        data_dir: args.data_dir,
        ledger: match (args.ledger, args.ledger_url) {
            (None | Some(LedgerKind::Postgres), Some(url)) => {
                esi::runtime::LedgerChoice::Postgres(url)
            }
            (Some(LedgerKind::Postgres), None) => {
                bail!("--ledger=postgres needs --ledger-url (or ESI_LEDGER_URL)")
            }
            (Some(LedgerKind::Kubernetes), None) => esi::runtime::LedgerChoice::Kubernetes {
                namespace: own_namespace,
            },
            (None | Some(LedgerKind::Embedded), None) => esi::runtime::LedgerChoice::Embedded,
            (Some(kind), Some(_)) => bail!(
                "--ledger-url is for --ledger=postgres, not --ledger={}",
                kind.name()
            ),
        },
        reload_interval: args.reload_interval,
        sweep_interval: args.sweep_interval,
        backend_timeout: args.backend_timeout,
        authn: AuthnSettings {
            jwks_min_refresh_interval: args.jwks_min_refresh_interval,
            max_token_lifetime: args.max_token_lifetime,
            ..AuthnSettings::default()
        },
        limits: api::LimitSettings {
            per_source_rate: args.rate_limit_per_source,
            per_source_burst: args.rate_limit_per_source_burst,
            per_identity_rate: args.rate_limit_per_identity,
            per_identity_burst: args.rate_limit_per_identity_burst,
            max_concurrent_requests: args.max_concurrent_requests,
            max_concurrent_requests_per_source: args.max_concurrent_requests_per_source,
            request_timeout: args.request_timeout,
            body_read_timeout: args.body_read_timeout,
            max_body_bytes: args.max_body_bytes,
            max_header_bytes: args.max_header_bytes as usize,
            ..api::LimitSettings::default()
        },
        listener: esi::runtime::ListenerSettings {
            tls_handshake_timeout: args.tls_handshake_timeout,
            header_read_timeout: args.header_read_timeout,
            first_request_timeout: args.first_request_timeout,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections,
            max_connections_per_source: args.max_connections_per_source,
            http2_max_concurrent_streams: args.http2_max_concurrent_streams,
            // Above --max-header-bytes, so that the application answers 431 on both protocols
            // (`api::limits::guard`); HTTP/1 heads stay within hyper's ~400 KiB read buffer.
            http2_max_header_list_bytes: HTTP2_MAX_HEADER_LIST_BYTES.max(args.max_header_bytes),
            ..esi::runtime::ListenerSettings::default()
        },
    };
    esi::runtime::serve(
        config,
        |listening| {
            if let Some(ca) = &listening.self_signed_ca {
                eprintln!("esi-server: self-signed CA written to {}", ca.display());
            }
            println!("esi-server listening on https://{}", listening.addr);
        },
        async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        },
    )
    .await?;
    Ok(())
}

/// The namespace of this Pod, from its ServiceAccount mount.
fn in_cluster_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A Lease identity unique to this process: the host name (a Pod's name) and a random
/// suffix, `HOST_<32 hex>` (client-go's convention). The host name alone is not unique: two
/// processes on one host — two `hostNetwork` Pods on one node, two replicas beside each other
/// in a test — would each take the other's Lease for its own, and both would lead.
fn default_lease_identity(fallback: &str) -> String {
    let suffix = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    format!(
        "{}_{}",
        host_name().unwrap_or_else(|| fallback.to_string()),
        suffix.simple()
    )
}

/// The host name (a Pod's name, when `POD_NAME` is not set).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The HTTP/2 protocol ceiling for a header list (bytes, as HPACK counts them).
const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 1024 * 1024;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn dev_token(args: DevTokenArgs) -> Result<()> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(&args.key).with_context(|| format!("{}", args.key.display()))?;
    let alg: Algorithm = args
        .alg
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown algorithm {}", args.alg))?;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem)?,
        _ => bail!("dev-token signs with ES256/ES384 or RS*/PS* only"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut kubernetes = serde_json::json!({
        "namespace": args.namespace,
        "serviceaccount": {"name": args.service_account, "uid": uuid::Uuid::new_v4().to_string()},
    });
    if let Some(pod) = &args.pod {
        kubernetes["pod"] =
            serde_json::json!({"name": pod, "uid": uuid::Uuid::new_v4().to_string()});
    }
    let claims = serde_json::json!({
        "iss": args.issuer,
        "sub": format!("system:serviceaccount:{}:{}", args.namespace, args.service_account),
        "aud": args.audience,
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl.as_secs(),
        "kubernetes.io": kubernetes,
    });
    let mut header = Header::new(alg);
    header.kid = args.kid;
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_durations_with_overflow_refused() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        // Before: 2^64 h overflowed the multiplication; units are required, as in Go.
        assert!(parse_duration("9999999999999999999h").is_err());
        assert!(parse_duration("10").is_err());
    }

    fn serve_args(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["esi-server", "serve", "--manifests", "/m"]
                .iter()
                .chain(extra),
        )?;
        match cli.command {
            Command::Serve(args) => Ok(*args),
            _ => panic!("serve"),
        }
    }

    /// `--store-retries`, `--store-breaker-failures` and `--store-breaker-cool-down` reach
    /// the stores' ResilienceSettings (before: constants), within their bounds.
    #[test]
    fn store_resilience_flags_reach_the_settings() {
        let defaults = serve_provider_settings(&serve_args(&[]).unwrap()).resilience_settings();
        assert_eq!(defaults.retries, 2);
        assert_eq!(defaults.failure_threshold, 5);
        assert_eq!(defaults.cool_down, Duration::from_secs(5));
        let args = serve_args(&[
            "--store-retries",
            "5",
            "--store-breaker-failures",
            "3",
            "--store-breaker-cool-down",
            "1m30s",
            "--backend-timeout",
            "4s",
        ])
        .unwrap();
        let r = serve_provider_settings(&args).resilience_settings();
        assert_eq!(r.retries, 5);
        assert_eq!(r.failure_threshold, 3);
        assert_eq!(r.cool_down, Duration::from_secs(90));
        assert_eq!(r.retry_window, Duration::from_secs(4));
        assert_eq!(
            serve_provider_settings(&serve_args(&["--store-retries", "0"]).unwrap())
                .resilience_settings()
                .retries,
            0
        );
        for bad in [
            ["--store-retries", "6"],
            ["--store-retries", "-1"],
            ["--store-breaker-failures", "0"],
            ["--store-breaker-cool-down", "10ms"],
            ["--store-breaker-cool-down", "2h"],
            ["--store-breaker-cool-down", "soon"],
        ] {
            assert!(serve_args(&bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Every issuer given is refused as an audience (before: one `--api-server-issuer` only,
    /// so during an issuer migration the API server's other issuer could be asked for).
    #[test]
    fn every_api_server_issuer_is_refused() {
        let cli = Cli::try_parse_from([
            "esi-server",
            "reconcile",
            "--kubernetes",
            "--api-server-issuer",
            "https://old.example",
            "--api-server-issuer",
            "https://new.example,",
        ])
        .unwrap();
        let Command::Reconcile(args) = cli.command else {
            panic!("reconcile");
        };
        let issuers = given_issuers(&args.api_server_issuer);
        assert_eq!(issuers, ["https://old.example", "https://new.example"]);
        let refused = refused_audiences(&args.api_server_audiences, &issuers).unwrap();
        for a in ["kubernetes", "https://old.example", "https://new.example"] {
            assert!(refused.iter().any(|r| r == a), "{a}: {refused:?}");
        }
        assert_eq!(args.revocation_grace, Duration::from_secs(300));
        assert!(refused_audiences(&args.api_server_audiences, &[]).is_none());
        assert!(given_issuers(&[" ".into(), "/".into()]).is_empty());
    }
}
