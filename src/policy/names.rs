//! What a tree *names*: the principals, keys and namespaces its Authorizations and
//! hand-written policies mention, from which [`super::requests`] builds the requests worth
//! evaluating.
//!
//! * Authorizations (their checked specs, as compiled): the federation and subject of
//!   each, as the kind of caller its `federationRef.kind` grants. For a
//!   `KubernetesFederation`, an exact `system:serviceaccount:NS:SA` subject is that
//!   ServiceAccount and a glob gets one representative ([`representative`]); for an OIDC
//!   federation (`OIDCFederation`, `OktaFederation`, `PingIdentityFederation`) the subject
//!   is an OIDC subject, a glob its own representative; for a `SpiffeFederation` the
//!   `spiffeID` is a SPIFFE workload (checked with the server's parser), a glob its own
//!   representative. The key globs of
//!   `allowedRemoteKeys` per store, the namespaces of `allowedGeneratorStates`.
//! * Hand-written policies (their JSON form, walked): entity literals (`Federation`,
//!   `Namespace`, `ServiceAccount`, `OidcSubject`, `SpiffeWorkload`, `Store`, `RemoteKey`,
//!   `GeneratorStates`) and string literals or `like` patterns compared with
//!   `principal.{federation, namespace, name, subject}` and `resource.{store, key, name,
//!   namespace}`. Within one policy they are combined (its namespaces with its
//!   ServiceAccount names, its keys with its stores); a subject is taken as the kind of
//!   caller its federation proves ([`Names::kinds`]), namespaces and names only for
//!   Kubernetes federations.
//!
//! A `*` in a principal's namespace or name, in an OIDC subject, or in a key, stands for
//! "any other": the request is evaluated with that literal character, which no Kubernetes
//! name holds and no exact subject an Authorization names holds (a subject with `*` is a
//! glob), so it matches the globs and patterns that cover it and no exact name. Every
//! federation gets its "any other" principal: `FED/*/*` for a Kubernetes federation, `FED/*`
//! for an OIDC one, `FED/spiffe://TD/*` for a SPIFFE one (a SPIFFE ID holds no `*`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Tree;
use crate::authn::{MAX_CLAIM_VALUE_BYTES, MAX_SPIFFE_ID_BYTES, PrincipalKind, parse_workload_id};
use crate::authz::PolicySource;
use crate::support::text::printable;

/// Most principals one tree may contribute.
pub const MAX_PRINCIPALS: usize = 10_000;
/// Most keys (literals and patterns) one tree may contribute.
pub const MAX_KEYS: usize = 10_000;

/// A caller of a federation: a ServiceAccount, an OIDC subject or a SPIFFE workload. Ordered by federation,
/// then kind, then name, so a federation's principals are together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PrincipalName {
    /// The federation (`metadata.name`; names are unique across federation kinds).
    pub federation: String,
    /// Who, by kind. JSON: `"type": "ServiceAccount", "namespace", "name"` or
    /// `"type": "OidcSubject", "subject"` or `"type": "SpiffeWorkload", "spiffeID"`.
    #[serde(flatten)]
    pub caller: Caller,
}

/// A principal of one kind (the Cedar entity type, [`PrincipalKind`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(tag = "type")]
pub enum Caller {
    /// A ServiceAccount of a `KubernetesFederation`; `*` in `namespace` or `name` means
    /// "any other".
    ServiceAccount {
        /// Namespace, or `*`.
        namespace: String,
        /// ServiceAccount, or `*`.
        name: String,
    },
    /// The subject of an OIDC federation's token (`subjectClaim`), at most
    /// [`MAX_CLAIM_VALUE_BYTES`]; a `*` in it means "any other" (a glob's representative
    /// is the glob itself).
    OidcSubject {
        /// The subject.
        subject: String,
    },
    /// A workload of a `SpiffeFederation`, by its SPIFFE ID (`spiffe://TD/PATH`, the
    /// token subject), at most [`MAX_SPIFFE_ID_BYTES`]; a `*` in it means "any other" (a
    /// `spiffeID` glob's representative is the glob itself; the federation's "any other"
    /// is `spiffe://TD/*`, or `*` when its trust domain is unknown).
    SpiffeWorkload {
        /// The SPIFFE ID, or a glob over its path. JSON: `spiffeID`.
        #[serde(rename = "spiffeID")]
        spiffe_id: String,
    },
}

impl PrincipalName {
    /// ServiceAccount `namespace/name` of `federation`.
    pub fn service_account(federation: &str, namespace: &str, name: &str) -> PrincipalName {
        PrincipalName {
            federation: federation.to_owned(),
            caller: Caller::ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        }
    }

    /// OIDC subject `subject` of `federation`.
    pub fn oidc_subject(federation: &str, subject: &str) -> PrincipalName {
        PrincipalName {
            federation: federation.to_owned(),
            caller: Caller::OidcSubject {
                subject: subject.to_owned(),
            },
        }
    }

    /// SPIFFE workload `spiffe_id` of `federation`.
    pub fn spiffe_workload(federation: &str, spiffe_id: &str) -> PrincipalName {
        PrincipalName {
            federation: federation.to_owned(),
            caller: Caller::SpiffeWorkload {
                spiffe_id: spiffe_id.to_owned(),
            },
        }
    }

