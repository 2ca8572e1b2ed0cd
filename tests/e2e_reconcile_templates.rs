//! End to end: ExternalSecret `target.template` and `rewrite[].transform` through the real
//! `esi-server reconcile --once` binary, with outputs written down from ESO's documentation
//! (templating guide: mergePolicy, templateFrom ConfigMap `KeysAndValues`, literal with
//! `valuesDecodingStrategy`, templated labels) and a binary value carried byte for byte.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::reconcile_files::{read_yaml, reconcile_once, secret_data};

fn reconcile(manifests: &Path, out: &Path) -> (i32, String) {
    let pass = reconcile_once(manifests, out, &[]);
    (pass.code, format!("{}{}", pass.stdout, pass.stderr))
}

const MANIFESTS: &str = r#"apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {name: fake, namespace: team}
spec:
  provider:
    fake:
      data:
        - {key: creds, value: '{"username":"bob","password":"czNjcjN0"}'}
        - {key: user, value: "u"}
        - {key: uri, value: "oci://registry.example.com/charts"}
        - {key: bin, value: "/wCAYfSPvoA="}
        - {key: env, value: "ZGV2"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: templated, namespace: team}
data:
  config: |
    my-application-{{ .user }}: {{ .password | b64enc }}
    {{- if hasPrefix "oci://" .uri }}
    enableOCI: true
    {{- else }}
    enableOCI: false
    {{- end }}
    application-type: grafana
---
# ESO docs, mergePolicy: Merge: the provider data first, the templates over it.
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: merged, namespace: team}
spec:
  secretStoreRef: {name: fake, kind: SecretStore}
  target:
    template:
      mergePolicy: Merge
      metadata:
        labels: {env: '{{ .env | b64dec }}'}
      data:
        name: admin
        password: '{{ .password | b64dec }}'
  dataFrom:
    - extract: {key: creds}
  data:
    - {secretKey: env, remoteRef: {key: env}}
---
# ESO docs, templateFrom a ConfigMap rendered as KeysAndValues, plus a literal whose values
# are base64-decoded (valuesDecodingStrategy), plus a binary value through b64dec.
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: from-configmap, namespace: team}
spec:
  secretStoreRef: {name: fake, kind: SecretStore}
  target:
    template:
      templateFrom:
        - configMap:
            name: templated
            items: [{key: config, templateAs: KeysAndValues}]
        - literal: "decoded: {{ .password }}"
          valuesDecodingStrategy: Base64
      data:
        raw: '{{ .bin | b64dec }}'
  data:
    - {secretKey: user, remoteRef: {key: user}}
    - {secretKey: uri, remoteRef: {key: uri}}
    - {secretKey: password, remoteRef: {key: creds, property: password}}
    - {secretKey: bin, remoteRef: {key: bin}}
---
# rewrite.transform: each key through a template (`.value` is the key).
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: transformed, namespace: team}
spec:
  secretStoreRef: {name: fake, kind: SecretStore}
  dataFrom:
    - extract: {key: creds}
      rewrite:
        - transform: {template: 'APP_{{ .value | upper }}'}
---
# An unsupported function is an error naming it, never an empty value.
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: unsupported, namespace: team}
spec:
  secretStoreRef: {name: fake, kind: SecretStore}
  target:
    template:
      data: {stamp: '{{ now | date "2006" }}', user: '{{ .username }}'}
  dataFrom:
    - extract: {key: creds}
"#;

#[test]
fn templates_render_as_esos_documentation_says() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("all.yaml"), MANIFESTS).unwrap();
    let (code, text) = reconcile(&manifests, &out);
    assert_eq!(code, 1, "one ExternalSecret fails: {text}");

    // mergePolicy Merge: provider keys, then the templates over them; templated label.
    let merged = out.join("team/merged.yaml");
    let data = secret_data(&merged);
    let expected: BTreeMap<String, Vec<u8>> = [
        ("env", "ZGV2"),
        ("name", "admin"),
        ("password", "s3cr3t"),
        ("username", "bob"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    assert_eq!(data, expected);
    assert_eq!(read_yaml(&merged)["metadata"]["labels"]["env"], "dev");

    // templateFrom ConfigMap (KeysAndValues) + literal (Base64 values) + binary via b64dec;
    // Replace (the default): no provider keys.
    let data = secret_data(&out.join("team/from-configmap.yaml"));
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "application-type",
            "decoded",
            "enableOCI",
            "my-application-u",
            "raw"
        ]
    );
    assert_eq!(data["my-application-u"], b"Y3pOamNqTjA=");
    assert_eq!(data["enableOCI"], b"true");
    assert_eq!(data["application-type"], b"grafana");
    assert_eq!(data["decoded"], b"s3cr3t");
    assert_eq!(
        data["raw"],
        [0xff, 0x00, 0x80, 0x61, 0xf4, 0x8f, 0xbe, 0x80],
        "binary bytes pass through the template unchanged"
    );

    // rewrite.transform.
    let data = secret_data(&out.join("team/transformed.yaml"));
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["APP_PASSWORD", "APP_USERNAME"]
    );

    // The unsupported function: Ready=False naming it, no Secret, no value in the message.
    assert!(!out.join("team/unsupported.yaml").exists());
    let status = read_yaml(&out.join("team/unsupported.externalsecret-status.yaml"));
    let c = &status["status"]["conditions"][0];
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "SecretSyncedError");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("could not apply template"), "{message}");
    assert!(message.contains("\"now\" is not supported"), "{message}");
    for value in ["bob", "czNjcjN0", "s3cr3t"] {
        assert!(!message.contains(value), "{message}");
        assert!(!text.contains(value), "a value in the output: {text}");
    }
}
