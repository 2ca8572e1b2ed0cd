//! From annotations to an injected Pod (docs/webhook.md, "What gets injected").
//!
//! - **Environment** (`env-vars: "true"`): the init container `esi-cli-install` copies
//!   `esi-cli` onto the in-memory volume `esi-cli-bin`; every container's command becomes
//!   `/esi/bin/esi-cli --mode=init … --binary-path=<command[0]> --args=<the rest, comma
//!   joined>`, so esi-cli fetches the secrets and execs the application with them.
//! - **Files** (`inject-on-file`, `file-secrets: "true"`), in either mode: the init
//!   container `esi-cli-init` writes them once for the Pod onto the in-memory volume
//!   `esi-cli-files`, mounted read-only into every container file by file (by directory
//!   when the daemon rewrites them).
//! - **Daemon** (`daemon-refresh-interval`): the native sidecar `esi-cli-daemon` (an init
//!   container with `restartPolicy: Always`) keeps the files current and, with
//!   generators, renews the credentials the init step issued (`--credentials-file` on the
//!   volume `esi-cli-state`) and revokes them when the Pod ends.
//! - **Token** (with `federated-server-url`): the projected volume `esi-cli-token`, a
//!   ServiceAccount token for the federation audience and the cluster CA
//!   (`kube-root-ca.crt`), mounted read-only into the containers that run esi-cli. With
//!   `federated-auth: spiffe` no ServiceAccount token is projected (the volume holds the CA
//!   only, when `federated-ca-crt` does not name another): esi-cli reads the SVID files
//!   that spiffe-helper writes into a volume of the Pod (`federated-x509-svid`,
//!   `federated-x509-svid-key`, or `federated-token` for a JWT-SVID), which its containers
//!   mount read-only.
//!
//! Every esi-cli command line is checked by esi-cli's own parser before the Pod is
//! admitted; every refusal names the annotation or field to fix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    KeyToPath, LocalObjectReference, Pod, PodSpec, ProjectedVolumeSource, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::annotations::{self, Annotations, Key, Parsed, split_list};
use super::{Denial, Settings};
use crate::cli::args::{ArgsError, ArgvError, FileSource, Plan, check_argv};

/// Where `esi-cli` is copied to in the application containers.
pub const BIN_DIR: &str = "/esi/bin";
/// Most containers and init containers of a Pod the webhook injects into (each costs a
/// checked esi-cli command line and a share of the patch).
pub const MAX_CONTAINERS: usize = 64;
/// Where the projected token and the cluster CA are mounted.
pub const TOKEN_DIR: &str = "/esi/token";
/// Where the credentials handoff lives (init step → daemon).
pub const STATE_DIR: &str = "/esi/state";
/// The directory of ESE's `file-secrets` file (`/secrets/secrets.json`).
pub const SECRETS_DIR: &str = "/secrets";
/// The Pod's own ServiceAccount mount (local mode reads the API with it).
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Names the injection adds to a Pod; a Pod already using one is denied (403).
pub const VOLUME_BIN: &str = "esi-cli-bin";
/// The projected token volume.
pub const VOLUME_TOKEN: &str = "esi-cli-token";
/// The written files.
pub const VOLUME_FILES: &str = "esi-cli-files";
/// The credentials handoff.
pub const VOLUME_STATE: &str = "esi-cli-state";
/// Copies esi-cli (environment injection).
pub const CONTAINER_INSTALL: &str = "esi-cli-install";
/// Writes the files (file injection without environment injection).
pub const CONTAINER_INIT: &str = "esi-cli-init";
/// Keeps files and credentials current (native sidecar).
pub const CONTAINER_DAEMON: &str = "esi-cli-daemon";

const RESERVED_VOLUMES: [&str; 4] = [VOLUME_BIN, VOLUME_TOKEN, VOLUME_FILES, VOLUME_STATE];
const RESERVED_CONTAINERS: [&str; 3] = [CONTAINER_INSTALL, CONTAINER_INIT, CONTAINER_DAEMON];

/// Directories (and everything below the first group, and below any top-level `/lib*`) a
/// secret file may not be put in: mounting the files volume there would hide what the
/// image keeps there (programs, libraries, runtime state), or make a directory programs
/// write to read-only.
const SYSTEM_TREES: [&str; 9] = [
    "/bin", "/boot", "/dev", "/proc", "/sbin", "/sys", "/usr", "/run", "/var/run",
];
const SYSTEM_DIRS: [&str; 12] = [
    "/", "/etc", "/home", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/lib", "/var/log",
    "/var/tmp",
];

/// Whether `dir` is one a secret file may not be put in ([`SYSTEM_TREES`],
/// [`SYSTEM_DIRS`], `/lib*`).
fn system_dir(dir: &Path) -> bool {
    if secrets_subdir(dir) {
        return false;
    }
    let lib = dir.components().nth(1).is_some_and(
        |c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with("lib")),
    );
    lib || SYSTEM_DIRS.iter().any(|d| dir == Path::new(d))
        || SYSTEM_TREES.iter().any(|d| under(dir, Path::new(d)))
}

/// Directories below `/run/secrets/<name>/` (or `/var/run/secrets/…`), the usual place
/// of secret files in container images (Docker's convention), stay allowed, except the
/// ones Kubernetes and cloud agents mount their tokens at (`kubernetes.io`,
/// `eks.amazonaws.com`, `azure`, `tokens`): mounting there would hide a token.
fn secrets_subdir(dir: &Path) -> bool {
    const TOKEN_DIRS: [&str; 4] = ["kubernetes.io", "eks.amazonaws.com", "azure", "tokens"];
    ["/run/secrets", "/var/run/secrets"].iter().any(|base| {
        dir.strip_prefix(base).is_ok_and(|rest| {
            matches!(rest.components().next(), Some(Component::Normal(n))
                if !TOKEN_DIRS.contains(&n.to_string_lossy().as_ref()))
        })
    })
}

/// The JSON patch that injects `pod` (empty: admit it unchanged), or why it cannot be.
///
/// # Errors
/// A [`Denial`] naming the annotation or field to fix.
pub fn mutate(pod: &Pod, settings: &Settings) -> Result<Patch, Denial> {
    let a = match annotations::parse(pod.metadata.annotations.as_ref())? {
        Parsed::NotOurs | Parsed::Skipped => return Ok(Patch(Vec::new())),
        Parsed::Request(a) => a,
    };
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Denial::invalid("spec", "the Pod has no spec"))?;
    // Each container costs an esi-cli command line checked and written: bounded. Our own
    // init containers do not count (re-admission of an injected Pod).
    let containers = spec.containers.len()
        + spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| !RESERVED_CONTAINERS.contains(&c.name.as_str()))
            .count();
    if containers > MAX_CONTAINERS {
        return Err(Denial::invalid(
            "spec.containers",
            format!("more than {MAX_CONTAINERS} containers and init containers in one Pod"),
        ));
    }
    if a.injected {
        return already_injected(&a, settings, spec).map(|()| Patch(Vec::new()));
    }
    inject(&a, settings, pod)
}

/// The JSON patch being built: only what the injection adds or changes, addressed in the
/// object the API server holds (so fields this build does not know are never touched, and
/// the Pod is neither copied nor converted whole: second review H1).
#[derive(Default)]
struct Ops(Vec<PatchOperation>);

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn encode(v: impl serde::Serialize) -> Result<serde_json::Value, Denial> {
    serde_json::to_value(v).map_err(|_| Denial {
        code: 500,
        field: "webhook".into(),
        message: "cannot encode the injection".into(),
    })
}

impl Ops {
    /// Sets the member at `path` (added, or replacing what is there).
    fn set(&mut self, path: PointerBuf, value: impl serde::Serialize) -> Result<(), Denial> {
        let value = encode(value)?;
        self.0
            .push(PatchOperation::Add(AddOperation { path, value }));
        Ok(())
    }

    /// Appends `items` to the array at `path`, which holds `existing` elements (`None`:
    /// absent or null, then set whole).
    fn append<T: serde::Serialize>(
        &mut self,
        path: &[&str],
        existing: Option<usize>,
        items: &[T],
    ) -> Result<(), Denial> {
        if items.is_empty() {
            return Ok(());
        }
        let Some(n) = existing else {
            return self.set(pointer(path), items);
        };
        for (k, item) in items.iter().enumerate() {
            let mut at = pointer(path);
            at.push_back(n + k);
            self.set(at, item)?;
        }
        Ok(())
    }
}

/// Reinvocation (or a Pod copied from an injected one): nothing more to do, provided the
/// injection is really there and is exactly what the annotations make now (the annotation
/// alone is no way to skip the injection, nor to smuggle in other containers): our init
/// containers, those and only those called for, each as the webhook makes it (image,
/// command, no arguments or environment of its own, security context, mounts); our
/// volumes as made; in env mode the wrapped containers (those `containers` names, when
/// set) with the exact shared flags, no `args`, and esi-cli's mounts. Not compared: the
/// user of esi-cli's own containers (taken from them, non-root: it follows the
/// application's, which a later webhook may change), resource quantities (the API server
/// rewrites them canonically) and fields the API server defaults, at their default.
/// Containers without esi-cli (added by a later webhook) are left alone. The comparison is
/// with what this build and these settings make: see docs/webhook.md, "Reinvocation and
/// names", for a rollout that changes them.
fn already_injected(a: &Annotations, settings: &Settings, spec: &PodSpec) -> Result<(), Denial> {
    let field = Key::Injected.full();
    let inconsistent = |what: String| {
        Denial::invalid(
            field.clone(),
            format!(
                "is set by the webhook on the Pods it injected, and this Pod's injection is \
                 not what its annotations make ({what}): remove the annotation and what was \
                 injected (use skip: \"true\" to leave a Pod alone)"
            ),
        )
    };
    let wrapper = format!("{BIN_DIR}/esi-cli");
    let wrapped: Vec<(usize, &Container)> = spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| c.command.as_ref().and_then(|c| c.first()) == Some(&wrapper))
        .collect();
    let ours: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| RESERVED_CONTAINERS.contains(&c.name.as_str()))
        .collect();
    if ours.is_empty() {
        return Err(Denial::invalid(
            field,
            "is set by the webhook on the Pods it injected, and this Pod has no injected \
             container: remove it (use skip: \"true\" to leave a Pod alone)",
        ));
    }
    let cmds = Commands::new(a, settings, wrapped.len())?;
    let file_paths: Vec<PathBuf> = cmds
        .files
        .iter()
        .flat_map(|p| p.files.iter().map(|f| f.path.clone()))
        .collect();
    let dirs = file_dirs(&file_paths, a)?;
    let pod_mounts: Vec<&VolumeMount> = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| !RESERVED_VOLUMES.contains(&m.name.as_str()))
        .collect();
    let mirrored = match cmds.init.is_some() || cmds.daemon.is_some() {
        true => mirrored_mounts(&cmds.req, cmds.files.as_ref(), &pod_mounts)?,
        false => Vec::new(),
    };
    let called_for = [
        (CONTAINER_INSTALL, cmds.req.env),
        (CONTAINER_INIT, cmds.init.is_some()),
        (CONTAINER_DAEMON, cmds.daemon.is_some()),
    ];
    for c in &ours {
        if !called_for.iter().any(|(n, on)| *on && *n == c.name) {
            return Err(inconsistent(format!("{} is not called for", c.name)));
        }
    }
    let users: Vec<(Option<i64>, Option<i64>)> = ours
        .iter()
        .filter(|c| c.name != CONTAINER_INSTALL)
        .map(|c| {
            let sc = c.security_context.as_ref();
            (
                sc.and_then(|s| s.run_as_user),
                sc.and_then(|s| s.run_as_group),
            )
        })
        .collect();
    let user = match users.first() {
        None => (settings.run_as_user, settings.run_as_group),
        Some(&(Some(uid), Some(gid)))
            if uid > 0 && users.iter().all(|u| *u == (Some(uid), Some(gid))) =>
        {
            (uid, gid)
        }
        Some(_) => {
            return Err(inconsistent(
                "esi-cli's containers run as root, as no user, or as different users".into(),
            ));
        }
    };
    let expected = added(&cmds, settings, &dirs, &mirrored, user);
    for e in &expected.init_containers {
        let name = &e.name;
        let found: Vec<&&Container> = ours.iter().filter(|c| c.name == *name).collect();
        match found.as_slice() {
            [c] if c.command != e.command => {
                return Err(inconsistent(format!("{name} has another command")));
            }
            [c] if as_made(c, e) != *e => {
                return Err(inconsistent(format!(
                    "{name} is not as the webhook makes it: its image, arguments, environment, \
                     security context or mounts differ"
                )));
            }
            [_] => {}
            [] => return Err(inconsistent(format!("{name} is missing"))),
            _ => return Err(inconsistent(format!("{name} appears more than once"))),
        }
    }
    for v in &expected.volumes {
        let found: Vec<&Volume> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|x| x.name == v.name)
            .collect();
        match found.as_slice() {
            [x] if volume_as_made(x) == *v => {}
            [] => return Err(inconsistent(format!("volume {} is missing", v.name))),
            _ => {
                return Err(inconsistent(format!(
                    "volume {} is not as the webhook makes it",
                    v.name
                )));
            }
        }
    }
    match &cmds.env_prefix {
        Some(prefix) => {
            let prefix = in_pod(prefix);
            if wrapped.is_empty() {
                return Err(inconsistent("no container runs esi-cli".into()));
            }
            if !a.containers.is_empty() {
                let mut names: Vec<&str> = wrapped.iter().map(|(_, c)| c.name.as_str()).collect();
                let mut want: Vec<&str> = a.containers.iter().map(String::as_str).collect();
                names.sort_unstable();
                want.sort_unstable();
                if names != want {
                    return Err(inconsistent(format!(
                        "the containers running esi-cli are not those {} names",
                        Key::Containers.full()
                    )));
                }
            }
            for (i, c) in wrapped {
                let command = c.command.as_deref().unwrap_or_default();
                let tail = command.get(prefix.len()..).unwrap_or_default();
                let ok = command.starts_with(&prefix)
                    && tail
                        .first()
                        .is_some_and(|t| t.starts_with("--binary-path="))
                    && tail.len() <= 2
                    && tail.get(1).is_none_or(|t| t.starts_with("--args="));
                if !ok {
                    return Err(inconsistent(format!(
                        "spec.containers[{i}]'s esi-cli command"
                    )));
                }
                if c.args.as_ref().is_some_and(|a| !a.is_empty()) {
                    return Err(inconsistent(format!(
                        "spec.containers[{i}] has args besides esi-cli's --args"
                    )));
                }
                let mounts = c.volume_mounts.as_deref().unwrap_or_default();
                let mut needed = vec![bin_mount(true)];
                if cmds.req.token_volume {
                    needed.push(token_mount());
                }
                if cmds.handoff_in_env {
                    needed.push(state_mount());
                }
                if needed.iter().any(|n| !mounts.contains(n)) {
                    return Err(inconsistent(format!(
                        "spec.containers[{i}] lacks esi-cli's mounts"
                    )));
                }
            }
        }
        None if !wrapped.is_empty() => {
            return Err(inconsistent(
                "a container runs esi-cli without env-vars".into(),
            ));
        }
        None => {}
    }
    Ok(())
}