    /// The kind of caller (Cedar type).
    pub fn kind(&self) -> PrincipalKind {
        match self.caller {
            Caller::ServiceAccount { .. } => PrincipalKind::ServiceAccount,
            Caller::OidcSubject { .. } => PrincipalKind::OidcSubject,
            Caller::SpiffeWorkload { .. } => PrincipalKind::SpiffeWorkload,
        }
    }

    /// As `explain --principal` takes it: `FED/NS/SA` for a ServiceAccount, `FED/SUBJECT`
    /// for an OIDC subject, `FED/SPIFFE-ID` for a SPIFFE workload; control and bidirectional characters escaped
    /// ([`printable`]), so a subject cannot forge a line of output.
    pub fn label(&self) -> String {
        let raw = match &self.caller {
            Caller::ServiceAccount { namespace, name } => {
                format!("{}/{namespace}/{name}", self.federation)
            }
            Caller::OidcSubject { subject } => format!("{}/{subject}", self.federation),
            Caller::SpiffeWorkload { spiffe_id } => format!("{}/{spiffe_id}", self.federation),
        };
        printable(&raw, usize::MAX)
    }

    /// The token subject this principal carries.
    pub fn subject(&self) -> String {
        match &self.caller {
            Caller::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
            Caller::OidcSubject { subject } => subject.clone(),
            Caller::SpiffeWorkload { spiffe_id } => spiffe_id.clone(),
        }
    }

    /// For a representative (a `*` in its namespace, name or subject): the subject glob it
    /// stands for; `None` for a named caller.
    pub fn represents(&self) -> Option<String> {
        let open = match &self.caller {
            Caller::ServiceAccount { namespace, name } => {
                namespace.contains('*') || name.contains('*')
            }
            Caller::OidcSubject { subject } => subject.contains('*'),
            Caller::SpiffeWorkload { spiffe_id } => spiffe_id.contains('*'),
        };
        open.then(|| self.subject())
    }

    /// Whether this is the federation's "any other" principal: `FED/*/*`, `FED/*`, or
    /// `FED/spiffe://TD/*` (a glob matching every workload of its trust domain).
    pub fn is_any(&self) -> bool {
        match &self.caller {
            Caller::ServiceAccount { namespace, name } => namespace == "*" && name == "*",
            Caller::OidcSubject { subject } => subject == "*",
            Caller::SpiffeWorkload { spiffe_id } => {
                spiffe_id == "*" || matches_every_workload(spiffe_id)
            }
        }
    }

    /// What it is, for text: `ServiceAccount`, `subject` or `SPIFFE workload`.
    pub fn noun(&self) -> &'static str {
        match self.caller {
            Caller::ServiceAccount { .. } => "ServiceAccount",
            Caller::OidcSubject { .. } => "subject",
            Caller::SpiffeWorkload { .. } => "SPIFFE workload",
        }
    }
}

/// What one tree names.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Federations loaded or named.
    pub federations: BTreeSet<String>,
    /// The kind of caller each federation proves: a loaded federation's kind, else the
    /// kind its Authorizations (first by name) grant; a federation in neither proves
    /// ServiceAccounts (as an empty `federationRef.kind` does).
    pub kinds: BTreeMap<String, PrincipalKind>,
    /// Issuers named by Authorizations, by federation (first by Authorization name).
    pub issuers: BTreeMap<String, Vec<String>>,
    /// Principals (each federation's "any other" included).
    pub principals: BTreeSet<PrincipalName>,
    /// Keys and key patterns by store.
    pub keys: BTreeMap<String, BTreeSet<String>>,
    /// Keys and key patterns named without a store (probed in every store).
    pub keys_any_store: BTreeSet<String>,
    /// Namespaces whose generator states are named.
    pub state_namespaces: BTreeSet<String>,
}

impl Names {
    /// What `tree` names.
    pub fn of(tree: &Tree) -> Names {
        let mut names = Names::default();
        for f in &tree.snapshot.federations {
            names.federations.insert(f.name().to_owned());
            names
                .kinds
                .insert(f.name().to_owned(), f.kind().principal_kind());
        }
        for a in &tree.authorizations {
            let spec = a.spec();
            let fed = spec.federation_ref.name.clone();
            names.federations.insert(fed.clone());
            names
                .kinds
                .entry(fed.clone())
                .or_insert_with(|| a.principal_kind());
            if let Some((issuer, subject)) = a.subject() {
                let issuers = names.issuers.entry(fed.clone()).or_default();
                if !issuers.iter().any(|i| i == issuer) {
                    issuers.push(issuer.to_owned());
                }
                // The kind its policies grant (`principal is …`), whatever the federation
                // of that name proves: a mismatch is refused when resolved.
                names.add_subject(&fed, a.principal_kind(), subject);
            }
            for (store, globs) in &spec.allowed_remote_keys {
                for g in globs {
                    names.add_key(Some(store), g);
                }
            }
            for s in &spec.allowed_generator_states {
                names.state_namespaces.insert(s.namespace.clone());
            }
        }
        let all_feds: Vec<String> = names.federations.iter().cloned().collect();
        for listed in &tree.listing {
            if !matches!(listed.source, PolicySource::File { .. }) {
                continue;
            }
            let Ok(json) = listed.policy.to_json() else {
                continue;
            };
            let facts = PolicyFacts::of(&json);
            names.add_facts(&facts, &all_feds);
        }
        for fed in names.federations.clone() {
            let kind = names.kind_of(&fed);
            let any = match kind {
                // Every workload of its trust domain: the loaded federation's, else the
                // one its Authorizations name (`spiffe://TD`).
                PrincipalKind::SpiffeWorkload => tree
                    .snapshot
                    .federations
                    .iter()
                    .find(|f| f.name() == fed)
                    .and_then(|f| f.trust_domain())
                    .map(|td| format!("spiffe://{td}"))
                    .or_else(|| names.issuers.get(&fed).and_then(|i| i.first().cloned()))
                    .map_or_else(|| "*".to_owned(), |td| format!("{td}/*")),
                _ => "*".to_owned(),
            };
            names.add_subject(&fed, kind, &any);
        }
        names
    }

