//! Parsing a compact JWS and checking its claims. Parsing happens before any key is known
//! (the issuer picks the federation), so nothing parsed here is trusted until a key verified
//! the signature over exactly these bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;

use std::collections::BTreeMap;

use super::error::AuthnError;
use super::federation::{Federation, MAX_CLAIM_VALUE_BYTES, OidcRules, Rules};
use super::identity::{Identity, Principal, ServiceAccount};
use super::keys::{VerifyKey, accepted_algorithm};
use super::spiffe::{kubernetes_workload, parse_workload_id};

/// A syntactically valid token, not yet verified.
pub(crate) struct ParsedToken<'a> {
    pub(crate) alg: Algorithm,
    /// `kid`, `None` when absent or empty (then every key of the issuer is tried).
    pub(crate) kid: Option<String>,
    /// `base64(header).base64(claims)`: the signed bytes.
    message: &'a str,
    /// `base64(claims)`, read again in full for an OIDC federation's claim rules.
    payload: &'a str,
    signature: &'a str,
    /// `iss`, a non-empty string; `None` only for a token whose `sub` is a SPIFFE ID
    /// (JWT-SVIDs need not carry `iss`).
    pub(crate) iss: Option<String>,
    /// The trust domain of `sub` when `sub` is a workload SPIFFE ID: what routes the token
    /// to a `SpiffeFederation` (whose keys must then verify it).
    pub(crate) spiffe_trust_domain: Option<String>,
    claims: RawClaims,
}

/// Marks a member as present, whatever its value (even `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

/// The header members we read. `jku`, `x5u`, `jwk`, `x5c` are deliberately ignored: keys come
/// only from the federation's configuration, never from the token.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Present,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<Value>,
    /// Legacy secret-based tokens name their ServiceAccount in flat claims.
    #[serde(default, rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<Value>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_name: Option<Value>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.uid")]
    legacy_uid: Option<Value>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/secret.name")]
    legacy_secret: Option<Value>,
}

impl RawClaims {
    /// A legacy secret-based token: the flat `kubernetes.io/serviceaccount/*` claims, no
    /// bound `kubernetes.io` claim, no `exp`.
    fn is_legacy(&self) -> bool {
        self.kubernetes.is_none()
            && self.exp.is_none()
            && (self.legacy_secret.is_some()
                || self.legacy_namespace.is_some()
                || self.legacy_name.is_some())
    }
}

fn b64_json<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &'static str,
) -> Result<T, AuthnError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthnError::Malformed(what))?;
    // Serde would also read a struct from a JSON array; JOSE requires an object.
    if !bytes.trim_ascii_start().starts_with(b"{") {
        return Err(AuthnError::Malformed(what));
    }
    serde_json::from_slice(&bytes).map_err(|_| AuthnError::Malformed(what))
}

