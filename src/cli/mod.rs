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
pub mod credentials;
pub use crate::support::duration;
pub mod error;
pub mod federated;
pub mod fetch;
pub mod files;
pub mod inject;
pub mod install;
pub mod local;
pub mod svid;
pub use crate::remote::tls_explain;
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
/// mode does not exec (an error, or nothing to exec) or daemon mode ends. `esi-cli
/// install --to=PATH` copies the binary instead ([`install`]).
pub fn main_entry() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if install::requested(&argv) {
        return install::main(&argv);
    }
    let args = match Args::try_parse_from(&argv) {
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
    let plan = match Plan::from_args(&args).and_then(|mut p| p.load_templates().map(|()| p)) {
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
    // Nothing to fetch: no source is needed (nor an in-cluster config).
    let fetcher = match ids.is_empty() {
        true => None,
        false => Some(Fetcher::from_plan(plan).await.map_err(|e| {
            say(e);
            ExitCode::from(EXIT_FAILURE)
        })?),
    };
    let (results, handoff) = match (&fetcher, &plan.credentials_file) {
        (None, _) => (fetch::Results::new(), None),
        (Some(Fetcher::Federated(client)), Some(path)) => {
            let (results, handoff) = issue_with_handles(plan, client, &ids).await;
            (results, Some((client, handoff, path)))
        }
        (Some(f), _) => (f.fetch_all(&ids, plan.timeout).await, None),
    };
    let prepared = assemble_and_write(plan, &results, &ids).and_then(|injection| {
        if let Some((_, handoff, path)) = &handoff
            && let Err(e) = handoff.write(path)
        {
            say(format_args!(
                "cannot write the credentials file {}: {e}",
                path.display()
            ));
            return Err(ExitCode::from(EXIT_FAILURE));
        }
        Ok(injection)
    });
    if prepared.is_err()
        && let Some((client, handoff, _)) = &handoff
    {
        // Nothing was handed to anyone: give back what was issued for this attempt.
        for c in &handoff.credentials {
            if let Some(id) = &c.lease.id
                && let Err(e) = client.revoke_once(id).await
            {
                say(format_args!(
                    "could not revoke an unused credential of {} ({e}); it lapses at its expiry",
                    c.generator
                ));
            }
        }
    }
    prepared
}

/// Assembles what to inject and writes the files; on failure the lines are printed and
/// the exit code returned.
fn assemble_and_write(
    plan: &Plan,
    results: &fetch::Results,
    ids: &[args::SecretId],
) -> Result<Injection, ExitCode> {
    let injection = inject::assemble(plan, results, ids).map_err(|failures| {
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

/// Init mode with `--credentials-file`: generators are issued with handles (the `/v1`
/// call) and their handles collected for the daemon sidecar, which renews them and revokes
/// them when the Pod ends; other secrets are fetched as usual. The caller writes the
/// handoff once everything is in place (or revokes what was issued).
async fn issue_with_handles(
    plan: &Plan,
    client: &federated::FederatedClient,
    ids: &[args::SecretId],
) -> (fetch::Results, credentials::Handoff) {
    let (generators, others): (Vec<_>, Vec<_>) = ids
        .iter()
        .cloned()
        .partition(|id| matches!(id, args::SecretId::Generator(_)));
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let mut results: fetch::Results = futures_util::future::join_all(
        others
            .iter()
            .map(|id| fetch::with_retry(deadline, plan.timeout, || client.fetch_once(id))),
    )
    .await
    .into_iter()
    .zip(others.iter().cloned())
    .map(|(r, id)| (id, r))
    .collect();
    let mut handoff = credentials::Handoff::default();
    for id in generators {
        let args::SecretId::Generator(g) = &id else {
            continue;
        };
        let issued = fetch::with_retry(deadline, plan.timeout, || client.issue_once(g)).await;
        let answer = issued.map(|(data, lease)| {
            handoff.push(g, &lease);
            data
        });
        results.insert(id, answer);
    }
    (results, handoff)
}

/// Daemon mode: keep files current. Store secrets are re-fetched every
/// `--daemon-refresh-interval` (on failure the last files are kept and the fetch retried
/// with capped backoff and jitter); generator credentials follow their leases
/// ([`credentials::Keeper`]); handed-off credentials (`--credentials-file`) are renewed.
/// Ends cleanly on SIGTERM or SIGINT, revoking what it holds unless
/// `--keep-credentials-on-exit`.
pub async fn daemon(plan: &Plan) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    use tokio::time::Instant;
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
    let client = match &fetcher {
        Fetcher::Federated(c) => Some(c),
        Fetcher::Local(_) => None,
    };
    // Generators of a Federation Server follow their leases; everything else is polled.
    let (wanted, polled): (Vec<args::GeneratorRef>, Vec<args::SecretId>) = {
        let mut wanted = Vec::new();
        let mut polled = Vec::new();
        for id in ids {
            match (&id, client) {
                (args::SecretId::Generator(g), Some(_)) => wanted.push(g.clone()),
                _ => polled.push(id),
            }
        }
        (wanted, polled)
    };
    let mut keeper = credentials::Keeper::new(credentials::Settings {
        renew_at: f64::from(plan.renewal_percent) / 100.0,
        grace: plan.grace,
    });
    let mut adopted: std::collections::BTreeMap<args::GeneratorRef, String> = Default::default();
    let mut polled_results = fetch::Results::new();
    let mut poll_at = Instant::now();
    let mut failed_polls: u32 = 0;
    let mut failures: std::collections::HashMap<args::SecretId, FetchError> = Default::default();
    'run: loop {
        let now = Instant::now();
        if !polled.is_empty() && now >= poll_at {
            let results = tokio::select! {
                r = fetcher.fetch_all(&polled, plan.timeout) => r,
                _ = term.recv() => break 'run,
                _ = int.recv() => break 'run,
            };
            let ok = results.values().all(Result::is_ok);
            for (id, r) in results {
                match r {
                    Ok(data) => {
                        polled_results.insert(id, Ok(data));
                    }
                    Err(e) => {
                        tracing::warn!(secret = %id, error = %e, "cannot fetch");
                        // The last good value stays.
                        polled_results.entry(id).or_insert(Err(e));
                    }
                }
            }
            poll_at = if ok {
                failed_polls = 0;
                Instant::now() + plan.refresh
            } else {
                let cap = plan.refresh.max(Duration::from_secs(1));
                let wait = fetch::backoff(failed_polls, Duration::from_secs(1), cap);
                failed_polls = failed_polls.saturating_add(1);
                tracing::warn!(
                    retry_in_ms = wait.as_millis() as u64,
                    "refresh incomplete; files kept as they were"
                );
                Instant::now() + wait
            };
        }
        if let Some(client) = client {
            if let Some(path) = &plan.credentials_file {
                adopt_handoff(path, &wanted, &mut keeper, &mut adopted);
            }
            failures.clear();
            for (g, e) in keeper.step(client, &wanted, Instant::now()).await {
                tracing::warn!(generator = %format_args!("{}/{}/{}", g.namespace, g.kind, g.name), error = %e, "generator credential not refreshed");
                failures.insert(args::SecretId::Generator(g), e);
            }
        }
        let mut results = polled_results.clone();
        for (g, data) in keeper.values() {
            results.insert(args::SecretId::Generator(g.clone()), Ok(data.clone()));
        }
        for (id, e) in &failures {
            results.entry(id.clone()).or_insert_with(|| Err(e.clone()));
        }
        if !write_files(plan, &results) {
            keeper.hold_retired(Instant::now());
        }
        let mut wake = Instant::now() + plan.refresh;
        if !polled.is_empty() {
            wake = wake.min(poll_at);
        }
        if let Some(at) = keeper.next_deadline() {
            wake = wake.min(at);
        }
        if plan.credentials_file.is_some() {
            // Watch the handoff file for an init step's (re)written handles.
            wake = wake.min(Instant::now() + Duration::from_secs(1));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = term.recv() => break 'run,
            _ = int.recv() => break 'run,
        }
    }
    tracing::info!("signal received; exiting");
    if let Some(client) = client
        && keeper.handles() > 0
    {
        if plan.keep_on_exit {
            tracing::info!(
                credentials = keeper.handles(),
                "keeping credentials live (--keep-credentials-on-exit)"
            );
        } else {
            let held = keeper.handles();
            // Well inside Kubernetes' default 30 s termination grace period.
            let deadline = plan.timeout.min(Duration::from_secs(20));
            let failed = keeper.release(client, deadline).await;
            tracing::info!(
                revoked = held - failed,
                failed,
                "credentials revoked at exit"
            );
        }
    }
    ExitCode::SUCCESS
}

/// Adopts the handles an init step wrote; handles that left the file (the init step ran
/// again and issued anew) are revoked after the grace.
fn adopt_handoff(
    path: &std::path::Path,
    wanted: &[args::GeneratorRef],
    keeper: &mut credentials::Keeper,
    adopted: &mut std::collections::BTreeMap<args::GeneratorRef, String>,
) {
    let handoff = match credentials::Handoff::read(path) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the credentials file");
            return;
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (g, lease, lapses_at) in handoff.entries() {
        let Some(id) = lease.id.clone() else {
            continue;
        };
        if wanted.contains(&g) {
            tracing::warn!(generator = %format_args!("{}/{}/{}", g.namespace, g.kind, g.name), "generator both handed off and written to files; the handed-off credential is left to the server");
            continue;
        }
        seen.insert(g.clone());
        if !keeper.holds(&g, &id) {
            tracing::info!(generator = %format_args!("{}/{}/{}", g.namespace, g.kind, g.name), "handed-off credential adopted");
            keeper.adopt(g.clone(), lease, lapses_at);
            adopted.insert(g, id);
        }
    }
    let gone: Vec<args::GeneratorRef> = adopted
        .keys()
        .filter(|g| !seen.contains(*g))
        .cloned()
        .collect();
    for g in gone {
        adopted.remove(&g);
        keeper.forget(&g);
    }
}

/// Rewrites each file whose content changed; files whose secret could not be had keep
/// their last content. True when every file is current.
fn write_files(plan: &Plan, results: &fetch::Results) -> bool {
    let mut ok = true;
    for spec in &plan.files {
        match inject::render_file(plan, results, spec) {
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
