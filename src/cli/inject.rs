//! Turning fetched secrets into what the application gets: environment variables and
//! file contents. Pure functions, so every rule here is unit-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::args::{FileSource, FileSpec, FileTemplate, Plan, SecretId, SecretRef};
use super::fetch::Results;
use super::value::{SecretData, SecretValue};
use crate::template::{Engine, TemplateData, TemplateSettings};

/// One reason a requested secret cannot be had; printed as one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {reason}")]
pub struct Failure {
    /// Which secret (and key, or file), e.g. `secret "db"`.
    pub subject: String,
    /// Why, never holding a value.
    pub reason: String,
}

/// Everything to inject, computed only when every requested secret was had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    /// Variables to set on top of the inherited environment, in a stable order.
    pub env: Vec<(String, SecretValue)>,
    /// Files to write.
    pub files: Vec<(PathBuf, SecretValue)>,
}

/// An environment variable name from a key: upper-cased, every character that is not an
/// ASCII letter or digit becomes `_` (ESE's rule).
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Variable names that change how a program or its runtime loads code, finds programs or
/// libraries, or trusts certificates: never set from a secret's key listing
/// (`--external-secrets`, `*`), where whoever writes the remote secret chooses the names.
/// Named explicitly (`--inject-on-env=PATH=secret.key`) they are set as asked.
const UNSAFE_NAMES: &[&str] = &[
    "PATH",
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_EXTRA_CA_CERTS",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "JAVA_OPTIONS",
    "CLASSPATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    "CDPATH",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "GEM_PATH",
    "GEM_HOME",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCPATH",
    "NLSPATH",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "MALLOC_CONF",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "DOTNET_STARTUP_HOOKS",
    "DOTNET_ADDITIONAL_DEPS",
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    "LUA_PATH",
    "LUA_CPATH",
    "LUA_INIT",
    "ERL_AFLAGS",
    "ERL_FLAGS",
    "ERL_ZFLAGS",
    "ERL_LIBS",
    "GODEBUG",
    "HOME",
    "TMPDIR",
    "SHELL",
    // JVM launchers' option variables (`-XX:OnOutOfMemoryError=` runs a command,
    // `-javaagent:` loads code); the `_OPTS` suffix rule covers the rest.
    "JAVA_HOME",
    "JRE_HOME",
    // Shells, pagers and tools that run what a variable names.
    "ZDOTDIR",
    "PROMPT_COMMAND",
    "LESSOPEN",
    "LESSCLOSE",
    "BROWSER",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "KUBECONFIG",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "SSLKEYLOGFILE",
    // CA bundles: whoever sets them chooses whom the program trusts.
    "AWS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "PIP_CERT",
    "HTTPLIB2_CA_CERTS",
    "WEBSOCKET_CLIENT_CA_BUNDLE",
];

/// Prefixes of such names (the dynamic loaders', .NET's runtime and profilers, Git's).
/// Names are upper-cased by [`env_name`], so `COMPLUS_` is .NET's `COMPlus_`.
const UNSAFE_PREFIXES: &[&str] = &[
    "LD_", "DYLD_", "CORECLR_", "COR_", "COMPLUS_", "DOTNET_", "MALLOC_", "GIT_", "NODE_", "PYTHON",
];

/// Suffixes of such names: option variables read by launchers and runtimes
/// (`JAVA_OPTS`, `CATALINA_OPTS`, `KAFKA_OPTS`, `ES_JAVA_OPTS`, `JVM_OPTS`, `MAVEN_OPTS`,
/// `GRADLE_OPTS`, `NODE_OPTIONS`, `ERL_FLAGS`, …) and CA-bundle variables
/// (`REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`, …).
const UNSAFE_SUFFIXES: &[&str] = &[
    "_OPTS",
    "_OPTIONS",
    "_FLAGS",
    "_CA_BUNDLE",
    "_CA_CERTS",
    "_CA_FILE",
    "_CA_PATH",
    "_CERT_FILE",
    "_CERT_DIR",
];

