//! `serve`: the server's wiring, in the library where it can be tested. Loads the first
//! snapshot, starts the reloader (which also keeps the authenticator's federations current),
//! chooses TLS (files, reloaded on change, or a self-signed CA), opens the ledger and its
//! sweeper, and serves the API on the HTTPS listener (and `/metrics` on its own port when
//! asked) until shutdown. The binary only parses flags into a [`ServeConfig`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::listener::{ListenerSettings, serve_https_reloading};
use crate::api::{self, ApiSettings, AppState, LimitSettings, Limits};
use crate::authn::{Authenticator, AuthnSettings};
use crate::config::DirectorySource;
use crate::config::kubernetes::{self, KubeReloadSettings};
use crate::config::watch;
use crate::ledger::{KubernetesLedger, Ledger, LedgerError, PostgresLedger, RedbLedger, Sweeper};
use crate::providers::ProviderSettings;
use crate::source::kubernetes::KubeSource;
use crate::status::lease::LeaseSettings;
use crate::tls::{TlsError, TlsFiles};

/// Where the server certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, watched and reloaded on change.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A throwaway CA and certificate made under `DATA_DIR/tls/` (development).
    SelfSigned,
}

/// Where resources come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Directory mode (the embedded default): manifests and policies on disk.
    Directory(DirectorySource),
    /// Kubernetes mode: custom resources watched through the API (in-cluster config or
    /// `KUBECONFIG`).
    Kubernetes(KubernetesMode),
}

/// Kubernetes mode's settings.
#[derive(Debug, Clone)]
pub struct KubernetesMode {
    /// Settings handed to every provider.
    pub provider_settings: ProviderSettings,
    /// The Lease that elects the replica writing status.
    pub lease: LeaseSettings,
    /// Changes arriving within this long of each other are built into one snapshot.
    pub debounce: Duration,
    /// A directory of hand-written `.cedar` policy files, loaded beside the Authorizations.
    pub policies: Option<PathBuf>,
    /// How often that directory is checked for changes.
    pub policy_interval: Duration,
}

/// Where issued credentials are recorded (see docs/deploy.md, "Which ledger").
#[derive(Clone)]
pub enum LedgerChoice {
    /// `ledger.redb` under `data_dir`: one replica.
    Embedded,
    /// A PostgreSQL database shared by several replicas (`postgresql://…`; hosts other
    /// than loopback or a Unix socket over verified TLS: `crate::ledger::postgres::conninfo`).
    Postgres(String),
    /// ESO `GeneratorState` objects in the server's own namespace (never another: tenants
    /// may write GeneratorStates in theirs) and ESE `AuthorizedIdentity` objects, through
    /// the Kubernetes API (in-cluster configuration or `KUBECONFIG`): several replicas, no
    /// database.
    Kubernetes {
        /// The server's namespace.
        namespace: String,
    },
}

// The PostgreSQL URL may hold a password.
impl std::fmt::Debug for LedgerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LedgerChoice::Embedded => "Embedded",
            LedgerChoice::Postgres(_) => "Postgres(…)",
            LedgerChoice::Kubernetes { .. } => "Kubernetes",
        })
    }
}

/// Everything `serve` needs; the binary fills it from flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where resources come from.
    pub source: Source,
    /// HTTPS address (port 0: any free port).
    pub listen: SocketAddr,
    /// Server certificate.
    pub tls: TlsSource,
    /// PEM CA bundle: clients must present a certificate it issued (mTLS).
    pub client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Serve `/metrics` here (plain HTTP) instead of on the main port.
    pub metrics_listen: Option<SocketAddr>,
    /// Self-signed TLS material and the ledger live here.
    pub data_dir: PathBuf,
    /// Where issued credentials are recorded.
    pub ledger: LedgerChoice,
    /// How often the source directories are checked for changes.
    pub reload_interval: Duration,
    /// How often expired credentials are revoked and failed revocations retried (> 0).
    pub sweep_interval: Duration,
    /// Timeout of one backend call (the providers' own; calls are cut 1 s after it).
    pub backend_timeout: Duration,
    /// Token verification.
    pub authn: AuthnSettings,
    /// Abuse limits of requests.
    pub limits: LimitSettings,
    /// Connection limits.
    pub listener: ListenerSettings,
}

/// What `serve` tells its caller once it listens.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The bound HTTPS address.
    pub addr: SocketAddr,
    /// The CA to trust, when the certificate is self-signed.
    pub self_signed_ca: Option<PathBuf>,
}