    /// The kind of caller `federation` proves ([`Names::kinds`]).
    pub fn kind_of(&self, federation: &str) -> PrincipalKind {
        self.kinds.get(federation).copied().unwrap_or_default()
    }

    /// Adds what `other` names.
    pub fn merge(&mut self, other: Names) {
        self.federations.extend(other.federations);
        for (fed, kind) in other.kinds {
            self.kinds.entry(fed).or_insert(kind);
        }
        for (fed, issuers) in other.issuers {
            let mine = self.issuers.entry(fed).or_default();
            for i in issuers {
                if !mine.contains(&i) {
                    mine.push(i);
                }
            }
        }
        for p in other.principals {
            if self.principals.len() < MAX_PRINCIPALS {
                self.principals.insert(p);
            }
        }
        for (store, keys) in other.keys {
            for k in keys {
                self.add_key(Some(&store), &k);
            }
        }
        for k in other.keys_any_store {
            self.add_key(None, &k);
        }
        self.state_namespaces.extend(other.state_namespaces);
    }

    fn key_count(&self) -> usize {
        self.keys_any_store.len() + self.keys.values().map(BTreeSet::len).sum::<usize>()
    }

    fn add_key(&mut self, store: Option<&str>, key: &str) {
        if key.is_empty() || self.key_count() >= MAX_KEYS {
            return;
        }
        match store {
            Some(s) => {
                self.keys
                    .entry(s.to_owned())
                    .or_default()
                    .insert(key.to_owned());
            }
            None => {
                self.keys_any_store.insert(key.to_owned());
            }
        }
    }

    fn insert(&mut self, principal: PrincipalName) {
        if !principal.federation.is_empty() && self.principals.len() < MAX_PRINCIPALS {
            self.principals.insert(principal);
        }
    }

    fn add_principal(&mut self, federation: &str, namespace: &str, name: &str) {
        let valid = |s: &str| !s.is_empty() && !s.contains(':');
        if valid(namespace) && valid(name) {
            self.insert(PrincipalName::service_account(federation, namespace, name));
        }
    }

    /// An OIDC subject as token verification accepts it: non-empty, at most
    /// [`MAX_CLAIM_VALUE_BYTES`]. A glob is its own representative, runs of `*` made one
    /// (the same glob for Cedar's `like`).
    fn add_oidc_subject(&mut self, federation: &str, subject: &str) {
        let mut collapsed = String::with_capacity(subject.len());
        for c in subject.chars() {
            if !(c == '*' && collapsed.ends_with('*')) {
                collapsed.push(c);
            }
        }
        if !collapsed.is_empty() && collapsed.len() <= MAX_CLAIM_VALUE_BYTES {
            self.insert(PrincipalName::oidc_subject(federation, &collapsed));
        }
    }

    /// The caller of `kind` an exact subject names, or the representative of a glob: for
    /// a ServiceAccount, the ServiceAccount it reads as ([`representative`] for a glob;
    /// nothing when it reads as none); for an OIDC subject, the subject.
    fn add_subject(&mut self, federation: &str, kind: PrincipalKind, subject: &str) {
        match kind {
            PrincipalKind::ServiceAccount => {
                let found = if subject.contains('*') {
                    representative(subject)
                } else {
                    split_sa_subject(subject).map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                };
                if let Some((ns, name)) = found {
                    self.add_principal(federation, &ns, &name);
                }
            }
            PrincipalKind::OidcSubject => self.add_oidc_subject(federation, subject),
            PrincipalKind::SpiffeWorkload => self.add_spiffe_workload(federation, subject),
        }
    }