/// Whether `name` (an environment variable name as [`env_name`] makes them) is one that
/// [`assemble`] does not set from a key listing ([`UNSAFE_NAMES`], [`UNSAFE_PREFIXES`],
/// [`UNSAFE_SUFFIXES`]).
pub fn is_unsafe_listed_name(name: &str) -> bool {
    UNSAFE_NAMES.contains(&name)
        || UNSAFE_PREFIXES.iter().any(|p| name.starts_with(p))
        || UNSAFE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The whole secret as a YAML map of key: value (strings, quoted where YAML would
/// otherwise read them as numbers, booleans or null).
pub fn render_yaml(data: &SecretData) -> Result<SecretValue, String> {
    let mut map: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &data.keys {
        let text = v.as_str().ok_or_else(|| {
            format!("key {k:?} is not UTF-8 text and cannot go into YAML; write it alone (/path=secret.{k})")
        })?;
        map.insert(k.as_str(), text);
    }
    // The serializer's error text is not shown: it could quote a value.
    serde_saphyr::to_string(&map)
        .map(SecretValue::new)
        .map_err(|_| "the secret could not be rendered as YAML".to_string())
}

fn lookup<'a>(
    plan: &Plan,
    results: &'a Results,
    name: &str,
) -> Result<(SecretId, &'a SecretData), Option<Failure>> {
    let id = plan.resolve(name).map_err(|e| {
        Some(Failure {
            subject: format!("secret {name:?}"),
            reason: e.to_string(),
        })
    })?;
    match results.get(&id) {
        Some(Ok(data)) => Ok((id, data)),
        // The fetch failure itself is reported once, by the caller.
        Some(Err(_)) => Err(None),
        None => Err(Some(Failure {
            subject: id.to_string(),
            reason: "was not fetched".into(),
        })),
    }
}

/// `key` in `data` by the rule the server applies to `remoteRef.property`
/// ([`crate::providers::property::lookup`], ESO's): an exact key first, then a dotted path
/// into the JSON value (`database.host`, `ports.0`, `\.` for a literal dot).
fn property(data: &SecretData, key: &str) -> Option<SecretValue> {
    if let Some(v) = data.keys.get(key) {
        return Some(v.clone());
    }
    let object = match data.raw.as_ref().and_then(SecretValue::as_str) {
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return None,
        },
        // Keys only (generator output, Kubernetes Secret data): the same rule over them.
        None => data
            .keys
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::Value::String(v.as_str()?.into()))))
            .collect(),
    };
    let found = crate::providers::property::lookup(&object, key).ok()?;
    crate::providers::property::value_bytes(found)
        .ok()
        .map(SecretValue::new)
}

fn pick(id: &SecretId, data: &SecretData, r: &SecretRef) -> Result<SecretValue, Failure> {
    match &r.key {
        Some(k) => property(data, k).ok_or_else(|| Failure {
            subject: format!("{id}"),
            reason: if data.keys.is_empty() && data.raw.is_some() {
                format!("key {k:?} not found: the value is not a JSON object")
            } else {
                format!("key {k:?} not found")
            },
        }),
        None => data.raw.clone().ok_or_else(|| Failure {
            subject: format!("{id}"),
            reason: "has several keys: name one (secret.key)".into(),
        }),
    }
}

/// The content of one file: one key's value, the whole secret (YAML when it has keys; a
/// store value that is not a JSON object is written as it is), or a rendered template.
pub fn render_file(
    plan: &Plan,
    results: &Results,
    spec: &FileSpec,
) -> Result<SecretValue, Option<Failure>> {
    let source = match &spec.source {
        FileSource::Secret(r) => r,
        FileSource::Template(t) => return render_template_file(plan, results, spec, t),
    };
    let (id, data) = lookup(plan, results, &source.secret)?;
    let with_path = |f: Failure| Failure {
        subject: format!("{} (for {})", f.subject, spec.path.display()),
        reason: f.reason,
    };
    match (&source.key, &data.raw) {
        (Some(_), _) => pick(&id, data, source).map_err(|f| Some(with_path(f))),
        (None, Some(raw)) if data.keys.is_empty() => Ok(raw.clone()),
        (None, _) => render_yaml(data).map_err(|reason| {
            Some(with_path(Failure {
                subject: id.to_string(),
                reason,
            }))
        }),
    }
}