/// Why the server could not start (or its listener failed).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--manifests` is not a directory.
    #[error("--manifests {0} is not a directory")]
    NotADirectory(PathBuf),
    /// No Kubernetes client configuration (in-cluster or `KUBECONFIG`).
    #[error("cannot configure the Kubernetes client: {0}")]
    Kubernetes(String),
    /// The sweep interval must be positive.
    #[error("--sweep-interval must be positive")]
    NoSweepInterval,
    /// TLS material could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The ledger could not be opened (revocable credentials are never handed out unrecorded).
    #[error("cannot open the ledger {path}: {source}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// Why.
        source: LedgerError,
    },
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The listener failed.
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    /// A startup task panicked or was cancelled.
    #[error("startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the server until `shutdown` completes; `on_listening` is called once it listens.
///
/// # Errors
/// [`ServeError`]: startup failures, or the listening socket failing.
pub async fn serve(
    config: ServeConfig,
    on_listening: impl FnOnce(&Listening) + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if let Source::Directory(d) = &config.source
        && !d.manifests.is_dir()
    {
        return Err(ServeError::NotADirectory(d.manifests.clone()));
    }
    if config.sweep_interval.is_zero() {
        return Err(ServeError::NoSweepInterval);
    }
    let authenticator = Arc::new(Authenticator::new(config.authn.clone()));
    let snapshot = match &config.source {
        Source::Directory(source) => {
            let (reloader, initial) = {
                let s = source.clone();
                tokio::task::spawn_blocking(move || watch::initial_load(&s)).await?
            };
            let publisher = watch::Publisher::new(initial, authenticator.clone());
            let snapshot = publisher.current();
            tokio::spawn(watch::watch(reloader, publisher, config.reload_interval));
            snapshot
        }
        Source::Kubernetes(mode) => start_kubernetes(mode, authenticator.clone()).await?,
    };

    let (tls_files, self_signed_ca) = tls_files(&config)?;
    // Without --client-ca, clients may present an X.509-SVID (optional client certificates;
    // verified per request against the SpiffeFederation bundles).
    let tls_files = crate::tls::ServerTls {
        files: tls_files,
        client_auth: crate::tls::ClientAuth::Svid,
    };
    let tls_config = tls_files.load()?;
    if tls_files.files.client_ca.is_some() {
        tracing::info!("client certificates required (mTLS)");
    }

    let ledger_path = match &config.ledger {
        // Never the URL itself: it may hold a password.
        LedgerChoice::Postgres(_) => PathBuf::from("(PostgreSQL)"),
        LedgerChoice::Kubernetes { .. } => PathBuf::from("(Kubernetes GeneratorStates)"),
        LedgerChoice::Embedded => config.data_dir.join("ledger.redb"),
    };
    let ledger_error = |source| ServeError::Ledger {
        path: ledger_path.clone(),
        source,
    };
    let ledger: Arc<dyn Ledger> = match &config.ledger {
        LedgerChoice::Postgres(url) => {
            Arc::new(PostgresLedger::connect(url).await.map_err(ledger_error)?)
        }
        LedgerChoice::Kubernetes { namespace } => {
            // Every ledger call answers within 30 s or fails (its watch ends every 25 s
            // on the server's side, within that): a hung API must not hold a revocation.
            let mut config = kube::Config::infer()
                .await
                .map_err(|e| ServeError::Kubernetes(e.to_string()))?;
            config.read_timeout = Some(Duration::from_secs(30));
            let client = kube::Client::try_from(config)
                .map_err(|e| ServeError::Kubernetes(e.to_string()))?;
            Arc::new(
                KubernetesLedger::new(client, namespace)
                    .await
                    .map_err(ledger_error)?,
            )
        }
        LedgerChoice::Embedded => {
            let path = ledger_path.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || RedbLedger::open(&path))
                    .await?
                    .map_err(ledger_error)?,
            )
        }
    };
    let entries = ledger.count().await.unwrap_or(0);
    tracing::info!(path = %ledger_path.display(), entries, "credential ledger opened");
    let call_limit = config.backend_timeout + Duration::from_secs(1);
    tokio::spawn(
        Sweeper {
            ledger: ledger.clone(),
            snapshot: snapshot.clone(),
            interval: config.sweep_interval,
            timeout: call_limit,
        }
        .run(),
    );

    let state = AppState {
        snapshot,
        authenticator,
        settings: ApiSettings {
            backend_timeout: call_limit,
        },
        limits: Arc::new(Limits::new(config.limits.clone())),
        ledger: Some(ledger),
    };
    let app = api::router(state, config.metrics_listen.is_none());

    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening (plain HTTP)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, api::metrics_router()).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening (HTTPS)");
    on_listening(&Listening {
        addr,
        self_signed_ca,
    });
    serve_https_reloading(
        listener,
        tls_files,
        tls_config,
        config.tls_reload_interval,
        app,
        config.listener,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Kubernetes mode: the watchers into the snapshot (published after the first full sync;
/// until then the snapshot is empty and `/readyz` says not ready), the Lease election and
/// the leader's status writer.
async fn start_kubernetes(
    mode: &KubernetesMode,
    authenticator: Arc<Authenticator>,
) -> Result<Arc<ArcSwap<crate::config::Snapshot>>, ServeError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| ServeError::Kubernetes(e.to_string()))?;
    let publisher = watch::Publisher::new(crate::config::Snapshot::empty(), authenticator);
    let snapshot = publisher.current();
    let source = KubeSource::new(client.clone(), Arc::new(kubernetes::served_kind));
    let (status_tx, status_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(kubernetes::run(
        source,
        publisher,
        KubeReloadSettings {
            provider_settings: mode.provider_settings.clone(),
            debounce: mode.debounce,
            rediscover: Duration::from_secs(60),
            policies: mode.policies.clone(),
            policy_interval: mode.policy_interval,
            key_probe_interval: Duration::from_secs(30),
        },
        status_tx,
    ));
    tokio::spawn(crate::status::lease::run(
        client.clone(),
        mode.lease.clone(),
        leading_tx,
    ));
    tokio::spawn(crate::status::writer::run(client, status_rx, leading_rx));
    Ok(snapshot)
}

/// The TLS files to serve, making a self-signed CA and certificate when none are given.
fn tls_files(config: &ServeConfig) -> Result<(TlsFiles, Option<PathBuf>), ServeError> {
    match &config.tls {
        TlsSource::Files { cert, key } => Ok((
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.client_ca.clone(),
            },
            None,
        )),
        TlsSource::SelfSigned => {
            let names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
                config.listen.ip().to_string(),
            ];
            let made = crate::tls::self_signed(&config.data_dir.join("tls"), &names)?;
            tracing::warn!(ca = %made.ca_cert.display(), "no --tls-cert given: serving a self-signed certificate; clients must trust this CA");
            Ok((
                TlsFiles {
                    cert: made.cert,
                    key: made.key,
                    client_ca: config.client_ca.clone(),
                },
                Some(made.ca_cert),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;

    fn config(dir: &std::path::Path) -> ServeConfig {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        ServeConfig {
            source: Source::Directory(DirectorySource {
                manifests,
                policies: None,
                provider_settings: ProviderSettings::default(),
            }),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: TlsSource::SelfSigned,
            client_ca: None,
            tls_reload_interval: Duration::from_secs(10),
            metrics_listen: None,
            data_dir: dir.join("data"),
            ledger: LedgerChoice::Embedded,
            reload_interval: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(30),
            backend_timeout: Duration::from_secs(5),
            authn: AuthnSettings::default(),
            limits: LimitSettings::default(),
            listener: ListenerSettings::default(),
        }
    }

    #[tokio::test]
    async fn serves_until_shutdown_and_reports_where() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            config(dir.path()),
            move |l: &Listening| {
                let _ = addr_tx.send(l.clone());
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let listening = addr_rx.await.unwrap();
        let ca = std::fs::read(listening.self_signed_ca.as_ref().unwrap()).unwrap();
        let cert = reqwest::Certificate::from_pem(&ca).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([cert])
            .build()
            .unwrap();
        let resp = client
            .get(format!("https://{}/readyz", listening.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        stop_tx.send(()).unwrap();
        assert!(server.await.unwrap().is_ok());
        // The ledger was made under the data dir.
        assert!(dir.path().join("data/ledger.redb").exists());
    }

    #[tokio::test]
    async fn startup_failures_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        if let Source::Directory(d) = &mut c.source {
            d.manifests = dir.path().join("missing");
        }
        let err = serve(c, |_| {}, async {}).await.unwrap_err();
        assert!(matches!(err, ServeError::NotADirectory(_)), "{err}");
        let mut c = config(dir.path());
        c.sweep_interval = Duration::ZERO;
        let err = serve(c, |_| {}, async {}).await.unwrap_err();
        assert!(matches!(err, ServeError::NoSweepInterval), "{err}");
    }
}