/// One of our init containers as found, with what the API server changes on its own put
/// back as the webhook made it: `terminationMessagePath` at its default, and the resource
/// quantities (rewritten canonically: `0.5` becomes `500m`).
fn as_made(found: &Container, made: &Container) -> Container {
    let mut c = found.clone();
    if c.termination_message_path.as_deref() == Some("/dev/termination-log") {
        c.termination_message_path = None;
    }
    c.resources.clone_from(&made.resources);
    c
}

/// One of our volumes as found, the projected volume's defaulted `defaultMode` (0644)
/// put back as the webhook made it (absent).
fn volume_as_made(found: &Volume) -> Volume {
    let mut v = found.clone();
    if let Some(p) = v.projected.as_mut()
        && p.default_mode == Some(0o644)
    {
        p.default_mode = None;
    }
    v
}

/// One argument of an esi-cli command line and whether it came from an annotation (then
/// `$` is doubled in the Pod, so that the kubelet's `$(VAR)` expansion leaves it as
/// checked) or from the container's own command (kept verbatim: the kubelet expands it as
/// it did before the injection).
struct Arg {
    text: String,
    from_annotation: bool,
}

fn flag(name: &str, value: &str) -> Arg {
    Arg {
        text: format!("--{name}={value}"),
        from_annotation: true,
    }
}

/// The command line as checked (what esi-cli will receive).
fn texts(argv: &[Arg]) -> Vec<&str> {
    argv.iter().map(|a| a.text.as_str()).collect()
}

/// The command line as written into the Pod.
fn in_pod(argv: &[Arg]) -> Vec<String> {
    argv.iter()
        .map(|a| match a.from_annotation {
            true => a.text.replace('$', "$$"),
            false => a.text.clone(),
        })
        .collect()
}

/// The annotation an esi-cli flag comes from.
fn annotation_of_flag(flag: &str, files_from_file_secrets: bool) -> String {
    let key = match flag.trim_start_matches('-') {
        "external-secrets" => Key::ExternalSecret,
        "federated-server-url" => Key::FederatedServerUrl,
        "federated-store" => Key::FederatedStore,
        "federated-generators" => Key::FederatedGenerators,
        "federated-token" => Key::FederatedToken,
        "federated-x509-svid" => Key::FederatedX509Svid,
        "federated-x509-svid-key" => Key::FederatedX509SvidKey,
        "federated-auth" => Key::FederatedAuth,
        "federated-ca-crt" => Key::FederatedCaCrt,
        "daemon-refresh-interval" => Key::DaemonRefreshInterval,
        "inject-on-env" => Key::InjectOnEnv,
        "inject-on-file" if files_from_file_secrets => Key::FileSecrets,
        "inject-on-file" => Key::InjectOnFile,
        _ => return "secretless.externalsecrets.com/ annotations".into(),
    };
    key.full()
}

/// Checks a command line with esi-cli's parser; a refusal names the annotation (or, for
/// `--binary-path`/`--args`, the container field) it comes from.
fn check(argv: &[Arg], a: &Annotations, container: Option<usize>) -> Result<Plan, Denial> {
    #[cfg(test)]
    tests::CHECKED_BYTES
        .with(|n| n.set(n.get() + argv.iter().map(|a| a.text.len()).sum::<usize>()));
    let files_from_file_secrets = a.inject_on_file.is_none();
    check_argv(texts(argv)).map_err(|e| {
        let (flag, message) = match &e {
            ArgvError::Syntax { flag, message } => {
                (flag.clone().unwrap_or_default(), message.clone())
            }
            ArgvError::Invalid(ArgsError::Invalid { flag, reason }) => {
                (format!("--{flag}"), reason.clone())
            }
        };
        let field = match (flag.as_str(), container) {
            ("--binary-path" | "--args", Some(i)) => format!("spec.containers[{i}].command"),
            _ => annotation_of_flag(&flag, files_from_file_secrets),
        };
        Denial::invalid(field, format!("esi-cli would refuse {flag}: {message}"))
    })
}

/// What the annotations ask for, checked together, and the flags every esi-cli gets.
struct Request<'a> {
    a: &'a Annotations,
    env: bool,
    daemon: bool,
    /// Generators are handed from the init step to the daemon (`--credentials-file`).
    handoff: bool,
    federated: bool,
    /// The injected token volume is needed (some path not overridden).
    token_volume: bool,
    /// `inject-on-file` items (with file-secrets' default first).
    files: Vec<String>,
    /// Flags common to every esi-cli of the Pod.
    common: Vec<Arg>,
}