/// A template file rendered over the secrets it names: `.secret.key` for a secret with
/// keys, `.secret` for a store value that is not a JSON object (docs/templates.md).
fn render_template_file(
    plan: &Plan,
    results: &Results,
    spec: &FileSpec,
    t: &FileTemplate,
) -> Result<SecretValue, Option<Failure>> {
    let subject = || {
        format!(
            "template {} (for {})",
            t.file.display(),
            spec.path.display()
        )
    };
    let Some(loaded) = &t.loaded else {
        return Err(Some(Failure {
            subject: subject(),
            reason: "was not loaded".into(),
        }));
    };
    let mut data = TemplateData::new();
    let mut missing = None;
    for name in &loaded.secrets {
        match lookup(plan, results, name) {
            Ok((_, d)) if d.keys.is_empty() && d.raw.is_some() => {
                let raw = d
                    .raw
                    .as_ref()
                    .map(|v| v.expose().to_vec())
                    .unwrap_or_default();
                data.insert_value(name, raw);
            }
            Ok((_, d)) => data.insert(
                name,
                d.keys
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_vec()))
                    .collect(),
            ),
            // Reported once per secret by the caller; the file is not rendered.
            Err(f) => missing = Some(f),
        }
    }
    if let Some(f) = missing {
        return Err(f);
    }
    let engine = Engine::new(TemplateSettings::default()).map_err(|e| {
        Some(Failure {
            subject: subject(),
            reason: e.to_string(),
        })
    })?;
    // Template errors name the template, a key or a function, never a value.
    engine
        .render_data(&t.file.display().to_string(), &loaded.text, &data)
        .map(SecretValue::new)
        .map_err(|e| {
            Some(Failure {
                subject: subject(),
                reason: e.to_string(),
            })
        })
}

/// The failures of the fetch round, one line per secret that could not be had.
pub fn fetch_failures(results: &Results, order: &[SecretId]) -> Vec<Failure> {
    order
        .iter()
        .filter_map(|id| match results.get(id) {
            Some(Err(e)) => Some(Failure {
                subject: id.to_string(),
                reason: e.to_string(),
            }),
            _ => None,
        })
        .collect()
}

