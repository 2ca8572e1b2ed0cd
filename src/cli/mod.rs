//! `esi-cli`: fetches secrets from an ESI Federation Server (or the ExternalSecrets of
//! the local cluster) and gives them to the application.
//!
//! - **init**: fetch everything, then `exec` the application with the secrets in its
//!   environment (and files written). When anything requested cannot be had, nothing is
//!   injected, the application is not started, and each failure is one line on stderr.
//! - **daemon**: keep `--inject-on-file` files current, rewriting only changed files.
//!
//! Values live in [`value::SecretValue`], whose `Debug` is redacted; no log line or
//! error text holds a value or a token.

pub mod args;
pub mod duration;
pub mod error;
pub mod federated;
pub mod fetch;
pub mod files;
pub mod inject;
pub mod local;
pub mod tls_explain;
pub mod value;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

pub use args::{Args, Mode, Plan};
pub use fetch::{FetchError, Fetcher};
pub use inject::{Failure, Injection};
pub use value::{SecretData, SecretValue};

/// Exit code when flags are wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a secret cannot be had, or a file cannot be written.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when the application cannot be executed (as shells do).
pub const EXIT_EXEC: u8 = 127;

fn say(line: impl std::fmt::Display) {
    eprintln!("esi-cli: {line}");
}

/// The binary's whole life: parse flags, then run the mode. Only returns when init
/// mode does not exec (an error, or nothing to exec) or daemon mode ends.
pub fn main_entry() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let plan = match Plan::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            say(e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(plan.mode);
    // One crypto provider for every rustls user in the process (reqwest, kube).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match plan.mode {
        Mode::Init => {
            let injection = runtime.block_on(prepare_init(&plan));
            // Nothing of the runtime survives into the application.
            drop(runtime);
            match injection {
                Ok(inj) => exec_or_exit(&plan, inj),
                Err(code) => code,
            }
        }
        Mode::Daemon => runtime.block_on(daemon(&plan)),
    }
}

fn init_logging(mode: Mode) {
    // Init mode stays quiet (its failures are printed as plain lines); the daemon logs.
    let default = match mode {
        Mode::Init => "warn",
        Mode::Daemon => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(crate::logging::stderr_colors())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Init mode up to the exec: fetch every secret, assemble, write files. On failure
/// the lines are printed and the exit code returned; nothing was injected.
pub async fn prepare_init(plan: &Plan) -> Result<Injection, ExitCode> {
    let ids = plan.secrets().map_err(|e| {
        say(e);
        ExitCode::from(EXIT_USAGE)
    })?;
    let results = if ids.is_empty() {
        // Nothing to fetch: no source is needed (nor an in-cluster config).
        fetch::Results::new()
    } else {
        let fetcher = Fetcher::from_plan(plan).await.map_err(|e| {
            say(e);
            ExitCode::from(EXIT_FAILURE)
        })?;
        fetcher.fetch_all(&ids, plan.timeout).await
    };
    let injection = inject::assemble(plan, &results, &ids).map_err(|failures| {
        for f in &failures {
            say(f);
        }
        say(format_args!(
            "{} problem(s); nothing injected{}",
            failures.len(),
            if plan.binary.is_some() {
                ", the application was not started"
            } else {
                ""
            }
        ));
        ExitCode::from(EXIT_FAILURE)
    })?;
    for (path, content) in &injection.files {
        if let Err(e) = files::write_if_changed(path, content.expose()) {
            say(format_args!("cannot write {}: {e}", path.display()));
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    }
    Ok(injection)
}

/// Replaces this process with the application (no child, no parent left behind), or
/// ends when there is nothing to exec.
fn exec_or_exit(plan: &Plan, inj: Injection) -> ExitCode {
    let Some(binary) = &plan.binary else {
        return ExitCode::SUCCESS;
    };
    let mut cmd = std::process::Command::new(binary);
    cmd.args(&plan.args);
    for (name, value) in &inj.env {
        cmd.env(name, OsStr::from_bytes(value.expose()));
    }
    // Only returns on failure.
    let err = cmd.exec();
    say(format_args!("cannot exec {}: {err}", binary.display()));
    ExitCode::from(EXIT_EXEC)
}

/// Daemon mode: refresh files every interval; on failure keep the last files and retry
/// with capped backoff and jitter; end cleanly on SIGTERM or SIGINT.
pub async fn daemon(plan: &Plan) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            say("cannot install signal handlers");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let ids = match plan.secrets() {
        Ok(ids) => ids,
        Err(e) => {
            say(e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let fetcher = match Fetcher::from_plan(plan).await {
        Ok(f) => f,
        Err(e) => {
            say(e);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut failed_rounds: u32 = 0;
    loop {
        let round = tokio::select! {
            ok = refresh_round(plan, &fetcher, &ids) => ok,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let wait = if round {
            failed_rounds = 0;
            plan.refresh
        } else {
            // Retry sooner than the interval, backing off up to it.
            let cap = plan.refresh.max(Duration::from_secs(1));
            let wait = fetch::backoff(failed_rounds, Duration::from_secs(1), cap);
            failed_rounds = failed_rounds.saturating_add(1);
            tracing::warn!(
                retry_in_ms = wait.as_millis() as u64,
                "refresh incomplete; files kept as they were"
            );
            wait
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("signal received; exiting");
    ExitCode::SUCCESS
}

/// One refresh: fetch, then rewrite each file whose content changed. Files whose
/// secret could not be had keep their last content. True when everything succeeded.
async fn refresh_round(plan: &Plan, fetcher: &Fetcher, ids: &[args::SecretId]) -> bool {
    let results = fetcher.fetch_all(ids, plan.timeout).await;
    let mut ok = true;
    for f in inject::fetch_failures(&results, ids) {
        ok = false;
        tracing::warn!(problem = %f, "cannot fetch");
    }
    for spec in &plan.files {
        match inject::render_file(plan, &results, spec) {
            Ok(content) => match files::write_if_changed(&spec.path, content.expose()) {
                Ok(files::WriteOutcome::Written) => {
                    tracing::info!(path = %spec.path.display(), "file written")
                }
                Ok(files::WriteOutcome::Unchanged) => {
                    tracing::debug!(path = %spec.path.display(), "file unchanged")
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(path = %spec.path.display(), error = %e, "cannot write file");
                }
            },
            Err(Some(f)) => {
                ok = false;
                tracing::warn!(problem = %f, "cannot render file");
            }
            // Already reported as a fetch failure.
            Err(None) => {}
        }
    }
    ok
}