impl<'a> Request<'a> {
    fn new(a: &'a Annotations) -> Result<Request<'a>, Denial> {
        let env = a.env_vars;
        let wants_files = a.file_secrets || a.inject_on_file.is_some();
        if !env && !wants_files {
            return Err(Denial::invalid(
                Key::EnvVars.full(),
                "no injection is selected: set env-vars: \"true\" (environment variables) or \
                 file-secrets: \"true\" / inject-on-file (files), or skip: \"true\"",
            ));
        }
        if a.inject_on_env.is_some() && !env {
            return Err(Denial::invalid(
                Key::InjectOnEnv.full(),
                "sets environment variables: it needs env-vars: \"true\"",
            ));
        }
        let federated = a.server_url.is_some();
        if !federated {
            let fed_only = [
                (Key::FederatedStore, a.store.is_some()),
                (Key::FederatedGenerators, a.generators.is_some()),
                (Key::FederatedToken, a.token.is_some()),
                (Key::FederatedX509Svid, a.x509_svid.is_some()),
                (Key::FederatedX509SvidKey, a.x509_svid_key.is_some()),
                (Key::FederatedCaCrt, a.ca_crt.is_some()),
                (Key::FederatedAuth, a.auth),
            ];
            if let Some((key, _)) = fed_only.iter().find(|(_, set)| *set) {
                return Err(Denial::invalid(
                    key.full(),
                    "is for a Federation Server: it needs federated-server-url",
                ));
            }
        }
        let mut files = Vec::new();
        if a.file_secrets {
            match a.external_secret_names().as_slice() {
                [one] => files.push(format!("{SECRETS_DIR}/secrets.json={one}")),
                [] if a.inject_on_file.is_some() => {}
                [] => {
                    return Err(Denial::invalid(
                        Key::FileSecrets.full(),
                        format!(
                            "writes the externalsecret to {SECRETS_DIR}/secrets.json: set \
                             externalsecret (one name), or name the files with inject-on-file"
                        ),
                    ));
                }
                several => {
                    return Err(Denial::invalid(
                        Key::FileSecrets.full(),
                        format!(
                            "writes one externalsecret to {SECRETS_DIR}/secrets.json, not {} \
                             ({}): name each file with inject-on-file instead",
                            several.len(),
                            several.join(", ")
                        ),
                    ));
                }
            }
        }
        files.extend(
            split_list(a.inject_on_file.as_deref())
                .into_iter()
                .map(str::to_string),
        );
        let daemon = a.refresh.is_some();
        let generators = !split_list(a.generators.as_deref()).is_empty();
        let handoff = daemon && generators;
        if daemon && !handoff && files.is_empty() {
            return Err(Denial::invalid(
                Key::DaemonRefreshInterval.full(),
                "the daemon keeps files current (inject-on-file, file-secrets) or renews \
                 generator credentials (federated-generators): this Pod has neither",
            ));
        }
        if federated
            && a.spiffe
            && a.token.is_none()
            && a.x509_svid.is_none()
            && a.x509_svid_key.is_none()
        {
            return Err(Denial::invalid(
                Key::FederatedAuth.full(),
                "spiffe: name the SVID files that spiffe-helper writes into a volume of the \
                 Pod: federated-x509-svid and federated-x509-svid-key (svid.pem, \
                 svid_key.pem), or federated-token (jwt_svid.token)",
            ));
        }
        let mut common = Vec::new();
        if let Some(url) = &a.server_url {
            common.push(flag("federated-server-url", url));
            if let Some(s) = &a.store {
                common.push(flag("federated-store", s));
            }
            if let Some(g) = &a.generators {
                common.push(flag("federated-generators", g));
            }
            if a.spiffe {
                common.push(flag("federated-auth", "spiffe"));
            }
            if let Some(x) = &a.x509_svid {
                common.push(flag("federated-x509-svid", x));
            }
            if let Some(k) = &a.x509_svid_key {
                common.push(flag("federated-x509-svid-key", k));
            }
            // With spiffe, a token file is only ever the Pod's own JWT-SVID.
            match (&a.token, a.spiffe) {
                (Some(t), _) => common.push(flag("federated-token", t)),
                (None, false) => {
                    common.push(flag("federated-token", &format!("{TOKEN_DIR}/token")))
                }
                (None, true) => {}
            }
            let ca = a.ca_crt.clone().unwrap_or(format!("{TOKEN_DIR}/ca.crt"));
            common.push(flag("federated-ca-crt", &ca));
        }
        Ok(Request {
            a,
            env,
            daemon,
            handoff,
            federated,
            token_volume: federated && ((a.token.is_none() && !a.spiffe) || a.ca_crt.is_none()),
            files,
            common,
        })
    }

    /// With `federated-auth: spiffe`, the SVID files esi-cli reads, with their annotations.
    fn svid_files(&self) -> Vec<(Key, &str)> {
        if !self.a.spiffe {
            return Vec::new();
        }
        [
            (Key::FederatedToken, &self.a.token),
            (Key::FederatedX509Svid, &self.a.x509_svid),
            (Key::FederatedX509SvidKey, &self.a.x509_svid_key),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_deref().map(|p| (k, p)))
        .collect()
    }

    fn credentials_file(&self) -> Option<Arg> {
        self.handoff
            .then(|| flag("credentials-file", &format!("{STATE_DIR}/credentials.json")))
    }

    fn inject_on_file(&self, items: &[String]) -> Option<Arg> {
        (!items.is_empty()).then(|| flag("inject-on-file", &items.join(",")))
    }

    /// The flags every application container's esi-cli gets (environment injection):
    /// the same for all, so checked once ([`Commands::new`]). Files are not among them:
    /// `esi-cli-init` writes those once for the Pod. `handoff`: this step issues the
    /// generator credentials the daemon renews.
    fn env_prefix(&self, handoff: bool) -> Vec<Arg> {
        let mut argv = vec![Arg {
            text: format!("{BIN_DIR}/esi-cli"),
            from_annotation: false,
        }];
        argv.push(flag("mode", "init"));
        argv.extend(self.common.iter().map(flag_copy));
        if let Some(es) = &self.a.external_secret {
            argv.push(flag("external-secrets", es));
        }
        argv.push(flag(
            "inject-on-env",
            self.a.inject_on_env.as_deref().unwrap_or("*"),
        ));
        if handoff {
            argv.extend(self.credentials_file());
        }
        argv
    }

    /// An application container's command line (environment injection): `prefix` (from
    /// [`Request::env_prefix`], checked once by [`Commands::new`]) and the container's
    /// `--binary-path`/`--args`, checked alone (a short command line), so that the
    /// annotations are parsed once per Pod, not once per container.
    fn env_argv(&self, i: usize, c: &Container, prefix: &[Arg]) -> Result<Vec<Arg>, Denial> {
        // esi-cli reads the SVID files in this container: it must mount them (by their
        // directory: a file mounted alone by subPath is not updated when rotated).
        for (key, path) in self.svid_files() {
            let mounted = c.volume_mounts.iter().flatten().any(|m| {
                let dir = Path::new(&m.mount_path);
                under(Path::new(path), dir) && dir != Path::new(path)
            });
            if !mounted {
                return Err(Denial::invalid(
                    key.full(),
                    format!(
                        "{path}: esi-cli reads it in container {:?} (env-vars), which mounts no \
                         volume holding it: mount there the volume spiffe-helper writes to",
                        c.name
                    ),
                ));
            }
        }
        let field = format!("spec.containers[{i}].command");
        let command = c.command.as_deref().unwrap_or_default();
        let Some((program, first)) = command.split_first().filter(|(p, _)| !p.is_empty()) else {
            return Err(Denial::invalid(
                field,
                format!(
                    "container {:?} has no command: the webhook cannot know the image's \
                     entrypoint, which esi-cli must exec; write it as command (and args) in \
                     the Pod spec, or set skip: \"true\"",
                    c.name
                ),
            ));
        };
        let rest: Vec<(String, &String)> = first
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("spec.containers[{i}].command[{}]", j + 1), s))
            .chain(
                c.args
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(j, s)| (format!("spec.containers[{i}].args[{j}]"), s)),
            )
            .collect();
        if let Some((at, _)) = rest.iter().find(|(_, s)| s.contains(',')) {
            return Err(Denial::invalid(
                at.clone(),
                "holds a comma, which esi-cli's --args cannot carry (it splits the \
                 application's arguments at commas): pass that value another way (an \
                 environment variable, a file)",
            ));
        }
        // One map of the container's variables (the last definition wins, as in the
        // kubelet), not a scan of env per reference (second review H1).
        let env: HashMap<&str, &EnvVar> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let env_from = c.env_from.as_ref().is_some_and(|f| !f.is_empty());
        for (at, arg) in &rest {
            for name in var_refs(arg) {
                if let Some(why) = unsafe_reference(&env, env_from, name) {
                    return Err(Denial::invalid(
                        at.clone(),
                        format!(
                            "$({name}) {why}: the kubelet expands it inside esi-cli's --args, \
                             which splits at commas, so a comma in the value would split the \
                             argument; write the value in env (value: …), or read the \
                             variable in the program (sh -c '… \"$VAR\"'), or use $$({name}) \
                             for a literal"
                        ),
                    ));
                }
            }
        }
        let mut tail = vec![Arg {
            text: format!("--binary-path={program}"),
            from_annotation: false,
        }];
        let rest: Vec<&str> = rest.iter().map(|(_, s)| s.as_str()).collect();
        if !rest.is_empty() {
            tail.push(Arg {
                text: format!("--args={}", rest.join(",")),
                from_annotation: false,
            });
        }
        // The container's own part does not interact with the shared flags: checked in a
        // minimal valid command line around it.
        let mut argv = vec![
            Arg {
                text: format!("{BIN_DIR}/esi-cli"),
                from_annotation: false,
            },
            flag("mode", "init"),
            flag("external-secrets", "x"),
        ];
        argv.extend(tail.iter().map(flag_copy));
        let own = check(&argv, self.a, Some(i))?;
        if own.args != rest || own.binary.as_deref() != Some(Path::new(program)) {
            return Err(Denial::invalid(
                format!("spec.containers[{i}].command"),
                "the command does not pass through esi-cli's --binary-path and --args unchanged",
            ));
        }
        Ok(prefix.iter().map(flag_copy).chain(tail).collect())
    }

    /// The file-writing init container's command line (files without environment).
    fn init_argv(&self, settings: &Settings, handoff: bool) -> Result<(Vec<Arg>, Plan), Denial> {
        let mut argv = vec![program(settings), flag("mode", "init")];
        argv.extend(self.common.iter().map(flag_copy));
        argv.extend(self.inject_on_file(&self.files));
        if handoff {
            argv.extend(self.credentials_file());
        }
        let plan = check(&argv, self.a, None)?;
        // esi-cli splits `secret.key` at a known secret name first; the file step cannot be
        // told the externalsecret names (they would ask for environment variables), so a
        // reference that reads differently without them is refused.
        if let Some(es) = &self.a.external_secret {
            let mut with_names: Vec<Arg> = vec![program(settings), flag("mode", "daemon")];
            with_names.extend(self.common.iter().map(flag_copy));
            with_names.push(flag("external-secrets", es));
            with_names.extend(self.inject_on_file(&self.files));
            let reference = check(&with_names, self.a, None)?;
            for (mine, theirs) in plan.files.iter().zip(&reference.files) {
                if mine != theirs {
                    return Err(Denial::invalid(
                        Key::InjectOnFile.full(),
                        format!(
                            "{}: the reference reads differently without the externalsecret \
                             names (a name with a dot); file injection does not know them: \
                             rename the secret or use env-vars: \"true\"",
                            mine.path.display()
                        ),
                    ));
                }
            }
        }
        Ok((argv, plan))
    }

    /// The daemon's command line: the files it keeps (without those of generators when
    /// their credentials are handed off: the init step wrote them and the daemon renews
    /// the credentials) and the handoff.
    fn daemon_argv(&self, settings: &Settings, files: &Plan) -> Result<Vec<Arg>, Denial> {
        let generator_file = |f: &crate::cli::args::FileSpec| match &f.source {
            FileSource::Secret(r) => files.generators.iter().any(|g| g.name == r.secret),
            FileSource::Template(_) => false,
        };
        let kept: Vec<String> = self
            .files
            .iter()
            .zip(&files.files)
            .filter(|(_, f)| !(self.handoff && generator_file(f)))
            .map(|(item, _)| item.clone())
            .collect();
        let mut argv = vec![program(settings), flag("mode", "daemon")];
        argv.extend(self.common.iter().map(flag_copy));
        argv.extend(self.inject_on_file(&kept));
        if let Some(r) = &self.a.refresh {
            argv.push(flag("daemon-refresh-interval", r));
        }
        argv.extend(self.credentials_file());
        check(&argv, self.a, None)?;
        Ok(argv)
    }
}

/// The `$(NAME)` references the kubelet expands in a command or argument (`$$` is a
/// literal `$`), in order.
fn var_refs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            out.push(&inner[..end]);
            rest = &inner[end + 1..];
        } else {
            rest = after;
        }
    }
    out
}

/// Why the value `$(name)` expands to in a container (its variables `env`, and whether it
/// has `envFrom`) could hold a comma, or `None` when it cannot: a literal `value` without
/// a comma (and without references of its own), a single-valued field of the Pod
/// ([`SINGLE_VALUED_FIELDS`], a label), a resource quantity, or a variable the container
/// does not define (the kubelet leaves `$(name)` as written). Any other source (a
/// ConfigMap, a Secret, an annotation, `status.podIPs`, a source this build does not
/// know) could.
fn unsafe_reference(env: &HashMap<&str, &EnvVar>, env_from: bool, name: &str) -> Option<String> {
    let Some(var) = env.get(name) else {
        return match env_from {
            true => Some(
                "may come from the container's envFrom (a ConfigMap or Secret), whose values \
                 the webhook cannot see"
                    .into(),
            ),
            false => None,
        };
    };
    if let Some(from) = &var.value_from {
        let single = match from {
            EnvVarSource {
                field_ref: Some(f),
                resource_field_ref: None,
                config_map_key_ref: None,
                secret_key_ref: None,
            } => single_valued_field(&f.field_path),
            EnvVarSource {
                field_ref: None,
                resource_field_ref: Some(_),
                config_map_key_ref: None,
                secret_key_ref: None,
            } => true,
            _ => false,
        };
        return match single {
            true => None,
            false => Some(format!(
                "takes its value from env {name}'s valueFrom (a ConfigMap, a Secret, an \
                 annotation, a list such as status.podIPs), which may hold a comma"
            )),
        };
    }
    let value = var.value.as_deref().unwrap_or_default();
    if value.contains(',') {
        return Some(format!(
            "expands to env {name}'s value, which holds a comma"
        ));
    }
    if value.contains("$(") {
        return Some(format!(
            "expands to env {name}'s value, which refers to other variables"
        ));
    }
    None
}

/// Pod fields a `fieldRef` reads that hold one value without a comma (names, a UID, one
/// IP). `status.podIPs` and `status.hostIPs` are comma lists on dual-stack clusters, and
/// annotations may hold anything.
const SINGLE_VALUED_FIELDS: [&str; 7] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.hostIP",
];

/// Whether a `fieldRef` path reads a single value without a comma: one of
/// [`SINGLE_VALUED_FIELDS`], or a label (label values are `[A-Za-z0-9_.-]`).
fn single_valued_field(path: &str) -> bool {
    SINGLE_VALUED_FIELDS.contains(&path)
        || path
            .strip_prefix("metadata.labels['")
            .is_some_and(|rest| rest.ends_with("']"))
}

fn flag_copy(f: &Arg) -> Arg {
    Arg {
        text: f.text.clone(),
        from_annotation: f.from_annotation,
    }
}

fn program(settings: &Settings) -> Arg {
    Arg {
        text: settings.cli_path.clone(),
        from_annotation: false,
    }
}

/// Every esi-cli command line the annotations make, checked, except the application
/// containers' own `--binary-path`/`--args` (see [`Request::env_argv`]). The same for a
/// Pod being injected and for one re-admitted (whose commands must still be these).
struct Commands<'a> {
    req: Request<'a>,
    /// The application containers' shared flags (environment injection).
    env_prefix: Option<Vec<Arg>>,
    /// `esi-cli-init`: writes the files, once for the Pod.
    init: Option<Vec<Arg>>,
    /// `esi-cli-daemon`.
    daemon: Option<Vec<Arg>>,
    /// The files as esi-cli reads them (paths, and which secret or template each holds).
    files: Option<Plan>,
    /// The generator credentials handed to the daemon are issued by the application
    /// container's esi-cli (not by `esi-cli-init`).
    handoff_in_env: bool,
}

impl<'a> Commands<'a> {
    /// `wrapped`: how many application containers run esi-cli (environment injection).
    fn new(a: &'a Annotations, settings: &Settings, wrapped: usize) -> Result<Self, Denial> {
        let req = Request::new(a)?;
        // The files: written once, by esi-cli-init, whatever the mode.
        let (init, files) = match req.files.is_empty() {
            true => (None, None),
            false => {
                let (argv, plan) = req.init_argv(settings, false)?;
                (Some(argv), Some(plan))
            }
        };
        let file_generators: Vec<&str> = files
            .iter()
            .flat_map(|p| p.files.iter())
            .filter_map(|f| match &f.source {
                FileSource::Secret(r) => Some(r.secret.as_str()),
                FileSource::Template(_) => None,
            })
            .filter(|name| {
                files
                    .iter()
                    .any(|p| p.generators.iter().any(|g| g.name == *name))
            })
            .collect();
        let mut env_prefix = None;
        let mut handoff_in_env = false;
        if req.env {
            let prefix = req.env_prefix(false);
            let mut probe: Vec<Arg> = prefix.iter().map(flag_copy).collect();
            probe.push(Arg {
                text: "--binary-path=/x".into(),
                from_annotation: false,
            });
            let plan = check(&probe, a, None)?;
            if plan.expand.is_empty() && plan.env.is_empty() && req.files.is_empty() {
                return Err(Denial::invalid(
                    Key::ExternalSecret.full(),
                    "nothing to inject: name the secrets with externalsecret, \
                     federated-generators, inject-on-env or inject-on-file",
                ));
            }
            let mut env_generators: Vec<String> = Vec::new();
            let names = plan
                .expand
                .iter()
                .map(String::as_str)
                .chain(plan.env.iter().map(|e| e.source.secret.as_str()));
            for name in names {
                if plan.generators.iter().any(|g| g.name == name)
                    && !env_generators.iter().any(|g| g == name)
                {
                    env_generators.push(name.to_string());
                }
            }
            if let Some(g) = env_generators
                .iter()
                .find(|g| file_generators.contains(&g.as_str()))
            {
                return Err(Denial::invalid(
                    Key::FederatedGenerators.full(),
                    format!(
                        "generator {g:?} feeds both a file and environment variables: each \
                         would get a credential of its own (two different values); use it in \
                         one of them"
                    ),
                ));
            }
            if wrapped > 1 && !env_generators.is_empty() {
                return Err(Denial::invalid(
                    Key::FederatedGenerators.full(),
                    format!(
                        "generator {:?} feeds environment variables, and each of the {wrapped} \
                         containers' esi-cli would issue a credential of its own (a different \
                         value in each): write it to a file (inject-on-file: issued once, by \
                         esi-cli-init, for every container), or inject into a Pod with one \
                         container",
                        env_generators[0]
                    ),
                ));
            }
            handoff_in_env = req.handoff && !env_generators.is_empty();
            env_prefix = Some(match handoff_in_env {
                true => req.env_prefix(true),
                false => prefix,
            });
        }
        // Without a generator in the environment, esi-cli-init issues what is handed off.
        let init = match (init, req.handoff && !handoff_in_env) {
            (Some(_), true) => Some(req.init_argv(settings, true)?.0),
            (init, _) => init,
        };
        let daemon = match (req.daemon, &files) {
            (true, Some(plan)) => Some(req.daemon_argv(settings, plan)?),
            (true, None) => Some(req.daemon_argv(settings, &empty_plan(&req, settings)?)?),
            (false, _) => None,
        };
        Ok(Commands {
            req,
            env_prefix,
            init,
            daemon,
            files,
            handoff_in_env,
        })
    }