    /// A SPIFFE ID as JWT-SVID verification accepts it ([`parse_workload_id`]), or a glob
    /// over one (runs of `*` made one) that some such ID can match: the glob with each `*`
    /// filled by a path character parses as a workload ID ([`spiffe_filled`]). `*` alone is
    /// kept (the "any other" of a federation whose trust domain is unknown).
    fn add_spiffe_workload(&mut self, federation: &str, spiffe_id: &str) {
        let mut collapsed = String::with_capacity(spiffe_id.len());
        for c in spiffe_id.chars() {
            if !(c == '*' && collapsed.ends_with('*')) {
                collapsed.push(c);
            }
        }
        let accepted = collapsed == "*"
            || (collapsed.len() <= MAX_SPIFFE_ID_BYTES
                && parse_workload_id(&spiffe_filled(&collapsed)).is_ok());
        if accepted {
            self.insert(PrincipalName::spiffe_workload(federation, &collapsed));
        }
    }

    fn add_facts(&mut self, facts: &PolicyFacts, all_feds: &[String]) {
        let feds: Vec<String> = if facts.federations.is_empty() {
            all_feds.to_vec()
        } else {
            facts.federations.iter().cloned().collect()
        };
        let is_kubernetes =
            |names: &Names, f: &str| names.kind_of(f) == PrincipalKind::ServiceAccount;
        for (f, ns, n) in &facts.service_accounts {
            self.add_principal(f, ns, n);
        }
        for (f, subject) in &facts.oidc_subjects {
            self.add_oidc_subject(f, subject);
        }
        for (f, spiffe_id) in &facts.spiffe_workloads {
            self.add_spiffe_workload(f, spiffe_id);
        }
        let mut names: Vec<&str> = facts.sa_names.iter().map(String::as_str).collect();
        names.push("*");
        for (fed, ns) in &facts.namespaces {
            let in_feds: Vec<&str> = match fed {
                Some(f) => vec![f.as_str()],
                None => feds
                    .iter()
                    .map(String::as_str)
                    .filter(|f| is_kubernetes(self, f))
                    .collect(),
            };
            for f in in_feds {
                for n in &names {
                    self.add_principal(f, ns, n);
                }
            }
        }
        for f in &feds {
            // A name with no namespace: that name in any namespace.
            if facts.namespaces.is_empty() && is_kubernetes(self, f) {
                for n in &facts.sa_names {
                    self.add_principal(f, "*", n);
                }
            }
            let kind = self.kind_of(f);
            for s in &facts.subjects {
                self.add_subject(f, kind, s);
            }
        }
        if facts.stores.is_empty() {
            for k in &facts.keys {
                self.add_key(None, k);
            }
        } else {
            for s in &facts.stores {
                for k in &facts.keys {
                    self.add_key(Some(s), k);
                }
            }
        }
        for (s, k) in &facts.remote_keys {
            self.add_key(Some(s), k);
        }
        self.state_namespaces
            .extend(facts.state_namespaces.iter().cloned());
    }
}

/// `system:serviceaccount:NS:NAME` → `(NS, NAME)`, both non-empty and without `:` (as
/// token verification reads a subject).
pub fn split_sa_subject(sub: &str) -> Option<(&str, &str)> {
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((ns, name))
}

/// Whether `text` matches `glob` as Cedar's `like` does: `*` matches any run of
/// characters (`:` and `/` included), every other character only itself.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut gi, mut ti) = (0, 0);
    // Last `*` seen and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if gi < g.len() && g[gi] == t[ti] {
            gi += 1;
            ti += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// Whether a subject glob matches the subject of every ServiceAccount of every namespace.
///
/// Exact, not sampled: with `x`, `y` single characters that occur nowhere in the glob, a
/// glob matching `system:serviceaccount:x:y` consumes each of them with a wildcard (no
/// literal can), and a wildcard matches whatever replaces them — so it matches every
/// `system:serviceaccount:NS:NAME`; the converse is immediate.
pub fn matches_every_service_account(glob: &str) -> bool {
    let mut fresh = ('\u{e000}'..='\u{f8ff}').filter(|c| !glob.contains(*c));
    match (fresh.next(), fresh.next()) {
        (Some(x), Some(y)) => glob_matches(glob, &format!("system:serviceaccount:{x}:{y}")),
        _ => false,
    }
}

/// Whether a subject glob matches every subject of an OIDC federation: exactly when it
/// holds nothing but `*` (a subject lacking any other character the glob holds does not
/// match it).
pub fn matches_every_subject(glob: &str) -> bool {
    !glob.is_empty() && glob.chars().all(|c| c == '*')
}

/// Whether a `spiffeID` glob (`spiffe://TD/…`) matches every workload SPIFFE ID of its
/// trust domain `TD`. Exact, as [`matches_every_service_account`]: with `x` a character
/// the glob does not hold, it matches `spiffe://TD/x` only by consuming `x` with a
/// wildcard, which then matches any path in its place.
pub fn matches_every_workload(glob: &str) -> bool {
    let Some(td) = glob
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .filter(|td| !td.is_empty() && !td.contains('*'))
    else {
        return false;
    };
    match ('\u{e000}'..='\u{f8ff}').find(|c| !glob.contains(*c)) {
        Some(x) => glob_matches(glob, &format!("spiffe://{td}/{x}")),
        None => false,
    }
}

/// A SPIFFE ID glob with each `*` filled by `x` (a SPIFFE ID path character): a workload
/// ID the glob matches when the glob is one JWT-SVID verification can meet.
pub fn spiffe_filled(glob: &str) -> String {
    glob.replace('*', "x")
}

