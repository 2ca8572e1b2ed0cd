//! The Pod-injection webhook (`esi-server webhook`, docs/webhook.md): a mutating admission
//! webhook that adds `esi-cli` to Pods asking for it with ESE's
//! `secretless.externalsecrets.com/` annotations.
//!
//! One way through: [`server`] reads an `AdmissionReview` ([`review`]), which hands the Pod
//! to [`mutate()`]: [`annotations`] parses the annotations, [`mod@mutate`] turns them into the
//! `esi-cli` command lines (each checked by esi-cli's own flag parser,
//! [`crate::cli::args::check_argv`]) and the containers and volumes that carry them, as a
//! JSON patch of only what changes. [`bounds`] bounds the Pod from its raw JSON before it
//! is decoded. [`mutate()`] is pure: no I/O, no clock.

pub mod annotations;
pub mod bounds;
pub mod mutate;
pub mod review;
pub mod server;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub use mutate::mutate;
pub use server::{WebhookArgs, WebhookConfig, WebhookError, serve};

/// Why a Pod is not admitted: the HTTP-like code of the `AdmissionReview` status, the
/// annotation or field to fix, and what is wrong. Never holds a secret value: annotations
/// hold names and paths, and Pod fields are named, not quoted (commands excepted: the
/// message names the argument's position, not its text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Denial {
    /// 400: an annotation or field is invalid as written; 403: the Pod uses a name or
    /// path the injection reserves; 500: the webhook itself failed.
    pub code: u16,
    /// The annotation (`secretless.externalsecrets.com/inject-on-env`) or field
    /// (`spec.containers[0].command`) concerned.
    pub field: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl Denial {
    /// A 400: the Pod's annotations or spec cannot work as written.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Denial {
        Denial {
            code: 400,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A 403: the Pod uses a name or path the injection reserves.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Denial {
        Denial {
            code: 403,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What the injected containers are made of; the same for every Pod (flags of
/// `esi-server webhook`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The image holding `esi-cli` (this project's image holds both binaries).
    pub image: String,
    /// Its pull policy (`IfNotPresent`, `Always`, `Never`).
    pub image_pull_policy: String,
    /// Where `esi-cli` is in that image.
    pub cli_path: String,
    /// The audience of the projected ServiceAccount token: the Federation Server's
    /// (its KubernetesFederation's `audiences`).
    pub audience: String,
    /// Lifetime of that token (at least 600 s, the API server's minimum); the kubelet
    /// renews it at 80 % of it and esi-cli reads it afresh for every request.
    pub token_expiration_seconds: i64,
    /// User the injected containers run as (when the Pod does not name one for its
    /// containers; see docs/webhook.md, "Users and file permissions").
    pub run_as_user: i64,
    /// Group they run as (likewise).
    pub run_as_group: i64,
    /// Requests and limits of the injected containers.
    pub resources: ResourceRequirements,
}

impl Default for Settings {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.to_string());
        Settings {
            image: format!("esi-federation:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            cli_path: "/usr/local/bin/esi-cli".into(),
            audience: "esi-federation".into(),
            token_expiration_seconds: 600,
            run_as_user: 65532,
            run_as_group: 65532,
            resources: ResourceRequirements {
                requests: Some([("cpu".into(), q("10m")), ("memory".into(), q("32Mi"))].into()),
                limits: Some([("memory".into(), q("128Mi"))].into()),
                ..ResourceRequirements::default()
            },
        }
    }
}

impl Settings {
    /// Checks what the API server or the kubelet would refuse later, Pod after Pod.
    ///
    /// # Errors
    /// The first setting that cannot work, by its flag name.
    pub fn validate(&self) -> Result<(), String> {
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err("--cli-image: must be an image reference".into());
        }
        if !["IfNotPresent", "Always", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err("--cli-image-pull-policy: must be IfNotPresent, Always or Never".into());
        }
        if !self.cli_path.starts_with('/') || self.cli_path.contains(',') {
            return Err("--cli-path: must be an absolute path".into());
        }
        if self.audience.trim().is_empty() {
            return Err("--audience: must not be empty".into());
        }
        if !(600..=7 * 24 * 3600).contains(&self.token_expiration_seconds) {
            return Err(
                "--token-expiration: must be between 10m (the API server's minimum) and 168h"
                    .into(),
            );
        }
        if self.run_as_user <= 0 || self.run_as_group < 0 {
            return Err("--cli-run-as-user: must not be root (runAsNonRoot)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_are_valid_and_bad_ones_are_named() {
        assert_eq!(Settings::default().validate(), Ok(()));
        let bad = |f: fn(&mut Settings), flag: &str| {
            let mut s = Settings::default();
            f(&mut s);
            let e = s.validate().unwrap_err();
            assert!(e.starts_with(flag), "{e}");
        };
        bad(|s| s.image = " ".into(), "--cli-image");
        bad(
            |s| s.image_pull_policy = "Sometimes".into(),
            "--cli-image-pull-policy",
        );
        bad(|s| s.cli_path = "esi-cli".into(), "--cli-path");
        bad(|s| s.audience = String::new(), "--audience");
        bad(|s| s.token_expiration_seconds = 599, "--token-expiration");
        bad(|s| s.run_as_user = 0, "--cli-run-as-user");
    }
}