    /// Whether the files are mounted by directory (the daemon rewrites them: a file mounted
    /// by `subPath` would keep showing the first version) rather than one by one.
    fn files_by_directory(&self) -> bool {
        self.daemon.is_some()
    }
}

/// The patch that injects `pod`, every check done before the first operation.
fn inject(a: &Annotations, settings: &Settings, pod: &Pod) -> Result<Patch, Denial> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Denial::invalid("spec", "the Pod has no spec"));
    };
    reserved_names(spec)?;
    let selected = selection(a, spec)?;
    let wrapped = match a.env_vars {
        true => selected.iter().filter(|s| **s).count(),
        false => 0,
    };
    let cmds = Commands::new(a, settings, wrapped)?;
    let req = &cmds.req;
    // The containers injected into (all, or those `containers` names), with their index.
    let targets: Vec<(usize, &Container)> = spec
        .containers
        .iter()
        .enumerate()
        .zip(&selected)
        .filter_map(|(c, on)| on.then_some(c))
        .collect();

    // Every command line, checked before anything changes.
    let mut env_argvs: BTreeMap<usize, Vec<Arg>> = BTreeMap::new();
    if let Some(prefix) = &cmds.env_prefix {
        for (i, c) in &targets {
            env_argvs.insert(*i, req.env_argv(*i, c, prefix)?);
        }
    }
    let file_paths: Vec<PathBuf> = cmds
        .files
        .iter()
        .flat_map(|p| p.files.iter().map(|f| f.path.clone()))
        .collect();
    let dirs = file_dirs(&file_paths, a)?;
    let by_dir = cmds.files_by_directory();
    let files_key = match a.inject_on_file.is_some() {
        true => Key::InjectOnFile,
        false => Key::FileSecrets,
    };
    for (i, c) in &targets {
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let at = Path::new(&m.mount_path);
            let clash = match by_dir {
                true => dirs.iter().any(|d| at == d),
                false => file_paths.iter().any(|f| under(at, f)),
            };
            if under(at, Path::new("/esi")) || clash {
                return Err(Denial::forbidden(
                    format!("spec.containers[{i}].volumeMounts[{j}].mountPath"),
                    format!(
                        "{:?} is where the injection mounts its volumes (/esi, and the \
                         secret files or, with the daemon, their directories)",
                        m.mount_path
                    ),
                ));
            }
            // A file inside a volume the container mounts: the kubelet would have to make
            // the file's mount point inside that volume (read-only for a ConfigMap, a
            // Secret, a projected volume), and the Pod would not start.
            let inside: Vec<&PathBuf> = match by_dir {
                true => dirs.iter().collect(),
                false => file_paths.iter().collect(),
            };
            if let Some(f) = inside.iter().find(|f| under(f, at) && f.as_path() != at) {
                return Err(Denial::invalid(
                    files_key.full(),
                    format!(
                        "{} would be mounted inside the volume {:?} that \
                         spec.containers[{i}].volumeMounts[{j}] mounts at {}: the Pod would not \
                         start; put the files in a directory no volume of the container is \
                         mounted over (e.g. /secrets)",
                        f.display(),
                        m.name,
                        m.mount_path
                    ),
                ));
            }
        }
        // A directory mount hides what the image keeps there: not the program's.
        if by_dir
            && let Some(program) = c.command.as_ref().and_then(|c| c.first())
            && let Some(d) = dirs.iter().find(|d| under(Path::new(program), d))
        {
            return Err(Denial::invalid(
                files_key.full(),
                format!(
                    "with the daemon the files volume is mounted over the whole directory {} \
                     (so that rewritten files show), which would hide the program of \
                     spec.containers[{i}] ({program}): put the files in a directory of their \
                     own (e.g. /secrets)",
                    d.display()
                ),
            ));
        }
    }
    // What esi-cli reads in its own containers must be on a volume of the Pod.
    let own_containers = cmds.init.is_some() || cmds.daemon.is_some();
    let pod_mounts: Vec<&VolumeMount> = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .collect();
    let mirrored = match own_containers {
        true => mirrored_mounts(req, cmds.files.as_ref(), &pod_mounts)?,
        false => Vec::new(),
    };
    if req.env && !req.federated {
        for (i, c) in &targets {
            if !c
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == SA_DIR)
            {
                return Err(no_service_account(&format!("spec.containers[{i}]")));
            }
        }
    }

    // Changes.
    // The applications: read-only, each file alone (nothing of the image hidden), or its
    // directory when the daemon rewrites the files.
    let app_mounts = || -> Vec<VolumeMount> {
        let at: &[PathBuf] = match by_dir {
            true => &dirs,
            false => &file_paths,
        };
        at.iter()
            .map(|p| VolumeMount {
                name: VOLUME_FILES.into(),
                mount_path: p.display().to_string(),
                sub_path: Some(p.strip_prefix("/").unwrap_or(p).display().to_string()),
                read_only: Some(true),
                ..VolumeMount::default()
            })
            .collect()
    };
    let readers: Vec<&Container> = targets.iter().map(|(_, c)| *c).collect();
    let (uid, gid) = match own_containers {
        true => file_user(&readers, spec, settings, cmds.handoff_in_env)?,
        false => (settings.run_as_user, settings.run_as_group),
    };
    let Added {
        volumes,
        init_containers,
    } = added(&cmds, settings, &dirs, &mirrored, (uid, gid));
    let mut ops = Ops::default();
    for (i, c) in targets {
        let index = i.to_string();
        let at = |field: &str| pointer(&["spec", "containers", &index, field]);
        let mut mounts = Vec::new();
        if let Some(argv) = env_argvs.get(&i) {
            ops.set(at("command"), in_pod(argv))?;
            if c.args.is_some() {
                ops.0
                    .push(PatchOperation::Remove(RemoveOperation { path: at("args") }));
            }
            mounts.push(bin_mount(true));
            if req.token_volume {
                mounts.push(token_mount());
            }
            if cmds.handoff_in_env {
                mounts.push(state_mount());
            }
        }
        mounts.extend(app_mounts());
        ops.append(
            &["spec", "containers", &index, "volumeMounts"],
            c.volume_mounts.as_ref().map(Vec::len),
            &mounts,
        )?;
    }
    ops.append(
        &["spec", "volumes"],
        spec.volumes.as_ref().map(Vec::len),
        &volumes,
    )?;
    ops.append(
        &["spec", "initContainers"],
        spec.init_containers.as_ref().map(Vec::len),
        &init_containers,
    )?;
    let have = spec.image_pull_secrets.as_deref().unwrap_or_default();
    let pull: Vec<LocalObjectReference> = a
        .image_pull_secrets
        .iter()
        .filter(|name| !have.iter().any(|s| &s.name == *name))
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect();
    ops.append(
        &["spec", "imagePullSecrets"],
        spec.image_pull_secrets.as_ref().map(Vec::len),
        &pull,
    )?;
    let injected = Key::Injected.full();
    match &pod.metadata.annotations {
        Some(_) => ops.set(pointer(&["metadata", "annotations", &injected]), "true")?,
        None => ops.set(
            pointer(&["metadata", "annotations"]),
            BTreeMap::from([(injected, "true")]),
        )?,
    }
    Ok(Patch(ops.0))
}

/// The volumes and init containers the injection adds, the same whether a Pod is being
/// injected or re-admitted (then compared with what it holds).
struct Added {
    volumes: Vec<Volume>,
    init_containers: Vec<Container>,
}

fn token_mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_TOKEN.into(),
        mount_path: TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn state_mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_STATE.into(),
        mount_path: STATE_DIR.into(),
        ..VolumeMount::default()
    }
}

fn bin_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: VOLUME_BIN.into(),
        mount_path: BIN_DIR.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// `dirs`: where the files volume is mounted in esi-cli's own containers; `mirrored`: the
/// Pod's mounts they need; `user`: the user and group they run as.
fn added(
    cmds: &Commands<'_>,
    settings: &Settings,
    dirs: &[PathBuf],
    mirrored: &[VolumeMount],
    (uid, gid): (i64, i64),
) -> Added {
    let req = &cmds.req;
    let mut volumes = Vec::new();
    let mut init_containers = Vec::new();
    if req.env {
        volumes.push(memory_volume(VOLUME_BIN, "64Mi"));
        let mut c = injected_container(
            CONTAINER_INSTALL,
            settings,
            settings.run_as_user,
            settings.run_as_group,
        );
        c.command = Some(install_command(settings));
        c.volume_mounts = Some(vec![bin_mount(false)]);
        init_containers.push(c);
    }
    if req.token_volume {
        volumes.push(token_volume(settings, !req.a.spiffe));
    }
    if !dirs.is_empty() {
        volumes.push(memory_volume(VOLUME_FILES, "16Mi"));
    }
    if req.handoff {
        volumes.push(memory_volume(VOLUME_STATE, "1Mi"));
    }
    // esi-cli's containers: the files' directories, read-write.
    let own = |name: &str, argv: &[Arg]| {
        let mut c = injected_container(name, settings, uid, gid);
        c.command = Some(in_pod(argv));
        let mut mounts: Vec<VolumeMount> = dirs
            .iter()
            .map(|d| VolumeMount {
                name: VOLUME_FILES.into(),
                mount_path: d.display().to_string(),
                sub_path: Some(d.strip_prefix("/").unwrap_or(d).display().to_string()),
                ..VolumeMount::default()
            })
            .collect();
        if req.token_volume {
            mounts.push(token_mount());
        }
        if req.handoff {
            mounts.push(state_mount());
        }
        mounts.extend(mirrored.iter().cloned());
        c.volume_mounts = Some(mounts);
        c
    };
    if let Some(argv) = &cmds.init {
        init_containers.push(own(CONTAINER_INIT, argv));
    }
    if let Some(argv) = &cmds.daemon {
        let mut c = own(CONTAINER_DAEMON, argv);
        c.restart_policy = Some("Always".into());
        init_containers.push(c);
    }
    Added {
        volumes,
        init_containers,
    }
}

/// Which of `spec.containers` are injected into: all, or those the `containers`
/// annotation names (each of which must be there).
fn selection(a: &Annotations, spec: &PodSpec) -> Result<Vec<bool>, Denial> {
    if a.containers.is_empty() {
        return Ok(vec![true; spec.containers.len()]);
    }
    if let Some(missing) = a
        .containers
        .iter()
        .find(|n| !spec.containers.iter().any(|c| &c.name == *n))
    {
        return Err(Denial::invalid(
            Key::Containers.full(),
            format!("names {missing:?}, which is not a container of spec.containers"),
        ));
    }
    Ok(spec
        .containers
        .iter()
        .map(|c| a.containers.contains(&c.name))
        .collect())
}

/// `esi-cli-install`'s command.
fn install_command(settings: &Settings) -> Vec<String> {
    vec![
        settings.cli_path.clone(),
        "install".into(),
        format!("--to={BIN_DIR}/esi-cli"),
    ]
}

/// A plan without files, for a daemon that only renews handed-off credentials.
fn empty_plan(req: &Request<'_>, settings: &Settings) -> Result<Plan, Denial> {
    let mut argv = vec![program(settings), flag("mode", "daemon")];
    argv.extend(req.common.iter().map(flag_copy));
    argv.extend(req.credentials_file());
    check(&argv, req.a, None)
}