/// The representative ServiceAccount `(namespace, name)` of a subject glob: the glob with
/// each `*` filled so that it reads as a ServiceAccount subject, keeping `*` itself
/// wherever a namespace or name is left open. `system:serviceaccount:reporting:*` gives
/// `(reporting, *)`, `system:serviceaccount:*` and `*` give `(*, *)`,
/// `system:serviceaccount:team-*:app` gives `(team-*, app)`. Fillers are tried in a fixed
/// order for the first three `*` (later ones take `*`); `None` when no filling reads as a
/// ServiceAccount subject (such a glob matches no token the server accepts).
pub fn representative(glob: &str) -> Option<(String, String)> {
    const FILLERS: [&str; 8] = [
        "*",
        "*:*",
        "serviceaccount:*:*",
        "system:serviceaccount:*:*",
        "system:serviceaccount",
        "serviceaccount",
        "system",
        "",
    ];
    const TRIED: u32 = 3;
    let parts: Vec<&str> = glob.split('*').collect();
    let stars = parts.len() - 1;
    let tried = stars.min(TRIED as usize);
    let combinations = FILLERS.len().pow(tried as u32);
    for mut n in 0..combinations {
        let mut text = String::from(parts[0]);
        for (i, part) in parts.iter().enumerate().skip(1) {
            let filler = if i <= tried {
                let f = FILLERS[n % FILLERS.len()];
                n /= FILLERS.len();
                f
            } else {
                "*"
            };
            text.push_str(filler);
            text.push_str(part);
        }
        if let Some((ns, name)) = split_sa_subject(&text)
            && glob_matches(glob, &text)
        {
            return Some((ns.to_owned(), name.to_owned()));
        }
    }
    None
}

/// What one hand-written policy mentions.
#[derive(Debug, Default)]
struct PolicyFacts {
    federations: BTreeSet<String>,
    /// `(federation if known, namespace)`.
    namespaces: BTreeSet<(Option<String>, String)>,
    service_accounts: BTreeSet<(String, String, String)>,
    /// `OidcSubject` literals: `(federation, subject)`.
    oidc_subjects: BTreeSet<(String, String)>,
    /// `SpiffeWorkload` literals: `(federation, SPIFFE ID)`.
    spiffe_workloads: BTreeSet<(String, String)>,
    sa_names: BTreeSet<String>,
    subjects: BTreeSet<String>,
    stores: BTreeSet<String>,
    keys: BTreeSet<String>,
    /// `RemoteKey` literals: `(store, key)`.
    remote_keys: BTreeSet<(String, String)>,
    state_namespaces: BTreeSet<String>,
}

/// Deepest JSON nesting walked (Cedar bounds policy depth well below this).
const WALK_DEPTH: usize = 256;

impl PolicyFacts {
    fn of(est: &Value) -> PolicyFacts {
        let mut facts = PolicyFacts::default();
        facts.walk(est, 0);
        facts
    }

