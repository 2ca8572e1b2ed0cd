//! Federation specs (`KubernetesFederation`, `OIDCFederation` and its ESE presets
//! `OktaFederation`, `PingIdentityFederation`) turned into validated, ready-to-use
//! federations. Every kind is verified by the one authenticator (same key cache, rotation,
//! flood limits and token checks); a federation only adds where its keys come from
//! ([`Fetch`]) and what a verified token must carry and proves ([`Rules`]).

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::identity::FederationKind;
use super::keys::{JwksError, VerifyKey, parse_jwks, parse_public_key_pems, parse_spiffe_bundle};
use super::spiffe::check_trust_domain;
use super::x509svid::X509Authorities;
use crate::resources::{
    ClientCaPolicy, KubernetesFederationSpec, OidcCommonSpec, OidcFederationSpec,
    OktaFederationSpec, PingIdentityFederationSpec, SpiffeFederationSpec,
};

/// Most static keys (`jwks` and `publicKeys` together; the same bound as the default for
/// fetched ones).
const MAX_STATIC_KEYS: usize = 64;
/// Largest `publicKeys` entry (an 8192-bit RSA key in PEM is under 1.5 KiB).
const MAX_PUBLIC_KEY_PEM_BYTES: usize = 64 * 1024;
/// Most certificates a CA bundle may hold.
pub(crate) const MAX_BUNDLE_CERTS: usize = 64;
/// Largest base64 CA bundle we decode.
pub(crate) const MAX_BUNDLE_B64_BYTES: usize = 512 * 1024;
/// Most `boundClaims` entries of an OIDC federation.
pub const MAX_BOUND_CLAIMS: usize = 32;
/// Most claims an OIDC federation hands to policies (`spec.claims`).
pub const MAX_EXPOSED_CLAIMS: usize = 32;
/// Longest claim name (`boundClaims`, `claims`, `subjectClaim`).
pub const MAX_CLAIM_NAME_BYTES: usize = 128;
/// Longest `boundClaims` pattern.
pub const MAX_CLAIM_PATTERN_BYTES: usize = 512;
/// Longest string claim value an OIDC token may hand to policies, and longest subject.
pub const MAX_CLAIM_VALUE_BYTES: usize = 1024;
/// Longest `audiences` entry.
const MAX_AUDIENCE_BYTES: usize = 1024;
/// Most `audiences` entries.
const MAX_AUDIENCES: usize = 32;
/// PingOne regions (ESE's enum).
const PING_REGIONS: [&str; 4] = ["com", "eu", "asia", "ca"];

/// Why a federation spec is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    /// `metadata.name` is empty.
    #[error("federation name is empty")]
    EmptyName,
    /// `metadata.name` holds a `/` (principal ids are `<federation>/…`).
    #[error("federation name must not contain '/'")]
    SlashInName,
    /// `url` does not parse.
    #[error("url is not a valid URL: {0}")]
    BadUrl(String),
    /// `url` is not `https` (keys fetched in clear text could be swapped on the wire).
    #[error("url must use https (keys fetched over plain http could be forged)")]
    InsecureUrl,
    /// `url` has a user name or password (we never send credentials to the key endpoint).
    #[error("url must not contain credentials")]
    UrlWithCredentials,
    /// `url` has a query or fragment (the key paths are appended to it).
    #[error("url must not have a query or fragment")]
    UrlWithQuery,
    /// `issuer` is set but empty.
    #[error("issuer is empty")]
    EmptyIssuer,
    /// One of `audiences` is empty.
    #[error("audiences must not contain an empty string")]
    EmptyAudience,
    /// `audiences` holds too many or too long entries.
    #[error("audiences: at most {MAX_AUDIENCES} entries of at most {MAX_AUDIENCE_BYTES} bytes")]
    AudiencesTooLarge,
    /// `caBundle` is not base64.
    #[error("caBundle is not valid base64")]
    CaBundleBase64,
    /// `caBundle` is not a PEM bundle of X.509 certificates.
    #[error("caBundle is not a PEM certificate bundle: {0}")]
    CaBundlePem(String),
    /// `jwks` is not a usable JWKS document.
    #[error("jwks is not a usable JWKS document: {0}")]
    BadStaticJwks(String),
    /// An entry of `publicKeys` is not PEM public keys we can use (index, reason).
    #[error("publicKeys[{0}] is not usable: {1}")]
    BadPublicKey(usize, String),
    /// `jwks` and `publicKeys` together hold more keys than allowed.
    #[error("jwks and publicKeys hold {0} keys, more than the limit of {MAX_STATIC_KEYS}")]
    TooManyStaticKeys(usize),
    /// Neither `url` nor `jwks` nor `publicKeys`: no keys could ever be had.
    #[error("neither url nor jwks nor publicKeys is set: no keys to verify tokens with")]
    NoKeySource,
    /// Static keys (`jwks`, `publicKeys`) without `issuer` or `url`: the expected `iss` is unknown.
    #[error(
        "static keys (jwks, publicKeys) without url need issuer: the expected token issuer is unknown"
    )]
    NoIssuer,
    /// An OIDC federation's `issuer` is not an `https` URL we can use (why).
    #[error(
        "issuer must be an https URL without credentials, query or fragment (it is both the expected iss and where discovery starts): {0}"
    )]
    BadIssuer(String),
    /// An OIDC federation's `jwksUri` is not an `https` URL we can use (why).
    #[error("jwksUri must be an https URL without credentials or fragment: {0}")]
    BadJwksUri(String),
    /// An `OIDCFederation` without `audiences`.
    #[error(
        "audiences is required: an OIDC issuer signs tokens for every relying party it serves, and without an audience a token meant for another service would be accepted"
    )]
    NoAudiences,
    /// `boundClaims`, `claims` or `subjectClaim` is not usable (which field, why).
    #[error("{0}")]
    BadClaimRule(String),
    /// An `OktaFederation`'s `domain` or `authorizationServerId` is not usable.
    #[error("{0}")]
    BadOkta(String),
    /// A `PingIdentityFederation`'s `region` or `environmentId` is not usable.
    #[error("{0}")]
    BadPingIdentity(String),
    /// A `SpiffeFederation`'s `trustDomain` is not a SPIFFE trust domain name (why).
    #[error(
        "trustDomain must be a SPIFFE trust domain name (lowercase a-z, 0-9, '.', '-', '_'; no spiffe://, port or path): {0}"
    )]
    BadTrustDomain(String),
    /// A `SpiffeFederation`'s `bundle` is not a usable SPIFFE bundle (why).
    #[error("bundle is not a usable SPIFFE bundle (JWKS form): {0}")]
    BadSpiffeBundle(String),
    /// A `SpiffeFederation`'s `bundleEndpoint.url` is not an `https` URL we can use (why).
    #[error("bundleEndpoint.url must be an https URL without credentials or fragment: {0}")]
    BadBundleEndpoint(String),
    /// A `SpiffeFederation` with neither `bundle` nor `bundleEndpoint`.
    #[error("neither bundle nor bundleEndpoint is set: no keys to verify JWT-SVIDs with")]
    NoBundle,
    /// A `SpiffeFederation` without `audiences`.
    #[error(
        "audiences is required: a JWT-SVID is minted for the audiences it names, and without an audience one meant for another service would be accepted"
    )]
    NoSpiffeAudiences,
}

