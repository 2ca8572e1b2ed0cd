//! ServiceAccount tokens from the Kubernetes TokenRequest API, for stores and generators
//! with `auth.kubernetes.serviceAccountRef` (Kubernetes mode passes a [`KubeTokenRequest`]
//! in `ProviderSettings::service_account_tokens`).
//!
//! `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` with the configured
//! audiences and a short life ([`TOKEN_LIFETIME`]); each token is reused until 80 % of its
//! life has passed, then a new one is asked for. The cache is bounded
//! ([`MAX_CACHED_TOKENS`]) and holds tokens only in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;

use super::token::{ServiceAccountTokens, Token, TokenError};

/// Life asked for each token (the API server's minimum is 10 minutes).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// Share of a token's life after which a new one is asked for.
const RENEW_AT: f64 = 0.8;
/// Most (namespace, ServiceAccount, audiences) tokens kept at once.
pub const MAX_CACHED_TOKENS: usize = 1024;

type Key = (String, String, Vec<String>);

/// A cache of tokens by (namespace, ServiceAccount, audiences), each good until its
/// renewal time.
#[derive(Default)]
struct Cache {
    entries: Mutex<HashMap<Key, (Token, Instant)>>,
}

impl Cache {
    fn get(&self, key: &Key, now: Instant) -> Option<Token> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(t, _)| t.clone())
    }

    /// Keeps `token` until `RENEW_AT` of `lifetime` from `now`; drops expired entries
    /// first, and everything when still full (bounded).
    fn put(&self, key: Key, token: Token, lifetime: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED_TOKENS {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= MAX_CACHED_TOKENS {
                entries.clear();
            }
        }
        entries.insert(key, (token, now + lifetime.mul_f64(RENEW_AT)));
    }
}

/// Tokens from the TokenRequest API of the cluster `client` talks to. The server's
/// ServiceAccount needs `create` on `serviceaccounts/token` for the ServiceAccounts named.
pub struct KubeTokenRequest {
    client: kube::Client,
    cache: Cache,
    /// What is refused; [`KubeTokenRequest::learn_issuer`] changes it while running.
    refusal: std::sync::RwLock<Refusal>,
}

/// The audiences refused, and whether every token is.
#[derive(Default)]
struct Refusal {
    /// Normalized ([`normalize_audience`]).
    audiences: Vec<String>,
    /// Set: every token is refused, for this reason (the refusal list is incomplete).
    all: Option<&'static str>,
}

impl std::fmt::Debug for KubeTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenRequest").finish_non_exhaustive()
    }
}

impl KubeTokenRequest {
    /// Tokens through `client`.
    pub fn new(client: kube::Client) -> Self {
        KubeTokenRequest {
            client,
            cache: Cache::default(),
            refusal: std::sync::RwLock::new(Refusal::default()),
        }
    }

