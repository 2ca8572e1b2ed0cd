//! The moto server started by `scripts/moto.sh` (from `scripts/test.sh`), which checks
//! SigV4 signatures and IAM policies, and signed calls with its test user's key (tests
//! create their own secrets and parameters with them).

use std::time::SystemTime;

use serde_json::Value;

/// moto's endpoint, region, and the IAM user and role `scripts/moto.sh` created.
pub struct Moto {
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
    pub role_arn: String,
}

/// The moto server from the environment, or None (skipped) when it is not running.
pub fn moto() -> Option<Moto> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("ESI_TEST_MOTO_ENDPOINT"),
        var("ESI_TEST_MOTO_ACCESS_KEY_ID"),
        var("ESI_TEST_MOTO_SECRET_ACCESS_KEY"),
    ) {
        (Some(endpoint), Some(key_id), Some(secret)) => Some(Moto {
            endpoint,
            region: var("ESI_TEST_MOTO_REGION").unwrap_or_else(|| "us-east-1".into()),
            key_id,
            secret,
            role_arn: var("ESI_TEST_MOTO_ROLE_ARN").unwrap_or_default(),
        }),
        _ => {
            if std::env::var("ESI_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!(
                    "moto is required (ESI_REQUIRE_BACKENDS=1) but ESI_TEST_MOTO_ENDPOINT is not set"
                );
            }
            eprintln!("skipped: moto not running (run scripts/test.sh, or scripts/moto.sh start)");
            None
        }
    }
}

impl Moto {
    /// The test user's secret key with its last character changed: a key moto refuses.
    /// (A fixed replacement would be the right key whenever the key ends with it.)
    pub fn wrong_secret(&self) -> String {
        let (head, last) = self.secret.split_at(self.secret.len() - 1);
        format!("{head}{}", if last == "x" { "y" } else { "x" })
    }

    /// A JSON 1.1 API call (`target` is `service.Action` in AWS's spelling, e.g.
    /// `secretsmanager.CreateSecret`, `AmazonSSM.PutParameter`) signed for `service` with
    /// the test user's key; panics unless moto answers 2xx.
    pub async fn call(&self, service: &str, target: String, body: Value) -> Value {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let body = body.to_string();
        let url = format!("{}/", self.endpoint.trim_end_matches('/'));
        let identity =
            aws_credential_types::Credentials::new(&self.key_id, &self.secret, None, None, "test")
                .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let request = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        super::install_crypto();
        let mut req = reqwest::Client::new().post(&url).body(body.clone());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{target}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}