/// Everything init mode injects, or every reason it cannot (then nothing is injected).
pub fn assemble(
    plan: &Plan,
    results: &Results,
    order: &[SecretId],
) -> Result<Injection, Vec<Failure>> {
    let mut failures = fetch_failures(results, order);
    let mut env: Vec<(String, SecretValue)> = Vec::new();
    let explicit: Vec<&str> = plan.env.iter().map(|e| e.var.as_str()).collect();
    for name in &plan.expand {
        let (id, data) = match lookup(plan, results, name) {
            Ok(found) => found,
            Err(f) => {
                failures.extend(f);
                continue;
            }
        };
        if data.keys.is_empty() && data.raw.is_some() {
            failures.push(Failure {
                subject: id.to_string(),
                reason: "the value is not a JSON object, so it has no keys to become environment variables".into(),
            });
            continue;
        }
        for (k, v) in &data.keys {
            let var = env_name(k);
            if var.is_empty() || explicit.contains(&var.as_str()) {
                continue;
            }
            if is_unsafe_listed_name(&var) {
                // The name only (it is the remote key's, upper-cased), never the value.
                tracing::warn!(variable = %var, secret = %id, "not set from the secret's key listing: it changes how programs load code; name it in --inject-on-env to set it");
                continue;
            }
            if env.iter().any(|(n, _)| *n == var) {
                // Two keys map to one name: the first one (in flag order) stays.
                tracing::warn!(variable = %var, key = %k, secret = %id, "environment variable already set by another key; skipped");
                continue;
            }
            env.push((var, v.clone()));
        }
    }
    for spec in &plan.env {
        match lookup(plan, results, &spec.source.secret) {
            Ok((id, data)) => match pick(&id, data, &spec.source) {
                Ok(v) => {
                    env.retain(|(n, _)| *n != spec.var);
                    env.push((spec.var.clone(), v));
                }
                Err(f) => failures.push(Failure {
                    subject: format!("{} (for {})", f.subject, spec.var),
                    reason: f.reason,
                }),
            },
            Err(f) => failures.extend(f),
        }
    }
    let mut files = Vec::new();
    for spec in &plan.files {
        match render_file(plan, results, spec) {
            Ok(v) => files.push((spec.path.clone(), v)),
            Err(f) => failures.extend(f),
        }
    }
    if failures.is_empty() {
        Ok(Injection { env, files })
    } else {
        Err(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Args, Plan};
    use crate::cli::error::FetchError;
    use clap::Parser;
    use std::collections::HashMap;

    fn plan(args: &[&str]) -> Plan {
        let mut v = vec![
            "esi-cli",
            "--federated-server-url=https://esi.test",
            "--federated-store=st",
        ];
        v.extend_from_slice(args);
        Plan::from_args(&Args::try_parse_from(v).unwrap()).unwrap()
    }

    fn keys(pairs: &[(&str, &str)]) -> SecretData {
        SecretData::from_keys(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretValue::new(*v)))
                .collect(),
        )
    }

    fn env_of(inj: &Injection) -> Vec<(String, String)> {
        inj.env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect()
    }

    /// Issue 8 (e): the server's `remoteRef.property` rule, not top-level keys only.
    #[test]
    fn keys_follow_the_servers_property_rule() {
        let d = SecretData::from_store_value(
            r#"{"database":{"host":"db.internal","ports":[5432,5433]},"a.b":"exact","a":{"b":"nested"},"x":{"y.z":"escaped"}}"#.into(),
        );
        let get = |k: &str| property(&d, k).map(|v| v.as_str().unwrap().to_string());
        assert_eq!(get("database.host").as_deref(), Some("db.internal"));
        assert_eq!(get("database.ports.1").as_deref(), Some("5433"));
        assert_eq!(
            get("database").as_deref(),
            Some(r#"{"host":"db.internal","ports":[5432,5433]}"#)
        );
        assert_eq!(get("a.b").as_deref(), Some("exact"), "an exact key wins");
        assert_eq!(get(r"x.y\.z").as_deref(), Some("escaped"));
        assert_eq!(get("database.nope"), None);
        assert_eq!(get("database.host.deeper"), None);
        assert_eq!(property(&keys(&[("k", "v")]), "k.x"), None);
        assert_eq!(
            property(&SecretData::from_store_value("not json".into()), "a.b"),
            None
        );
    }

    #[test]
    fn names() {
        assert_eq!(env_name("db-password"), "DB_PASSWORD");
        assert_eq!(env_name("tls.crt"), "TLS_CRT");
        assert_eq!(env_name("api/key v2"), "API_KEY_V2");
        assert_eq!(env_name("Ünïcode"), "_N_CODE");
        assert_eq!(env_name("ALREADY_OK_1"), "ALREADY_OK_1");
    }

    #[test]
    fn yaml_round_trips_strings() {
        let d = keys(&[
            ("user", "app"),
            ("port", "5432"),
            ("flag", "yes"),
            ("nothing", "null"),
            ("multi", "line1\nline2: x"),
            ("quote", "it's \"q\" #no"),
            ("empty", ""),
        ]);
        let y = render_yaml(&d).unwrap();
        let back: BTreeMap<String, String> = serde_saphyr::from_str(y.as_str().unwrap()).unwrap();
        let want: BTreeMap<String, String> = d
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(back, want);
        assert!(
            render_yaml(&SecretData::from_keys(BTreeMap::from([(
                "bin".to_string(),
                SecretValue::new(vec![0xff, 0xfe])
            )])))
            .is_err()
        );
    }

    #[test]
    fn expansion_explicit_wins_and_store_properties() {
        let p = plan(&[
            "--mode=init",
            "--binary-path=/bin/env",
            "--external-secrets=db",
            "--inject-on-env=PASSWORD=other.pw,RAW=other,U=db.user-name",
        ]);
        let mut r = Results::new();
        r.insert(
            SecretId::Store("db".into()),
            Ok(SecretData::from_store_value(
                r#"{"user-name":"app","password":"from-db"}"#.into(),
            )),
        );
        r.insert(
            SecretId::Store("other".into()),
            Ok(SecretData::from_store_value(
                r#"{"pw":"from-other"}"#.into(),
            )),
        );
        let inj = assemble(&p, &r, &p.secrets().unwrap()).unwrap();
        let env = env_of(&inj);
        assert!(env.contains(&("USER_NAME".into(), "app".into())));
        assert!(
            env.contains(&("PASSWORD".into(), "from-other".into())),
            "{env:?}"
        );
        assert!(!env.contains(&("PASSWORD".into(), "from-db".into())));
        assert!(env.contains(&("RAW".into(), r#"{"pw":"from-other"}"#.into())));
        assert!(env.contains(&("U".into(), "app".into())));
    }

    #[test]
    fn failures_are_one_line_each_and_nothing_injected() {
        let p = plan(&[
            "--mode=init",
            "--binary-path=/bin/env",
            "--external-secrets=denied,plain",
            "--inject-on-env=A=ok.missing,B=denied.x",
            "--inject-on-file=/f=ok.also-missing",
        ]);
        let mut r = Results::new();
        r.insert(
            SecretId::Store("denied".into()),
            Err(FetchError::NotFound("not found".into())),
        );
        r.insert(
            SecretId::Store("plain".into()),
            Ok(SecretData::from_store_value("tok".into())),
        );
        r.insert(
            SecretId::Store("ok".into()),
            Ok(SecretData::from_store_value(r#"{"k":"v"}"#.into())),
        );
        let fails = assemble(&p, &r, &p.secrets().unwrap()).unwrap_err();
        let lines: Vec<String> = fails.iter().map(|f| f.to_string()).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("secret \"denied\": "), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("\"plain\"") && l.contains("not a JSON object"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("(for A)") && l.contains("key \"missing\" not found"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("(for /f)") && l.contains("also-missing"))
        );
        for l in &lines {
            assert!(!l.contains("tok") && !l.contains("\"v\""), "{l}");
        }
    }

    #[test]
    fn files_key_whole_and_raw() {
        let p = plan(&[
            "--mode=init",
            "--inject-on-file=/a=db.user,/b=db,/c=token,/d=pw",
            "--federated-generators=ns/Password/pw",
        ]);
        let mut r = Results::new();
        r.insert(
            SecretId::Store("db".into()),
            Ok(SecretData::from_store_value(
                r#"{"user":"app","password":"p"}"#.into(),
            )),
        );
        r.insert(
            SecretId::Store("token".into()),
            Ok(SecretData::from_store_value("t0k".into())),
        );
        let ids = p.secrets().unwrap();
        r.insert(ids[2].clone(), Ok(keys(&[("password", "gen")])));
        let inj = assemble(&p, &r, &ids).unwrap();
        let f: HashMap<String, String> = inj
            .files
            .iter()
            .map(|(p, v)| (p.display().to_string(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(f["/a"], "app");
        let whole: BTreeMap<String, String> = serde_saphyr::from_str(&f["/b"]).unwrap();
        assert_eq!(whole["password"], "p");
        assert_eq!(f["/c"], "t0k");
        assert_eq!(f["/d"].trim(), "password: gen");
    }

    /// Review finding 5: a key listing (`--external-secrets`, `*`) cannot set variables
    /// that change how programs load code; named explicitly they are set.
    #[test]
    fn listed_keys_never_set_loader_variables_but_explicit_ones_do() {
        let data = || {
            keys(&[
                ("ld_preload", "/tmp/evil.so"),
                ("PATH", "/tmp/evil"),
                ("node-options", "--require /tmp/evil.js"),
                ("JAVA_TOOL_OPTIONS", "-javaagent:/tmp/evil.jar"),
                ("PYTHONPATH", "/tmp/evil"),
                ("bash_env", "/tmp/evil.sh"),
                ("DYLD_INSERT_LIBRARIES", "/tmp/evil.dylib"),
                ("GCONV_PATH", "/tmp/evil"),
                ("PERL5OPT", "-Mevil"),
                ("RUBYOPT", "-revil"),
                ("LD_LIBRARY_PATH", "/tmp/evil"),
                ("db-password", "ok"),
                ("PATHS_FILE", "fine"),
            ])
        };
        let p = plan(&["--mode=init", "--binary-path=/x", "--external-secrets=s"]);
        let mut r = Results::new();
        r.insert(SecretId::Store("s".into()), Ok(data()));
        let inj = assemble(&p, &r, &p.secrets().unwrap()).unwrap();
        assert_eq!(
            env_of(&inj),
            vec![
                ("PATHS_FILE".to_string(), "fine".to_string()),
                ("DB_PASSWORD".to_string(), "ok".to_string())
            ]
        );
        // `*` over a generator's keys: the same.
        let p = plan(&[
            "--mode=init",
            "--binary-path=/x",
            "--federated-generators=ns/Password/g",
            "--inject-on-env=*",
        ]);
        let ids = p.secrets().unwrap();
        let mut r = Results::new();
        r.insert(
            ids[0].clone(),
            Ok(keys(&[("LD_PRELOAD", "x"), ("password", "p")])),
        );
        let inj = assemble(&p, &r, &ids).unwrap();
        assert_eq!(
            env_of(&inj),
            vec![("PASSWORD".to_string(), "p".to_string())]
        );
        // Named in the mapping: set.
        let p = plan(&[
            "--mode=init",
            "--binary-path=/x",
            "--external-secrets=s",
            "--inject-on-env=PATH=s.PATH,LD_PRELOAD=s.ld_preload",
        ]);
        let mut r = Results::new();
        r.insert(SecretId::Store("s".into()), Ok(data()));
        let env = env_of(&assemble(&p, &r, &p.secrets().unwrap()).unwrap());
        assert!(
            env.contains(&("PATH".into(), "/tmp/evil".into())),
            "{env:?}"
        );
        assert!(env.contains(&("LD_PRELOAD".into(), "/tmp/evil.so".into())));
        assert!(!env.iter().any(|(n, _)| n == "NODE_OPTIONS"));
    }

    /// Second review M2: launcher option variables (`-XX:OnOutOfMemoryError` runs a
    /// command), .NET's runtime knobs, tools that run what a variable names and CA
    /// bundles are never set from a listing; ordinary names still are.
    #[test]
    fn listings_skip_launcher_options_dotnet_tools_and_ca_bundles() {
        for name in [
            "JAVA_OPTS",
            "CATALINA_OPTS",
            "KAFKA_OPTS",
            "ES_JAVA_OPTS",
            "JVM_OPTS",
            "MAVEN_OPTS",
            "GRADLE_OPTS",
            "ZDOTDIR",
            "SSLKEYLOGFILE",
            "LESSOPEN",
            "BROWSER",
            "PROMPT_COMMAND",
            "KUBECONFIG",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            "AWS_CA_BUNDLE",
            "JAVA_HOME",
            "DOTNET_STARTUP_HOOKS",
            "DOTNET_GCHEAPHARDLIMIT",
            "CORECLR_PROFILER_PATH",
            "COMPLUS_DBGJITDEBUGLAUNCHSETTING",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSH_COMMAND",
            "GO_FLAGS",
            "APP_OPTIONS",
        ] {
            assert!(is_unsafe_listed_name(name), "{name}");
            assert_eq!(env_name(name), name, "already a listed name");
        }
        // .NET's `COMPlus_` as a key becomes `COMPLUS_`.
        assert!(is_unsafe_listed_name(&env_name(
            "COMPlus_EnableDiagnostics"
        )));
        for name in [
            "DB_PASSWORD",
            "API_TOKEN",
            "OPTS_FILE",
            "USERNAME",
            "JAVA_VERSION",
        ] {
            assert!(!is_unsafe_listed_name(name), "{name}");
        }
        // Through a listing: skipped; named in the mapping: set.
        let p = plan(&["--mode=init", "--binary-path=/x", "--external-secrets=s"]);
        let mut r = Results::new();
        r.insert(
            SecretId::Store("s".into()),
            Ok(keys(&[
                ("java_opts", "-XX:OnOutOfMemoryError=/bin/sh"),
                ("aws-ca-bundle", "/tmp/ca"),
                ("token", "t"),
            ])),
        );
        let inj = assemble(&p, &r, &p.secrets().unwrap()).unwrap();
        assert_eq!(env_of(&inj), vec![("TOKEN".to_string(), "t".to_string())]);
        let p = plan(&[
            "--mode=init",
            "--binary-path=/x",
            "--external-secrets=s",
            "--inject-on-env=JAVA_OPTS=s.java_opts",
        ]);
        let env = env_of(&assemble(&p, &r, &p.secrets().unwrap()).unwrap());
        assert!(env.iter().any(|(n, _)| n == "JAVA_OPTS"), "{env:?}");
    }

    #[test]
    fn colliding_key_names_keep_the_first() {
        let p = plan(&["--mode=init", "--binary-path=/x", "--external-secrets=s"]);
        let mut r = Results::new();
        r.insert(
            SecretId::Store("s".into()),
            Ok(keys(&[("a-b", "1"), ("a.b", "2")])),
        );
        let inj = assemble(&p, &r, &p.secrets().unwrap()).unwrap();
        assert_eq!(env_of(&inj), vec![("A_B".to_string(), "1".to_string())]);
    }

    #[test]
    fn file_templates_render_over_the_secrets_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let tmpl = dir.path().join("c.tmpl");
        std::fs::write(
            &tmpl,
            "db: {{ .db.user }}:{{ .db.password }}\ntoken: {{ .token }}\npw: {{ .pw.password | b64enc }}\n",
        )
        .unwrap();
        let flag = format!("--inject-on-file=/c=@{}", tmpl.display());
        let mut p = plan(&[
            "--mode=init",
            &flag,
            "--federated-generators=ns/Password/pw",
        ]);
        p.load_templates().unwrap();
        let ids = p.secrets().unwrap();
        let mut r = Results::new();
        r.insert(
            SecretId::Store("db".into()),
            Ok(SecretData::from_store_value(
                r#"{"user":"app","password":"p"}"#.into(),
            )),
        );
        r.insert(
            SecretId::Store("token".into()),
            Ok(SecretData::from_store_value("t0k".into())),
        );
        let gen_id = ids
            .iter()
            .find(|i| matches!(i, SecretId::Generator(_)))
            .unwrap()
            .clone();
        r.insert(
            gen_id,
            Ok(SecretData::from_keys(
                [("password".to_string(), SecretValue::new(vec![0xff, 0x00]))].into(),
            )),
        );
        let inj = assemble(&p, &r, &ids).unwrap();
        assert_eq!(
            inj.files[0].1.expose(),
            b"db: app:p\ntoken: t0k\npw: /wA=\n"
        );
        // A key the template reads and the secret lacks: the file fails, naming the key only.
        std::fs::write(&tmpl, "{{ .db.nope }}").unwrap();
        let mut p = plan(&["--mode=init", &flag]);
        p.load_templates().unwrap();
        let lines = assemble(&p, &r, &p.secrets().unwrap()).unwrap_err();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = lines[0].to_string();
        assert!(
            line.contains("c.tmpl (for /c)") && line.contains("no entry for key \"nope\""),
            "{line}"
        );
        assert!(!line.contains("app") && !line.contains("t0k"), "{line}");
    }
}