/// Where a federation's keys are fetched from, when they are not static.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    /// A Kubernetes API server at `url`: `{url}/.well-known/openid-configuration` →
    /// `jwks_uri` re-based onto `url`; without discovery `{url}/openid/v1/jwks`.
    KubernetesApi,
    /// OIDC discovery at the issuer (`url`): `{issuer}/.well-known/openid-configuration`,
    /// whose `issuer` must be the federation's and whose `jwks_uri` must be on the
    /// issuer's origin.
    OidcDiscovery,
    /// `url` is the JWKS itself (`jwksUri`).
    Jwks,
    /// `url` is a SPIFFE bundle endpoint: a bundle in JWKS form whose `jwt-svid` keys
    /// verify, refreshed per its `spiffe_refresh_hint`.
    SpiffeBundle,
}

/// What an OIDC token must carry besides signature, issuer, audience and lifetime, and
/// which of its claims make the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OidcRules {
    /// The claims naming the subject, tried in order: the first present is used (`sub`;
    /// PingIdentity: `sub`, then `client_id`, as ESE).
    pub(crate) subject_claims: Vec<String>,
    /// Claim → exact value or `*` glob, all required.
    pub(crate) bound_claims: Vec<(String, String)>,
    /// Claims handed to policies.
    pub(crate) claims: Vec<String>,
}

/// What a verified token must carry and which identity it proves, per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rules {
    /// A ServiceAccount token (`sub` consistent with the `kubernetes.io` claim).
    Kubernetes {
        /// `spec.allowLegacyTokens`: accept secret-based tokens without `exp`/`iat`.
        allow_legacy_tokens: bool,
    },
    /// An OIDC token.
    Oidc(OidcRules),
    /// A JWT-SVID: `sub` a workload SPIFFE ID of exactly this trust domain.
    Spiffe {
        /// `spec.trustDomain`.
        trust_domain: String,
    },
}

/// The spec a federation was built from (what decides whether two are the same).
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Kubernetes(KubernetesFederationSpec),
    /// Presets are compared in their `OIDCFederation` form, with their own warnings.
    Oidc(OidcFederationSpec, Vec<String>),
    Spiffe(SpiffeFederationSpec),
}

/// A validated federation: one trusted cluster or OIDC issuer.
#[derive(Clone)]
pub struct Federation {
    pub(crate) name: String,
    pub(crate) kind: FederationKind,
    source: Source,
    /// Where keys are fetched from (`url`; an OIDC federation's issuer or `jwksUri`).
    pub(crate) url: Option<Url>,
    /// `url` as written: the expected `iss` when neither `issuer` nor discovery gives one
    /// (the parsed form may gain a trailing `/`).
    pub(crate) url_raw: Option<String>,
    pub(crate) fetch: Fetch,
    pub(crate) issuer: Option<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) ca_bundle: Vec<CertificateDer<'static>>,
    pub(crate) client_ca_policy: ClientCaPolicy,
    pub(crate) static_keys: Option<Arc<Vec<VerifyKey>>>,
    /// A `SpiffeFederation`'s static `bundle`: its `x509-svid` authorities, if any.
    pub(crate) static_x509: Option<Arc<X509Authorities>>,
    pub(crate) rules: Rules,
}

