//! `esi-server webhook`: the HTTPS server of the injection webhook. `POST /mutate` answers
//! `AdmissionReview`s ([`super::review`]); `/healthz` and `/readyz` answer `ok` once it
//! listens. The listener (connection limits, handshake and idle deadlines) and the TLS
//! files (reloaded on change) are the Federation Server's own ([`crate::runtime`],
//! [`crate::tls`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::Settings;
use super::review::{MAX_BODY_BYTES, Outcome, review};
use crate::runtime::{ListenerSettings, serve_https_reloading};
use crate::tls::{TlsError, TlsFiles};

/// Time a client has to send the whole review once its headers arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags of `esi-server webhook` (the binary flattens them into its subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Address to listen on (HTTPS). Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:9443", env = "ESI_WEBHOOK_LISTEN")]
    pub listen: SocketAddr,
    /// PEM certificate chain the API server is shown (its CA is the webhook
    /// configuration's `caBundle`). Reloaded when it changes.
    #[arg(long, env = "ESI_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key.
    #[arg(long, env = "ESI_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// How often the TLS files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub tls_reload_interval: Duration,
    /// Image of the injected containers: it must hold esi-cli at --cli-path (this
    /// project's image does).
    #[arg(long, default_value_t = Settings::default().image)]
    pub cli_image: String,
    /// Pull policy of that image.
    #[arg(long, default_value = "IfNotPresent")]
    pub cli_image_pull_policy: String,
    /// Where esi-cli is in that image.
    #[arg(long, default_value = "/usr/local/bin/esi-cli")]
    pub cli_path: String,
    /// Audience of the projected ServiceAccount token: one of the Federation Server's
    /// KubernetesFederation `audiences`.
    #[arg(long, default_value = "esi-federation")]
    pub audience: String,
    /// Lifetime of that token (10m to 168h; the kubelet renews it at 80 %).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub token_expiration: Duration,
    /// User of the injected containers when the Pod names none (non-root).
    #[arg(long, default_value_t = 65532)]
    pub cli_run_as_user: i64,
    /// Group of the injected containers when the Pod names none.
    #[arg(long, default_value_t = 65532)]
    pub cli_run_as_group: i64,
    /// CPU request of the injected containers (empty: none).
    #[arg(long, default_value = "10m")]
    pub cli_cpu_request: String,
    /// Memory request of the injected containers (empty: none).
    #[arg(long, default_value = "32Mi")]
    pub cli_memory_request: String,
    /// CPU limit of the injected containers (empty: none).
    #[arg(long, default_value = "")]
    pub cli_cpu_limit: String,
    /// Memory limit of the injected containers (empty: none).
    #[arg(long, default_value = "128Mi")]
    pub cli_memory_limit: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::support::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Certificate and key (no client certificates: the API server presents none by default).
    pub tls: TlsFiles,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// What the injected containers are made of.
    pub settings: Settings,
    /// Connection limits.
    pub listener: ListenerSettings,
}

