//! End to end: caller-chosen text cannot forge text-log lines or reach a terminal raw
//! (issue 19, finding 9). The real `esi-server` with `--log-format text`.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `esi-server serve` with the text log format (the shared `Server` helper pins JSON).
struct TextServer {
    child: std::process::Child,
    url: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TextServer {
    fn start(manifests: &[(&str, String)]) -> TextServer {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("manifests");
        std::fs::create_dir_all(&mdir).unwrap();
        for (name, text) in manifests {
            std::fs::write(mdir.join(name), text).unwrap();
        }
        let mut child = Command::new(server_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
            .arg("--manifests")
            .arg(&mdir)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            // Lines split on \n only: a raw \r or ESC would stay visible in the text.
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&line).into_owned());
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.strip_prefix("esi-server listening on ") {
                        break rest.trim().to_string();
                    }
                }
                _ => panic!("esi-server exited:\n{}", log.lock().unwrap().join("\n")),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let ca = std::fs::read(dir.path().join("data/tls/ca.crt")).unwrap();
        TextServer {
            child,
            url,
            client: client_trusting(&ca),
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TextServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread")]
async fn a_key_with_newlines_and_escapes_forges_no_log_line() {
    let issuer = Issuer::start(jwks(&["ec-1"]), true).await;
    let fed = format!(
        "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\nmetadata: {{name: alpha}}\nspec:\n  url: {}\n  audiences: [\"{AUD}\"]\n",
        issuer.url
    );
    let store = "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: s}\nspec: {provider: {fake: {data: [{key: k, value: v}]}}}\n".to_string();
    let server = TextServer::start(&[("fed.yaml", fed), ("store.yaml", store)]);
    let token = mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None);
    let forged =
        "2026-01-01T00:00:00.000000Z  INFO esi::decision: federation=alpha decision=\"allow\"";
    let key = format!(
        "k%0A{}%1B%5B2J%1B%5D0;pwned%07%0D",
        forged.replace(' ', "%20").replace('"', "%22")
    );
    let status = server
        .client
        .post(format!("{}/secretstore/s/secrets/{key}", server.url))
        .bearer_auth(&token)
        .json(&json!({ "ca.crt": b64(&issuer.ca.ca_pem) }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 404);
    for _ in 0..100 {
        if server.logs().iter().any(|l| l.contains("esi::decision")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = server.logs();
    let all = logs.join("\n");
    // The key reached the decision line, escaped, on that one line.
    let line = logs
        .iter()
        .find(|l| l.contains("esi::decision") && l.contains("decision=deny"))
        .unwrap_or_else(|| panic!("no decision line:\n{all}"));
    assert!(line.contains(r"key:s/k\n2026-01-01T00:00:00"), "{line}");
    // No forged line, no raw escape or bell or carriage return anywhere.
    assert!(
        !logs.iter().any(|l| l.starts_with("2026-01-01T00:00:00")),
        "{all}"
    );
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("decision=\"allow\"") && !l.contains("\\\"allow")),
        "{all}"
    );
    assert!(!all.contains('\u{1b}'), "{all:?}");
    assert!(!all.contains('\u{7}'), "{all:?}");
    assert!(!all.contains('\r'), "{all:?}");
}
