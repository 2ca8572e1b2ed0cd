//! What can be known of a token without the network (`esi-server policy explain --token`).
//!
//! A federation with static keys (`jwks`, `publicKeys`) verifies a token exactly as the
//! server does, with the server's own [`Authenticator`], which never fetches anything for
//! such a federation. A federation that fetches its keys from its `url` cannot verify
//! offline: its claims can still be read and checked (issuer, expiry, audience, subject),
//! but the signature is not, and the answer says so.

use super::authenticator::Authenticator;
use super::error::AuthnError;
use super::federation::Federation;
use super::identity::{FederationKind, Identity};
use super::settings::AuthnSettings;
use super::spiffe::could_be_a_served_workload;
use super::token;

/// A token read offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineIdentity {
    /// Verified with the static keys of its federation, as the server verifies it.
    Verified(Identity),
    /// Claims read and checked, signature **not** verified: the federation whose issuer
    /// the token names fetches its keys from its `url`.
    Unverified {
        /// The identity the claims describe.
        identity: Identity,
        /// Why the signature was not verified.
        reason: String,
    },
}

/// Reads `token` against `federations` without the network (see the module doc). An
/// error is what the server would answer (e.g. an expired token, a bad signature with a
/// static key, an issuer no federation trusts). The server's SPIFFE rules hold over every
/// federation, fetching ones included: a token whose `sub` is a workload of a served trust
/// domain is only a `SpiffeFederation`'s, and another kind's subject that could be read as
/// such a workload is refused ([`AuthnError::BadSubject`]).
pub async fn identify_offline(
    federations: &[Federation],
    token: &str,
    settings: AuthnSettings,
) -> Result<OfflineIdentity, AuthnError> {
    let parsed = token::parse(token, settings.max_token_bytes)?;
    // The server's routing and lookalike rules over every federation (the authenticator
    // below holds only those with static keys): a token whose `sub` is a workload of a
    // served trust domain is only a `SpiffeFederation`'s, and a subject another kind
    // proves that could be read as such a workload is refused.
    let served = federations.iter().filter_map(|f| f.trust_domain());
    let routed = parsed
        .spiffe_trust_domain
        .as_deref()
        .is_some_and(|td| served.clone().any(|s| s == td));
    let refused = |identity: &Identity| {
        identity.federation_kind != FederationKind::Spiffe
            && (routed || could_be_a_served_workload(served.clone(), &identity.subject))
    };
    let mut sorted: Vec<&Federation> = federations.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let static_keys: Vec<Federation> = sorted
        .iter()
        .filter(|f| !f.fetches())
        .map(|f| (*f).clone())
        .collect();
    // Federations with fetched keys that may be the token's: their configured issuer, or
    // else their url (the issuer discovery would give is unknown offline).
    let fetching: Vec<&Federation> = sorted
        .iter()
        .copied()
        .filter(|f| f.fetches())
        .filter(|f| match f.trust_domain() {
            Some(_) => parsed.may_be_of(f),
            None if routed => false,
            None => f
                .issuer
                .as_deref()
                .or(f.url_raw.as_deref())
                .is_some_and(|iss| Some(iss) == parsed.iss.as_deref()),
        })
        .collect();
    let now = settings.clock.now();
    let (leeway, max_lifetime) = (settings.leeway_secs, settings.max_token_lifetime.as_secs());
    let mut failure = AuthnError::UnknownIssuer;
    if !static_keys.is_empty() {
        let authenticator = Authenticator::new(settings);
        authenticator.set_federations(static_keys);
        match authenticator.authenticate(token, None).await {
            Ok(identity) if refused(&identity) => failure = AuthnError::BadSubject,
            Ok(identity) => return Ok(OfflineIdentity::Verified(identity)),
            Err(e) => failure = e,
        }
    }
    let Some(fed) = fetching.first() else {
        return Err(failure);
    };
    let identity = parsed.check_claims(fed, now, leeway, max_lifetime)?;
    if refused(&identity) {
        return Err(AuthnError::BadSubject);
    }
    let url = fed.url_raw.as_deref().unwrap_or("its url");
    Ok(OfflineIdentity::Unverified {
        identity,
        reason: format!(
            "{} {} fetches its keys from {url}; without the network the \
             signature was not verified (only the claims were read and checked)",
            fed.kind(),
            fed.name
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Clock;
    use crate::authn::tests::support::{TestKey, claims};
    use crate::resources::KubernetesFederationSpec;

    const AUD: &str = "https://esi.example";
    const NOW: u64 = 1_700_000_000;

    fn settings() -> AuthnSettings {
        AuthnSettings {
            clock: Clock::fixed(NOW),
            ..Default::default()
        }
    }

    fn federation(name: &str, issuer: &str, jwks: Option<String>) -> Federation {
        let spec = KubernetesFederationSpec {
            issuer: Some(issuer.into()),
            // Never contacted: the test has no network.
            url: jwks.is_none().then(|| "https://127.0.0.1:9".into()),
            audiences: vec![AUD.into()],
            jwks,
            ..Default::default()
        };
        Federation::from_spec(name, &spec).expect("federation")
    }

    #[tokio::test]
    async fn static_keys_verify_fetched_keys_only_read_the_claims() {
        let key = TestKey::es256();
        let feds = [
            federation("alpha", "https://static", Some(TestKey::jwks(&[&key]))),
            federation("beta", "https://fetching", None),
        ];
        let token = key.sign(&claims("https://static", AUD, NOW));
        match identify_offline(&feds, &token, settings()).await {
            Ok(OfflineIdentity::Verified(id)) => assert_eq!(id.federation, "alpha"),
            other => panic!("{other:?}"),
        }
        let token = key.sign(&claims("https://fetching", AUD, NOW));
        match identify_offline(&feds, &token, settings()).await {
            Ok(OfflineIdentity::Unverified { identity, reason }) => {
                assert_eq!(identity.federation, "beta");
                assert!(reason.contains("not verified"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Claims are still checked when the signature cannot be.
        let expired = key.sign(&claims("https://fetching", AUD, NOW - 100_000));
        assert!(identify_offline(&feds, &expired, settings()).await.is_err());
        // A static-key federation refuses a token its keys did not sign.
        let other = TestKey::es256().sign(&claims("https://static", AUD, NOW));
        assert_eq!(
            identify_offline(&feds, &other, settings()).await,
            Err(AuthnError::UnknownKeyId)
        );
        let unknown = key.sign(&claims("https://nobody", AUD, NOW));
        assert!(identify_offline(&feds, &unknown, settings()).await.is_err());
    }

    /// A JWT-SVID is read offline like the server reads it: verified with a static bundle,
    /// claims only (said) with a bundle endpoint; routed by its trust domain either way.
    #[tokio::test]
    async fn jwt_svids_offline() {
        use crate::resources::{SpiffeBundleEndpoint, SpiffeFederationSpec};
        let key = TestKey::es256();
        let mut jwk = key.jwk.clone();
        jwk["use"] = serde_json::json!("jwt-svid");
        let spiffe = |name: &str, td: &str, bundle: bool| {
            let spec = SpiffeFederationSpec {
                trust_domain: td.into(),
                bundle: bundle.then(|| serde_json::json!({"keys": [jwk.clone()]}).to_string()),
                bundle_endpoint: (!bundle).then(|| SpiffeBundleEndpoint {
                    url: "https://127.0.0.1:9/bundle".into(),
                    ca_bundle: None,
                }),
                audiences: vec![AUD.into()],
            };
            Federation::from_spiffe_spec(name, &spec).expect("federation")
        };
        let feds = [
            spiffe("mesh", "example.org", true),
            spiffe("partner", "partner.org", false),
        ];
        let svid =
            |sub: &str| key.sign(&serde_json::json!({"sub": sub, "aud": AUD, "exp": NOW + 300}));
        match identify_offline(&feds, &svid("spiffe://example.org/ns/a/sa/b"), settings()).await {
            Ok(OfflineIdentity::Verified(id)) => assert_eq!(id.federation, "mesh"),
            other => panic!("{other:?}"),
        }
        match identify_offline(&feds, &svid("spiffe://partner.org/x"), settings()).await {
            Ok(OfflineIdentity::Unverified { identity, reason }) => {
                assert_eq!(identity.federation, "partner");
                assert!(reason.starts_with("SpiffeFederation partner"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            identify_offline(&feds, &svid("spiffe://other.org/x"), settings())
                .await
                .is_err()
        );
    }

    /// `explain --token` refuses what the server refuses by its SPIFFE rules even when the
    /// SpiffeFederation serving the trust domain fetches its bundle (so the offline
    /// authenticator, of static-key federations only, does not hold it): an OIDC token,
    /// verified with static keys or read from a fetching federation, whose subject is a
    /// served workload's ID (then read as the SpiffeFederation's, unverified, as the server
    /// routes it) or a `spiffe:` lookalike; another trust domain's ID is a subject.
    /// (Before: both were identified as OIDC subjects.)
    #[tokio::test]
    async fn oidc_lookalikes_of_a_fetching_spiffe_federation_are_refused_offline() {
        use crate::resources::{
            OidcCommonSpec, OidcFederationSpec, SpiffeBundleEndpoint, SpiffeFederationSpec,
        };
        let key = TestKey::es256();
        let oidc = |name: &str, issuer: &str, jwks: Option<String>| {
            let spec = OidcFederationSpec {
                issuer: issuer.into(),
                jwks_uri: jwks.is_none().then(|| "https://127.0.0.1:9/jwks".into()),
                jwks,
                common: OidcCommonSpec {
                    audiences: vec![AUD.into()],
                    ..Default::default()
                },
                ..Default::default()
            };
            Federation::from_oidc_spec(name, &spec).expect("federation")
        };
        let spire = SpiffeFederationSpec {
            trust_domain: "example.org".into(),
            bundle: None,
            bundle_endpoint: Some(SpiffeBundleEndpoint {
                url: "https://127.0.0.1:9/bundle".into(),
                ca_bundle: None,
            }),
            audiences: vec![AUD.into()],
        };
        let spire = Federation::from_spiffe_spec("spire", &spire).expect("federation");
        let feds = [
            oidc("idp", "https://static", Some(TestKey::jwks(&[&key]))),
            oidc("remote", "https://fetching", None),
            spire.clone(),
        ];
        let token = |iss: &str, sub: &str| {
            key.sign(&serde_json::json!({"iss": iss, "sub": sub, "aud": AUD, "iat": NOW, "exp": NOW + 300}))
        };
        for iss in ["https://static", "https://fetching"] {
            for sub in [
                "spiffe://example.org/ns/prod/sa/api",
                "SPIFFE://other.org/x",
            ] {
                let got = identify_offline(&feds, &token(iss, sub), settings()).await;
                // Refused, or (a served workload's `sub`) routed to the SpiffeFederation,
                // whose bundle offline cannot check: never the OIDC subject.
                match &got {
                    Err(_) => {}
                    Ok(OfflineIdentity::Unverified { identity, .. })
                        if identity.federation == "spire" => {}
                    other => panic!("{iss} {sub}: {other:?}"),
                }
                // Without the SpiffeFederation, the same token is an OIDC subject.
                let without = identify_offline(&feds[..2], &token(iss, sub), settings()).await;
                assert!(without.is_ok(), "{iss} {sub}: {without:?}");
            }
            let other = identify_offline(
                &feds,
                &token(iss, "spiffe://other.org/ns/prod/sa/api"),
                settings(),
            )
            .await;
            assert!(other.is_ok(), "{iss}: {other:?}");
        }
    }
}
