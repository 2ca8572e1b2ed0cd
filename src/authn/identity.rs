//! The verified identity of a caller, one kind per way of proving it.
//!
//! Every kind has the same core (the federation that verified the token, its issuer, the
//! subject that Authorizations match) and its own [`Principal`]: a Kubernetes
//! ServiceAccount (with its pod), or an OIDC subject with the claims its federation hands to
//! policies, or a SPIFFE workload (whose path may name a Kubernetes workload). Policies tell
//! kinds apart by Cedar type (`principal is Esi::OidcSubject`), owners by
//! [`Principal::workload`].

use std::collections::BTreeMap;
use std::fmt;

/// The kind of a federation object: which resource verified a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FederationKind {
    /// `KubernetesFederation`: ServiceAccount tokens of one cluster.
    Kubernetes,
    /// `OIDCFederation` (extension): any OpenID Connect issuer.
    Oidc,
    /// `OktaFederation` (ESE): an Okta authorization server, a preset of `OIDCFederation`.
    Okta,
    /// `PingIdentityFederation` (ESE): a PingOne environment, a preset of `OIDCFederation`.
    PingIdentity,
    /// `SpiffeFederation` (ESE): one SPIFFE trust domain's JWT-SVIDs.
    Spiffe,
}

impl FederationKind {
    /// Every kind.
    pub const ALL: [FederationKind; 5] = [
        FederationKind::Kubernetes,
        FederationKind::Oidc,
        FederationKind::Okta,
        FederationKind::PingIdentity,
        FederationKind::Spiffe,
    ];

    /// The resource kind (`KubernetesFederation`, `OIDCFederation`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FederationKind::Kubernetes => "KubernetesFederation",
            FederationKind::Oidc => "OIDCFederation",
            FederationKind::Okta => "OktaFederation",
            FederationKind::PingIdentity => "PingIdentityFederation",
            FederationKind::Spiffe => "SpiffeFederation",
        }
    }

    /// The kind named `kind` (exact resource kind names).
    pub fn from_kind(kind: &str) -> Option<FederationKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The kind of principal this federation's tokens prove.
    pub fn principal_kind(self) -> PrincipalKind {
        match self {
            FederationKind::Kubernetes => PrincipalKind::ServiceAccount,
            FederationKind::Oidc | FederationKind::Okta | FederationKind::PingIdentity => {
                PrincipalKind::OidcSubject
            }
            FederationKind::Spiffe => PrincipalKind::SpiffeWorkload,
        }
    }
}

impl fmt::Display for FederationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a principal: its Cedar entity type (`Esi::<kind>`); also recorded with
/// each credential in the ledger (serialized by that name).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum PrincipalKind {
    #[default]
    /// A Kubernetes ServiceAccount (`Esi::ServiceAccount`).
    ServiceAccount,
    /// The subject of an OIDC issuer's token (`Esi::OidcSubject`).
    OidcSubject,
    /// A SPIFFE workload, by its JWT-SVID (`Esi::SpiffeWorkload`).
    SpiffeWorkload,
}

impl PrincipalKind {
    /// The Cedar entity type name, without the `Esi::` namespace; also the label in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::ServiceAccount => "ServiceAccount",
            PrincipalKind::OidcSubject => "OidcSubject",
            PrincipalKind::SpiffeWorkload => "SpiffeWorkload",
        }
    }

    /// Whether this is [`PrincipalKind::ServiceAccount`] (the ledger leaves that, the only
    /// kind of entries recorded before others existed, out of what it writes).
    pub fn is_service_account(&self) -> bool {
        *self == PrincipalKind::ServiceAccount
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes ServiceAccount, and its pod for pod-bound tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServiceAccount {
    /// ServiceAccount namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
    /// ServiceAccount UID, when the token carries it.
    pub uid: Option<String>,
    /// Pod name, for pod-bound tokens.
    pub pod_name: Option<String>,
    /// Pod UID, for pod-bound tokens.
    pub pod_uid: Option<String>,
}

/// What kind of caller a verified token proves, with what that kind knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A `KubernetesFederation`'s ServiceAccount token.
    ServiceAccount(ServiceAccount),
    /// An OIDC issuer's token (`OIDCFederation` and its presets).
    OidcSubject {
        /// The claims the federation hands to policies (`spec.claims`) that the token
        /// carries, each a string (bounded in number and length at load and verification).
        claims: BTreeMap<String, String>,
    },
    /// A SPIFFE workload (`SpiffeFederation`): the identity's subject is its SPIFFE ID.
    SpiffeWorkload {
        /// The trust domain (the federation's `trustDomain`).
        trust_domain: String,
        /// The SPIFFE ID's path (`/…`, never empty).
        path: String,
        /// The Kubernetes workload the path names by ESE's convention
        /// (`/{app}/ns/{ns}/sa/{saUID}/{saName}/pod/{podUID}/{podName}`, or
        /// `/ns/{ns}/sa/{sa}`): it owns credentials as a ServiceAccount token would.
        kubernetes: Option<ServiceAccount>,
    },
}