fn no_service_account(field: &str) -> Denial {
    Denial::invalid(
        field,
        format!(
            "without federated-server-url esi-cli reads ExternalSecrets through the \
             Kubernetes API with the Pod's ServiceAccount token, which is not mounted at \
             {SA_DIR} (automountServiceAccountToken: false?)"
        ),
    )
}

/// Names the injection adds must be free (a Pod changed by hand is not injected twice).
fn reserved_names(spec: &PodSpec) -> Result<(), Denial> {
    for (j, v) in spec.volumes.iter().flatten().enumerate() {
        if RESERVED_VOLUMES.contains(&v.name.as_str()) {
            return Err(Denial::forbidden(
                format!("spec.volumes[{j}].name"),
                format!("{:?} is reserved for the injection", v.name),
            ));
        }
    }
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(j, c)| ("containers", j, c));
    let inits = spec.init_containers.iter().flatten().enumerate();
    for (list, j, c) in containers.chain(inits.map(|(j, c)| ("initContainers", j, c))) {
        if RESERVED_CONTAINERS.contains(&c.name.as_str()) {
            return Err(Denial::forbidden(
                format!("spec.{list}[{j}].name"),
                format!("{:?} is reserved for the injection", c.name),
            ));
        }
    }
    Ok(())
}

/// Whether `path` is `dir` or below it (whole components).
fn under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// The directories the files volume is mounted at: the files' directories, each once,
/// nested ones folded into the outermost. System directories, relative components and
/// the injection's own `/esi` are refused.
fn file_dirs(paths: &[PathBuf], a: &Annotations) -> Result<Vec<PathBuf>, Denial> {
    let field = || match a.inject_on_file.is_some() {
        true => Key::InjectOnFile.full(),
        false => Key::FileSecrets.full(),
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        if p.components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(Denial::invalid(
                field(),
                format!("{}: the path must not hold . or .. components", p.display()),
            ));
        }
        let dir = p.parent().unwrap_or(Path::new("/"));
        let refused =
            system_dir(dir) || under(dir, Path::new("/esi")) || under(dir, Path::new(SA_DIR));
        if refused {
            return Err(Denial::invalid(
                field(),
                format!(
                    "{}: the files volume would be mounted at {}, hiding what the image keeps \
                     there: put the file in a directory of its own (e.g. /secrets or \
                     /etc/app/secrets)",
                    p.display(),
                    dir.display()
                ),
            ));
        }
        dirs.push(dir.to_path_buf());
    }
    dirs.sort();
    dirs.dedup();
    let outer: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && under(d, o)))
        .cloned()
        .collect();
    Ok(outer)
}