impl Federation {
    /// Validates a `KubernetesFederation` spec. Everything that can be checked without the
    /// network is checked here, so a bad resource is reported at load instead of failing
    /// requests later.
    pub fn from_spec(
        name: &str,
        spec: &KubernetesFederationSpec,
    ) -> Result<Federation, FederationError> {
        check_name(name)?;
        let url = spec
            .url
            .as_deref()
            .map(|u| parse_url(u.trim()))
            .transpose()?;
        let issuer = match spec.issuer.as_deref() {
            Some("") => return Err(FederationError::EmptyIssuer),
            other => other.map(str::to_owned),
        };
        check_audiences(&spec.audiences)?;
        let ca_bundle = ca_bundle(spec.ca_bundle.as_deref())?;
        let mut keys = static_jwks(spec.jwks.as_deref())?;
        for (i, pem) in spec.public_keys.iter().enumerate() {
            if pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
                return Err(FederationError::BadPublicKey(i, "too large".into()));
            }
            let parsed =
                parse_public_key_pems(pem).map_err(|e| FederationError::BadPublicKey(i, e))?;
            keys.extend(parsed);
            if keys.len() > MAX_STATIC_KEYS {
                return Err(FederationError::TooManyStaticKeys(keys.len()));
            }
        }
        let static_keys = (!keys.is_empty()).then(|| Arc::new(keys));
        if url.is_none() && static_keys.is_none() {
            return Err(FederationError::NoKeySource);
        }
        if static_keys.is_some() && url.is_none() && issuer.is_none() {
            return Err(FederationError::NoIssuer);
        }
        // ESE trusts the client's CA; once an operator pins a bundle, default to the safe choice.
        let client_ca_policy = spec.client_ca_policy.unwrap_or(if ca_bundle.is_empty() {
            ClientCaPolicy::Trust
        } else {
            ClientCaPolicy::MustMatch
        });
        Ok(Federation {
            name: name.to_owned(),
            kind: FederationKind::Kubernetes,
            source: Source::Kubernetes(spec.clone()),
            url,
            url_raw: spec.url.as_ref().map(|u| u.trim().to_owned()),
            fetch: Fetch::KubernetesApi,
            issuer,
            audiences: spec.audiences.clone(),
            ca_bundle,
            client_ca_policy,
            static_keys,
            static_x509: None,
            rules: Rules::Kubernetes {
                allow_legacy_tokens: spec.allow_legacy_tokens,
            },
        })
    }

    /// Validates a `SpiffeFederation` spec: a valid `trustDomain`, `audiences` (required),
    /// and keys from a static `bundle` (SPIFFE bundle, JWKS form; its `jwt-svid` keys), or
    /// fetched from `bundleEndpoint.url` (`https`, trusting `caBundle` or the public roots;
    /// never a client's CA).
    pub fn from_spiffe_spec(
        name: &str,
        spec: &SpiffeFederationSpec,
    ) -> Result<Federation, FederationError> {
        check_name(name)?;
        check_trust_domain(&spec.trust_domain)
            .map_err(|e| FederationError::BadTrustDomain(e.to_string()))?;
        if spec.audiences.is_empty() {
            return Err(FederationError::NoSpiffeAudiences);
        }
        check_audiences(&spec.audiences)?;
        let endpoint = spec.bundle_endpoint.as_ref();
        let url = endpoint
            .map(|e| parse_https(e.url.trim(), false).map_err(FederationError::BadBundleEndpoint))
            .transpose()?;
        let ca_bundle = ca_bundle(endpoint.and_then(|e| e.ca_bundle.as_deref()))?;
        let mut static_x509 = None;
        let static_keys = match spec.bundle.as_deref() {
            None => None,
            Some(doc) => {
                let bundle =
                    parse_spiffe_bundle(doc.as_bytes(), MAX_STATIC_KEYS).map_err(|e| match e {
                        JwksError::Malformed(m) => FederationError::BadSpiffeBundle(m),
                        other => FederationError::BadSpiffeBundle(other.to_string()),
                    })?;
                let had_authorities = !bundle.x509_authorities.is_empty();
                static_x509 = X509Authorities::new(bundle.x509_authorities).map(Arc::new);
                if had_authorities && static_x509.is_none() {
                    return Err(FederationError::BadSpiffeBundle(
                        "an x509-svid authority is not usable as a trust anchor".into(),
                    ));
                }
                if bundle.jwt_keys.is_empty() && static_x509.is_none() {
                    return Err(FederationError::BadSpiffeBundle(
                        "no usable key: neither a JWT-SVID key (RSA, EC P-256 or P-384 with use=jwt-svid) nor an X.509-SVID authority (use=x509-svid with x5c)".into(),
                    ));
                }
                Some(Arc::new(bundle.jwt_keys))
            }
        };
        if url.is_none() && static_keys.is_none() {
            return Err(FederationError::NoBundle);
        }
        Ok(Federation {
            name: name.to_owned(),
            kind: FederationKind::Spiffe,
            source: Source::Spiffe(spec.clone()),
            url_raw: url.as_ref().map(|u| u.as_str().to_owned()),
            url,
            fetch: Fetch::SpiffeBundle,
            issuer: None,
            audiences: spec.audiences.clone(),
            ca_bundle,
            client_ca_policy: ClientCaPolicy::Ignore,
            static_keys,
            static_x509,
            rules: Rules::Spiffe {
                trust_domain: spec.trust_domain.clone(),
            },
        })
    }

    /// Validates an `OIDCFederation` spec.
    pub fn from_oidc_spec(
        name: &str,
        spec: &OidcFederationSpec,
    ) -> Result<Federation, FederationError> {
        Self::oidc(name, FederationKind::Oidc, spec, &["sub"], Vec::new())
    }

    /// Validates an `OktaFederation` spec (ESE) as the `OIDCFederation` it is a preset of
    /// (see [`okta_issuer`]).
    pub fn from_okta_spec(
        name: &str,
        spec: &OktaFederationSpec,
    ) -> Result<Federation, FederationError> {
        let issuer = okta_issuer(spec)?;
        Self::preset(
            name,
            FederationKind::Okta,
            issuer,
            &spec.oidc,
            &["sub"],
            spec.management_api.is_some(),
        )
    }

    /// Validates a `PingIdentityFederation` spec (ESE) as the `OIDCFederation` it is a
    /// preset of (see [`ping_issuer`]). Its subject is `sub`, else `client_id` (PingOne's
    /// client-credentials tokens), as ESE reads it.
    pub fn from_ping_identity_spec(
        name: &str,
        spec: &PingIdentityFederationSpec,
    ) -> Result<Federation, FederationError> {
        let issuer = ping_issuer(spec)?;
        Self::preset(
            name,
            FederationKind::PingIdentity,
            issuer,
            &spec.oidc,
            &["sub", "client_id"],
            spec.management_api.is_some(),
        )
    }

    /// A preset: the `OIDCFederation` of `issuer` with the preset's extension fields.
    fn preset(
        name: &str,
        kind: FederationKind,
        issuer: String,
        common: &OidcCommonSpec,
        subject: &[&str],
        management_api: bool,
    ) -> Result<Federation, FederationError> {
        let oidc = OidcFederationSpec {
            issuer,
            common: common.clone(),
            ..Default::default()
        };
        let mut notes = Vec::new();
        if management_api {
            notes.push(
                "managementAPI is not used: this server does not call the identity provider's \
                 management API"
                    .to_owned(),
            );
        }
        Self::oidc(name, kind, &oidc, subject, notes)
    }

    fn oidc(
        name: &str,
        kind: FederationKind,
        spec: &OidcFederationSpec,
        default_subject: &[&str],
        notes: Vec<String>,
    ) -> Result<Federation, FederationError> {
        check_name(name)?;
        if spec.issuer.is_empty() {
            return Err(FederationError::EmptyIssuer);
        }
        let issuer_url = parse_https(&spec.issuer, true).map_err(FederationError::BadIssuer)?;
        let jwks_uri = spec
            .jwks_uri
            .as_deref()
            .map(|u| parse_https(u.trim(), false).map_err(FederationError::BadJwksUri))
            .transpose()?;
        // The presets keep ESE's behaviour (no audience check) with a warning; the
        // extension kind has no such past.
        let common = &spec.common;
        if common.audiences.is_empty() && kind == FederationKind::Oidc {
            return Err(FederationError::NoAudiences);
        }
        check_audiences(&common.audiences)?;
        let ca_bundle = ca_bundle(common.ca_bundle.as_deref())?;
        let keys = static_jwks(spec.jwks.as_deref())?;
        let static_keys = (!keys.is_empty()).then(|| Arc::new(keys));
        let subject_claims = match spec.subject_claim.as_deref() {
            Some(claim) => {
                check_claim_name("subjectClaim", claim)?;
                vec![claim.to_owned()]
            }
            None => default_subject.iter().map(|s| (*s).to_owned()).collect(),
        };
        if common.bound_claims.len() > MAX_BOUND_CLAIMS {
            return Err(FederationError::BadClaimRule(format!(
                "boundClaims has {} entries, more than {MAX_BOUND_CLAIMS}",
                common.bound_claims.len()
            )));
        }
        let mut bound_claims = Vec::with_capacity(common.bound_claims.len());
        for (claim, pattern) in &common.bound_claims {
            check_claim_name("boundClaims", claim)?;
            if pattern.is_empty() || pattern.len() > MAX_CLAIM_PATTERN_BYTES {
                return Err(FederationError::BadClaimRule(format!(
                    "boundClaims[{claim:?}]: the pattern must be 1 to {MAX_CLAIM_PATTERN_BYTES} bytes"
                )));
            }
            bound_claims.push((claim.clone(), pattern.clone()));
        }
        if common.claims.len() > MAX_EXPOSED_CLAIMS {
            return Err(FederationError::BadClaimRule(format!(
                "claims lists {} names, more than {MAX_EXPOSED_CLAIMS}",
                common.claims.len()
            )));
        }
        let mut claims: Vec<String> = Vec::with_capacity(common.claims.len());
        for claim in &common.claims {
            check_claim_name("claims", claim)?;
            if claims.contains(claim) {
                return Err(FederationError::BadClaimRule(format!(
                    "claims: {claim:?} is listed twice"
                )));
            }
            claims.push(claim.clone());
        }
        let (url, fetch) = match jwks_uri {
            Some(u) => (Some(u), Fetch::Jwks),
            None => (Some(issuer_url), Fetch::OidcDiscovery),
        };
        Ok(Federation {
            name: name.to_owned(),
            kind,
            source: Source::Oidc(spec.clone(), notes),
            url_raw: url.as_ref().map(|u| u.as_str().to_owned()),
            url,
            fetch,
            issuer: Some(spec.issuer.clone()),
            audiences: common.audiences.clone(),
            ca_bundle,
            // A caller never tells the server whom to trust for an OIDC issuer.
            client_ca_policy: ClientCaPolicy::Ignore,
            static_keys,
            static_x509: None,
            rules: Rules::Oidc(OidcRules {
                subject_claims,
                bound_claims,
                claims,
            }),
        })
    }

    /// The federation's name (`metadata.name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The federation's kind.
    pub fn kind(&self) -> FederationKind {
        self.kind
    }

    /// The claims this federation hands to policies (`principal.claims.<name>`); empty for
    /// a Kubernetes federation.
    pub fn exposed_claims(&self) -> &[String] {
        match &self.rules {
            Rules::Oidc(r) => &r.claims,
            Rules::Kubernetes { .. } | Rules::Spiffe { .. } => &[],
        }
    }

    /// A `SpiffeFederation`'s trust domain: the one trust domain whose JWT-SVIDs it
    /// verifies (tokens are routed to it by their `sub`, never by `iss`).
    pub fn trust_domain(&self) -> Option<&str> {
        match &self.rules {
            Rules::Spiffe { trust_domain } => Some(trust_domain),
            _ => None,
        }
    }

    /// The expected `iss` when it is known without fetching: `issuer`, or `url` for static
    /// keys (public: for load-time checks of federations sharing an issuer).
    pub fn known_issuer(&self) -> Option<&str> {
        self.configured_issuer()
    }

    /// Accepted but risky settings, for the load log and the federation's status.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.audiences.is_empty() {
            w.push("no audiences: any aud is accepted".to_owned());
        }
        if matches!(
            self.rules,
            Rules::Kubernetes {
                allow_legacy_tokens: true
            }
        ) {
            w.push(
                "allowLegacyTokens: secret-based tokens never expire; prefer projected tokens"
                    .into(),
            );
        }
        if self.static_keys.is_none() && self.client_ca_policy == ClientCaPolicy::Trust {
            w.push(
                "clientCAPolicy Trust: a CA sent by a client is trusted to fetch this \
                 federation's keys (set caBundle to pin it)"
                    .to_owned(),
            );
        }
        if self.static_keys.is_some() && self.url.is_some() {
            let from = if self.kind == FederationKind::Kubernetes {
                "static keys (jwks/publicKeys) are set: keys are not fetched from url"
            } else if self.kind == FederationKind::Spiffe {
                "bundle is set: keys are not fetched from bundleEndpoint"
            } else {
                "jwks is set: keys are not fetched from the issuer or jwksUri"
            };
            w.push(from.to_owned());
        }
        if self.static_keys.is_none()
            && self.issuer.is_none()
            && self.kind != FederationKind::Spiffe
        {
            w.push(
                "no issuer: the expected iss is taken from the discovery document (or url)"
                    .to_owned(),
            );
        }
        if let Source::Oidc(_, notes) = &self.source {
            w.extend(notes.iter().cloned());
        }
        w
    }

    /// The expected `iss` when it is known without fetching: `issuer`, or `url` for static keys.
    /// A `SpiffeFederation` has none (JWT-SVIDs are routed by trust domain).
    pub(crate) fn configured_issuer(&self) -> Option<&str> {
        if self.kind == FederationKind::Spiffe {
            return None;
        }
        match (&self.issuer, &self.static_keys) {
            (Some(i), _) => Some(i),
            (None, Some(_)) => self.url_raw.as_deref(),
            (None, None) => None,
        }
    }

    /// Whether keys are fetched (no static `jwks`).
    pub(crate) fn fetches(&self) -> bool {
        self.static_keys.is_none()
    }
}