    fn walk(&mut self, v: &Value, depth: usize) {
        if depth > WALK_DEPTH {
            return;
        }
        match v {
            Value::Object(map) => {
                if let (Some(Value::String(ty)), Some(Value::String(id))) =
                    (map.get("type"), map.get("id"))
                {
                    self.entity(ty, id);
                }
                for (op, body) in map {
                    match op.as_str() {
                        "==" | "!=" | "contains" | "containsAll" | "containsAny" | "in" => {
                            let (l, r) = (body.get("left"), body.get("right"));
                            if let (Some(l), Some(r)) = (l, r) {
                                self.compare(l, r);
                                self.compare(r, l);
                            }
                        }
                        "like" => {
                            if let (Some((var, attr)), Some(Value::Array(pattern))) =
                                (body.get("left").and_then(attr_of), body.get("pattern"))
                            {
                                let glob: String = pattern
                                    .iter()
                                    .map(|e| match e {
                                        Value::Object(m) => m
                                            .get("Literal")
                                            .and_then(Value::as_str)
                                            .unwrap_or_default()
                                            .to_owned(),
                                        _ => "*".to_owned(),
                                    })
                                    .collect();
                                self.attribute(var, attr, &glob);
                            }
                        }
                        _ => {}
                    }
                    self.walk(body, depth + 1);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// `attr` (of `principal`/`resource`) compared with string literals in `other`.
    fn compare(&mut self, attr: &Value, other: &Value) {
        let Some((var, name)) = attr_of(attr) else {
            return;
        };
        let mut literals = Vec::new();
        match other.get("Value") {
            Some(Value::String(s)) => literals.push(s.clone()),
            _ => {
                if let Some(Value::Array(items)) = other.get("Set") {
                    for i in items {
                        if let Some(Value::String(s)) = i.get("Value") {
                            literals.push(s.clone());
                        }
                    }
                }
            }
        }
        for l in literals {
            self.attribute(var, name, &l);
        }
    }

    fn attribute(&mut self, var: &str, attr: &str, value: &str) {
        let value = value.to_owned();
        match (var, attr) {
            ("principal", "federation") => {
                self.federations.insert(value);
            }
            ("principal", "namespace") => {
                self.namespaces.insert((None, value));
            }
            ("principal", "name") => {
                self.sa_names.insert(value);
            }
            ("principal", "subject") => {
                self.subjects.insert(value);
            }
            ("resource", "store") => {
                self.stores.insert(value);
            }
            ("resource", "name") => {
                self.stores.insert(value);
            }
            ("resource", "key") => {
                self.keys.insert(value);
            }
            ("resource", "namespace") => {
                self.state_namespaces.insert(value);
            }
            _ => {}
        }
    }

    fn entity(&mut self, ty: &str, id: &str) {
        let ty = ty.strip_prefix("Esi::").unwrap_or(ty);
        match ty {
            "Federation" => {
                self.federations.insert(id.to_owned());
            }
            "Namespace" => {
                if let Some((f, ns)) = id.split_once('/') {
                    self.federations.insert(f.to_owned());
                    self.namespaces.insert((Some(f.to_owned()), ns.to_owned()));
                }
            }
            "ServiceAccount" => {
                let mut parts = id.splitn(3, '/');
                if let (Some(f), Some(ns), Some(n)) = (parts.next(), parts.next(), parts.next()) {
                    self.federations.insert(f.to_owned());
                    self.service_accounts
                        .insert((f.to_owned(), ns.to_owned(), n.to_owned()));
                }
            }
            "OidcSubject" => {
                // `<federation>/<subject>`: federation names hold no `/`.
                if let Some((f, subject)) = id.split_once('/') {
                    self.federations.insert(f.to_owned());
                    self.oidc_subjects
                        .insert((f.to_owned(), subject.to_owned()));
                }
            }
            "SpiffeWorkload" => {
                // `<federation>/<SPIFFE ID>`, as the engine names the entity.
                if let Some((f, spiffe_id)) = id.split_once('/') {
                    self.federations.insert(f.to_owned());
                    self.spiffe_workloads
                        .insert((f.to_owned(), spiffe_id.to_owned()));
                }
            }
            "Store" => {
                self.stores.insert(id.to_owned());
            }
            "RemoteKey" => {
                if let Some((s, k)) = id.split_once('/') {
                    self.remote_keys.insert((s.to_owned(), k.to_owned()));
                }
            }
            "GeneratorStates" => {
                self.state_namespaces.insert(id.to_owned());
            }
            _ => {}
        }
    }
}

/// `{".": {"left": {"Var": v}, "attr": a}}` → `(v, a)`.
fn attr_of(v: &Value) -> Option<(&str, &str)> {
    let dot = v.get(".")?;
    let var = dot.get("left")?.get("Var")?.as_str()?;
    let attr = dot.get("attr")?.as_str()?;
    Some((var, attr))
}

/// The federations a hand-written policy names (entity literals, `principal.federation`).
pub fn federations_named_by(policy: &cedar_policy::Policy) -> BTreeSet<String> {
    policy
        .to_json()
        .map(|json| PolicyFacts::of(&json).federations)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_cedar_like_does() {
        assert!(glob_matches("a*b", "ab"));
        assert!(glob_matches("a*b", "a:/xb"));
        assert!(!glob_matches("a*b", "a:/xbc"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("**x*", "yyxyy"));
        assert!(!glob_matches("x", "X"));
        assert!(glob_matches("reports/*", "reports/*"));
        assert!(!glob_matches("reports/2026/*", "reports/*"));
    }

    #[test]
    fn every_service_account_is_decided_exactly() {
        for broad in [
            "*",
            "system:*",
            "system:serviceaccount:*",
            "system:serviceaccount:*:*",
            "*:*:*:*",
            "system:serviceaccount:**",
        ] {
            assert!(matches_every_service_account(broad), "{broad}");
        }
        for narrow in [
            "system:serviceaccount:ns:*",
            "system:serviceaccount:*:app",
            "system:serviceaccount:*a*:*",
            "*:*:*:*:*",
            "system:serviceaccount:ns:sa",
        ] {
            assert!(!matches_every_service_account(narrow), "{narrow}");
        }
    }

    #[test]
    fn representatives_read_as_service_accounts_of_the_glob() {
        let r = |g: &str| representative(g).map(|(a, b)| format!("{a}/{b}"));
        assert_eq!(
            r("system:serviceaccount:reporting:*").as_deref(),
            Some("reporting/*")
        );
        assert_eq!(r("system:serviceaccount:*").as_deref(), Some("*/*"));
        assert_eq!(r("*").as_deref(), Some("*/*"));
        assert_eq!(r("system:*").as_deref(), Some("*/*"));
        assert_eq!(
            r("system:serviceaccount:team-*:app").as_deref(),
            Some("team-*/app")
        );
        assert_eq!(r("system:serviceaccount:ns-*").as_deref(), Some("ns-*/*"));
        assert_eq!(r("*:reporting:*").as_deref(), Some("reporting/*"));
        assert_eq!(r("user:*"), None);
        // Each representative matches its glob.
        for g in [
            "*",
            "system:*",
            "*:reporting:*",
            "system:serviceaccount:a*b:c*",
        ] {
            let (ns, n) = representative(g).expect(g);
            assert!(
                glob_matches(g, &format!("system:serviceaccount:{ns}:{n}")),
                "{g}"
            );
        }
    }

    #[test]
    fn hand_written_policies_name_principals_and_keys() {
        let policy: cedar_policy::Policy = r#"permit (
              principal in Esi::Namespace::"main/ops",
              action == Esi::Action::"get",
              resource in Esi::Store::"vault-dev"
            ) when { principal.name == "on-call" && resource.key like "admin/*" };"#
            .parse()
            .expect("parses");
        let facts = PolicyFacts::of(&policy.to_json().expect("json"));
        assert_eq!(facts.federations, BTreeSet::from(["main".to_owned()]));
        assert!(
            facts
                .namespaces
                .contains(&(Some("main".into()), "ops".into()))
        );
        assert!(facts.sa_names.contains("on-call"));
        assert!(facts.stores.contains("vault-dev"));
        assert!(facts.keys.contains("admin/*"));
        let mut names = Names::default();
        names.add_facts(&facts, &["main".to_owned(), "other".to_owned()]);
        let labels: Vec<String> = names.principals.iter().map(PrincipalName::label).collect();
        assert_eq!(labels, ["main/ops/*", "main/ops/on-call"]);
        assert_eq!(
            names
                .keys
                .get("vault-dev")
                .map(|k| k.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["admin/*".to_owned()])
        );
        assert_eq!(federations_named_by(&policy), facts.federations);
    }
    /// SPIFFE workloads are principals of their SpiffeFederation: exact `spiffeID`s,
    /// globs (their own representatives), `SpiffeWorkload` literals and
    /// `principal.subject` patterns of hand-written policies, and the federation's "any
    /// other", `FED/spiffe://TD/*`; malformed IDs name no principal.
    #[test]
    fn spiffe_workloads_are_principals_of_their_federation() {
        use crate::policy::testing::{spiffe_authorization, spiffe_federation, store, tree};
        let grants = "  allowedClusterSecretStores: [main]\n";
        let (_dir, tree) = tree(
            &[
                spiffe_federation("spire", "example.org"),
                store("main"),
                spiffe_authorization(
                    "api",
                    "spire",
                    "spiffe://example.org/ns/prod/sa/api",
                    grants,
                ),
                spiffe_authorization("prod", "spire", "spiffe://example.org/ns/prod/**", grants),
            ],
            &[(
                "p.cedar",
                "permit (principal == Esi::SpiffeWorkload::\"spire/spiffe://example.org/batch\", action, resource);\n\
                 forbid (principal == Esi::SpiffeWorkload::\"spire/spiffe://Bad/x\", action, resource);\n\
                 forbid (principal, action, resource) when { principal.subject like \"spiffe://example.org/ns/sandbox/*\" };\n",
            )],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let names = Names::of(&tree);
        assert_eq!(names.kind_of("spire"), PrincipalKind::SpiffeWorkload);
        let found: Vec<(String, PrincipalKind)> = names
            .principals
            .iter()
            .map(|p| (p.label(), p.kind()))
            .collect();
        let w = PrincipalKind::SpiffeWorkload;
        let expected: Vec<(String, PrincipalKind)> = [
            "spire/spiffe://example.org/*",
            "spire/spiffe://example.org/batch",
            "spire/spiffe://example.org/ns/prod/*",
            "spire/spiffe://example.org/ns/prod/sa/api",
            "spire/spiffe://example.org/ns/sandbox/*",
        ]
        .iter()
        .map(|l| (l.to_string(), w))
        .collect();
        assert_eq!(found, expected);
        let any = PrincipalName::spiffe_workload("spire", "spiffe://example.org/*");
        assert!(any.is_any());
        let glob = PrincipalName::spiffe_workload("spire", "spiffe://example.org/ns/prod/*");
        assert!(!glob.is_any());
        assert_eq!(
            glob.represents().as_deref(),
            Some("spiffe://example.org/ns/prod/*")
        );
        assert_eq!(
            serde_json::to_value(&glob).unwrap(),
            serde_json::json!({"federation": "spire", "type": "SpiffeWorkload", "spiffeID": "spiffe://example.org/ns/prod/*"})
        );
        // Control characters cannot forge a line.
        assert_eq!(
            PrincipalName::spiffe_workload("spire", "spiffe://example.org/a\nb").label(),
            printable("spire/spiffe://example.org/a\nb", usize::MAX)
        );
    }

    #[test]
    fn every_workload_of_a_trust_domain_is_decided_exactly() {
        for broad in ["spiffe://td/*", "spiffe://td/**", "spiffe://td/*/*"] {
            // `/*/*` needs a second `/`: not every workload.
            let every = broad != "spiffe://td/*/*";
            assert_eq!(matches_every_workload(broad), every, "{broad}");
        }
        for narrow in [
            "spiffe://td/ns/*",
            "spiffe://td/x",
            "spiffe://*/x",
            "*",
            "spiffe://td",
        ] {
            assert!(!matches_every_workload(narrow), "{narrow}");
        }
    }

    /// Issue 13: an OIDC federation's subjects are principals of their own kind, named by
    /// Authorizations (exact, and a glob as its own representative) and by hand-written
    /// policies (`OidcSubject` literals, `principal.subject` patterns); its "any other" is
    /// `FED/*`. They were dropped unless they read as `system:serviceaccount:NS:SA` (and
    /// then taken for a ServiceAccount).
    #[test]
    fn oidc_subjects_are_principals_of_their_federations_kind() {
        use crate::policy::testing::{authorization_of, federation, oidc_federation, store, tree};
        let grants = "  allowedClusterSecretStores: [main]\n";
        let oidc = |name: &str, subject: &str| {
            authorization_of(name, "OIDCFederation", "github", subject, grants)
        };
        let (_dir, tree) = tree(
            &[
                federation("alpha"),
                oidc_federation("github"),
                store("main"),
                oidc("deploy", "repo:org/app:ref:refs/heads/main"),
                oidc("ci", "repo:org/**"),
                // The federation decides the kind: an OIDC subject, whatever it reads as.
                oidc("odd", "system:serviceaccount:apps:app"),
                authorization_of(
                    "app",
                    "KubernetesFederation",
                    "alpha",
                    "system:serviceaccount:apps:app",
                    grants,
                ),
            ],
            &[(
                "p.cedar",
                "permit (principal == Esi::OidcSubject::\"github/repo:org/tool:ref:refs/tags/v1\", action, resource);\n\
                 forbid (principal, action, resource) when { principal.subject like \"repo:org/app:*\" };\n\
                 forbid (principal is Esi::ServiceAccount, action, resource) when { principal.namespace == \"sandbox\" };\n",
            )],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let names = Names::of(&tree);
        assert_eq!(names.kind_of("github"), PrincipalKind::OidcSubject);
        assert_eq!(names.kind_of("alpha"), PrincipalKind::ServiceAccount);
        let found: Vec<(String, PrincipalKind)> = names
            .principals
            .iter()
            .map(|p| (p.label(), p.kind()))
            .collect();
        let sa = PrincipalKind::ServiceAccount;
        let oidc = PrincipalKind::OidcSubject;
        let expected: Vec<(String, PrincipalKind)> = [
            ("alpha/*/*", sa),
            ("alpha/apps/app", sa),
            // A namespace is a ServiceAccount's: not asked of the OIDC federation.
            ("alpha/sandbox/*", sa),
            ("github/*", oidc),
            ("github/repo:org/*", oidc),
            ("github/repo:org/app:*", oidc),
            ("github/repo:org/app:ref:refs/heads/main", oidc),
            ("github/repo:org/tool:ref:refs/tags/v1", oidc),
            ("github/system:serviceaccount:apps:app", oidc),
        ]
        .iter()
        .map(|(l, k)| (l.to_string(), *k))
        .collect();
        assert_eq!(found, expected);
        let glob = PrincipalName::oidc_subject("github", "repo:org/*");
        assert_eq!(glob.represents().as_deref(), Some("repo:org/*"));
        assert!(!glob.is_any() && PrincipalName::oidc_subject("github", "*").is_any());
        assert_eq!(
            PrincipalName::oidc_subject("github", "repo:org/app").represents(),
            None
        );
        // JSON says the kind.
        assert_eq!(
            serde_json::to_value(&glob).unwrap(),
            serde_json::json!({"federation": "github", "type": "OidcSubject", "subject": "repo:org/*"})
        );
        assert_eq!(
            serde_json::to_value(PrincipalName::service_account("a", "n", "s")).unwrap(),
            serde_json::json!({"federation": "a", "type": "ServiceAccount", "namespace": "n", "name": "s"})
        );
    }

    /// A subject cannot forge a line of output through its label; one no token carries
    /// (empty, longer than a subject may be) is not a principal.
    #[test]
    fn oidc_labels_are_printable_and_subjects_bounded() {
        let p = PrincipalName::oidc_subject("github", "repo:x\ny\u{1b}[2J");
        assert_eq!(p.label(), "github/repo:x\\ny\\u{1b}[2J");
        assert_eq!(p.subject(), "repo:x\ny\u{1b}[2J");
        let mut names = Names::default();
        names.add_subject("github", PrincipalKind::OidcSubject, "");
        names.add_subject(
            "github",
            PrincipalKind::OidcSubject,
            &"a".repeat(MAX_CLAIM_VALUE_BYTES + 1),
        );
        assert!(names.principals.is_empty());
        names.add_subject(
            "github",
            PrincipalKind::OidcSubject,
            &format!("{}{}", "*".repeat(5000), "a"),
        );
        let labels: Vec<String> = names.principals.iter().map(PrincipalName::label).collect();
        assert_eq!(labels, ["github/*a"]);
    }

    #[test]
    fn every_subject_is_only_a_glob_of_stars() {
        for broad in ["*", "**"] {
            assert!(matches_every_subject(broad), "{broad}");
        }
        for narrow in ["", "repo:*", "*:*", "a", "system:serviceaccount:*"] {
            assert!(!matches_every_subject(narrow), "{narrow}");
        }
    }
}