/// The three parts of a compact JWS of at most `max_bytes` (checked first): header and
/// payload non-empty; the signature may be empty (the caller names `alg: none`).
pub(crate) fn split(token: &str, max_bytes: usize) -> Result<(&str, &str, &str), AuthnError> {
    if token.len() > max_bytes {
        return Err(AuthnError::TooLarge);
    }
    if token.is_empty() {
        return Err(AuthnError::Malformed("empty token"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed("not three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(AuthnError::Malformed("empty part"));
    }
    Ok((h, p, s))
}

/// Parses a compact JWS of at most `max_bytes` (checked first, before any decoding).
pub(crate) fn parse(token: &str, max_bytes: usize) -> Result<ParsedToken<'_>, AuthnError> {
    let (h, p, s) = split(token, max_bytes)?;
    let header: RawHeader = b64_json(h, "bad header")?;
    if header.crit.0 {
        return Err(AuthnError::CriticalHeader);
    }
    // Before the signature check, so that `alg: none` (empty signature) is named as such.
    let alg = accepted_algorithm(&header.alg).ok_or(AuthnError::UnsupportedAlgorithm)?;
    if s.is_empty() {
        return Err(AuthnError::Malformed("empty signature"));
    }
    // Only the signature is checked against these bytes later; reject bad encodings now.
    if URL_SAFE_NO_PAD.decode(s).is_err() {
        return Err(AuthnError::Malformed("bad signature encoding"));
    }
    let claims: RawClaims = b64_json(p, "bad claims")?;
    let spiffe_trust_domain = match &claims.sub {
        Some(Value::String(sub)) if sub.starts_with("spiffe://") => parse_workload_id(sub)
            .ok()
            .map(|id| id.trust_domain.to_owned()),
        _ => None,
    };
    let iss = match &claims.iss {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        // A JWT-SVID need not name an issuer (JWT-SVID §3): its trust domain does.
        None if spiffe_trust_domain.is_some() => None,
        // A would-be JWT-SVID whose `sub` is no workload SPIFFE ID: say what is wrong.
        None if matches!(&claims.sub, Some(Value::String(s)) if s.starts_with("spiffe://")) => {
            return Err(AuthnError::BadSubject);
        }
        _ => return Err(AuthnError::BadIssuer),
    };
    Ok(ParsedToken {
        alg,
        kid: header.kid.filter(|k| !k.is_empty()),
        message: &token[..h.len() + 1 + p.len()],
        payload: p,
        signature: s,
        iss,
        spiffe_trust_domain,
        claims,
    })
}

impl ParsedToken<'_> {
    /// Whether `fed` may be this token's federation, from what the token says (before any
    /// key; only `fed`'s keys then verify it): a `SpiffeFederation` when `sub` is a workload
    /// SPIFFE ID of its trust domain (`iss` is not used); any other kind when the token
    /// has an `iss` and `fed` expects that issuer, or learns its issuer by discovery.
    pub(crate) fn may_be_of(&self, fed: &Federation) -> bool {
        match fed.trust_domain() {
            Some(td) => self.spiffe_trust_domain.as_deref() == Some(td),
            None => self
                .iss
                .as_deref()
                .is_some_and(|iss| fed.configured_issuer().is_none_or(|c| c == iss)),
        }
    }

    /// `iss`, or empty when the token has none (logs).
    pub(crate) fn iss_or_empty(&self) -> &str {
        self.iss.as_deref().unwrap_or_default()
    }

    /// Whether `key` verifies the signature (the caller checked `key.accepts(self.alg)`).
    pub(crate) fn verify_signature(&self, key: &VerifyKey) -> bool {
        if !key.accepts(self.alg) {
            return false;
        }
        matches!(
            jsonwebtoken::crypto::verify(
                self.signature,
                self.message.as_bytes(),
                &key.key,
                self.alg
            ),
            Ok(true)
        )
    }

    /// Checks the claims of a token whose signature a key of `fed` verified, and builds the
    /// identity. `now` and `leeway` in seconds. The checks every kind shares (lifetime,
    /// audience) come first, then the kind's own ([`Rules`]).
    pub(crate) fn check_claims(
        &self,
        fed: &Federation,
        now: u64,
        leeway: u64,
        max_lifetime: u64,
    ) -> Result<Identity, AuthnError> {
        let c = &self.claims;
        let spiffe = matches!(fed.rules, Rules::Spiffe { .. });
        let allow_legacy = matches!(
            fed.rules,
            Rules::Kubernetes {
                allow_legacy_tokens: true
            }
        );
        let legacy = c.is_legacy();
        if legacy && !allow_legacy {
            return Err(AuthnError::LegacyToken);
        }
        let exp = match &c.exp {
            None if legacy => None,
            None => return Err(AuthnError::MissingExpiry),
            Some(v) => Some(numeric_date(v)?),
        };
        if let Some(exp) = exp
            && now > exp.saturating_add(leeway)
        {
            return Err(AuthnError::Expired);
        }
        if let Some(v) = &c.nbf
            && numeric_date(v)? > now.saturating_add(leeway)
        {
            return Err(AuthnError::NotYetValid);
        }
        let iat = match &c.iat {
            // JWT-SVID §3: `iat` is optional; the lifetime is then bounded from now.
            None if legacy || spiffe => None,
            None => return Err(AuthnError::MissingIssuedAt),
            Some(v) => Some(numeric_date(v)?),
        };
        if let Some(iat) = iat
            && iat > now.saturating_add(leeway)
        {
            return Err(AuthnError::IssuedInFuture);
        }
        // A JWT-SVID without `iat`: what is left of its lifetime is bounded instead.
        let lifetime_from = iat.or(spiffe.then_some(now));
        if let (Some(from), Some(exp)) = (lifetime_from, exp)
            && exp.saturating_sub(from) > max_lifetime
        {
            return Err(AuthnError::LifetimeTooLong);
        }
        check_audience(c.aud.as_ref(), &fed.audiences)?;
        let (subject, principal) = match &fed.rules {
            Rules::Kubernetes { .. } => self.service_account(legacy)?,
            Rules::Oidc(rules) => self.oidc_subject(rules)?,
            Rules::Spiffe { trust_domain } => self.spiffe_workload(trust_domain)?,
        };
        let issuer = match (&self.iss, &fed.rules) {
            (_, Rules::Spiffe { trust_domain }) => format!("spiffe://{trust_domain}"),
            (Some(iss), _) => iss.clone(),
            (None, _) => return Err(AuthnError::BadIssuer),
        };
        Ok(Identity {
            federation: fed.name.clone(),
            federation_kind: fed.kind,
            issuer,
            subject,
            principal,
            expires_at: exp,
        })
    }

    /// A JWT-SVID's subject and workload: `sub` a workload SPIFFE ID (SPIFFE-ID spec) of
    /// exactly `trust_domain`; its path may name a Kubernetes workload
    /// ([`kubernetes_workload`]).
    fn spiffe_workload(&self, trust_domain: &str) -> Result<(String, Principal), AuthnError> {
        let Some(Value::String(sub)) = &self.claims.sub else {
            return Err(AuthnError::BadSubject);
        };
        let id = parse_workload_id(sub).map_err(|_| AuthnError::BadSubject)?;
        if id.trust_domain != trust_domain {
            return Err(AuthnError::BadSubject);
        }
        Ok((
            sub.clone(),
            Principal::SpiffeWorkload {
                trust_domain: trust_domain.to_owned(),
                path: id.path.to_owned(),
                kubernetes: kubernetes_workload(id.path),
            },
        ))
    }

    /// A ServiceAccount token's subject and ServiceAccount: `sub` must name the
    /// ServiceAccount the `kubernetes.io` claim (or a legacy token's flat claims) names.
    fn service_account(&self, legacy: bool) -> Result<(String, Principal), AuthnError> {
        let c = &self.claims;
        let subject = match &c.sub {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(AuthnError::BadSubject),
        };
        let sa = match &c.kubernetes {
            Some(v) => kubernetes_claim(v)?,
            None if legacy => legacy_claims(c)?,
            None => {
                let (namespace, name) = split_sa_subject(&subject).ok_or(AuthnError::BadSubject)?;
                SaClaim {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    uid: None,
                    pod_name: None,
                    pod_uid: None,
                }
            }
        };
        if subject != format!("system:serviceaccount:{}:{}", sa.namespace, sa.name) {
            return Err(AuthnError::BadSubject);
        }
        Ok((
            subject,
            Principal::ServiceAccount(ServiceAccount {
                namespace: sa.namespace,
                name: sa.name,
                uid: sa.uid,
                pod_name: sa.pod_name,
                pod_uid: sa.pod_uid,
            }),
        ))
    }

    /// An OIDC token's subject (the first present of `subject_claims`, a non-empty string
    /// of at most [`MAX_CLAIM_VALUE_BYTES`]), its `boundClaims` (all must match) and the
    /// claims handed to policies (strings of at most [`MAX_CLAIM_VALUE_BYTES`]; a listed
    /// claim of another type refuses the token, so a policy never misses a claim the token
    /// did carry). The claims are read again in full, duplicate members refused.
    fn oidc_subject(&self, rules: &OidcRules) -> Result<(String, Principal), AuthnError> {
        let all: UniqueClaims = b64_json(self.payload, "bad claims")?;
        let all = all.0;
        let present = |name: &str| all.get(name).filter(|v| !v.is_null());
        let subject = match rules.subject_claims.iter().find_map(|c| present(c)) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_CLAIM_VALUE_BYTES => {
                s.clone()
            }
            _ => return Err(AuthnError::BadSubject),
        };
        for (claim, pattern) in &rules.bound_claims {
            let bound = match present(claim) {
                Some(Value::String(s)) => glob_match(pattern, s),
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| glob_match(pattern, s))),
                _ => false,
            };
            if !bound {
                return Err(AuthnError::UnboundClaims);
            }
        }
        let mut claims = BTreeMap::new();
        for name in &rules.claims {
            match present(name) {
                None => {}
                Some(Value::String(s)) if s.len() <= MAX_CLAIM_VALUE_BYTES => {
                    claims.insert(name.clone(), s.clone());
                }
                Some(_) => return Err(AuthnError::BadClaim),
            }
        }
        Ok((subject, Principal::OidcSubject { claims }))
    }
}