impl PartialEq for Federation {
    /// Everything else is derived from the name, the kind and the spec.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.kind == other.kind && self.source == other.source
    }
}

impl fmt::Debug for Federation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Federation")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url.as_ref().map(Url::as_str))
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("ca_bundle_certs", &self.ca_bundle.len())
            .field("client_ca_policy", &self.client_ca_policy)
            .field("static_keys", &self.static_keys.as_ref().map(|k| k.len()))
            .field("rules", &self.rules)
            .finish()
    }
}

/// The issuer an `OktaFederation` stands for: `{domain}/oauth2/{authorizationServerId}`,
/// with ESE's default server `default` when the field is absent and the org authorization
/// server (`{domain}` itself) when it is empty, as Okta names its issuers. `domain` may
/// omit `https://`; any other scheme, a path, a query or credentials are refused.
pub fn okta_issuer(spec: &OktaFederationSpec) -> Result<String, FederationError> {
    let raw = spec.domain.trim();
    if raw.is_empty() {
        return Err(FederationError::BadOkta("domain is empty".into()));
    }
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let url = parse_https(&with_scheme, true)
        .map_err(|e| FederationError::BadOkta(format!("domain: {e}")))?;
    if url.path() != "/" {
        return Err(FederationError::BadOkta(
            "domain must be the organization URL alone (no path)".into(),
        ));
    }
    let base = with_scheme.trim_end_matches('/');
    match spec.authorization_server_id.as_deref().map(str::trim) {
        None => Ok(format!("{base}/oauth2/default")),
        Some("") => Ok(base.to_owned()),
        Some(id)
            if id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(format!("{base}/oauth2/{id}"))
        }
        Some(_) => Err(FederationError::BadOkta(
            "authorizationServerId must be 1 to 64 letters, digits, '-' or '_'".into(),
        )),
    }
}