    fn refusal_mut(&mut self) -> &mut Refusal {
        self.refusal.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The API server's issuer, learnt after start (`issuer`, the `iss` of its tokens): it
    /// is refused as an audience from now on and, in the same step, a refusal of every
    /// token ([`KubeTokenRequest::refusing_all`]) is lifted (the refusal list is complete).
    pub fn learn_issuer(&self, issuer: &str) {
        let issuer = normalize_audience(issuer);
        if issuer.is_empty() {
            return;
        }
        let mut r = self.refusal.write().unwrap_or_else(|p| p.into_inner());
        if !r.audiences.iter().any(|a| a == issuer) {
            r.audiences.push(issuer.to_string());
        }
        r.all = None;
    }

    /// Refuses every token with `reason`: when the audiences the API server accepts cannot
    /// all be known, none is requested (fail closed).
    pub fn refusing_all(mut self, reason: &'static str) -> Self {
        self.refusal_mut().all = Some(reason);
        self
    }

    /// Refuses tokens for any of `audiences` (compared without a trailing `/`): the
    /// audiences the Kubernetes API server itself accepts. A namespaced SecretStore or
    /// Federation generator names the ServiceAccount, the audience and the URL the token is
    /// sent to; a token with the API server's audience would let whoever runs that URL act
    /// as the ServiceAccount against this cluster (see docs/security.md).
    pub fn with_refused_audiences(mut self, audiences: Vec<String>) -> Self {
        self.refusal_mut().audiences = audiences
            .into_iter()
            .map(|a| normalize_audience(&a).to_string())
            .filter(|a| !a.is_empty())
            .collect();
        self
    }

    /// Why `audiences` are refused, if they are: every token refused (until the issuer
    /// is learnt: may pass), or the first refused audience (definite).
    fn refused(&self, audiences: &[String]) -> Option<TokenError> {
        let r = self.refusal.read().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = r.all {
            return Some(TokenError::Unavailable(format!(
                "TokenRequest refused: {reason}"
            )));
        }
        audiences
            .iter()
            .find(|a| {
                let a = normalize_audience(a);
                r.audiences.iter().any(|x| x == a)
            })
            .map(|aud| {
                TokenError::Refused(format!(
                    "TokenRequest: audience {aud:?} is accepted by the Kubernetes API server itself \
                     (--api-server-audiences); a token for it would be valid against this cluster: refused"
                ))
            })
    }
}

/// A failed TokenRequest: an API answer 4xx other than 401, 408 (timeout) and 429
/// (throttled) is a refusal — 403 (the server may no longer ask for the ServiceAccount's
/// tokens), 404 (the ServiceAccount is gone), 400/422 — definite; anything else (no
/// answer, 401, 408, 429, 5xx) may pass. A 401 rejects the gateway's own credentials
/// (token rotation, an authentication webhook outage), not the ServiceAccount.
pub(crate) fn request_error(namespace: &str, service_account: &str, e: &kube::Error) -> TokenError {
    let what = format!("TokenRequest for ServiceAccount {namespace}/{service_account}");
    match e {
        kube::Error::Api(s) if s.code == 401 => TokenError::Unavailable(format!(
            "{what} failed: HTTP {} {} (the gateway's own Kubernetes credentials were rejected)",
            s.code, s.reason
        )),
        kube::Error::Api(s) if (400..500).contains(&s.code) && !matches!(s.code, 408 | 429) => {
            TokenError::Refused(format!("{what} refused: HTTP {} {}", s.code, s.reason))
        }
        kube::Error::Api(s) => {
            TokenError::Unavailable(format!("{what} failed: HTTP {} {}", s.code, s.reason))
        }
        _ => TokenError::Unavailable(format!(
            "{what} failed: the Kubernetes API could not be reached"
        )),
    }
}

/// An audience as compared with the refused ones: trimmed, without a trailing `/`.
fn normalize_audience(a: &str) -> &str {
    a.trim().trim_end_matches('/')
}

#[async_trait::async_trait]
impl ServiceAccountTokens for KubeTokenRequest {
    async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[String],
    ) -> Result<Token, TokenError> {
        // kube-core formats both into the request path unencoded: only Kubernetes names, so
        // `..` or `/` cannot name another object (the names are not echoed: not one).
        if !super::spec::is_dns_label(namespace) || !super::spec::is_dns_subdomain(service_account)
        {
            return Err(TokenError::Refused(
                "TokenRequest: the ServiceAccount's namespace or name is not a Kubernetes name"
                    .into(),
            ));
        }
        if let Some(refusal) = self.refused(audiences) {
            return Err(refusal);
        }
        // No audience means the API server's own: a token valid against this cluster, which
        // these tokens (sent to another server) must never be.
        if audiences.is_empty() {
            return Err(TokenError::Refused(
                "TokenRequest: no audience (the API server's own would be asked for)".into(),
            ));
        }
        let key: Key = (
            namespace.to_string(),
            service_account.to_string(),
            audiences.to_vec(),
        );
        if let Some(t) = self.cache.get(&key, Instant::now()) {
            return Ok(t);
        }
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.to_vec(),
                expiration_seconds: Some(TOKEN_LIFETIME.as_secs() as i64),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let asked = Instant::now();
        let answer = api
            .create_token_request(service_account, &Default::default(), &request)
            .await
            .map_err(|e| request_error(namespace, service_account, &e))?;
        let status = answer.status.ok_or_else(|| {
            TokenError::Unavailable(format!(
                "TokenRequest for ServiceAccount {namespace}/{service_account} answered no token"
            ))
        })?;
        let token = Token::new(&status.token)?;
        // The life granted may be shorter than asked (the API server caps it).
        let lifetime = std::time::SystemTime::from(status.expiration_timestamp.0)
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(TOKEN_LIFETIME);
        self.cache.put(key, token.clone(), lifetime, asked);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sa: &str) -> Key {
        ("ns".into(), sa.into(), vec!["aud".into()])
    }