/// A JSON object's members, a member that appears twice refused (a token whose claims
/// could be read two ways is ambiguous).
struct UniqueClaims(BTreeMap<String, Value>);

impl<'de> Deserialize<'de> for UniqueClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueClaims, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                }
                Ok(UniqueClaims(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Whether `value` matches `pattern`, in which every `*` matches any run of characters
/// (none included) and everything else itself. Linear: the literal runs between stars are
/// found left to right (the leftmost place of each is never worse for the rest).
pub(crate) fn glob_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `*`: exact.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A NumericDate: a non-negative number of seconds (fractions are truncated).
fn numeric_date(v: &Value) -> Result<u64, AuthnError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        _ => Err(AuthnError::BadTimeClaim),
    }
}

fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), AuthnError> {
    let auds: Vec<&str> = match aud {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or(AuthnError::BadAudience))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(AuthnError::BadAudience),
    };
    if accepted.is_empty() || auds.iter().any(|a| accepted.iter().any(|x| x == a)) {
        Ok(())
    } else {
        Err(AuthnError::BadAudience)
    }
}

/// `system:serviceaccount:NS:NAME` → `(NS, NAME)`, both non-empty and without `:`.
fn split_sa_subject(sub: &str) -> Option<(&str, &str)> {
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((ns, name))
}