/// The issuer a `PingIdentityFederation` stands for:
/// `https://auth.pingone.{region}/{environmentId}/as`.
pub fn ping_issuer(spec: &PingIdentityFederationSpec) -> Result<String, FederationError> {
    let region = spec.region.trim();
    if !PING_REGIONS.contains(&region) {
        return Err(FederationError::BadPingIdentity(format!(
            "region must be one of {}",
            PING_REGIONS.join(", ")
        )));
    }
    let env = spec.environment_id.trim();
    if env.is_empty()
        || env.len() > 64
        || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(FederationError::BadPingIdentity(
            "environmentId must be 1 to 64 letters, digits or '-' (a PingOne environment UUID)"
                .into(),
        ));
    }
    Ok(format!("https://auth.pingone.{region}/{env}/as"))
}

fn check_name(name: &str) -> Result<(), FederationError> {
    if name.is_empty() {
        return Err(FederationError::EmptyName);
    }
    if name.contains('/') {
        return Err(FederationError::SlashInName);
    }
    Ok(())
}

fn check_audiences(audiences: &[String]) -> Result<(), FederationError> {
    if audiences.iter().any(String::is_empty) {
        return Err(FederationError::EmptyAudience);
    }
    if audiences.len() > MAX_AUDIENCES || audiences.iter().any(|a| a.len() > MAX_AUDIENCE_BYTES) {
        return Err(FederationError::AudiencesTooLarge);
    }
    Ok(())
}