impl Principal {
    /// The kind (Cedar type).
    pub fn kind(&self) -> PrincipalKind {
        match self {
            Principal::ServiceAccount(_) => PrincipalKind::ServiceAccount,
            Principal::OidcSubject { .. } => PrincipalKind::OidcSubject,
            Principal::SpiffeWorkload { .. } => PrincipalKind::SpiffeWorkload,
        }
    }

    /// The Kubernetes workload this principal is, if any: what owners, the ledger's
    /// workload bindings and AWS session names are made of.
    pub fn workload(&self) -> Option<&ServiceAccount> {
        match self {
            Principal::ServiceAccount(sa) => Some(sa),
            Principal::OidcSubject { .. } => None,
            Principal::SpiffeWorkload { kubernetes, .. } => kubernetes.as_ref(),
        }
    }

    /// Bytes of text held (for cache weights).
    pub fn text_len(&self) -> usize {
        let opt = |o: &Option<String>| o.as_ref().map_or(0, String::len);
        let sa_len = |sa: &ServiceAccount| {
            sa.namespace.len() + sa.name.len() + opt(&sa.uid) + opt(&sa.pod_name) + opt(&sa.pod_uid)
        };
        match self {
            Principal::ServiceAccount(sa) => sa_len(sa),
            Principal::OidcSubject { claims } => {
                claims.iter().map(|(k, v)| k.len() + v.len()).sum()
            }
            Principal::SpiffeWorkload {
                trust_domain,
                path,
                kubernetes,
            } => trust_domain.len() + path.len() + kubernetes.as_ref().map_or(0, sa_len),
        }
    }
}

/// Who called, as proven by a verified token.
///
/// Every field comes from a token whose signature, issuer, audience and lifetime were
/// checked against a configured federation; nothing here is taken on trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Name of the federation whose keys verified the token (names are unique across
    /// federation kinds).
    pub federation: String,
    /// That federation's kind.
    pub federation_kind: FederationKind,
    /// The token's `iss`.
    pub issuer: String,
    /// The subject Authorizations match: a ServiceAccount token's `sub`
    /// (`system:serviceaccount:NS:NAME`), an OIDC token's `subjectClaim`.
    pub subject: String,
    /// The kind of caller and what it knows.
    pub principal: Principal,
    /// Token expiry (seconds since the epoch), when the token has one.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// The identity a verified token of a `KubernetesFederation` gives for ServiceAccount
    /// `namespace/name` (`sub` `system:serviceaccount:NS:NAME`), without uid, pod or expiry:
    /// for tools (`esi-server policy explain`) and tests.
    pub fn of_service_account(
        federation: &str,
        issuer: &str,
        namespace: &str,
        name: &str,
    ) -> Identity {
        Identity {
            federation: federation.to_owned(),
            federation_kind: FederationKind::Kubernetes,
            issuer: issuer.to_owned(),
            subject: format!("system:serviceaccount:{namespace}:{name}"),
            principal: Principal::ServiceAccount(ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                ..Default::default()
            }),
            expires_at: None,
        }
    }

    /// The identity a verified token of an `OIDCFederation` gives for `subject` with
    /// `claims`, without expiry: for tools and tests.
    pub fn of_oidc_subject(
        federation: &str,
        issuer: &str,
        subject: &str,
        claims: &[(&str, &str)],
    ) -> Identity {
        Identity {
            federation: federation.to_owned(),
            federation_kind: FederationKind::Oidc,
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            principal: Principal::OidcSubject {
                claims: claims
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
            expires_at: None,
        }
    }

    /// The identity a verified JWT-SVID of a `SpiffeFederation` gives for `spiffe_id`
    /// (a workload SPIFFE ID of `trust_domain`, checked), without expiry: for tools and
    /// tests. `None` when `spiffe_id` is not a workload SPIFFE ID of that trust domain.
    pub fn of_spiffe_workload(federation: &str, spiffe_id: &str) -> Option<Identity> {
        let id = super::spiffe::parse_workload_id(spiffe_id).ok()?;
        Some(Identity {
            federation: federation.to_owned(),
            federation_kind: FederationKind::Spiffe,
            issuer: format!("spiffe://{}", id.trust_domain),
            subject: spiffe_id.to_owned(),
            principal: Principal::SpiffeWorkload {
                trust_domain: id.trust_domain.to_owned(),
                path: id.path.to_owned(),
                kubernetes: super::spiffe::kubernetes_workload(id.path),
            },
            expires_at: None,
        })
    }

    /// The ServiceAccount, mutable (tools and tests).
    pub fn service_account_mut(&mut self) -> Option<&mut ServiceAccount> {
        match &mut self.principal {
            Principal::ServiceAccount(sa) => Some(sa),
            Principal::OidcSubject { .. } => None,
            Principal::SpiffeWorkload { kubernetes, .. } => kubernetes.as_mut(),
        }
    }

    /// The principal's kind (Cedar type).
    pub fn kind(&self) -> PrincipalKind {
        self.principal.kind()
    }

    /// The Kubernetes workload: a ServiceAccount principal's, or the one a SPIFFE
    /// workload's path names (see [`Principal::workload`]).
    pub fn service_account(&self) -> Option<&ServiceAccount> {
        self.principal.workload()
    }

    /// The principal's Cedar entity id, unique per kind: `<federation>/<namespace>/<name>`
    /// for a ServiceAccount, `<federation>/<subject>` for an OIDC subject and for a SPIFFE
    /// workload (whose subject is its SPIFFE ID; federation names hold no `/`).
    pub fn canonical_id(&self) -> String {
        self.canonical().to_string()
    }

    /// [`Identity::canonical_id`], formatted only when written (decision log lines).
    pub fn canonical(&self) -> CanonicalId<'_> {
        CanonicalId(self)
    }
}