struct SaClaim {
    namespace: String,
    name: String,
    uid: Option<String>,
    pod_name: Option<String>,
    pod_uid: Option<String>,
}

/// The flat claims of a legacy secret-based token: namespace and name are required.
fn legacy_claims(c: &RawClaims) -> Result<SaClaim, AuthnError> {
    let text = |v: &Option<Value>| -> Result<Option<String>, AuthnError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AuthnError::BadKubernetesClaim),
        }
    };
    let usable = |s: &String| !s.is_empty() && !s.contains(':');
    Ok(SaClaim {
        namespace: text(&c.legacy_namespace)?
            .filter(usable)
            .ok_or(AuthnError::BadKubernetesClaim)?,
        name: text(&c.legacy_name)?
            .filter(usable)
            .ok_or(AuthnError::BadKubernetesClaim)?,
        uid: text(&c.legacy_uid)?,
        pod_name: None,
        pod_uid: None,
    })
}

/// The `kubernetes.io` claim of bound tokens: `namespace`, `serviceaccount{name,uid}`,
/// optional `pod{name,uid}` (other members, e.g. `node`, are ignored).
fn kubernetes_claim(v: &Value) -> Result<SaClaim, AuthnError> {
    let bad = AuthnError::BadKubernetesClaim;
    let obj = v.as_object().ok_or(bad.clone())?;
    let str_of =
        |o: &serde_json::Map<String, Value>, k: &str| -> Result<Option<String>, AuthnError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(AuthnError::BadKubernetesClaim),
            }
        };
    let namespace = str_of(obj, "namespace")?
        .filter(|s| !s.is_empty() && !s.contains(':'))
        .ok_or(bad.clone())?;
    let sa = obj
        .get("serviceaccount")
        .and_then(Value::as_object)
        .ok_or(bad.clone())?;
    let name = str_of(sa, "name")?
        .filter(|s| !s.is_empty() && !s.contains(':'))
        .ok_or(bad.clone())?;
    let uid = str_of(sa, "uid")?;
    let (pod_name, pod_uid) = match obj.get("pod") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(pod)) => (str_of(pod, "name")?, str_of(pod, "uid")?),
        Some(_) => return Err(bad),
    };
    Ok(SaClaim {
        namespace,
        name,
        uid,
        pod_name,
        pod_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn tok(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", enc(&header), enc(&claims))
    }

    #[test]
    fn parse_errors() {
        let ok_claims = json!({"iss": "i"});
        assert_eq!(
            parse("", 10).err(),
            Some(AuthnError::Malformed("empty token"))
        );
        assert_eq!(parse(&"a".repeat(11), 10).err(), Some(AuthnError::TooLarge));
        for bad in [
            "a.b",
            "a.b.c.d",
            "..",
            "a..c",
            "%%%.e30.c2ln",
            "e30.e30.c2ln",
        ] {
            assert!(parse(bad, 1000).is_err(), "{bad}");
        }
        let t = tok(json!({"alg": "none"}), ok_claims.clone());
        assert_eq!(
            parse(&t, 1000).err(),
            Some(AuthnError::UnsupportedAlgorithm)
        );
        let t = format!("{}.{}.", enc(&json!({"alg": "none"})), enc(&ok_claims));
        assert_eq!(
            parse(&t, 1000).err(),
            Some(AuthnError::UnsupportedAlgorithm)
        );
        let t = format!("{}.{}.", enc(&json!({"alg": "RS256"})), enc(&ok_claims));
        assert_eq!(
            parse(&t, 1000).err(),
            Some(AuthnError::Malformed("empty signature"))
        );
        let t = tok(json!({"alg": "RS256", "crit": ["exp"]}), ok_claims.clone());
        assert_eq!(parse(&t, 1000).err(), Some(AuthnError::CriticalHeader));
        let t = tok(json!({"alg": "RS256", "crit": null}), ok_claims.clone());
        assert_eq!(parse(&t, 1000).err(), Some(AuthnError::CriticalHeader));
        let t = tok(json!({"alg": "RS256", "kid": 5}), ok_claims.clone());
        assert_eq!(
            parse(&t, 1000).err(),
            Some(AuthnError::Malformed("bad header"))
        );
        let t = tok(json!({"alg": "RS256"}), json!({"iss": 5}));
        assert_eq!(parse(&t, 1000).err(), Some(AuthnError::BadIssuer));
        let t = tok(json!({"alg": "RS256"}), json!(["x"]));
        assert_eq!(
            parse(&t, 1000).err(),
            Some(AuthnError::Malformed("bad claims"))
        );
        // Duplicate members are ambiguous: rejected.
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","alg":"ES256"}"#);
        let t = format!("{h}.{}.c2ln", enc(&ok_claims));
        assert_eq!(
            parse(&t, 1000).err(),
            Some(AuthnError::Malformed("bad header"))
        );
        let t = tok(
            json!({"alg": "ES384", "kid": "", "jku": "https://evil"}),
            ok_claims,
        );
        let p = parse(&t, 1000).unwrap();
        assert_eq!(p.kid, None);
        assert_eq!(p.alg, Algorithm::ES384);
    }

    fn fed(audiences: &[&str]) -> Federation {
        fed_legacy(audiences, false)
    }

    fn fed_legacy(audiences: &[&str], allow_legacy_tokens: bool) -> Federation {
        let spec = crate::resources::KubernetesFederationSpec {
            url: Some("https://k.example".into()),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            allow_legacy_tokens,
            ..Default::default()
        };
        Federation::from_spec("f", &spec).unwrap()
    }

    #[test]
    fn legacy_tokens_only_when_opted_in() {
        let legacy = json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:default:vault-auth",
            "kubernetes.io/serviceaccount/namespace": "default",
            "kubernetes.io/serviceaccount/secret.name": "vault-auth-token-t5pcn",
            "kubernetes.io/serviceaccount/service-account.name": "vault-auth",
            "kubernetes.io/serviceaccount/service-account.uid": "d77f89bc"
        });
        let run = |claims: &Value, allow: bool| {
            let t = tok(json!({"alg": "RS256"}), claims.clone());
            parse(&t, 10_000)
                .unwrap()
                .check_claims(&fed_legacy(&[], allow), 1000, 60, 366 * 86400)
        };
        assert_eq!(run(&legacy, false).err(), Some(AuthnError::LegacyToken));
        let id = run(&legacy, true).unwrap();
        assert_eq!(id.service_account().unwrap().name, "vault-auth");
        assert_eq!(
            id.service_account().unwrap().uid.as_deref(),
            Some("d77f89bc")
        );
        assert_eq!(id.expires_at, None);
        // The flat claims must agree with `sub`.
        let mut wrong = legacy.clone();
        wrong["kubernetes.io/serviceaccount/service-account.name"] = json!("other");
        assert_eq!(run(&wrong, true).err(), Some(AuthnError::BadSubject));
        let mut no_ns = legacy.clone();
        no_ns
            .as_object_mut()
            .unwrap()
            .remove("kubernetes.io/serviceaccount/namespace");
        assert_eq!(
            run(&no_ns, true).err(),
            Some(AuthnError::BadKubernetesClaim)
        );
        // A legacy token with an exp is checked like any other (it needs iat too).
        let mut with_exp = legacy.clone();
        with_exp["exp"] = json!(2000);
        assert_eq!(
            run(&with_exp, true).err(),
            Some(AuthnError::MissingIssuedAt)
        );
        // Opting in does not waive the audience when the federation has audiences.
        let t = tok(json!({"alg": "RS256"}), legacy.clone());
        assert_eq!(
            parse(&t, 10_000)
                .unwrap()
                .check_claims(&fed_legacy(&["a"], true), 1000, 60, 366 * 86400)
                .err(),
            Some(AuthnError::BadAudience)
        );
    }

    fn check(claims: Value, audiences: &[&str]) -> Result<Identity, AuthnError> {
        let t = tok(json!({"alg": "RS256"}), claims);
        parse(&t, 10_000)
            .unwrap()
            .check_claims(&fed(audiences), 1000, 60, 366 * 86400)
    }

    #[test]
    fn claim_checks() {
        let base =
            json!({"iss": "i", "sub": "system:serviceaccount:ns:sa", "exp": 2000, "iat": 900});
        let id = check(base.clone(), &[]).unwrap();
        assert_eq!(
            (
                id.service_account().unwrap().namespace.as_str(),
                id.service_account().unwrap().name.as_str()
            ),
            ("ns", "sa")
        );
        assert_eq!(id.expires_at, Some(2000));
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        assert_eq!(
            check(
                json!({"iss": "i", "sub": "system:serviceaccount:ns:sa", "iat": 900}),
                &[]
            )
            .err(),
            Some(AuthnError::MissingExpiry)
        );
        assert_eq!(
            check(
                json!({"iss": "i", "sub": "system:serviceaccount:ns:sa", "exp": 2000}),
                &[]
            )
            .err(),
            Some(AuthnError::MissingIssuedAt)
        );
        // Lifetime: exactly the maximum passes, one second more fails.
        let max = 366 * 86400;
        assert!(check(with("exp", json!(900 + max)), &[]).is_ok());
        assert_eq!(
            check(with("exp", json!(900 + max + 1)), &[]).err(),
            Some(AuthnError::LifetimeTooLong)
        );
        assert_eq!(
            check(with("iat", json!(0)), &[]).err(),
            None,
            "1999 s lifetime is fine"
        );
        assert_eq!(
            check(with("exp", json!(939)), &[]).err(),
            Some(AuthnError::Expired)
        );
        assert!(check(with("exp", json!(940)), &[]).is_ok(), "leeway");
        assert!(check(with("exp", json!(1500.7)), &[]).is_ok());
        assert_eq!(
            check(with("exp", json!("2000")), &[]).err(),
            Some(AuthnError::BadTimeClaim)
        );
        assert_eq!(
            check(with("exp", json!(-1)), &[]).err(),
            Some(AuthnError::BadTimeClaim)
        );
        assert_eq!(
            check(with("nbf", json!(1061)), &[]).err(),
            Some(AuthnError::NotYetValid)
        );
        assert!(check(with("nbf", json!(1060)), &[]).is_ok());
        assert_eq!(
            check(with("iat", json!(1061)), &[]).err(),
            Some(AuthnError::IssuedInFuture)
        );
        assert_eq!(
            check(with("aud", json!("a")), &["b"]).err(),
            Some(AuthnError::BadAudience)
        );
        assert_eq!(
            check(base.clone(), &["b"]).err(),
            Some(AuthnError::BadAudience)
        );
        assert!(check(with("aud", json!(["a", "b"])), &["b"]).is_ok());
        assert!(check(with("aud", json!("b")), &["b"]).is_ok());
        assert!(check(with("aud", json!("x")), &[]).is_ok());
        assert_eq!(
            check(with("aud", json!([1])), &["b"]).err(),
            Some(AuthnError::BadAudience)
        );
        assert_eq!(
            check(with("sub", json!(5)), &[]).err(),
            Some(AuthnError::BadSubject)
        );
        for bad in [
            "system:serviceaccount:ns",
            "system:serviceaccount::sa",
            "user:x",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(
                check(with("sub", json!(bad)), &[]).err(),
                Some(AuthnError::BadSubject),
                "{bad}"
            );
        }
        let k8s = json!({"namespace": "ns", "serviceaccount": {"name": "sa", "uid": "u1"}, "pod": {"name": "p", "uid": "u2"}});
        let id = check(with("kubernetes.io", k8s.clone()), &[]).unwrap();
        assert_eq!(id.service_account().unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(id.service_account().unwrap().pod_name.as_deref(), Some("p"));
        assert_eq!(id.service_account().unwrap().pod_uid.as_deref(), Some("u2"));
        let mut other = k8s.clone();
        other["serviceaccount"]["name"] = json!("admin");
        assert_eq!(
            check(with("kubernetes.io", other), &[]).err(),
            Some(AuthnError::BadSubject)
        );
        let mut other = k8s.clone();
        other["namespace"] = json!("kube-system");
        assert_eq!(
            check(with("kubernetes.io", other), &[]).err(),
            Some(AuthnError::BadSubject)
        );
        for bad in [
            json!("x"),
            json!({"namespace": "ns"}),
            json!({"namespace": 1, "serviceaccount": {"name": "sa"}}),
            json!({"namespace": "ns", "serviceaccount": {"name": "sa"}, "pod": "p"}),
        ] {
            assert_eq!(
                check(with("kubernetes.io", bad.clone()), &[]).err(),
                Some(AuthnError::BadKubernetesClaim),
                "{bad}"
            );
        }
    }

    fn oidc_fed(spec: crate::resources::OidcFederationSpec) -> Federation {
        Federation::from_oidc_spec("gh", &spec).unwrap()
    }

    fn oidc_spec() -> crate::resources::OidcFederationSpec {
        crate::resources::OidcFederationSpec {
            issuer: "https://token.example".into(),
            common: crate::resources::OidcCommonSpec {
                audiences: vec!["esi".into()],
                ..Default::default()
            },
            jwks: Some(
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#
                    .into(),
            ),
            ..Default::default()
        }
    }

    fn oidc_check(fed: &Federation, claims: Value) -> Result<Identity, AuthnError> {
        let t = tok(json!({"alg": "RS256"}), claims);
        parse(&t, 10_000)
            .unwrap()
            .check_claims(fed, 1000, 60, 366 * 86400)
    }

    fn gh_claims() -> Value {
        json!({
            "iss": "https://token.example", "aud": "esi", "exp": 2000, "iat": 900,
            "sub": "repo:org/app:environment:prod",
            "repository": "org/app", "ref": "refs/heads/main",
            "groups": ["dev", "ops"], "run_attempt": 2, "empty": "",
        })
    }

    #[test]
    fn oidc_subjects_bound_claims_and_exposed_claims() {
        let with = |k: &str, v: Value| {
            let mut c = gh_claims();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = gh_claims();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        let plain = oidc_fed(oidc_spec());
        let id = oidc_check(&plain, gh_claims()).unwrap();
        assert_eq!(id.subject, "repo:org/app:environment:prod");
        assert_eq!(id.federation, "gh");
        assert_eq!(
            id.principal,
            Principal::OidcSubject {
                claims: Default::default()
            }
        );
        // The checks every kind shares still apply.
        assert_eq!(
            oidc_check(&plain, with("aud", json!("other"))).err(),
            Some(AuthnError::BadAudience)
        );
        assert_eq!(
            oidc_check(&plain, without("exp")).err(),
            Some(AuthnError::MissingExpiry)
        );
        assert_eq!(
            oidc_check(&plain, with("exp", json!(900))).err(),
            Some(AuthnError::Expired)
        );
        // The subject claim: a non-empty string of bounded length.
        for bad in [json!(5), json!(""), json!(["a"]), json!("x".repeat(1025))] {
            assert_eq!(
                oidc_check(&plain, with("sub", bad.clone())).err(),
                Some(AuthnError::BadSubject),
                "{bad}"
            );
        }
        assert_eq!(
            oidc_check(&plain, without("sub")).err(),
            Some(AuthnError::BadSubject)
        );
        let mut spec = oidc_spec();
        spec.subject_claim = Some("repository".into());
        let by_repo = oidc_fed(spec);
        assert_eq!(
            oidc_check(&by_repo, gh_claims()).unwrap().subject,
            "org/app"
        );

        // boundClaims: every entry, exact or glob; arrays match by any string element.
        let bound = |pairs: &[(&str, &str)]| {
            let mut spec = oidc_spec();
            spec.common.bound_claims = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            oidc_fed(spec)
        };
        for ok in [
            bound(&[("repository", "org/app")]),
            bound(&[("repository", "org/*"), ("ref", "refs/heads/*")]),
            bound(&[("groups", "ops")]),
            bound(&[("groups", "o*")]),
            bound(&[("empty", "*")]),
        ] {
            assert!(oidc_check(&ok, gh_claims()).is_ok(), "{ok:?}");
        }
        for refused in [
            bound(&[("repository", "org/other")]),
            bound(&[("repository", "org/*"), ("ref", "refs/tags/*")]),
            bound(&[("repository", "Org/app")]),
            bound(&[("repository", "org/ap")]),
            bound(&[("groups", "admin")]),
            bound(&[("run_attempt", "2")]),
            bound(&[("missing", "*")]),
        ] {
            assert_eq!(
                oidc_check(&refused, gh_claims()).err(),
                Some(AuthnError::UnboundClaims),
                "{refused:?}"
            );
        }
        // Claims handed to policies: strings only; absent ones are left out.
        let mut spec = oidc_spec();
        spec.common.claims = vec!["repository".into(), "ref".into(), "absent".into()];
        let exposing = oidc_fed(spec);
        let id = oidc_check(&exposing, gh_claims()).unwrap();
        assert_eq!(
            id.principal,
            Principal::OidcSubject {
                claims: [
                    ("ref".to_owned(), "refs/heads/main".to_owned()),
                    ("repository".to_owned(), "org/app".to_owned())
                ]
                .into()
            }
        );
        for bad in [
            json!(["org/app"]),
            json!(7),
            json!({"a": 1}),
            json!("x".repeat(1025)),
        ] {
            assert_eq!(
                oidc_check(&exposing, with("repository", bad.clone())).err(),
                Some(AuthnError::BadClaim),
                "{bad}"
            );
        }
        assert!(oidc_check(&exposing, with("repository", Value::Null)).is_ok());
        // A member twice is ambiguous: refused (here one RawClaims does not know).
        let dup = format!(
            "{}.{}.c2ln",
            enc(&json!({"alg": "RS256"})),
            URL_SAFE_NO_PAD.encode(gh_claims().to_string().replacen(
                '{',
                r#"{"repository":"org/other","#,
                1
            ))
        );
        assert_eq!(
            parse(&dup, 10_000)
                .unwrap()
                .check_claims(&exposing, 1000, 60, 366 * 86400)
                .err(),
            Some(AuthnError::Malformed("bad claims"))
        );
        // A legacy-shaped token is never accepted by an OIDC federation.
        let legacy = json!({
            "iss": "https://token.example", "sub": "x", "aud": "esi",
            "kubernetes.io/serviceaccount/namespace": "default",
        });
        assert_eq!(
            oidc_check(&plain, legacy).err(),
            Some(AuthnError::LegacyToken)
        );
    }

    #[test]
    fn ping_identity_subjects_fall_back_to_client_id() {
        let spec = crate::resources::PingIdentityFederationSpec {
            region: "eu".into(),
            environment_id: "0b5e6d3a-1111-4a2b-9c3d-2e4f5a6b7c8d".into(),
            ..Default::default()
        };
        let fed = Federation::from_ping_identity_spec("ping", &spec).unwrap();
        let iss = "https://auth.pingone.eu/0b5e6d3a-1111-4a2b-9c3d-2e4f5a6b7c8d/as";
        let claims = json!({"iss": iss, "aud": "x", "exp": 2000, "iat": 900, "client_id": "app-1"});
        let t = tok(json!({"alg": "RS256"}), claims.clone());
        let id = parse(&t, 10_000)
            .unwrap()
            .check_claims(&fed, 1000, 60, 366 * 86400)
            .unwrap();
        assert_eq!(id.subject, "app-1");
        assert_eq!(
            id.federation_kind,
            crate::authn::FederationKind::PingIdentity
        );
        let mut with_sub = claims;
        with_sub["sub"] = json!("user-7");
        let t = tok(json!({"alg": "RS256"}), with_sub);
        let id = parse(&t, 10_000)
            .unwrap()
            .check_claims(&fed, 1000, 60, 366 * 86400)
            .unwrap();
        assert_eq!(id.subject, "user-7");
    }

    #[test]
    fn globs_are_literal_but_for_stars() {
        for (pattern, value, want) in [
            ("a", "a", true),
            ("a", "ab", false),
            ("", "", true),
            ("", "x", false),
            ("*", "", true),
            ("*", "anything/at:all", true),
            ("org/*", "org/app", true),
            ("org/*", "org", false),
            ("org/*", "other/org/app", false),
            ("*/app", "org/app", true),
            ("*/app", "org/app2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("ab*ba", "aba", false),
            ("**", "x", true),
            ("a.c", "abc", false),
            ("a?c", "abc", false),
            (
                "repo:org/*:ref:refs/heads/main",
                "repo:org/app:ref:refs/heads/main",
                true,
            ),
            (
                "repo:org/*:ref:refs/heads/main",
                "repo:org/app:ref:refs/heads/main2",
                false,
            ),
        ] {
            assert_eq!(glob_match(pattern, value), want, "{pattern:?} {value:?}");
        }
        // Linear: a long value against many stars answers at once.
        let value = "a".repeat(16 * 1024);
        assert!(!glob_match(
            &"*a".repeat(200).replace("*a*a", "*a*b"),
            &value
        ));
    }
}