/// A claim name: 1 to [`MAX_CLAIM_NAME_BYTES`] printable ASCII characters, no space.
fn check_claim_name(field: &str, name: &str) -> Result<(), FederationError> {
    if name.is_empty()
        || name.len() > MAX_CLAIM_NAME_BYTES
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(FederationError::BadClaimRule(format!(
            "{field}: a claim name must be 1 to {MAX_CLAIM_NAME_BYTES} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

fn ca_bundle(b64: Option<&str>) -> Result<Vec<CertificateDer<'static>>, FederationError> {
    match b64 {
        Some(b64) => parse_ca_bundle_b64(b64).map_err(|e| match e {
            CaParseError::Base64 => FederationError::CaBundleBase64,
            CaParseError::Pem(reason) => FederationError::CaBundlePem(reason),
        }),
        None => Ok(Vec::new()),
    }
}

fn static_jwks(doc: Option<&str>) -> Result<Vec<VerifyKey>, FederationError> {
    let Some(doc) = doc else {
        return Ok(Vec::new());
    };
    let jwks = parse_jwks(doc.as_bytes(), MAX_STATIC_KEYS).map_err(|e| match e {
        JwksError::Malformed(m) => FederationError::BadStaticJwks(m),
        other => FederationError::BadStaticJwks(other.to_string()),
    })?;
    if jwks.is_empty() {
        return Err(FederationError::BadStaticJwks(
            "no usable signing key (RSA, EC P-256 or P-384 with use=sig)".into(),
        ));
    }
    Ok(jwks)
}

/// An `https` URL with a host and no credentials or fragment (and, for an issuer, no query):
/// the reason otherwise (never the URL itself, which could carry credentials).
fn parse_https(raw: &str, issuer: bool) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| e.to_string())?;
    if url.scheme() != "https" {
        return Err("not https".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL".into());
    }
    if url.fragment().is_some() || (issuer && url.query().is_some()) {
        return Err(if issuer {
            "a query or fragment".into()
        } else {
            "a fragment".into()
        });
    }
    Ok(url)
}

fn parse_url(raw: &str) -> Result<Url, FederationError> {
    let url = Url::parse(raw).map_err(|e| FederationError::BadUrl(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(FederationError::InsecureUrl);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FederationError::BadUrl("no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FederationError::UrlWithCredentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(FederationError::UrlWithQuery);
    }
    Ok(url)
}

/// Why a base64 PEM bundle did not parse.
#[derive(Debug)]
pub(crate) enum CaParseError {
    Base64,
    Pem(String),
}

/// Decodes base64 of a PEM bundle into its certificates (at least one, each a parseable X.509
/// certificate usable as a trust anchor).
pub(crate) fn parse_ca_bundle_b64(b64: &str) -> Result<Vec<CertificateDer<'static>>, CaParseError> {
    if b64.len() > MAX_BUNDLE_B64_BYTES {
        return Err(CaParseError::Pem("bundle too large".into()));
    }
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let pem = STANDARD.decode(compact).map_err(|_| CaParseError::Base64)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        let cert = item.map_err(|e| CaParseError::Pem(e.to_string()))?;
        if x509_parser::parse_x509_certificate(&cert).is_err() {
            return Err(CaParseError::Pem("a certificate does not parse".into()));
        }
        let mut probe = rustls::RootCertStore::empty();
        probe
            .add(cert.clone())
            .map_err(|e| CaParseError::Pem(format!("not usable as a trust anchor: {e}")))?;
        certs.push(cert);
        if certs.len() > MAX_BUNDLE_CERTS {
            return Err(CaParseError::Pem("too many certificates".into()));
        }
    }
    if certs.is_empty() {
        return Err(CaParseError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KubernetesFederationSpec {
        KubernetesFederationSpec {
            url: Some("https://kube.example.com:6443".into()),
            ..Default::default()
        }
    }

    fn ca_b64() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        STANDARD.encode(cert.pem())
    }

    #[test]
    fn valid_specs_and_defaults() {
        let f = Federation::from_spec("alpha", &spec()).unwrap();
        assert_eq!(f.name(), "alpha");
        assert_eq!(f.client_ca_policy, ClientCaPolicy::Trust);
        assert!(f.fetches());
        let w = f.warnings();
        assert!(w.iter().any(|m| m.contains("no audiences")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("Trust")), "{w:?}");

        let mut s = spec();
        s.ca_bundle = Some(ca_b64());
        s.audiences = vec!["esi".into()];
        let f = Federation::from_spec("beta", &s).unwrap();
        assert_eq!(f.client_ca_policy, ClientCaPolicy::MustMatch);
        assert_eq!(f.ca_bundle.len(), 1);
        assert!(!f.warnings().iter().any(|m| m.contains("no audiences")));
        assert_eq!(f, f.clone());
        assert_ne!(f, Federation::from_spec("gamma", &s).unwrap());
        let dbg = format!("{f:?}");
        assert!(dbg.contains("beta") && dbg.contains("ca_bundle_certs"));
    }

    #[test]
    fn invalid_specs() {
        let cases: Vec<(KubernetesFederationSpec, FederationError)> = vec![
            (
                KubernetesFederationSpec::default(),
                FederationError::NoKeySource,
            ),
            (
                KubernetesFederationSpec {
                    url: Some("not a url".into()),
                    ..Default::default()
                },
                FederationError::BadUrl("relative URL without a base".into()),
            ),
            (
                KubernetesFederationSpec {
                    url: Some("http://k.example".into()),
                    ..Default::default()
                },
                FederationError::InsecureUrl,
            ),
            (
                KubernetesFederationSpec {
                    url: Some("https://u:p@k.example".into()),
                    ..Default::default()
                },
                FederationError::UrlWithCredentials,
            ),
            (
                KubernetesFederationSpec {
                    url: Some("https://k.example/?a=b".into()),
                    ..Default::default()
                },
                FederationError::UrlWithQuery,
            ),
            (
                KubernetesFederationSpec {
                    issuer: Some(String::new()),
                    ..spec()
                },
                FederationError::EmptyIssuer,
            ),
            (
                KubernetesFederationSpec {
                    audiences: vec![String::new()],
                    ..spec()
                },
                FederationError::EmptyAudience,
            ),
            (
                KubernetesFederationSpec {
                    ca_bundle: Some("!!!".into()),
                    ..spec()
                },
                FederationError::CaBundleBase64,
            ),
            (
                KubernetesFederationSpec {
                    ca_bundle: Some(STANDARD.encode("hello")),
                    ..spec()
                },
                FederationError::CaBundlePem("no CERTIFICATE block".into()),
            ),
            (
                KubernetesFederationSpec {
                    jwks: Some("{".into()),
                    ..spec()
                },
                FederationError::BadStaticJwks(
                    "EOF while parsing an object at line 1 column 1".into(),
                ),
            ),
            (
                KubernetesFederationSpec {
                    jwks: Some(r#"{"keys":[]}"#.into()),
                    ..spec()
                },
                FederationError::BadStaticJwks(
                    "no usable signing key (RSA, EC P-256 or P-384 with use=sig)".into(),
                ),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(Federation::from_spec("x", &s).unwrap_err(), want, "{s:?}");
        }
        assert_eq!(
            Federation::from_spec("", &spec()).unwrap_err(),
            FederationError::EmptyName
        );
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let s = KubernetesFederationSpec {
            jwks: Some(jwks.into()),
            ..Default::default()
        };
        assert_eq!(
            Federation::from_spec("x", &s).unwrap_err(),
            FederationError::NoIssuer
        );
        let s = KubernetesFederationSpec {
            jwks: Some(jwks.into()),
            issuer: Some("iss".into()),
            ..Default::default()
        };
        let f = Federation::from_spec("x", &s).unwrap();
        assert!(!f.fetches());
        // Error messages never echo the URL (it could carry credentials).
        let e = Federation::from_spec(
            "x",
            &KubernetesFederationSpec {
                url: Some("https://u:secretpw@k".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secretpw"));
    }

    fn oidc_spec() -> OidcFederationSpec {
        OidcFederationSpec {
            issuer: "https://token.actions.githubusercontent.com".into(),
            common: OidcCommonSpec {
                audiences: vec!["https://esi.example".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn oidc_specs() {
        let f = Federation::from_oidc_spec("github", &oidc_spec()).unwrap();
        assert_eq!(f.kind(), FederationKind::Oidc);
        assert_eq!(f.fetch, Fetch::OidcDiscovery);
        assert_eq!(
            f.configured_issuer(),
            Some("https://token.actions.githubusercontent.com")
        );
        assert_eq!(f.client_ca_policy, ClientCaPolicy::Ignore);
        assert!(f.warnings().is_empty(), "{:?}", f.warnings());
        assert!(f.exposed_claims().is_empty());
        let mut s = oidc_spec();
        s.jwks_uri = Some("https://keys.example/jwks?v=2".into());
        s.common.claims = vec!["repository".into()];
        let f = Federation::from_oidc_spec("github", &s).unwrap();
        assert_eq!(f.fetch, Fetch::Jwks);
        assert_eq!(f.exposed_claims(), ["repository".to_owned()]);
        assert_ne!(
            f,
            Federation::from_oidc_spec("github", &oidc_spec()).unwrap()
        );

        let bad = |f: &dyn Fn(&mut OidcFederationSpec)| {
            let mut s = oidc_spec();
            f(&mut s);
            Federation::from_oidc_spec("github", &s).unwrap_err()
        };
        assert_eq!(
            bad(&|s| s.common.audiences.clear()),
            FederationError::NoAudiences
        );
        assert_eq!(
            bad(&|s| s.common.audiences = vec![String::new()]),
            FederationError::EmptyAudience
        );
        assert_eq!(bad(&|s| s.issuer.clear()), FederationError::EmptyIssuer);
        for issuer in [
            "http://token.example",
            "https://u:p@token.example",
            "https://token.example/?a=b",
            "https://token.example/#f",
            "token.example",
        ] {
            assert!(
                matches!(
                    bad(&|s| s.issuer = issuer.into()),
                    FederationError::BadIssuer(_)
                ),
                "{issuer}"
            );
        }
        assert!(matches!(
            bad(&|s| s.jwks_uri = Some("http://keys.example".into())),
            FederationError::BadJwksUri(_)
        ));
        assert!(matches!(
            bad(&|s| s.jwks = Some("{".into())),
            FederationError::BadStaticJwks(_)
        ));
        for rule in [
            &(|s: &mut OidcFederationSpec| s.subject_claim = Some(String::new()))
                as &dyn Fn(&mut OidcFederationSpec),
            &|s| s.subject_claim = Some("has space".into()),
            &|s| s.common.claims = vec!["a".into(), "a".into()],
            &|s| s.common.claims = (0..=MAX_EXPOSED_CLAIMS).map(|i| format!("c{i}")).collect(),
            &|s| s.common.claims = vec!["x".repeat(MAX_CLAIM_NAME_BYTES + 1)],
            &|s| s.common.bound_claims = [("repository".to_owned(), String::new())].into(),
            &|s| {
                s.common.bound_claims =
                    [("ref".to_owned(), "x".repeat(MAX_CLAIM_PATTERN_BYTES + 1))].into()
            },
            &|s| s.common.bound_claims = [("bad\nname".to_owned(), "x".to_owned())].into(),
            &|s| {
                s.common.bound_claims = (0..=MAX_BOUND_CLAIMS)
                    .map(|i| (format!("c{i}"), "x".to_owned()))
                    .collect()
            },
        ] {
            assert!(matches!(bad(rule), FederationError::BadClaimRule(_)));
        }
        assert_eq!(
            Federation::from_oidc_spec("a/b", &oidc_spec()).unwrap_err(),
            FederationError::SlashInName
        );
        // Error messages never echo the issuer (it could carry credentials).
        let e = bad(&|s| s.issuer = "http://u:secretpw@token.example".into());
        assert!(!e.to_string().contains("secretpw"));
    }

    #[test]
    fn okta_and_ping_identity_presets() {
        let okta = |domain: &str, server: Option<&str>| OktaFederationSpec {
            domain: domain.into(),
            authorization_server_id: server.map(str::to_owned),
            ..Default::default()
        };
        for (spec, issuer) in [
            (
                okta("https://dev-1.okta.com", None),
                "https://dev-1.okta.com/oauth2/default",
            ),
            (
                okta("https://dev-1.okta.com/", Some("")),
                "https://dev-1.okta.com",
            ),
            (
                okta("dev-1.okta.com", Some("aus1x")),
                "https://dev-1.okta.com/oauth2/aus1x",
            ),
            (
                okta("https://login.example.com:8443", Some("default")),
                "https://login.example.com:8443/oauth2/default",
            ),
        ] {
            assert_eq!(okta_issuer(&spec).unwrap(), issuer, "{spec:?}");
        }
        for spec in [
            okta("", None),
            okta("http://dev-1.okta.com", None),
            okta("https://dev-1.okta.com/path", None),
            okta("https://dev-1.okta.com", Some("a/b")),
            okta("https://u:p@dev-1.okta.com", None),
        ] {
            assert!(
                matches!(okta_issuer(&spec), Err(FederationError::BadOkta(_))),
                "{spec:?}"
            );
        }
        // ESE's manifests have no audiences: accepted with ESE's behaviour, and said.
        let mut spec = okta("https://dev-1.okta.com", Some(""));
        spec.management_api =
            Some(serde_json::json!({"apiTokenSecretRef": {"name": "k", "key": "t"}}));
        let f = Federation::from_okta_spec("okta", &spec).unwrap();
        assert_eq!(f.kind(), FederationKind::Okta);
        assert_eq!(f.configured_issuer(), Some("https://dev-1.okta.com"));
        let w = f.warnings();
        assert!(w.iter().any(|m| m.contains("no audiences")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("managementAPI")), "{w:?}");
        spec.oidc.audiences = vec!["api://esi".into()];
        spec.management_api = None;
        assert!(
            Federation::from_okta_spec("okta", &spec)
                .unwrap()
                .warnings()
                .is_empty()
        );

        let ping = |region: &str, env: &str| PingIdentityFederationSpec {
            region: region.into(),
            environment_id: env.into(),
            ..Default::default()
        };
        let env = "0b5e6d3a-1111-4a2b-9c3d-2e4f5a6b7c8d";
        assert_eq!(
            ping_issuer(&ping("com", env)).unwrap(),
            format!("https://auth.pingone.com/{env}/as")
        );
        for spec in [
            ping("us", env),
            ping("eu", ""),
            ping("eu", "../x"),
            ping("eu", "a/b"),
        ] {
            assert!(
                matches!(ping_issuer(&spec), Err(FederationError::BadPingIdentity(_))),
                "{spec:?}"
            );
        }
        let f = Federation::from_ping_identity_spec("ping", &ping("ca", env)).unwrap();
        assert_eq!(f.kind(), FederationKind::PingIdentity);
        match &f.rules {
            Rules::Oidc(r) => assert_eq!(r.subject_claims, ["sub", "client_id"]),
            other => panic!("{other:?}"),
        }
    }
}