/// An identity's Cedar entity id, as `Display` ([`Identity::canonical`]).
#[derive(Clone, Copy)]
pub struct CanonicalId<'a>(&'a Identity);

impl fmt::Display for CanonicalId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.0;
        match &id.principal {
            Principal::ServiceAccount(sa) => {
                write!(f, "{}/{}/{}", id.federation, sa.namespace, sa.name)
            }
            Principal::OidcSubject { .. } | Principal::SpiffeWorkload { .. } => {
                write!(f, "{}/{}", id.federation, id.subject)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_ids() {
        for k in FederationKind::ALL {
            assert_eq!(FederationKind::from_kind(k.as_str()), Some(k));
        }
        assert_eq!(
            FederationKind::from_kind("SpiffeFederation"),
            Some(FederationKind::Spiffe)
        );
        assert_eq!(FederationKind::from_kind("X509Federation"), None);
        let w = Identity::of_spiffe_workload(
            "spire",
            "spiffe://example.org/app/ns/prod/sa/u1/api/pod/u2/api-0",
        )
        .unwrap();
        assert_eq!(w.kind(), PrincipalKind::SpiffeWorkload);
        assert_eq!(
            w.canonical_id(),
            "spire/spiffe://example.org/app/ns/prod/sa/u1/api/pod/u2/api-0"
        );
        assert_eq!(w.issuer, "spiffe://example.org");
        let sa = w.service_account().unwrap();
        assert_eq!(
            (sa.namespace.as_str(), sa.pod_name.as_deref()),
            ("prod", Some("api-0"))
        );
        let plain = Identity::of_spiffe_workload("spire", "spiffe://example.org/billing").unwrap();
        assert!(plain.service_account().is_none());
        assert!(Identity::of_spiffe_workload("spire", "spiffe://example.org").is_none());
        assert_eq!(
            FederationKind::Okta.principal_kind(),
            PrincipalKind::OidcSubject
        );
        let sa = Identity {
            federation: "alpha".into(),
            federation_kind: FederationKind::Kubernetes,
            issuer: "https://i".into(),
            subject: "system:serviceaccount:ns:app".into(),
            principal: Principal::ServiceAccount(ServiceAccount {
                namespace: "ns".into(),
                name: "app".into(),
                ..Default::default()
            }),
            expires_at: None,
        };
        assert_eq!(sa.canonical_id(), "alpha/ns/app");
        assert_eq!(sa.kind().as_str(), "ServiceAccount");
        assert!(sa.service_account().is_some());
        let oidc = Identity {
            federation: "github".into(),
            federation_kind: FederationKind::Oidc,
            subject: "repo:org/app:ref:refs/heads/main".into(),
            principal: Principal::OidcSubject {
                claims: [("repository".to_owned(), "org/app".to_owned())].into(),
            },
            ..sa.clone()
        };
        assert_eq!(
            oidc.canonical_id(),
            "github/repo:org/app:ref:refs/heads/main"
        );
        assert_eq!(oidc.kind(), PrincipalKind::OidcSubject);
        assert!(oidc.service_account().is_none());
        assert_eq!(
            oidc.principal.text_len(),
            "repository".len() + "org/app".len()
        );
    }
}