    #[test]
    fn tokens_are_reused_until_eighty_percent_of_their_life() {
        let c = Cache::default();
        let now = Instant::now();
        c.put(
            key("a"),
            Token::new("t1").unwrap(),
            Duration::from_secs(600),
            now,
        );
        assert!(c.get(&key("a"), now + Duration::from_secs(479)).is_some());
        assert!(c.get(&key("a"), now + Duration::from_secs(480)).is_none());
        assert!(c.get(&key("b"), now).is_none());
        // Another audience is another token.
        assert!(
            c.get(&("ns".into(), "a".into(), vec!["other".into()]), now)
                .is_none()
        );
    }

    #[tokio::test]
    async fn api_server_audiences_are_refused_before_any_request() {
        // Nothing listens there: a request would fail with another message.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let t = KubeTokenRequest::new(client).with_refused_audiences(vec![
            "https://kubernetes.default.svc/".into(),
            "kubernetes".into(),
        ]);
        for aud in [
            "https://kubernetes.default.svc",
            "kubernetes",
            " kubernetes/",
        ] {
            let e = t
                .token("ns", "sa", &["https://fed.example".into(), aud.into()])
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("accepted by the Kubernetes API server"), "{e}");
        }
        let e = t
            .token("ns", "sa", &["https://fed.example".into()])
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("accepted by the Kubernetes API server"), "{e}");
    }

    /// The issuer learnt after start lifts the refusal of every token and is refused itself
    /// (before: an issuer unknown at start refused every token until a restart).
    #[tokio::test]
    async fn an_issuer_learnt_later_lifts_the_refusal_of_every_token() {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let t = KubeTokenRequest::new(client)
            .with_refused_audiences(vec!["kubernetes".into()])
            .refusing_all("the issuer is unknown");
        let ask = |aud: &str| {
            let aud = vec![aud.to_string()];
            let t = &t;
            async move { t.token("ns", "sa", &aud).await.unwrap_err().to_string() }
        };
        assert!(
            ask("https://fed.example")
                .await
                .contains("the issuer is unknown")
        );
        t.learn_issuer("https://issuer.example/");
        let e = ask("https://fed.example").await;
        assert!(e.contains("could not be reached"), "asked for: {e}");
        for aud in ["https://issuer.example", "kubernetes"] {
            let e = ask(aud).await;
            assert!(e.contains("accepted by the Kubernetes API server"), "{e}");
        }
    }

    /// 4xx answers but 408 and 429 are refusals (definite); the rest may pass.
    #[test]
    fn api_refusals_are_definite() {
        let api = |code: u16, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure("ignored", reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        for (code, reason) in [
            (403, "Forbidden"),
            (404, "NotFound"),
            (400, "BadRequest"),
            (422, "Invalid"),
        ] {
            let e = request_error("ns", "sa", &api(code, reason));
            assert!(matches!(&e, TokenError::Refused(_)), "{code}: {e:?}");
            assert!(e.to_string().contains(&format!("HTTP {code}")), "{e}");
            assert!(e.to_string().contains("ns/sa"), "{e}");
        }
        // 401: the gateway's own credentials were rejected (token rotation, an auth
        // webhook outage), not the ServiceAccount: transient.
        for (code, reason) in [
            (401, "Unauthorized"),
            (408, "Timeout"),
            (429, "TooManyRequests"),
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
        ] {
            let e = request_error("ns", "sa", &api(code, reason));
            assert!(matches!(&e, TokenError::Unavailable(_)), "{code}: {e:?}");
        }
        let e = request_error("ns", "sa", &kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(matches!(&e, TokenError::Unavailable(_)), "{e:?}");
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = Cache::default();
        let now = Instant::now();
        for i in 0..MAX_CACHED_TOKENS + 10 {
            c.put(
                key(&format!("sa-{i}")),
                Token::new("t").unwrap(),
                Duration::from_secs(600),
                now,
            );
        }
        assert!(c.entries.lock().unwrap().len() <= MAX_CACHED_TOKENS);
    }
}