impl WebhookArgs {
    /// The flags as a checked configuration.
    ///
    /// # Errors
    /// The first flag that cannot work.
    pub fn into_config(self) -> Result<WebhookConfig, WebhookError> {
        let quantity = |flag: &str, v: &str| -> Result<Option<Quantity>, WebhookError> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            let ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
                && v.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(WebhookError::Settings(format!(
                    "--{flag}: {v:?} is not a Kubernetes quantity (100m, 64Mi)"
                )));
            }
            Ok(Some(Quantity(v.to_string())))
        };
        let pairs = |cpu: Option<Quantity>, memory: Option<Quantity>| {
            let map: std::collections::BTreeMap<String, Quantity> =
                [("cpu", cpu), ("memory", memory)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect();
            (!map.is_empty()).then_some(map)
        };
        let settings = Settings {
            image: self.cli_image,
            image_pull_policy: self.cli_image_pull_policy,
            cli_path: self.cli_path,
            audience: self.audience,
            token_expiration_seconds: i64::try_from(self.token_expiration.as_secs())
                .unwrap_or(i64::MAX),
            run_as_user: self.cli_run_as_user,
            run_as_group: self.cli_run_as_group,
            resources: ResourceRequirements {
                requests: pairs(
                    quantity("cli-cpu-request", &self.cli_cpu_request)?,
                    quantity("cli-memory-request", &self.cli_memory_request)?,
                ),
                limits: pairs(
                    quantity("cli-cpu-limit", &self.cli_cpu_limit)?,
                    quantity("cli-memory-limit", &self.cli_memory_limit)?,
                ),
                ..ResourceRequirements::default()
            },
        };
        settings.validate().map_err(WebhookError::Settings)?;
        Ok(WebhookConfig {
            listen: self.listen,
            tls: TlsFiles {
                cert: self.tls_cert,
                key: self.tls_key,
                client_ca: None,
            },
            tls_reload_interval: self.tls_reload_interval,
            settings,
            listener: ListenerSettings::default(),
        })
    }
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A setting cannot work.
    #[error("{0}")]
    Settings(String),
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The listener failed.
    #[error("webhook server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The routes: `POST /mutate`, `GET /healthz`, `GET /readyz`.
pub fn router(settings: Settings) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .with_state(Arc::new(settings))
}

async fn ok() -> &'static str {
    "ok"
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

async fn mutate(State(settings): State<Arc<Settings>>, req: Request) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an AdmissionReview is sent as application/json",
        );
    }
    let body: Body = req.into_body();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the review is larger than {MAX_BODY_BYTES} bytes (or was cut short)"),
            );
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "the review did not arrive in time",
            );
        }
    };
    match review(&bytes, &settings) {
        Ok(answer) => {
            match &answer.outcome {
                Outcome::Unchanged => {
                    tracing::debug!(uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, "admitted unchanged")
                }
                Outcome::Mutated(ops) => {
                    tracing::info!(uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, operations = ops, "injected")
                }
                Outcome::Denied { code, field } => {
                    tracing::info!(uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, code, field = %field, "denied")
                }
            }
            axum::Json(answer.review).into_response()
        }
        Err(e) => {
            tracing::info!(error = %e, "malformed review");
            plain(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// Serves the webhook until `shutdown` completes; `on_listening` gets the bound address.
///
/// # Errors
/// [`WebhookError`]: settings, TLS files, the address, or the listener failing.
pub async fn serve(
    config: WebhookConfig,
    on_listening: impl FnOnce(SocketAddr) + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WebhookError> {
    config.settings.validate().map_err(WebhookError::Settings)?;
    let tls_config = config.tls.load()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, image = %config.settings.image, audience = %config.settings.audience, "webhook listening (HTTPS)");
    on_listening(addr);
    serve_https_reloading(
        listener,
        config.tls,
        tls_config,
        config.tls_reload_interval,
        router(config.settings),
        config.listener,
        shutdown,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhookArgs,
    }

    fn config(extra: &[&str]) -> Result<WebhookConfig, WebhookError> {
        let mut argv = vec!["webhook", "--tls-cert=/c", "--tls-key=/k"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args.into_config()
    }

    #[test]
    fn flags_become_settings_and_bad_ones_are_named() {
        let c = config(&["--cli-cpu-limit=500m", "--cli-memory-request="]).unwrap();
        assert_eq!(c.settings.token_expiration_seconds, 600);
        let r = &c.settings.resources;
        assert_eq!(r.requests.as_ref().unwrap().get("memory"), None);
        assert_eq!(r.limits.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "128Mi");
        let e = config(&["--cli-memory-limit=lots"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--cli-memory-limit"), "{e}");
        let e = config(&["--token-expiration=5m"]).unwrap_err().to_string();
        assert!(e.starts_with("--token-expiration"), "{e}");
        let e = config(&["--cli-run-as-user=0"]).unwrap_err().to_string();
        assert!(e.starts_with("--cli-run-as-user"), "{e}");
    }
}