/// The Pod's volume mounts that esi-cli needs in its own containers: templates of
/// file injection, a `federated-token`/`federated-ca-crt` of the Pod's, and in local mode
/// the ServiceAccount token. Each is the application containers' mount holding the path,
/// added read-only.
fn mirrored_mounts(
    req: &Request<'_>,
    files: Option<&Plan>,
    mounts: &[&VolumeMount],
) -> Result<Vec<VolumeMount>, Denial> {
    let mut wanted: Vec<(String, PathBuf)> = Vec::new();
    for f in files.iter().flat_map(|p| p.files.iter()) {
        if let FileSource::Template(t) = &f.source {
            wanted.push((Key::InjectOnFile.full(), t.file.clone()));
        }
    }
    if let Some(t) = &req.a.token {
        wanted.push((Key::FederatedToken.full(), PathBuf::from(t)));
    }
    if let Some(x) = &req.a.x509_svid {
        wanted.push((Key::FederatedX509Svid.full(), PathBuf::from(x)));
    }
    if let Some(k) = &req.a.x509_svid_key {
        wanted.push((Key::FederatedX509SvidKey.full(), PathBuf::from(k)));
    }
    if let Some(c) = &req.a.ca_crt {
        wanted.push((Key::FederatedCaCrt.full(), PathBuf::from(c)));
    }
    if !req.federated {
        wanted.push(("spec".into(), PathBuf::from(format!("{SA_DIR}/token"))));
    }
    let mut out: Vec<VolumeMount> = Vec::new();
    for (field, path) in wanted {
        let holder = mounts
            .iter()
            .filter(|m| under(&path, Path::new(&m.mount_path)) && Path::new(&m.mount_path) != path)
            .max_by_key(|m| m.mount_path.len());
        let Some(m) = holder else {
            if field == "spec" {
                return Err(no_service_account("spec"));
            }
            return Err(Denial::invalid(
                field,
                format!(
                    "{}: esi-cli runs in its own container here (file injection), which sees \
                     only the Pod's volumes, and no container of the Pod mounts one holding \
                     this path: put it on a volume (a ConfigMap, a projected token) mounted \
                     in the Pod",
                    path.display()
                ),
            ));
        };
        if !out.iter().any(|o| o.mount_path == m.mount_path) {
            out.push(VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                sub_path: m.sub_path.clone(),
                sub_path_expr: m.sub_path_expr.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    Ok(out)
}

/// The user and group of esi-cli's own containers. Files are written with mode 0400, so
/// the application must be their owner (or root): esi-cli runs as the user every
/// application container injected into (`containers`) runs as (its own `runAsUser`, else
/// the Pod's), the settings' when that is root (root reads anything). With `handoff_in_env` the application
/// container's esi-cli writes the credentials handoff, so the daemon must be that very
/// user, root excluded. A user the Pod does not name (the image's) cannot be
/// known here: denied, rather than files nobody can read.
fn file_user(
    containers: &[&Container],
    spec: &PodSpec,
    settings: &Settings,
    handoff_in_env: bool,
) -> Result<(i64, i64), Denial> {
    let pod = spec.security_context.as_ref();
    let effective = |get: fn(&SecurityContext) -> Option<i64>| -> Option<i64> {
        let each: Vec<Option<i64>> = containers
            .iter()
            .map(|c| c.security_context.as_ref().and_then(get))
            .map(|v| v.or_else(|| pod.and_then(|p| get_pod(p, get))))
            .collect();
        match each.first() {
            Some(Some(v)) if each.iter().all(|e| *e == Some(*v)) => Some(*v),
            _ => None,
        }
    };
    let field = "spec.securityContext.runAsUser";
    let why = "esi-cli writes the secret files (and the credentials handoff) with mode 0400, \
               readable by their owner only";
    let uid = match effective(|s| s.run_as_user) {
        Some(0) if handoff_in_env => {
            return Err(Denial::invalid(
                field,
                format!(
                    "{why}: the application containers run as root, and the daemon, which \
                     rewrites what they wrote, cannot (runAsNonRoot): run them as a non-root \
                     user"
                ),
            ));
        }
        Some(0) => settings.run_as_user,
        Some(uid) => uid,
        None => {
            return Err(Denial::invalid(
                field,
                format!(
                    "{why}: set runAsUser on the Pod (or the same on every container) so that \
                     esi-cli runs as the application's user"
                ),
            ));
        }
    };
    let gid = effective(|s| s.run_as_group)
        .filter(|g| *g > 0)
        .unwrap_or(settings.run_as_group);
    Ok((uid, gid))
}

/// The Pod-level value of a container-level security setting (the two types share the
/// user and group fields).
fn get_pod(
    p: &k8s_openapi::api::core::v1::PodSecurityContext,
    get: fn(&SecurityContext) -> Option<i64>,
) -> Option<i64> {
    get(&SecurityContext {
        run_as_user: p.run_as_user,
        run_as_group: p.run_as_group,
        ..SecurityContext::default()
    })
}

fn injected_container(name: &str, settings: &Settings, uid: i64, gid: i64) -> Container {
    Container {
        name: name.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        resources: Some(settings.resources.clone()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(gid),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn memory_volume(name: &str, size: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(size.into())),
        }),
        ..Volume::default()
    }
}

/// The projected volume: the ServiceAccount token for the federation audience (unless
/// `sa_token` is false: `federated-auth: spiffe`) and the cluster CA.
fn token_volume(settings: &Settings, sa_token: bool) -> Volume {
    let token = sa_token.then(|| VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(settings.audience.clone()),
            expiration_seconds: Some(settings.token_expiration_seconds),
            path: "token".into(),
        }),
        ..VolumeProjection::default()
    });
    Volume {
        name: VOLUME_TOKEN.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                token
                    .into_iter()
                    .chain([VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    }])
                    .collect(),
            ),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::cell::Cell;

    const P: &str = "secretless.externalsecrets.com/";

    thread_local! {
        /// Bytes of esi-cli command lines checked by [`check`] on this thread.
        pub(super) static CHECKED_BYTES: Cell<usize> = const { Cell::new(0) };
    }

    fn pod(annotations: &[(&str, &str)], spec: Value) -> Value {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (format!("{P}{k}"), Value::from(*v)))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "app", "namespace": "apps", "annotations": annotations},
               "spec": spec})
    }

    fn app_spec() -> Value {
        json!({"securityContext": {"runAsUser": 1000},
               "containers": [{"name": "app", "image": "app:1",
                               "command": ["/bin/app", "--port=8080"], "args": ["serve"],
                               "volumeMounts": [{"name": "kube-api-access", "mountPath": SA_DIR}]}],
               "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}]})
    }

    /// Runs mutate and applies its patch: the resulting Pod.
    fn admit(doc: &Value) -> Result<Value, Denial> {
        let typed: Pod = serde_json::from_value(doc.clone()).unwrap();
        let patch = mutate(&typed, &Settings::default())?;
        let mut out = doc.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        // Reinvocation: nothing more.
        let again: Pod = serde_json::from_value(out.clone()).unwrap();
        assert_eq!(mutate(&again, &Settings::default()), Ok(Patch(Vec::new())));
        Ok(out)
    }

    fn strs(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    fn names(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    const FED: [(&str, &str); 3] = [
        ("federated-server-url", "https://esi.example.com"),
        ("federated-store", "vault-prod"),
        ("externalsecret", "db"),
    ];

    #[test]
    fn too_many_containers_are_refused() {
        let mut a = FED.to_vec();
        a.push(("env-vars", "true"));
        let mut spec = app_spec();
        let one = spec["containers"][0].clone();
        spec["containers"] = Value::Array(
            (0..=MAX_CONTAINERS)
                .map(|i| {
                    let mut c = one.clone();
                    c["name"] = json!(format!("c{i}"));
                    c
                })
                .collect(),
        );
        let err = admit(&pod(&a, spec)).unwrap_err();
        assert_eq!(err.field, "spec.containers");
        assert!(err.message.contains("more than 64"), "{}", err.message);
    }

    /// Review finding 1: the annotations' flags are parsed once per Pod, not once per
    /// container (64 containers × a long annotation cost 64 parses of it).
    #[test]
    fn shared_flags_are_checked_once_per_pod() {
        let env: Vec<String> = (0..100)
            .map(|i| format!("V{i:03}_{}=db.k{i}", "X".repeat(60)))
            .collect();
        let env = env.join(",");
        let mut a = FED.to_vec();
        a.extend([("env-vars", "true"), ("inject-on-env", env.as_str())]);
        let mut spec = app_spec();
        let one = spec["containers"][0].clone();
        spec["containers"] = Value::Array(
            (0..MAX_CONTAINERS)
                .map(|i| {
                    let mut c = one.clone();
                    c["name"] = json!(format!("c{i}"));
                    c
                })
                .collect(),
        );
        CHECKED_BYTES.with(|n| n.set(0));
        let out = admit(&pod(&a, spec)).unwrap();
        let checked = CHECKED_BYTES.with(Cell::get);
        // admit() runs mutate twice (the second a no-op): about one parse of the shared
        // flags, plus a short line per container.
        assert!(
            checked < 2 * env.len() + MAX_CONTAINERS * 200,
            "{checked} bytes checked for {} bytes of annotation",
            env.len()
        );
        let last = strs(&out["spec"]["containers"][MAX_CONTAINERS - 1]["command"]);
        assert!(last.contains(&format!("--inject-on-env={env}")), "{last:?}");
        assert_eq!(
            last.last().map(String::as_str),
            Some("--args=--port=8080,serve")
        );
    }

    #[test]
    fn env_mode_wraps_every_container_in_esi_cli() {
        let mut a = FED.to_vec();
        a.push(("env-vars", "true"));
        let out = admit(&pod(&a, app_spec())).unwrap();
        let c = &out["spec"]["containers"][0];
        assert_eq!(
            strs(&c["command"]),
            vec![
                "/esi/bin/esi-cli",
                "--mode=init",
                "--federated-server-url=https://esi.example.com",
                "--federated-store=vault-prod",
                "--federated-token=/esi/token/token",
                "--federated-ca-crt=/esi/token/ca.crt",
                "--external-secrets=db",
                "--inject-on-env=*",
                "--binary-path=/bin/app",
                "--args=--port=8080,serve",
            ]
        );
        assert!(c.get("args").is_none());
        assert_eq!(
            names(&c["volumeMounts"]),
            vec!["kube-api-access", VOLUME_BIN, VOLUME_TOKEN]
        );
        assert_eq!(c["volumeMounts"][1]["readOnly"], true);
        assert_eq!(c["volumeMounts"][2]["readOnly"], true);
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(init["name"], CONTAINER_INSTALL);
        assert_eq!(
            strs(&init["command"]),
            vec!["/usr/local/bin/esi-cli", "install", "--to=/esi/bin/esi-cli"]
        );
        let sc = &init["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(
            names(&out["spec"]["volumes"]),
            vec!["kube-api-access", VOLUME_BIN, VOLUME_TOKEN]
        );
        let token = &out["spec"]["volumes"][2]["projected"]["sources"];
        assert_eq!(
            token[0]["serviceAccountToken"]["audience"],
            "esi-federation"
        );
        assert_eq!(token[0]["serviceAccountToken"]["expirationSeconds"], 600);
        assert_eq!(token[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(out["spec"]["volumes"][1]["emptyDir"]["medium"], "Memory");
        assert_eq!(
            out["metadata"]["annotations"][format!("{P}injected")],
            "true"
        );
    }

    #[test]
    fn file_mode_writes_with_an_init_container_and_keeps_with_a_daemon() {
        let mut a = FED.to_vec();
        a.extend([
            ("federated-generators", "apps/Password/pw"),
            (
                "inject-on-file",
                "/etc/app/secrets/db.yaml=db,/etc/app/secrets/pw=pw.password,/secrets/x/y=db.user",
            ),
            ("daemon-refresh-interval", "1m"),
            ("image-pull-secrets", "regcred,regcred"),
        ]);
        let out = admit(&pod(&a, app_spec())).unwrap();
        let spec = &out["spec"];
        assert_eq!(
            names(&spec["initContainers"]),
            vec![CONTAINER_INIT, CONTAINER_DAEMON]
        );
        let init = &spec["initContainers"][0];
        let cmd = strs(&init["command"]);
        assert_eq!(cmd[0], "/usr/local/bin/esi-cli");
        assert!(cmd.contains(&"--inject-on-file=/etc/app/secrets/db.yaml=db,/etc/app/secrets/pw=pw.password,/secrets/x/y=db.user".to_string()), "{cmd:?}");
        assert!(cmd.contains(&"--credentials-file=/esi/state/credentials.json".to_string()));
        // Files volume at each outermost directory, by subPath; the Pod's user.
        let mounts = &init["volumeMounts"];
        assert_eq!(mounts[0]["mountPath"], "/etc/app/secrets");
        assert_eq!(mounts[0]["subPath"], "etc/app/secrets");
        assert_eq!(mounts[1]["mountPath"], "/secrets/x");
        assert_eq!(init["securityContext"]["runAsUser"], 1000);
        let daemon = &spec["initContainers"][1];
        assert_eq!(daemon["restartPolicy"], "Always");
        let cmd = strs(&daemon["command"]);
        // The generator's file is the init step's; the daemon renews its credential.
        assert!(
            cmd.contains(
                &"--inject-on-file=/etc/app/secrets/db.yaml=db,/secrets/x/y=db.user".to_string()
            ),
            "{cmd:?}"
        );
        assert!(cmd.contains(&"--daemon-refresh-interval=1m".to_string()));
        assert!(cmd.contains(&"--mode=daemon".to_string()));
        // The application keeps its command and reads the files read-only.
        let c = &spec["containers"][0];
        assert_eq!(strs(&c["command"]), vec!["/bin/app", "--port=8080"]);
        assert_eq!(c["volumeMounts"][1]["readOnly"], true);
        assert_eq!(
            names(&c["volumeMounts"]),
            vec!["kube-api-access", VOLUME_FILES, VOLUME_FILES]
        );
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(
            names(&spec["volumes"]),
            vec!["kube-api-access", VOLUME_TOKEN, VOLUME_FILES, VOLUME_STATE]
        );
    }

    /// A Pod with spiffe-helper writing the SVIDs into the emptyDir `spiffe` (mounted at
    /// /run/spiffe in the application), as its docs set it up.
    fn spiffe_spec() -> Value {
        let mut spec = app_spec();
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "spiffe", "mountPath": "/run/spiffe", "readOnly": true}));
        spec["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "spiffe", "emptyDir": {"medium": "Memory"}}));
        spec
    }

    /// Issue 18: `federated-auth: spiffe` makes esi-cli use the Pod's SVID files (an
    /// X.509-SVID, or a JWT-SVID in federated-token) and projects no ServiceAccount token
    /// (only the cluster CA); file injection mounts the SVID volume read-only into
    /// esi-cli's own containers; re-admission accepts the injection as made.
    #[test]
    fn spiffe_uses_the_pods_svid_files_and_no_service_account_token() {
        let mut a = FED.to_vec();
        a.extend([
            ("env-vars", "true"),
            ("federated-auth", "spiffe"),
            ("federated-x509-svid", "/run/spiffe/svid.pem"),
            ("federated-x509-svid-key", "/run/spiffe/svid_key.pem"),
        ]);
        let out = admit(&pod(&a, spiffe_spec())).unwrap();
        let cmd = strs(&out["spec"]["containers"][0]["command"]);
        assert_eq!(
            cmd[..8],
            [
                "/esi/bin/esi-cli",
                "--mode=init",
                "--federated-server-url=https://esi.example.com",
                "--federated-store=vault-prod",
                "--federated-auth=spiffe",
                "--federated-x509-svid=/run/spiffe/svid.pem",
                "--federated-x509-svid-key=/run/spiffe/svid_key.pem",
                "--federated-ca-crt=/esi/token/ca.crt",
            ]
        );
        assert!(
            !cmd.iter().any(|c| c.starts_with("--federated-token")),
            "{cmd:?}"
        );
        let volumes = &out["spec"]["volumes"];
        let token = volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == VOLUME_TOKEN)
            .unwrap();
        assert_eq!(
            token["projected"]["sources"],
            json!([{"configMap": {"name": "kube-root-ca.crt",
                                  "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]),
            "no ServiceAccount token for esi-cli"
        );
        // With the CA named too, nothing is projected at all.
        let mut with_ca = a.clone();
        with_ca.push(("federated-ca-crt", "/run/spiffe/bundle.pem"));
        let out = admit(&pod(&with_ca, spiffe_spec())).unwrap();
        assert!(!names(&out["spec"]["volumes"]).contains(&VOLUME_TOKEN.to_string()));

        // A JWT-SVID, files written by esi-cli-init: the SVID volume is mounted into it.
        let mut a = FED.to_vec();
        a.extend([
            ("inject-on-file", "/etc/app/secrets/db=db.password"),
            ("federated-auth", "spiffe"),
            ("federated-token", "/run/spiffe/jwt_svid.token"),
        ]);
        let out = admit(&pod(&a, spiffe_spec())).unwrap();
        let init = &out["spec"]["initContainers"][0];
        let cmd = strs(&init["command"]);
        assert!(
            cmd.contains(&"--federated-auth=spiffe".to_string()),
            "{cmd:?}"
        );
        assert!(
            cmd.contains(&"--federated-token=/run/spiffe/jwt_svid.token".to_string()),
            "{cmd:?}"
        );
        let spiffe_mount = init["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "spiffe")
            .unwrap();
        assert_eq!(spiffe_mount["mountPath"], "/run/spiffe");
        assert_eq!(spiffe_mount["readOnly"], true);
    }

    /// Issue 18: what spiffe cannot do is refused at admission, naming the annotation.
    #[test]
    fn spiffe_refusals_name_what_to_fix() {
        let refused = |extra: &[(&'static str, &'static str)], spec: Value| {
            let mut a = FED.to_vec();
            a.push(("env-vars", "true"));
            a.extend_from_slice(extra);
            admit(&pod(&a, spec)).unwrap_err()
        };
        // No SVID named.
        let d = refused(&[("federated-auth", "spiffe")], spiffe_spec());
        assert_eq!(d.field, format!("{P}federated-auth"));
        assert!(d.message.contains("federated-x509-svid"), "{}", d.message);
        // Half an X.509-SVID: esi-cli's own refusal, on the annotation.
        let d = refused(
            &[
                ("federated-auth", "spiffe"),
                ("federated-x509-svid", "/run/spiffe/svid.pem"),
            ],
            spiffe_spec(),
        );
        assert_eq!(d.field, format!("{P}federated-x509-svid-key"), "{d}");
        assert!(d.message.contains("svid_key.pem"), "{}", d.message);
        // SVID files without spiffe.
        let d = refused(
            &[
                ("federated-x509-svid", "/run/spiffe/svid.pem"),
                ("federated-x509-svid-key", "/run/spiffe/svid_key.pem"),
            ],
            spiffe_spec(),
        );
        assert_eq!(d.field, format!("{P}federated-x509-svid"), "{d}");
        assert!(
            d.message.contains("only with --federated-auth=spiffe"),
            "{d}"
        );
        // The application container does not mount the SVID volume (env-vars: esi-cli
        // reads the files there).
        let d = refused(
            &[
                ("federated-auth", "spiffe"),
                ("federated-token", "/run/spiffe/jwt_svid.token"),
            ],
            app_spec(),
        );
        assert_eq!(d.field, format!("{P}federated-token"), "{d}");
        assert!(d.message.contains("mounts no volume holding it"), "{d}");
        // File injection: no container of the Pod mounts it.
        let mut a = FED.to_vec();
        a.extend([
            ("inject-on-file", "/etc/app/secrets/db=db.password"),
            ("federated-auth", "spiffe"),
            ("federated-x509-svid", "/run/spiffe/svid.pem"),
            ("federated-x509-svid-key", "/run/spiffe/svid_key.pem"),
        ]);
        let d = admit(&pod(&a, app_spec())).unwrap_err();
        assert_eq!(d.field, format!("{P}federated-x509-svid"), "{d}");
        // The SPIFFE CSI driver's socket: the spiffe-helper alternative is named.
        let d = refused(
            &[(
                "federated-socket-path",
                "/spiffe-workload-api/spire-agent.sock",
            )],
            spiffe_spec(),
        );
        assert_eq!(d.field, format!("{P}federated-socket-path"), "{d}");
        assert!(d.message.contains("csi.spiffe.io"), "{d}");
        // spiffe is for a Federation Server.
        let d = admit(&pod(
            &[
                ("externalsecret", "db"),
                ("env-vars", "true"),
                ("federated-auth", "spiffe"),
                ("federated-token", "/run/spiffe/jwt_svid.token"),
            ],
            spiffe_spec(),
        ))
        .unwrap_err();
        assert!(d.message.contains("federated-server-url"), "{d}");
    }

    fn two_containers(mut spec: Value) -> Value {
        let mut second = spec["containers"][0].clone();
        second["name"] = json!("second");
        second["command"] = json!(["/bin/second"]);
        spec["containers"].as_array_mut().unwrap().push(second);
        spec
    }

    /// Review finding 3: with env-vars and files, the files are written once, by
    /// esi-cli-init as the containers' user, not by each container's esi-cli; what cannot
    /// be shared (several users, a generator's credential per container) is refused.
    #[test]
    fn env_mode_files_are_written_once_by_esi_cli_init() {
        let mut a = FED.to_vec();
        a.extend([
            ("env-vars", "true"),
            ("federated-generators", "apps/Password/pw"),
            ("inject-on-env", "DB=db.password"),
            ("inject-on-file", "/etc/app/secrets/pw=pw.password"),
            ("daemon-refresh-interval", "1m"),
        ]);
        let out = admit(&pod(&a, two_containers(app_spec()))).unwrap();
        let spec = &out["spec"];
        assert_eq!(
            names(&spec["initContainers"]),
            vec![CONTAINER_INSTALL, CONTAINER_INIT, CONTAINER_DAEMON]
        );
        let init = &spec["initContainers"][1];
        let cmd = strs(&init["command"]);
        assert!(cmd.contains(&"--inject-on-file=/etc/app/secrets/pw=pw.password".to_string()));
        // The generator feeds the file only: esi-cli-init issues it, the daemon renews it.
        assert!(cmd.contains(&"--credentials-file=/esi/state/credentials.json".to_string()));
        assert_eq!(init["securityContext"]["runAsUser"], 1000);
        for c in spec["containers"].as_array().unwrap() {
            let cmd = strs(&c["command"]);
            assert!(
                !cmd.iter().any(|a| a.starts_with("--inject-on-file")),
                "{cmd:?}"
            );
            assert!(
                !cmd.iter().any(|a| a.starts_with("--credentials-file")),
                "{cmd:?}"
            );
            assert!(!c["volumeMounts"].to_string().contains(VOLUME_STATE));
            let files: Vec<&Value> = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["name"] == VOLUME_FILES)
                .collect();
            assert_eq!(files.len(), 1);
            assert_eq!(files[0]["readOnly"], true);
        }
        // Two users: one esi-cli-init cannot write 0400 files both can read.
        let mut spec2 = two_containers(app_spec());
        spec2["containers"][1]["securityContext"] = json!({"runAsUser": 2000});
        let d = admit(&pod(&a, spec2)).unwrap_err();
        assert_eq!(d.field, "spec.securityContext.runAsUser", "{d}");
        // A generator in the environment of two containers: a credential each.
        let mut b = FED.to_vec();
        b.extend([
            ("env-vars", "true"),
            ("federated-generators", "apps/Password/pw"),
            ("inject-on-env", "PW=pw.password"),
        ]);
        let d = admit(&pod(&b, two_containers(app_spec()))).unwrap_err();
        assert_eq!(d.field, format!("{P}federated-generators"));
        assert!(d.message.contains("each of the 2 containers"), "{d}");
        // With one container: fine, and that container's esi-cli hands off the credential.
        b.push(("daemon-refresh-interval", "1m"));
        let out = admit(&pod(&b, app_spec())).unwrap();
        let cmd = strs(&out["spec"]["containers"][0]["command"]);
        assert!(cmd.contains(&"--credentials-file=/esi/state/credentials.json".to_string()));
        // One generator in both a file and the environment: two different credentials.
        b.push(("inject-on-file", "/secrets/pw=pw.password"));
        let d = admit(&pod(&b, app_spec())).unwrap_err();
        assert!(
            d.message.contains("feeds both a file and environment"),
            "{d}"
        );
    }

    /// Review finding 4: the files volume never hides what the image keeps beside a file.
    #[test]
    fn files_are_mounted_one_by_one_unless_the_daemon_rewrites_them() {
        let mut a = FED.to_vec();
        a.push(("inject-on-file", "/app/.env=db,/app/conf/db.yaml=db"));
        let mut spec = app_spec();
        spec["containers"][0]["command"] = json!(["/app/server"]);
        let out = admit(&pod(&a, spec.clone())).unwrap();
        let c = &out["spec"]["containers"][0];
        assert_eq!(strs(&c["command"]), vec!["/app/server"]);
        let mounts: Vec<&Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == VOLUME_FILES)
            .collect();
        assert_eq!(
            mounts,
            vec![
                &json!({"name": VOLUME_FILES, "mountPath": "/app/.env", "subPath": "app/.env", "readOnly": true}),
                &json!({"name": VOLUME_FILES, "mountPath": "/app/conf/db.yaml", "subPath": "app/conf/db.yaml", "readOnly": true}),
            ]
        );
        // esi-cli-init writes into the directory (its own container hides nothing).
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(init["volumeMounts"][0]["mountPath"], "/app");
        assert_eq!(init["volumeMounts"][0]["subPath"], "app");
        // The daemon rewrites files: directory mounts, and then not over the program.
        a.push(("daemon-refresh-interval", "1m"));
        let d = admit(&pod(&a, spec)).unwrap_err();
        assert_eq!(d.field, format!("{P}inject-on-file"));
        assert!(
            d.message.contains("hide the program of spec.containers[0]"),
            "{d}"
        );
        // A Pod mount at a file's path: refused.
        let mut b = FED.to_vec();
        b.push(("inject-on-file", "/etc/app/x.yaml=db"));
        let mut spec = app_spec();
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "kube-api-access", "mountPath": "/etc/app/x.yaml"}));
        let d = admit(&pod(&b, spec)).unwrap_err();
        assert_eq!(d.code, 403, "{d}");
    }

    /// Second review L4: files are never put in system directories (`/usr/**`, `/lib*`,
    /// `/run/**`, `/tmp` itself…), nor inside a volume the container mounts (a
    /// ConfigMap at /etc/app and a file at /etc/app/s.json: the Pod would not start, and
    /// esi-cli-init would get two mounts at one path when that volume holds a template).
    #[test]
    fn files_stay_out_of_system_directories_and_other_volumes() {
        for path in [
            "/usr/share/app/x",
            "/usr/local/etc/x",
            "/lib64/x",
            "/libexec/app/x",
            "/run/secrets/x",
            "/run/secrets/kubernetes.io/x",
            "/var/run/secrets/eks.amazonaws.com/x",
            "/var/run/app/x",
            "/tmp/x",
            "/opt/x",
            "/etc/x",
        ] {
            let a = [("inject-on-file", format!("{path}=db.pw"))];
            let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let d = admit(&pod(&a, app_spec())).unwrap_err();
            assert_eq!(d.field, format!("{P}inject-on-file"), "{path}: {d}");
            assert!(
                d.message.contains("hiding what the image keeps"),
                "{path}: {d}"
            );
        }
        for path in [
            "/tmp/app/x",
            "/opt/app/secrets/x",
            "/run/secrets/app/x",
            "/var/run/secrets/db/x",
            "/etc/app/x",
            "/library/x",
        ] {
            let a = [("inject-on-file", format!("{path}=db.pw"))];
            let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let lib = path.starts_with("/library");
            assert_eq!(admit(&pod(&a, app_spec())).is_ok(), !lib, "{path}");
        }
        // A ConfigMap at /etc/app and a file below it, with or without the daemon.
        let mut spec = app_spec();
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "conf", "mountPath": "/etc/app"}));
        spec["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "conf", "configMap": {"name": "conf"}}));
        let mut a = vec![(
            "inject-on-file",
            "/etc/app/s.json=db.pw,/etc/app/r.txt=@/etc/app/r.tmpl",
        )];
        let d = admit(&pod(&a, spec.clone())).unwrap_err();
        assert_eq!(d.field, format!("{P}inject-on-file"), "{d}");
        assert!(
            d.message.contains("inside the volume \"conf\"")
                && d.message.contains("spec.containers[0].volumeMounts[1]"),
            "{d}"
        );
        // With the daemon the files' directory is that very mount path: reserved.
        a.push(("daemon-refresh-interval", "1m"));
        let d = admit(&pod(&a, spec.clone())).unwrap_err();
        assert_eq!(
            (d.code, d.field.as_str()),
            (403, "spec.containers[0].volumeMounts[1].mountPath"),
            "{d}"
        );
        // Above the directory: inside the volume.
        let mut above = spec.clone();
        above["containers"][0]["volumeMounts"][1]["mountPath"] = json!("/etc");
        let d = admit(&pod(&a, above)).unwrap_err();
        assert!(d.message.contains("inside the volume"), "{d}");
        // A template's volume below the files' directory is fine, and mounted once.
        let mut spec = app_spec();
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "conf", "mountPath": "/etc/app/templates"}));
        spec["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "conf", "configMap": {"name": "conf"}}));
        let a = [
            (
                "inject-on-file",
                "/etc/app/s.json=db.pw,/etc/app/r.txt=@/etc/app/templates/r.tmpl",
            ),
            ("daemon-refresh-interval", "1m"),
        ];
        let out = admit(&pod(&a, spec)).unwrap();
        for c in out["spec"]["initContainers"].as_array().unwrap() {
            let paths: Vec<&str> = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["mountPath"].as_str().unwrap())
                .collect();
            let mut unique = paths.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), paths.len(), "{paths:?}");
        }
    }

    #[test]
    fn file_secrets_writes_the_externalsecret_like_ese() {
        let a = [("externalsecret", "app-secrets"), ("file-secrets", "true")];
        let out = admit(&pod(&a, app_spec())).unwrap();
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(
            strs(&init["command"]),
            vec![
                "/usr/local/bin/esi-cli",
                "--mode=init",
                "--inject-on-file=/secrets/secrets.json=app-secrets"
            ]
        );
        // Local mode: the Pod's ServiceAccount mount is lent to esi-cli's container.
        assert_eq!(init["volumeMounts"][1]["mountPath"], SA_DIR);
        assert_eq!(init["volumeMounts"][1]["readOnly"], true);
    }

    #[test]
    fn annotation_values_reach_esi_cli_literally() {
        let mut a = FED.to_vec();
        a.extend([("env-vars", "true"), ("inject-on-env", "P$(HOME)=db.pw")]);
        let mut spec = app_spec();
        spec["containers"][0]["args"] = json!(["$(PORT)"]);
        let out = admit(&pod(&a, spec)).unwrap();
        let cmd = strs(&out["spec"]["containers"][0]["command"]);
        // The kubelet turns $$ back into $; the application's own $(PORT) still expands.
        assert!(
            cmd.contains(&"--inject-on-env=P$$(HOME)=db.pw".to_string()),
            "{cmd:?}"
        );
        assert!(
            cmd.contains(&"--args=--port=8080,$(PORT)".to_string()),
            "{cmd:?}"
        );
    }

    /// Review finding 8: `injected: "true"` passes only with the injection its
    /// annotations make, exactly.
    #[test]
    fn an_altered_or_forged_injection_is_refused() {
        let mut a = FED.to_vec();
        a.extend([
            ("env-vars", "true"),
            ("inject-on-file", "/secrets/db=db.password"),
        ]);
        let out = admit(&pod(&a, app_spec())).unwrap();
        let again = |f: &dyn Fn(&mut Value)| {
            let mut doc = out.clone();
            f(&mut doc);
            let typed: Pod = serde_json::from_value(doc).unwrap();
            mutate(&typed, &Settings::default())
        };
        assert_eq!(again(&|_| {}), Ok(Patch(Vec::new())));
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|d| {
                    d["metadata"]["annotations"][format!("{P}inject-on-env")] = json!("X=db.user")
                }),
                "spec.containers[0]'s esi-cli command",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"][1]["command"] = json!([
                        "/usr/local/bin/esi-cli",
                        "--mode=init",
                        "--inject-on-file=/secrets/db=other.pw"
                    ])
                }),
                "esi-cli-init has another command",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"]
                        .as_array_mut()
                        .unwrap()
                        .remove(1);
                }),
                "esi-cli-init is missing",
            ),
            (
                Box::new(|d| {
                    d["spec"]["volumes"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|v| v["name"] != VOLUME_TOKEN);
                }),
                "volume esi-cli-token is missing",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"].as_array_mut().unwrap().push(
                        json!({"name": CONTAINER_DAEMON, "image": "x", "command": ["/bin/sh"]}),
                    )
                }),
                "esi-cli-daemon is not called for",
            ),
        ];
        for (edit, needle) in cases {
            let d = again(&*edit).unwrap_err();
            assert_eq!(d.field, format!("{P}injected"), "{d}");
            assert!(d.message.contains(needle), "{needle}: {d}");
        }
        // A container added by a later webhook is left alone.
        assert_eq!(
            again(&|d| d["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "mesh-proxy", "image": "proxy"}))),
            Ok(Patch(Vec::new()))
        );
    }

    /// Second review L2: re-admission compares everything the webhook makes, not only
    /// the commands: our init containers' image, arguments, environment, security
    /// context and mounts, our volumes, and the wrapped containers' args and mounts;
    /// what the API server defaults or rewrites is accepted.
    #[test]
    fn re_admission_compares_the_whole_injection() {
        let mut a = FED.to_vec();
        a.extend([
            ("env-vars", "true"),
            ("inject-on-file", "/secrets/db=db.password"),
        ]);
        let out = admit(&pod(&a, app_spec())).unwrap();
        let again = |f: &dyn Fn(&mut Value)| {
            let mut doc = out.clone();
            f(&mut doc);
            let typed: Pod = serde_json::from_value(doc).unwrap();
            mutate(&typed, &Settings::default())
        };
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|d| d["spec"]["initContainers"][1]["image"] = json!("evil:1")),
                "esi-cli-init is not as the webhook makes it",
            ),
            (
                Box::new(|d| d["spec"]["initContainers"][0]["args"] = json!(["--to=/tmp/x"])),
                "esi-cli-install is not as the webhook makes it",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"][1]["env"] = json!([{"name": "X", "value": "1"}])
                }),
                "esi-cli-init is not as",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"][1]["securityContext"]["privileged"] = json!(true)
                }),
                "esi-cli-init is not as",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"][1]["volumeMounts"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "kube-api-access", "mountPath": "/x"}))
                }),
                "esi-cli-init is not as",
            ),
            (
                Box::new(|d| {
                    d["spec"]["initContainers"][1]["securityContext"]["runAsUser"] = json!(0)
                }),
                "run as root",
            ),
            (
                Box::new(|d| {
                    d["spec"]["volumes"][1]["emptyDir"] = json!({});
                }),
                "volume esi-cli-bin is not as the webhook makes it",
            ),
            (
                Box::new(|d| d["spec"]["containers"][0]["args"] = json!(["--debug"])),
                "has args besides esi-cli's --args",
            ),
            (
                Box::new(|d| {
                    d["spec"]["containers"][0]["volumeMounts"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|m| m["name"] != VOLUME_BIN);
                }),
                "lacks esi-cli's mounts",
            ),
        ];
        for (edit, needle) in cases {
            let d = again(&*edit).unwrap_err();
            assert_eq!(d.field, format!("{P}injected"), "{d}");
            assert!(d.message.contains(needle), "{needle}: {d}");
        }
        // What the API server defaults or rewrites.
        assert_eq!(
            again(&|d| {
                for c in d["spec"]["initContainers"].as_array_mut().unwrap() {
                    c["terminationMessagePath"] = json!("/dev/termination-log");
                    c["resources"]["requests"]["cpu"] = json!("0.01");
                }
                for v in d["spec"]["volumes"].as_array_mut().unwrap() {
                    if v["name"] == VOLUME_TOKEN {
                        v["projected"]["defaultMode"] = json!(420);
                    }
                }
            }),
            Ok(Patch(Vec::new()))
        );
    }

    /// Second review L3: `containers` (an extension annotation) restricts the injection
    /// to the named containers, leaving sidecars added by earlier webhooks alone.
    #[test]
    fn the_containers_annotation_restricts_the_injection() {
        let mut a = FED.to_vec();
        a.extend([
            ("env-vars", "true"),
            ("inject-on-file", "/secrets/db=db.password"),
            ("containers", "app"),
        ]);
        let mut spec = app_spec();
        spec["containers"].as_array_mut().unwrap().insert(
            0,
            json!({"name": "daprd", "image": "dapr:1", "securityContext": {"runAsUser": 0}}),
        );
        let out = admit(&pod(&a, spec.clone())).unwrap();
        let sidecar = &out["spec"]["containers"][0];
        assert_eq!(sidecar, &spec["containers"][0], "the sidecar is untouched");
        let app = &out["spec"]["containers"][1];
        assert_eq!(strs(&app["command"])[0], "/esi/bin/esi-cli");
        assert!(app["volumeMounts"].to_string().contains(VOLUME_FILES));
        // Without the annotation the sidecar is wrapped too (and, without a command, refused).
        let b: Vec<(&str, &str)> = a
            .iter()
            .filter(|(k, _)| *k != "containers")
            .copied()
            .collect();
        let d = admit(&pod(&b, spec.clone())).unwrap_err();
        assert_eq!(d.field, "spec.containers[0].command", "{d}");
        // A name that is not a container: refused.
        let mut c = a.clone();
        c.retain(|(k, _)| *k != "containers");
        c.push(("containers", "app,worker"));
        let d = admit(&pod(&c, spec.clone())).unwrap_err();
        assert_eq!(d.field, format!("{P}containers"), "{d}");
        assert!(d.message.contains("\"worker\""), "{d}");
        // Re-admission: the wrapped containers must be those named.
        let mut forged = out.clone();
        forged["metadata"]["annotations"][format!("{P}containers")] = json!("daprd,app");
        let typed: Pod = serde_json::from_value(forged).unwrap();
        let d = mutate(&typed, &Settings::default()).unwrap_err();
        assert!(d.message.contains("not those"), "{d}");
    }

    /// Review finding 7: a `$(VAR)` whose value could hold a comma would split esi-cli's
    /// `--args`: refused, naming the argument; safe references still work.
    #[test]
    fn references_that_could_split_args_are_refused() {
        let mut a = FED.to_vec();
        a.push(("env-vars", "true"));
        let with = |env: Value, env_from: Option<Value>, arg: &str| {
            let mut spec = app_spec();
            spec["containers"][0]["env"] = env;
            if let Some(f) = env_from {
                spec["containers"][0]["envFrom"] = f;
            }
            spec["containers"][0]["args"] = json!(["serve", arg]);
            pod(&a, spec)
        };
        let list = json!([{"name": "HOSTS", "value": "a,b"}, {"name": "PORT", "value": "8080"},
                          {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                          {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                          {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['x']"}}},
                          {"name": "BOTH", "value": "$(HOSTS)"}]);
        for (arg, needle) in [
            ("--hosts=$(HOSTS)", "holds a comma"),
            ("--pw=$(PW)", "valueFrom"),
            ("--note=$(NOTE)", "valueFrom"),
            ("--both=$(BOTH)", "refers to other variables"),
        ] {
            let d = admit(&with(list.clone(), None, arg)).unwrap_err();
            assert_eq!(d.field, "spec.containers[0].args[1]", "{arg}: {d}");
            assert!(d.message.contains(needle), "{arg}: {d}");
            assert!(!d.message.contains("a,b"), "no value quoted: {d}");
        }
        let d = admit(&with(
            json!([]),
            Some(json!([{"configMapRef": {"name": "c"}}])),
            "$(X)",
        ))
        .unwrap_err();
        assert!(d.message.contains("envFrom"), "{d}");
        // Safe: a literal without a comma, a Pod field, an undefined variable, a literal $$.
        for arg in ["--port=$(PORT)", "--ip=$(IP)", "$(UNDEFINED)", "$$(HOSTS)"] {
            let out = admit(&with(list.clone(), None, arg)).unwrap();
            let cmd = strs(&out["spec"]["containers"][0]["command"]);
            assert_eq!(
                cmd.last().unwrap(),
                &format!("--args=--port=8080,serve,{arg}")
            );
        }
    }

    /// Second review L1: only single-valued Pod fields and resource quantities are safe
    /// `$(VAR)` sources; `status.podIPs`/`status.hostIPs` (comma lists on dual-stack),
    /// annotations and sources this build does not know are not.
    #[test]
    fn only_single_valued_field_refs_are_safe_references() {
        let mut a = FED.to_vec();
        a.push(("env-vars", "true"));
        let with = |from: Value| {
            let mut spec = app_spec();
            spec["containers"][0]["env"] = json!([{"name": "V", "valueFrom": from}]);
            spec["containers"][0]["args"] = json!(["--v=$(V)"]);
            pod(&a, spec)
        };
        let field = |p: &str| json!({"fieldRef": {"fieldPath": p}});
        for safe in [
            field("metadata.name"),
            field("metadata.namespace"),
            field("metadata.uid"),
            field("metadata.labels['app.kubernetes.io/name']"),
            field("spec.nodeName"),
            field("spec.serviceAccountName"),
            field("status.podIP"),
            field("status.hostIP"),
            json!({"resourceFieldRef": {"resource": "limits.memory"}}),
        ] {
            assert!(admit(&with(safe.clone())).is_ok(), "{safe}");
        }
        for unsafe_ in [
            field("status.podIPs"),
            field("status.hostIPs"),
            field("metadata.annotations['x']"),
            field("metadata.annotations"),
            json!({"fileKeyRef": {"path": "x", "key": "k", "volumeName": "v"}}),
            json!({}),
            json!({"configMapKeyRef": {"name": "c", "key": "k"}}),
        ] {
            let d = admit(&with(unsafe_.clone())).unwrap_err();
            assert_eq!(d.field, "spec.containers[0].args[0]", "{unsafe_}: {d}");
            assert!(d.message.contains("valueFrom"), "{unsafe_}: {d}");
        }
    }

    /// Second review H1: `$(VAR)` references are looked up in one map of the container's
    /// variables, not by scanning env for each (1024 variables × 150,000 references).
    #[test]
    fn many_references_against_many_variables_are_checked_quickly() {
        let mut a = FED.to_vec();
        a.push(("env-vars", "true"));
        let mut spec = app_spec();
        let env: Vec<Value> = (0..crate::webhook::bounds::MAX_ENV)
            .map(|i| json!({"name": format!("VARIABLE_{i:04}"), "value": "1"}))
            .collect();
        spec["containers"][0]["env"] = json!(env);
        spec["containers"][0]["args"] = json!(["$(UNDEFINED_NAME)".repeat(150_000)]);
        let typed: Pod = serde_json::from_value(pod(&a, spec)).unwrap();
        let started = std::time::Instant::now();
        let patch = mutate(&typed, &Settings::default()).unwrap();
        let took = started.elapsed();
        assert!(!patch.0.is_empty());
        assert!(took < std::time::Duration::from_millis(700), "{took:?}");
    }

    #[test]
    fn refusals_name_what_to_fix() {
        let env = |extra: &[(&'static str, &'static str)]| {
            let mut a = FED.to_vec();
            a.push(("env-vars", "true"));
            a.extend_from_slice(extra);
            a
        };
        let no_cmd = {
            let mut s = app_spec();
            s["containers"][0]
                .as_object_mut()
                .unwrap()
                .remove("command");
            s
        };
        let comma = {
            let mut s = app_spec();
            s["containers"][0]["args"] = json!(["a", "x,y"]);
            s
        };
        let taken = {
            let mut s = app_spec();
            s["volumes"][0]["name"] = json!(VOLUME_TOKEN);
            s
        };
        let no_user = {
            let mut s = app_spec();
            s.as_object_mut().unwrap().remove("securityContext");
            s
        };
        type Case<'a> = (Vec<(&'a str, &'a str)>, Value, u16, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                env(&[]),
                no_cmd,
                400,
                "spec.containers[0].command",
                "has no command",
            ),
            (
                env(&[]),
                comma,
                400,
                "spec.containers[0].args[1]",
                "holds a comma",
            ),
            (env(&[]), taken, 403, "spec.volumes[0].name", "reserved"),
            (
                env(&[("inject-on-env", "NOPE")]),
                app_spec(),
                400,
                "inject-on-env",
                "is not ENV=secret.key",
            ),
            (
                env(&[("daemon-refresh-interval", "soon")]),
                app_spec(),
                400,
                "daemon-refresh-interval",
                "neither",
            ),
            (
                vec![("externalsecret", "db")],
                app_spec(),
                400,
                "env-vars",
                "no injection is selected",
            ),
            (
                vec![("env-vars", "true")],
                app_spec(),
                400,
                "externalsecret",
                "nothing to inject",
            ),
            (
                vec![("file-secrets", "true"), ("externalsecret", "a,b")],
                app_spec(),
                400,
                "file-secrets",
                "not 2",
            ),
            (
                vec![
                    ("inject-on-env", "A=b.c"),
                    ("file-secrets", "true"),
                    ("externalsecret", "b"),
                ],
                app_spec(),
                400,
                "inject-on-env",
                "needs env-vars",
            ),
            (
                vec![
                    ("federated-server-url", "http://esi"),
                    ("env-vars", "true"),
                    ("externalsecret", "db"),
                ],
                app_spec(),
                400,
                "federated-server-url",
                "https",
            ),
            (
                vec![("federated-store", "s"), ("env-vars", "true")],
                app_spec(),
                400,
                "federated-store",
                "needs federated-server-url",
            ),
            (
                vec![("inject-on-file", "/etc/passwd=db.pw")],
                app_spec(),
                400,
                "inject-on-file",
                "hiding what the image keeps",
            ),
            (
                vec![("inject-on-file", "/app/../etc/x=db.pw")],
                app_spec(),
                400,
                "inject-on-file",
                ".. components",
            ),
            (
                vec![("inject-on-file", "relative=db.pw")],
                app_spec(),
                400,
                "inject-on-file",
                "absolute",
            ),
            (
                vec![("inject-on-file", "/s/x=@/tmpl/x.tmpl")],
                app_spec(),
                400,
                "inject-on-file",
                "no container of the Pod mounts",
            ),
            (
                vec![("inject-on-file", "/s/x=db.pw")],
                no_user,
                400,
                "spec.securityContext.runAsUser",
                "0400",
            ),
            (
                vec![("injected", "true"), ("env-vars", "true")],
                app_spec(),
                400,
                "injected",
                "no injected container",
            ),
            (
                vec![
                    ("federated-server-url", "https://e"),
                    ("federated-generators", "a/Password/pw"),
                    ("env-vars", "true"),
                    ("daemon-refresh-interval", "1m"),
                ],
                {
                    let mut s = app_spec();
                    let second = s["containers"][0].clone();
                    s["containers"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "b", "command": second["command"].clone()}));
                    s
                },
                400,
                "federated-generators",
                "each of the 2 containers",
            ),
        ];
        for (a, spec, code, field, needle) in cases {
            let d = admit(&pod(&a, spec)).unwrap_err();
            let want = if field.starts_with("spec") {
                field.to_string()
            } else {
                format!("{P}{field}")
            };
            assert_eq!(
                (d.code, d.field.as_str()),
                (code, want.as_str()),
                "{a:?}: {d}"
            );
            assert!(d.message.contains(needle), "{a:?}: {d}");
        }
    }

    #[test]
    fn pods_without_annotations_or_skipped_are_unchanged() {
        for a in [vec![], vec![("skip", "true"), ("env-vars", "true")]] {
            let doc = pod(&a, app_spec());
            let typed: Pod = serde_json::from_value(doc).unwrap();
            assert_eq!(mutate(&typed, &Settings::default()), Ok(Patch(Vec::new())));
        }
    }
}
