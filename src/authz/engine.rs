//! The policy engine: compiled, validated, sharded policy sets and per-request decisions.
//!
//! Cedar evaluates every policy of the set it is handed and does not index, so the
//! policies are sharded by what can match a caller:
//!
//! * `global`: every hand-written policy (all `forbid`s live here), evaluated always;
//! * per federation, per exact subject: the Authorizations whose subject has no `*`;
//! * per federation: the Authorizations with a glob subject;
//!
//! and, within each of the last two, by [`Scope`] (secrets, generators, states), since a
//! compiled policy's action scope already excludes the other kinds of resource.
//!
//! Compiled policies all require `principal in Federation::"<federationRef.name>"` and,
//! for exact subjects, `principal.subject == "<subject>"`, so a shard that is not
//! evaluated could not have matched. The combination is the flat one: allow iff some
//! permit is satisfied and no forbid is — with one deliberate difference, a forbid that
//! fails to evaluate denies (Cedar would skip it: fail open).
//!
//! **Compiled when needed.** Building an engine only checks each Authorization
//! ([`compile::check`]: the same errors as compiling) and indexes it; the Cedar policies of
//! an exact-subject shard are compiled and validated the first time a caller of that
//! subject asks, then kept in a [`PolicyCache`] keyed by the SHA-256 of the shard's
//! Authorizations (name and spec). The cache outlives one engine, so a reload recompiles
//! only shards whose Authorizations changed; it is bounded by a number of policies, and an
//! evicted shard is compiled again when asked. Glob-subject shards, which every caller of
//! their federation evaluates, are compiled while the engine is built. An Authorization
//! whose compiled policies fail schema validation (a compiler bug: `check` passed) grants
//! nothing and is logged: fail closed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request, Response,
    RestrictedExpression, Schema, SchemaFragment, ValidationMode, Validator,
};
use miette::Diagnostic;
use sha2::{Digest as _, Sha256};

use super::compile::{self, Scope, SubjectMatch};
use super::{
    Action, AuthorizationSource, Decision, PolicyFile, PolicyLoadError, Resource, SCHEMA_SRC,
};
use crate::authn::{Identity, Principal};
use crate::metrics::METRICS;
use crate::resources::AuthorizationSpec;

/// Longest `PolicyLoadError::reason`.
const REASON_MAX: usize = 2000;
/// Compiled policy ids start with this; hand-written ones may not claim it.
const RESERVED_PREFIX: &str = "authorization/";

/// The schema, parsed once.
static SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA_SRC)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| e.to_string())
});

/// Entity type names and action uids, parsed once. `None` only if the constants do not
/// parse, which a test rules out; decisions then deny.
static VOCABULARY: LazyLock<Option<Vocabulary>> = LazyLock::new(Vocabulary::new);

/// The validator of compiled and hand-written policies when no federation hands claims to
/// policies; `None` if the schema does not parse (tests: compiled policies validate).
#[cfg(test)]
static VALIDATOR: LazyLock<Option<Validator>> =
    LazyLock::new(|| SCHEMA.as_ref().ok().map(|s| Validator::new(s.clone())));

/// The schema in Cedar's JSON form, from which the validators of a set of claim names are
/// made ([`validators`]).
static SCHEMA_JSON: LazyLock<Result<serde_json::Value, String>> = LazyLock::new(|| {
    let (fragment, _warnings) =
        SchemaFragment::from_cedarschema_str(SCHEMA_SRC).map_err(|e| e.to_string())?;
    fragment.to_json_value().map_err(|e| e.to_string())
});

/// The validators policy files are checked with, for one set of claim names.
struct Validators {
    /// The schema with `OidcClaims` holding every claim name a loaded federation lists
    /// (each an optional `String`).
    full: Validator,
    /// The same with `ServiceAccount` the only principal of every action: the schema as it
    /// was before other identity kinds. A file valid only under it was written for
    /// ServiceAccounts (it reads, say, `principal.namespace` unguarded); it is loaded with a
    /// warning rather than dropped, since dropping a `forbid` on upgrade would fail open.
    /// For any other principal such a policy fails to evaluate: a `forbid` then denies, a
    /// `permit` does not apply.
    service_accounts_only: Validator,
}

/// Validators by the claim set they were made for.
type ValidatorCache = Vec<(BTreeSet<String>, Arc<Validators>)>;

/// Validators of recent claim sets (reloads usually keep the set).
static VALIDATORS: LazyLock<std::sync::Mutex<ValidatorCache>> =
    LazyLock::new(|| std::sync::Mutex::new(Vec::new()));

/// The validators for `claims` (see [`Validators`]); an error if the schema does not parse.
fn validators(claims: &BTreeSet<String>) -> Result<Arc<Validators>, String> {
    let mut cache = VALIDATORS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, v)) = cache.iter().find(|(c, _)| c == claims) {
        return Ok(v.clone());
    }
    let mut full = SCHEMA_JSON.as_ref().map_err(Clone::clone)?.clone();
    let esi = full
        .get_mut("Esi")
        .ok_or_else(|| "the schema has no Esi namespace".to_owned())?;
    let attributes = esi
        .pointer_mut("/commonTypes/OidcClaims/attributes")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| "the schema has no OidcClaims record".to_owned())?;
    for name in claims {
        attributes.insert(
            name.clone(),
            serde_json::json!({"type": "String", "required": false}),
        );
    }
    let mut legacy = full.clone();
    let actions = legacy
        .pointer_mut("/Esi/actions")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| "the schema has no actions".to_owned())?;
    for action in actions.values_mut() {
        if let Some(types) = action
            .pointer_mut("/appliesTo/principalTypes")
            .and_then(serde_json::Value::as_array_mut)
        {
            types.retain(|t| t == "ServiceAccount");
        }
    }
    let build = |json: serde_json::Value| {
        Schema::from_json_value(json)
            .map(Validator::new)
            .map_err(|e| e.to_string())
    };
    let v = Arc::new(Validators {
        full: build(full)?,
        service_accounts_only: build(legacy)?,
    });
    if cache.len() >= 4 {
        cache.remove(0);
    }
    cache.push((claims.clone(), v.clone()));
    Ok(v)
}

struct Vocabulary {
    federation: EntityTypeName,
    namespace: EntityTypeName,
    service_account: EntityTypeName,
    oidc_subject: EntityTypeName,
    spiffe_workload: EntityTypeName,
    store: EntityTypeName,
    remote_key: EntityTypeName,
    generator: EntityTypeName,
    generator_states: EntityTypeName,
    /// In the order of [`Action::ALL`].
    actions: [EntityUid; Action::ALL.len()],
}

impl Vocabulary {
    fn new() -> Option<Self> {
        let ty = |name: &str| EntityTypeName::from_str(&compile::qualified(name)).ok();
        let action_type = ty("Action")?;
        let action = |a: Action| {
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()))
        };
        Some(Vocabulary {
            federation: ty("Federation")?,
            namespace: ty("Namespace")?,
            service_account: ty("ServiceAccount")?,
            oidc_subject: ty("OidcSubject")?,
            spiffe_workload: ty("SpiffeWorkload")?,
            store: ty("Store")?,
            remote_key: ty("RemoteKey")?,
            generator: ty("Generator")?,
            generator_states: ty("GeneratorStates")?,
            actions: Action::ALL.map(action),
        })
    }

    fn action(&self, action: Action) -> EntityUid {
        let i = match action {
            Action::Get => 0,
            Action::Find => 1,
            Action::Generate => 2,
            Action::Revoke => 3,
            Action::RevokeStates => 4,
            Action::Renew => 5,
        };
        self.actions[i].clone()
    }
}

/// Why a request could not be put to Cedar (it is then denied).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the Cedar vocabulary did not initialise")]
    Vocabulary,
    #[error("action {0} does not apply to this kind of resource")]
    Mismatch(Action),
    #[error("building entities: {0}")]
    Entities(String),
    #[error("building the request: {0}")]
    Request(String),
}

/// Policy sets by [`Scope`].
type Scoped = [PolicySet; Scope::COUNT];

/// SHA-256 of an Authorization's name and spec, or of a shard's members.
type Digest = [u8; 32];

/// An Authorization that passed [`compile::check`]: indexed by the engine, compiled into
/// Cedar policies when a caller needs them. Immutable; shared (`Arc`) between the snapshot
/// builder and successive engines, so an unchanged object is neither checked nor compiled
/// again.
#[derive(Debug)]
pub struct CheckedAuthorization {
    name: String,
    origin: String,
    /// The spec as compiled ([`canonical_spec`]).
    spec: AuthorizationSpec,
    shape: compile::Shape,
    digest: Digest,
}

impl CheckedAuthorization {
    /// Checks one Authorization. Errors name the field (see [`compile::CompileError`]);
    /// the object is then `Authorization/<name>` from `origin`.
    pub fn check(source: &AuthorizationSource) -> Result<Self, PolicyLoadError> {
        let spec = canonical_spec(&source.spec).into_owned();
        let shape = compile::check(&spec).map_err(|e| PolicyLoadError {
            origin: source.origin.clone(),
            object: format!("Authorization/{}", source.name),
            reason: bounded(e.to_string()),
        })?;
        let mut h = Sha256::new();
        h.update((source.name.len() as u64).to_be_bytes());
        h.update(source.name.as_bytes());
        // Struct fields serialize in declaration order and maps are BTreeMaps: one
        // spec, one byte string.
        h.update(serde_json::to_vec(&spec).unwrap_or_default());
        Ok(CheckedAuthorization {
            name: source.name.clone(),
            origin: source.origin.clone(),
            spec,
            shape,
            digest: h.finalize().into(),
        })
    }

    /// The spec as compiled (canonical form).
    pub fn spec(&self) -> &AuthorizationSpec {
        &self.spec
    }

    /// The object name (policy ids are `authorization/<name>/…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The kind of caller its policies grant (`principal is …`): `ServiceAccount` for a
    /// `federationRef.kind` of `KubernetesFederation` (or empty), `OidcSubject` for an OIDC
    /// federation kind.
    pub fn principal_kind(&self) -> crate::authn::PrincipalKind {
        self.shape.principal
    }

    /// Number of policies it compiles to (0 to 4).
    pub fn policy_count(&self) -> usize {
        self.shape.policies
    }

    /// The `(issuer, subject)` its policies match (`subject` may be a glob with `*`).
    /// Always `Some` for a checked Authorization (checking requires both).
    pub fn subject(&self) -> Option<(&str, &str)> {
        compile::subject_of(self.spec.subject.as_ref()).ok()
    }
}

/// One policy in force ([`PolicyEngine::listing`]).
#[derive(Debug, Clone)]
pub struct ListedPolicy {
    /// Its id, as decisions report it.
    pub id: String,
    /// Where it came from.
    pub source: PolicySource,
    /// The policy (its Cedar id is `id`).
    pub policy: Policy,
}

/// Where a policy in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// Compiled from the Authorization `name` (read from `origin`, when known).
    Authorization {
        /// The Authorization's name.
        name: String,
        /// Where it was read from (`file#document`, or `kubernetes`).
        origin: Option<String>,
    },
    /// A hand-written `.cedar` file.
    File {
        /// Its path.
        path: String,
    },
}

/// Compiled shards by the digest of their Authorizations, shared by successive engines.
/// Bounded by the number of policies held (a shard weighs its policy count, at least 1).
#[derive(Clone)]
pub struct PolicyCache {
    shards: moka::sync::Cache<Digest, Arc<Scoped>>,
}

impl PolicyCache {
    /// Default bound: policies held compiled at once.
    pub const DEFAULT_MAX_POLICIES: u64 = 20_000;

    /// A cache holding at most `max_policies` compiled policies.
    pub fn new(max_policies: u64) -> Self {
        PolicyCache {
            shards: moka::sync::Cache::builder()
                .max_capacity(max_policies)
                .weigher(|_, sets: &Arc<Scoped>| {
                    let n: usize = sets.iter().map(PolicySet::num_of_policies).sum();
                    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// The compiled shard of `members` (compiled now on a miss; concurrent misses of one
    /// shard compile it once).
    fn get(&self, shard: &Shard) -> Arc<Scoped> {
        self.shards
            .get_with(shard.digest, || Arc::new(compile_shard(&shard.members)))
    }
}

impl Default for PolicyCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_POLICIES)
    }
}

impl fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyCache")
            .field("shards", &self.shards.entry_count())
            .finish()
    }
}

/// Authorizations that a caller matches together: one exact subject of a federation, or
/// every glob subject of a federation.
#[derive(Default)]
struct Shard {
    members: Vec<Arc<CheckedAuthorization>>,
    /// Of the members' digests (the member's own for one): the cache key.
    digest: Digest,
}

impl Shard {
    fn seal(&mut self) {
        self.digest = match self.members.as_slice() {
            [one] => one.digest,
            members => {
                let mut digests: Vec<&Digest> = members.iter().map(|m| &m.digest).collect();
                digests.sort_unstable();
                let mut h = Sha256::new();
                for d in digests {
                    h.update(d);
                }
                h.finalize().into()
            }
        };
    }
}

/// Compiles a shard's Authorizations. Compiled policies are not validated here: they are
/// permits built by one compiler whose output validates against the schema in strict mode
/// (tested over random Authorizations, `compiled_policies_of_random_authorizations_validate`),
/// and a permit that failed to evaluate would only fail to permit. Validating on the
/// request path would double the cost of a subject's first decision. One that does not
/// compile (it passed `check`, so a compiler bug) grants nothing and is logged.
fn compile_shard(members: &[Arc<CheckedAuthorization>]) -> Scoped {
    let mut sets: Scoped = Default::default();
    for member in members {
        let compiled = compile::compile(&member.name, &member.spec).map_err(|e| e.to_string());
        match compiled {
            Ok(c) => {
                for (scope, policy) in c.policies {
                    if let Err(e) = sets[scope as usize].add(policy) {
                        tracing::error!(authorization = %member.name, origin = %member.origin, error = %e, "compiled policy not added; the Authorization grants less");
                    }
                }
            }
            Err(reason) => tracing::error!(
                authorization = %member.name,
                origin = %member.origin,
                %reason,
                "Authorization passed its checks but did not compile; it grants nothing"
            ),
        }
    }
    sets
}

/// Compiled Authorization permits of one federation.
#[derive(Default)]
struct FederationShard {
    /// By exact subject, compiled when first asked.
    exact: HashMap<String, Shard>,
    /// Authorizations with a glob subject, compiled when the engine is built.
    glob: Option<Arc<Scoped>>,
    /// The Authorizations of `glob` (shared, not copied), for [`PolicyEngine::listing`].
    glob_members: Vec<Arc<CheckedAuthorization>>,
}

/// Compiled and hand-written policies, ready to decide. Immutable once built (the compiled
/// shards live in the shared [`PolicyCache`]); cheap to share behind an `Arc`.
pub struct PolicyEngine {
    authorizer: Authorizer,
    /// Hand-written policies, evaluated for every request.
    global: PolicySet,
    /// Ids of the hand-written policies in load order (file, then place in the file),
    /// with the file each came from: for [`PolicyEngine::listing`].
    hand_written: Vec<(String, String)>,
    /// Authorizations by federation name.
    federations: HashMap<String, FederationShard>,
    policy_count: usize,
    cache: PolicyCache,
    /// Decisions already made by this engine (its policies never change: a changed
    /// Authorization or policy file builds a new engine, with an empty cache).
    decisions: moka::sync::Cache<DecisionKey, Decision>,
    /// Requests evaluated by Cedar (decision cache misses), for tests and diagnostics.
    evaluations: std::sync::atomic::AtomicU64,
    /// Policy files loaded with a warning (valid for ServiceAccount callers only).
    load_warnings: Vec<PolicyLoadError>,
    /// Whether any policy may read `context` (its text names it): only then are the
    /// request context's source address and time part of [`DecisionKey`], so engines
    /// whose policies never read them keep one cache entry per request shape.
    reads_context: bool,
}

/// What a request carries besides principal, action and resource: the source of Cedar's
/// `context` record (`RequestContext` in `schemas/esi.cedarschema`). The pod and namespace
/// of the record come from the principal (a ServiceAccount token's `kubernetes.io` claims);
/// these are the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestContext {
    /// The TCP peer of the HTTPS connection (`context.sourceAddress`); `None` when unknown
    /// (tooling without `--source-address`). Never taken from `X-Forwarded-For`.
    pub source_address: Option<IpAddr>,
    /// When the request is decided (`context.time`), in whole seconds since the Unix epoch,
    /// UTC: the granularity policies can observe, and so the cache's.
    pub time: i64,
}

impl RequestContext {
    /// The context of a request decided now, from `source_address`.
    pub fn now(source_address: Option<IpAddr>) -> Self {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        RequestContext {
            source_address,
            time,
        }
    }
}

/// Bytes of decisions one engine remembers (keys' and policy ids' text plus a fixed
/// overhead per entry; least recently and frequently used go first): 8 MiB, about 16k
/// ordinary entries.
pub const DECISION_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// A request whose key weighs more than this is decided but not remembered: keys are
/// caller-chosen text (a store or key name that does not exist is decided as written), so
/// large ones must not crowd out the rest or hold memory.
pub const DECISION_CACHE_MAX_ENTRY_BYTES: u32 = 2 * 1024;

/// Fixed cost counted per cached decision (the entry, the key's and decision's headers).
const DECISION_ENTRY_OVERHEAD: u32 = 256;

/// Everything a decision depends on besides the policies: the Cedar request and its
/// entities are built from this key and the [`RequestContext`] ([`build_request`]); the
/// context is a field of the key whenever a policy may read it, so two requests with equal
/// keys are decided alike, and the cache can never answer one with the other's decision.
/// Anything a future request carries must be a field here (or of [`RequestContext`]).
///
/// Equality and hashing go through [`KeyRef`], so a cached decision is found from borrowed
/// inputs ([`DecisionKey::lookup`]) without copying them; the two agree by construction.
#[derive(Debug, Clone)]
struct DecisionKey {
    federation: String,
    issuer: String,
    subject: String,
    /// The principal's kind and what it knows (ServiceAccount and pod, or OIDC claims):
    /// two principals of different kinds never share a key.
    principal: Principal,
    action: Action,
    /// Canonical form ([`Resource::canonical`]).
    resource: Resource,
    /// The request context, when the engine's policies may read it ([`PolicyEngine`]'s
    /// `reads_context`); `None` otherwise (no policy can tell two contexts apart).
    context: Option<RequestContext>,
}

/// A [`DecisionKey`]'s fields, borrowed: what equality and hashing of keys compare.
#[derive(PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    federation: &'a str,
    issuer: &'a str,
    subject: &'a str,
    principal: &'a Principal,
    action: Action,
    resource: &'a Resource,
    context: Option<RequestContext>,
}

impl<'a> KeyRef<'a> {
    fn new(
        identity: &'a Identity,
        action: Action,
        resource: &'a Resource,
        context: Option<RequestContext>,
    ) -> Self {
        KeyRef {
            federation: &identity.federation,
            issuer: &identity.issuer,
            subject: &identity.subject,
            principal: &identity.principal,
            action,
            resource,
            context,
        }
    }
}

/// Anything that reads as a [`KeyRef`]: the cache's keys and lookups alike.
trait AsKeyRef {
    fn key_ref(&self) -> KeyRef<'_>;
}

impl AsKeyRef for DecisionKey {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            federation: &self.federation,
            issuer: &self.issuer,
            subject: &self.subject,
            principal: &self.principal,
            action: self.action,
            resource: &self.resource,
            context: self.context,
        }
    }
}

impl AsKeyRef for KeyRef<'_> {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef { ..*self }
    }
}

impl PartialEq for dyn AsKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for dyn AsKeyRef + '_ {}

impl std::hash::Hash for dyn AsKeyRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

impl PartialEq for DecisionKey {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for DecisionKey {}

impl std::hash::Hash for DecisionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

impl<'a> std::borrow::Borrow<dyn AsKeyRef + 'a> for DecisionKey {
    fn borrow(&self) -> &(dyn AsKeyRef + 'a) {
        self
    }
}

impl DecisionKey {
    /// What remembering `decision` under this key costs, in bytes (approximate).
    fn weight(&self, decision: &Decision) -> u32 {
        let resource = match &self.resource {
            Resource::RemoteKey { store, key } => store.len() + key.len(),
            Resource::Store { store } => store.len(),
            Resource::Generator {
                namespace,
                kind,
                name,
            } => namespace.len() + kind.len() + name.len(),
            Resource::GeneratorStates { namespace } => namespace.len(),
        };
        let text = self.federation.len()
            + self.issuer.len()
            + self.subject.len()
            + self.principal.text_len()
            + resource
            + decision.policy_ids.iter().map(String::len).sum::<usize>();
        u32::try_from(text)
            .unwrap_or(u32::MAX)
            .saturating_add(DECISION_ENTRY_OVERHEAD)
    }

    fn new(
        identity: &Identity,
        action: Action,
        resource: Resource,
        context: Option<RequestContext>,
    ) -> Self {
        DecisionKey {
            federation: identity.federation.clone(),
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            principal: identity.principal.clone(),
            action,
            resource,
            context,
        }
    }
}

fn decision_cache() -> moka::sync::Cache<DecisionKey, Decision> {
    moka::sync::Cache::builder()
        .weigher(|key: &DecisionKey, decision: &Decision| key.weight(decision))
        .max_capacity(DECISION_CACHE_BYTES)
        .build()
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.policy_count)
            .field("hand_written", &self.global.num_of_policies())
            .field("federations", &self.federations.len())
            .finish()
    }
}

impl Default for PolicyEngine {
    fn default() -> Self {
        Self::empty()
    }
}

/// Accumulates what is taken while building, so hand-written ids stay unique.
struct Builder {
    ids: HashMap<String, String>,
    engine: PolicyEngine,
    /// What policy files are validated with (`None`: the schema did not parse).
    validators: Option<Arc<Validators>>,
}

impl PolicyEngine {
    /// An engine with no policy: it denies everything.
    pub fn empty() -> Self {
        PolicyEngine {
            authorizer: Authorizer::new(),
            global: PolicySet::new(),
            hand_written: Vec::new(),
            federations: HashMap::new(),
            policy_count: 0,
            cache: PolicyCache::new(1),
            decisions: decision_cache(),
            evaluations: std::sync::atomic::AtomicU64::new(0),
            load_warnings: Vec::new(),
            reads_context: false,
        }
    }

    /// Checks every Authorization and compiles every policy file. Good ones are kept; each
    /// bad one yields an error (with origin and reason) and contributes no policy, as does
    /// a second Authorization of one name. The caller decides: at startup it uses the good
    /// ones; on reload any error keeps the last good form of that object.
    pub fn build(
        authorizations: &[AuthorizationSource],
        policy_files: &[PolicyFile],
    ) -> (PolicyEngine, Vec<PolicyLoadError>) {
        let mut errors = Vec::new();
        let mut checked = Vec::new();
        let mut names: HashMap<&str, &str> = HashMap::new();
        for source in authorizations {
            if let Some(previous) = names.get(source.name.as_str()) {
                errors.push(PolicyLoadError {
                    origin: source.origin.clone(),
                    object: format!("Authorization/{}", source.name),
                    reason: format!(
                        "policy ids \"authorization/{}/…\" are already used by the Authorization from {previous} (duplicate Authorization name?)",
                        source.name
                    ),
                });
                continue;
            }
            match CheckedAuthorization::check(source) {
                Ok(c) => {
                    names.insert(&source.name, &source.origin);
                    checked.push(Arc::new(c));
                }
                Err(e) => errors.push(e),
            }
        }
        let (engine, mut file_errors) =
            Self::build_checked(checked, policy_files, &PolicyCache::default());
        errors.append(&mut file_errors);
        (engine, errors)
    }

    /// Indexes checked Authorizations (names unique: the snapshot builder sees to it) and
    /// compiles the policy files; errors are the files'. Compiled shards come from, and go
    /// to, `cache`.
    pub fn build_checked(
        authorizations: Vec<Arc<CheckedAuthorization>>,
        policy_files: &[PolicyFile],
        cache: &PolicyCache,
    ) -> (PolicyEngine, Vec<PolicyLoadError>) {
        Self::build_checked_with_claims(authorizations, policy_files, cache, &BTreeSet::new())
    }

    /// [`PolicyEngine::build_checked`], with policy files validated against the schema in
    /// which `principal.claims` of an `Esi::OidcSubject` holds `claims` (the names the
    /// loaded OIDC federations hand to policies, each optional).
    pub fn build_checked_with_claims(
        authorizations: Vec<Arc<CheckedAuthorization>>,
        policy_files: &[PolicyFile],
        cache: &PolicyCache,
        claims: &BTreeSet<String>,
    ) -> (PolicyEngine, Vec<PolicyLoadError>) {
        let mut errors = Vec::new();
        if let Err(e) = SCHEMA.as_ref() {
            errors.push(PolicyLoadError {
                origin: "schemas/esi.cedarschema".to_owned(),
                object: "schema".to_owned(),
                reason: bounded(format!("the built-in schema does not parse: {e}")),
            });
        }
        let validators = match validators(claims) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(PolicyLoadError {
                    origin: "schemas/esi.cedarschema".to_owned(),
                    object: "schema".to_owned(),
                    reason: bounded(format!(
                        "the schema with the federations' claims does not build: {e}"
                    )),
                });
                None
            }
        };
        let mut b = Builder {
            ids: HashMap::new(),
            engine: PolicyEngine {
                cache: cache.clone(),
                ..PolicyEngine::empty()
            },
            validators,
        };
        let mut globs: HashMap<String, Shard> = HashMap::new();
        for a in authorizations {
            if a.spec.when.is_some() {
                // Compiled now, to validate the condition against the schema: a bad one
                // refuses this Authorization (it grants nothing), never a broader grant.
                if let Err(reason) = b.validate_authorization(&a) {
                    errors.push(PolicyLoadError {
                        origin: a.origin.clone(),
                        object: format!("Authorization/{}", a.name),
                        reason: bounded(reason),
                    });
                    continue;
                }
                b.engine.reads_context = true;
            }
            b.engine.policy_count += a.shape.policies;
            match &a.shape.subject {
                SubjectMatch::Exact(subject) => {
                    let shard = b
                        .engine
                        .federations
                        .entry(a.shape.federation.clone())
                        .or_default();
                    shard
                        .exact
                        .entry(subject.clone())
                        .or_default()
                        .members
                        .push(a);
                }
                SubjectMatch::Glob => globs
                    .entry(a.shape.federation.clone())
                    .or_default()
                    .members
                    .push(a),
            }
        }
        for shard in b.engine.federations.values_mut() {
            for exact in shard.exact.values_mut() {
                exact.seal();
            }
        }
        for (federation, mut shard) in globs {
            shard.seal();
            let compiled = cache.get(&shard);
            let entry = b.engine.federations.entry(federation).or_default();
            entry.glob = Some(compiled);
            entry.glob_members = shard.members;
        }
        for file in policy_files {
            if let Err(reason) = b.add_file(file) {
                errors.push(PolicyLoadError {
                    origin: file.path.display().to_string(),
                    object: "policy file".to_owned(),
                    reason: bounded(reason),
                });
            }
        }
        let engine = b.engine;
        tracing::debug!(
            policies = engine.policy_count,
            hand_written = engine.global.num_of_policies(),
            federations = engine.federations.len(),
            rejected = errors.len(),
            "policy engine built"
        );
        (engine, errors)
    }

    /// Policy files loaded with a warning: valid for ServiceAccount callers only (they
    /// read an attribute other principal types lack without `principal is …`).
    pub fn load_warnings(&self) -> &[PolicyLoadError] {
        &self.load_warnings
    }

    /// Number of policies in force.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Every policy in force, with where it came from: the compiled Authorizations by
    /// name (each in the order of [`compile`]'s table), then the hand-written policies in
    /// load order. Compiles every shard not compiled yet (through the shared cache), so it
    /// costs what deciding for every caller would: for tooling (`esi-server policy`), not
    /// for the request path. The ids are those [`PolicyEngine::decide`] reports.
    pub fn listing(&self) -> Vec<ListedPolicy> {
        let mut origins: HashMap<&str, &str> = HashMap::new();
        for shard in self.federations.values() {
            let members = shard.exact.values().flat_map(|s| &s.members);
            for m in members.chain(&shard.glob_members) {
                origins.insert(&m.name, &m.origin);
            }
        }
        let mut listed = Vec::new();
        let mut compiled: HashMap<String, Policy> = HashMap::new();
        for shard in self.federations.values() {
            let sets = shard
                .exact
                .values()
                .map(|s| self.cache.get(s))
                .chain(shard.glob.iter().cloned());
            for set in sets {
                for scoped in set.iter() {
                    for p in scoped.policies() {
                        compiled.insert(AsRef::<str>::as_ref(p.id()).to_owned(), p.clone());
                    }
                }
            }
        }
        let mut ids: Vec<String> = compiled.keys().cloned().collect();
        // `authorization/<name>/<part>`: by name, then by the compiler's order of parts.
        let rank = |part: &str| match part {
            "stores" => 0,
            "remote-keys" => 1,
            "generators" => 2,
            "states" => 3,
            _ => 4,
        };
        ids.sort_by(|a, b| {
            let split = |id: &str| {
                let rest = id.strip_prefix(RESERVED_PREFIX).unwrap_or(id);
                match rest.rsplit_once('/') {
                    Some((name, part)) => (name.to_owned(), rank(part)),
                    None => (rest.to_owned(), 4),
                }
            };
            split(a).cmp(&split(b))
        });
        for id in ids {
            let Some(policy) = compiled.remove(&id) else {
                continue;
            };
            let name = id
                .strip_prefix(RESERVED_PREFIX)
                .and_then(|rest| rest.rsplit_once('/'))
                .map_or(id.as_str(), |(name, _)| name)
                .to_owned();
            let origin = origins.get(name.as_str()).map(|o| (*o).to_owned());
            listed.push(ListedPolicy {
                id,
                source: PolicySource::Authorization { name, origin },
                policy,
            });
        }
        // Hand-written policies by id (unique across files), not by file path or position:
        // renaming or reordering `.cedar` files leaves the listing byte-identical.
        let mut hand_written: Vec<&(String, String)> = self.hand_written.iter().collect();
        hand_written.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, path) in hand_written {
            if let Some(policy) = self.global.policy(&PolicyId::new(id)) {
                listed.push(ListedPolicy {
                    id: id.clone(),
                    source: PolicySource::File { path: path.clone() },
                    policy: policy.clone(),
                });
            }
        }
        listed
    }

    /// Requests this engine evaluated with Cedar, i.e. not answered from its decision cache.
    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Decides one request, and logs and counts the decision. A request equal in every
    /// input to one this engine decided before (same principal, token attributes, action and
    /// canonical resource: [`DecisionKey`]) gets that decision without evaluating again;
    /// each decision is still logged and counted.
    ///
    /// Decided now, with no source address: for tooling and internal callers; requests
    /// from the network go through [`PolicyEngine::decide_in`] with their peer address.
    pub fn decide(&self, identity: &Identity, action: Action, resource: &Resource) -> Decision {
        self.decide_in(identity, action, resource, &RequestContext::now(None))
    }

    /// Decides one request in `context` (Cedar's `context` record: source address, time,
    /// and the principal's pod and namespace), and logs and counts the decision. The
    /// context is part of the cache key whenever a policy of this engine may read it, so a
    /// decision is never reused for another source address or second.
    pub fn decide_in(
        &self,
        identity: &Identity,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Decision {
        // Decided and logged in canonical form only (a ClusterGenerator under whatever
        // namespace a URL named is the one ClusterGenerator).
        let canonical = resource.canonical();
        let keyed = self.reads_context.then_some(*context);
        let lookup = KeyRef::new(identity, action, &canonical, keyed);
        let decision = match self.decisions.get(&lookup as &dyn AsKeyRef) {
            Some(decision) => decision,
            None => {
                let key = DecisionKey::new(identity, action, canonical.clone().into_owned(), keyed);
                let (decision, warned) = self.decide_uncached(&key, context);
                // A decision that logged a warning (a policy failed to evaluate, the request
                // could not be built) is made again each time, so each such request leaves
                // its warning in the audit log.
                if !warned && key.weight(&decision) <= DECISION_CACHE_MAX_ENTRY_BYTES {
                    self.decisions.insert(key, decision.clone());
                }
                decision
            }
        };
        let outcome = if decision.allowed { "allow" } else { "deny" };
        let principal_id = identity.canonical();
        let audited = crate::audit::record_decision(&crate::audit::DecisionRecord {
            federation: &identity.federation,
            principal: &identity.subject,
            principal_type: identity.kind().as_str(),
            principal_id: &principal_id,
            action: action.as_str(),
            resource: &canonical,
            source_address: context.source_address,
            allowed: decision.allowed,
            policies: &decision.policy_ids,
        });
        // The operational log's line: what it shows without an audit log, or beside it
        // when RUST_LOG asks for `esi::decision` (the audit layer skips events carrying
        // `in_audit_log`, so the audit log never holds a line twice). Filtered out by its
        // callsite otherwise, before any field is formatted.
        tracing::info!(
            target: "esi::decision",
            federation = %identity.federation,
            principal = %identity.subject,
            principal_type = identity.kind().as_str(),
            principal_id = %principal_id,
            action = %action,
            resource = %canonical,
            source_address = context.source_address.map(tracing::field::display),
            decision = outcome,
            policies = ?decision.policy_ids,
            in_audit_log = audited,
        );
        METRICS
            .decisions
            .with_label_values(&[action.as_str(), outcome])
            .inc();
        decision
    }

    /// Evaluates `key` with Cedar; `true` beside the decision when a warning was logged.
    fn decide_uncached(&self, key: &DecisionKey, context: &RequestContext) -> (Decision, bool) {
        self.evaluations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (action, resource) = (key.action, &key.resource);
        match build_request(key, context) {
            Ok((request, entities)) => self.evaluate(key, Scope::of(resource), &request, &entities),
            Err(e) => {
                tracing::warn!(
                    target: "esi::decision",
                    error = %e,
                    action = %action,
                    resource = %resource,
                    "request denied before evaluation"
                );
                (
                    Decision {
                        allowed: false,
                        policy_ids: Vec::new(),
                    },
                    true,
                )
            }
        }
    }

    /// Evaluates the shards that can apply to this caller and combines them; `true` beside
    /// the decision when a policy failed to evaluate (a warning was logged).
    fn evaluate(
        &self,
        identity: &DecisionKey,
        scope: Scope,
        request: &Request,
        entities: &Entities,
    ) -> (Decision, bool) {
        let mut outcome = Outcome::default();
        if !self.global.is_empty() {
            let response = self
                .authorizer
                .is_authorized(request, &self.global, entities);
            outcome.absorb(&self.global, &response);
            // A satisfied (or failed) forbid settles it; no need to look further.
            if !outcome.forbids.is_empty() {
                return outcome.settle();
            }
        }
        for sets in self.shards_of(&identity.federation, &identity.subject) {
            let set = &sets[scope as usize];
            if !set.is_empty() {
                let response = self.authorizer.is_authorized(request, set, entities);
                outcome.absorb(set, &response);
            }
        }
        outcome.settle()
    }

    /// The compiled shards a caller of `federation` with `subject` can match: its exact
    /// subject's (compiled now if needed) and its federation's globs.
    fn shards_of(&self, federation: &str, subject: &str) -> Vec<Arc<Scoped>> {
        let Some(shard) = self.federations.get(federation) else {
            return Vec::new();
        };
        let exact = shard.exact.get(subject).map(|s| self.cache.get(s));
        exact
            .into_iter()
            .chain(shard.glob.iter().cloned())
            .collect()
    }

    /// Every Authorization in force (checked, compiled when needed), by name. For tooling
    /// (`esi-server policy lint|diff|report`): the objects behind the compiled policies.
    pub fn authorizations(&self) -> Vec<Arc<CheckedAuthorization>> {
        let mut all: Vec<Arc<CheckedAuthorization>> = self
            .federations
            .values()
            .flat_map(|shard| {
                let exact = shard.exact.values().flat_map(|s| s.members.iter());
                exact.chain(&shard.glob_members).cloned()
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// For tooling (`esi-server policy lint`): a view that answers which permits a request
    /// satisfies whatever the forbids say, which [`PolicyEngine::decide`] cannot tell (a
    /// satisfied forbid hides the permits). Built once per engine (it holds the
    /// hand-written permits apart); decisions are not cached, logged or counted.
    pub fn permit_view(&self) -> PermitView<'_> {
        let mut permits = PolicySet::new();
        for p in self.global.policies() {
            if p.effect() == Effect::Permit {
                // Ids are unique in `global`, so adding cannot fail.
                let _ = permits.add(p.clone());
            }
        }
        PermitView {
            engine: self,
            permits,
        }
    }
}

/// The permits a request satisfies, forbids aside ([`PolicyEngine::permit_view`]).
pub struct PermitView<'e> {
    engine: &'e PolicyEngine,
    /// The hand-written permits (the compiled policies are all permits).
    permits: PolicySet,
}

impl PermitView<'_> {
    /// Ids of the permits (hand-written and compiled) that `identity` doing `action` on
    /// `resource` satisfies, sorted; empty for a request that cannot be built (as
    /// [`PolicyEngine::decide`] denies it). A permit that fails to evaluate is not satisfied.
    pub fn satisfied(
        &self,
        identity: &Identity,
        action: Action,
        resource: &Resource,
    ) -> Vec<String> {
        let key = DecisionKey::new(identity, action, resource.canonical().into_owned(), None);
        let Ok((request, entities)) = build_request(&key, &RequestContext::now(None)) else {
            return Vec::new();
        };
        let scope = Scope::of(&key.resource);
        let shards = self.engine.shards_of(&key.federation, &key.subject);
        let sets = std::iter::once(&self.permits).chain(shards.iter().map(|s| &s[scope as usize]));
        let mut ids = Vec::new();
        for set in sets.filter(|s| !s.is_empty()) {
            let response = self
                .engine
                .authorizer
                .is_authorized(&request, set, &entities);
            if response.decision() == CedarDecision::Allow {
                ids.extend(response.diagnostics().reason().map(ToString::to_string));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Permits and forbids that determined a decision, across shards.
#[derive(Default)]
struct Outcome {
    permits: Vec<String>,
    forbids: Vec<String>,
    /// A policy failed to evaluate (and a warning was logged).
    warned: bool,
}

impl Outcome {
    fn absorb(&mut self, set: &PolicySet, response: &Response) {
        let allowed = response.decision() == CedarDecision::Allow;
        for id in response.diagnostics().reason() {
            match set.policy(id).map(Policy::effect) {
                Some(Effect::Permit) if allowed => {
                    self.permits.push(AsRef::<str>::as_ref(id).to_owned())
                }
                Some(Effect::Permit) => {}
                // A satisfied forbid (or an id we cannot place: fail closed).
                _ => self.forbids.push(AsRef::<str>::as_ref(id).to_owned()),
            }
        }
        for error in response.diagnostics().errors() {
            let AuthorizationError::PolicyEvaluationError(e) = error;
            let id = e.policy_id();
            let is_permit = set.policy(id).map(Policy::effect) == Some(Effect::Permit);
            self.warned = true;
            tracing::warn!(
                target: "esi::decision",
                policy = %id,
                error = %e.inner(),
                effect = if is_permit { "permit" } else { "forbid" },
                "policy failed to evaluate; treated as {}",
                if is_permit { "not satisfied" } else { "satisfied (deny)" }
            );
            // Cedar skips a policy that errors; for a forbid that would fail open.
            if !is_permit {
                self.forbids.push(AsRef::<str>::as_ref(id).to_owned());
            }
        }
    }

    /// The decision, and whether a policy failed to evaluate.
    fn settle(self) -> (Decision, bool) {
        let warned = self.warned;
        (self.finish(), warned)
    }

    fn finish(self) -> Decision {
        let (allowed, mut ids) = if self.forbids.is_empty() {
            (!self.permits.is_empty(), self.permits)
        } else {
            (false, self.forbids)
        };
        ids.sort_unstable();
        ids.dedup();
        Decision {
            allowed,
            policy_ids: ids,
        }
    }
}

/// Cedar's `context` record (`RequestContext` in `schemas/esi.cedarschema`): `pod` and
/// `namespace` from a ServiceAccount principal, `sourceAddress` when known, `time` always.
fn cedar_context(principal: &Principal, context: &RequestContext) -> Result<Context, RequestError> {
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(4);
    // A SPIFFE workload whose path names a Kubernetes workload has its pod and namespace.
    if let Some(sa) = principal.workload() {
        if let Some(pod) = &sa.pod_name {
            pairs.push(("pod".to_owned(), string(pod)));
        }
        pairs.push(("namespace".to_owned(), string(&sa.namespace)));
    }
    if let Some(address) = context.source_address {
        pairs.push((
            "sourceAddress".to_owned(),
            RestrictedExpression::new_ip(address.to_string()),
        ));
    }
    let time = jiff::Timestamp::from_second(context.time)
        .map_err(|e| RequestError::Request(format!("request time out of range: {e}")))?;
    pairs.push((
        "time".to_owned(),
        RestrictedExpression::new_datetime(time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
    ));
    Context::from_pairs(pairs).map_err(|e| RequestError::Request(e.to_string()))
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn entity(
    uid: EntityUid,
    attrs: impl IntoIterator<Item = (&'static str, RestrictedExpression)>,
    parents: impl IntoIterator<Item = EntityUid>,
) -> Result<Entity, RequestError> {
    Entity::new(
        uid,
        attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        parents.into_iter().collect(),
    )
    .map_err(|e| RequestError::Entities(e.to_string()))
}

/// The Cedar request and its (few) entities: principal + namespace + federation,
/// resource (+ its store).
fn build_request(
    key: &DecisionKey,
    context: &RequestContext,
) -> Result<(Request, Entities), RequestError> {
    let (identity, action, resource) = (key, key.action, &key.resource);
    if !action.applies_to(resource) {
        return Err(RequestError::Mismatch(action));
    }
    let v = VOCABULARY.as_ref().ok_or(RequestError::Vocabulary)?;
    let fed = identity.federation.as_str();
    let fed_uid = uid(&v.federation, fed);
    let mut entities = Vec::with_capacity(5);
    entities.push(Entity::new_no_attrs(fed_uid.clone(), HashSet::new()));
    let principal_uid = match &identity.principal {
        Principal::ServiceAccount(sa) => {
            let ns = sa.namespace.as_str();
            let ns_uid = uid(&v.namespace, &format!("{fed}/{ns}"));
            let sa_uid = uid(&v.service_account, &format!("{fed}/{ns}/{}", sa.name));
            let mut sa_attrs = vec![
                ("federation", string(fed)),
                ("issuer", string(&identity.issuer)),
                ("subject", string(&identity.subject)),
                ("namespace", string(ns)),
                ("name", string(&sa.name)),
            ];
            let optional = [
                ("uid", &sa.uid),
                ("podName", &sa.pod_name),
                ("podUid", &sa.pod_uid),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    sa_attrs.push((name, string(value)));
                }
            }
            entities.push(Entity::new_no_attrs(
                ns_uid.clone(),
                HashSet::from([fed_uid]),
            ));
            entities.push(entity(sa_uid.clone(), sa_attrs, [ns_uid])?);
            sa_uid
        }
        Principal::OidcSubject { claims } => {
            let subject_uid = uid(&v.oidc_subject, &format!("{fed}/{}", identity.subject));
            let claims = RestrictedExpression::new_record(
                claims.iter().map(|(k, v)| (k.clone(), string(v))),
            )
            .map_err(|e| RequestError::Entities(e.to_string()))?;
            let attrs = [
                ("federation", string(fed)),
                ("issuer", string(&identity.issuer)),
                ("subject", string(&identity.subject)),
                ("claims", claims),
            ];
            entities.push(entity(subject_uid.clone(), attrs, [fed_uid])?);
            subject_uid
        }
        Principal::SpiffeWorkload {
            trust_domain,
            path,
            kubernetes,
        } => {
            let workload_uid = uid(&v.spiffe_workload, &format!("{fed}/{}", identity.subject));
            let mut attrs = vec![
                ("federation", string(fed)),
                ("issuer", string(&identity.issuer)),
                ("subject", string(&identity.subject)),
                ("trustDomain", string(trust_domain)),
                ("path", string(path)),
            ];
            if let Some(sa) = kubernetes {
                attrs.push(("namespace", string(&sa.namespace)));
                attrs.push(("serviceAccount", string(&sa.name)));
                let optional = [
                    ("serviceAccountUid", &sa.uid),
                    ("podName", &sa.pod_name),
                    ("podUid", &sa.pod_uid),
                ];
                for (name, value) in optional {
                    if let Some(value) = value {
                        attrs.push((name, string(value)));
                    }
                }
            }
            entities.push(entity(workload_uid.clone(), attrs, [fed_uid])?);
            workload_uid
        }
    };

    let resource_uid = match resource {
        Resource::RemoteKey { store, key } => {
            let store_uid = uid(&v.store, store);
            entities.push(entity(store_uid.clone(), [("name", string(store))], [])?);
            let key_uid = uid(&v.remote_key, &format!("{store}/{key}"));
            entities.push(entity(
                key_uid.clone(),
                [("store", string(store)), ("key", string(key))],
                [store_uid],
            )?);
            key_uid
        }
        Resource::Store { store } => {
            let store_uid = uid(&v.store, store);
            entities.push(entity(store_uid.clone(), [("name", string(store))], [])?);
            store_uid
        }
        Resource::Generator {
            namespace,
            kind,
            name,
        } => {
            let gen_uid = uid(&v.generator, &format!("{namespace}/{kind}/{name}"));
            entities.push(entity(
                gen_uid.clone(),
                [
                    ("namespace", string(namespace)),
                    ("kind", string(kind)),
                    ("name", string(name)),
                ],
                [],
            )?);
            gen_uid
        }
        Resource::GeneratorStates { namespace } => {
            let states_uid = uid(&v.generator_states, namespace);
            entities.push(entity(
                states_uid.clone(),
                [("namespace", string(namespace))],
                [],
            )?);
            states_uid
        }
    };
    let entities = Entities::from_entities(entities, None)
        .map_err(|e| RequestError::Entities(e.to_string()))?;
    let request = Request::new(
        principal_uid,
        v.action(action),
        resource_uid,
        cedar_context(&identity.principal, context)?,
        None,
    )
    .map_err(|e| RequestError::Request(e.to_string()))?;
    Ok((request, entities))
}

impl Builder {
    /// Compiles `a` and validates its policies against the schema (its `spec.when`).
    fn validate_authorization(&self, a: &CheckedAuthorization) -> Result<(), String> {
        let compiled = compile::compile(&a.name, &a.spec).map_err(|e| e.to_string())?;
        let mut set = PolicySet::new();
        for (_, policy) in compiled.policies {
            set.add(policy).map_err(|e| e.to_string())?;
        }
        self.validate(&set, None)
            .map(|_| ())
            .map_err(|e| format!("spec.when: {e}"))
    }

    /// Claims `id` for `owner`, or says who already has it.
    fn claim(&mut self, id: &str, owner: &str) -> Result<(), String> {
        if let Some(previous) = self.ids.get(id) {
            return Err(format!(
                "policy id {id:?} is already used by {previous}; policy ids must be unique"
            ));
        }
        self.ids.insert(id.to_owned(), owner.to_owned());
        Ok(())
    }

    /// Validates a policy file's set: `Ok(None)` when valid; `Ok(Some(warning))` when valid
    /// only for ServiceAccount principals (see [`Validators::service_accounts_only`]).
    fn validate(&self, set: &PolicySet, text: Option<&str>) -> Result<Option<String>, String> {
        let validators = self
            .validators
            .as_ref()
            .ok_or_else(|| "no schema to validate against".to_owned())?;
        let result = validators.full.validate(set, ValidationMode::Strict);
        if result.validation_passed() {
            return Ok(None);
        }
        let messages: Vec<String> = result
            .validation_errors()
            .map(|e| describe(e, text))
            .collect();
        // Only a policy that applies to ServiceAccounts may fall back: one scoped to
        // another principal type is impossible under the ServiceAccount-only schema, and
        // passes it vacuously.
        let failed: HashSet<&PolicyId> =
            result.validation_errors().map(|e| e.policy_id()).collect();
        let legacy = validators
            .service_accounts_only
            .validate(set, ValidationMode::Strict);
        let vacuous = legacy.validation_warnings().any(|w| {
            matches!(
                w,
                cedar_policy::ValidationWarning::ImpossiblePolicy(_)
                    | cedar_policy::ValidationWarning::InvalidActionApplication(_)
            ) && failed.contains(w.policy_id())
        });
        if legacy.validation_passed() && !vacuous {
            return Ok(Some(format!(
                "valid for ServiceAccount callers only (loaded): {}. For another kind of caller these policies fail to evaluate (a forbid then denies, a permit does not apply); scope them with `principal is Esi::ServiceAccount`",
                messages.join("; ")
            )));
        }
        Err(format!(
            "does not validate against the schema: {}",
            messages.join("; ")
        ))
    }

    fn add_file(&mut self, file: &PolicyFile) -> Result<(), String> {
        super::check_nesting(&file.text, super::MAX_NESTING).map_err(|e| e.to_string())?;
        let parsed = PolicySet::from_str(&file.text).map_err(|errors| {
            let messages: Vec<String> = errors
                .iter()
                .map(|e| describe(e, Some(&file.text)))
                .collect();
            format!("does not parse: {}", messages.join("; "))
        })?;
        if parsed.num_of_templates() > 0 {
            return Err(
                "templates (policies with ?principal/?resource slots) are not supported".to_owned(),
            );
        }
        let numbered = in_file_order(&parsed);

        let stem = file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".to_owned());
        let mut set = PolicySet::new();
        let mut seen = HashSet::new();
        for (index, policy) in numbered.iter().enumerate() {
            let id = match policy.annotation("id") {
                Some("") => return Err(format!("policy #{index} has an empty @id")),
                Some(id) if !is_plain_policy_id(id) => {
                    return Err(format!(
                        "policy #{index}: @id must be 1 to {MAX_POLICY_ID_BYTES} printable ASCII characters without spaces, quotes or backslashes (it is written as is in audit lines and listings)"
                    ));
                }
                Some(id) if id.to_ascii_lowercase().starts_with(RESERVED_PREFIX) => {
                    return Err(format!(
                        "policy #{index}: @id {id:?} uses the prefix {RESERVED_PREFIX:?}, reserved for compiled Authorizations"
                    ));
                }
                Some(id) => id.to_owned(),
                None => format!("{stem}/{index}"),
            };
            if !seen.insert(id.clone()) {
                return Err(format!("policy id {id:?} appears twice in this file"));
            }
            if let Some(previous) = self.ids.get(&id) {
                return Err(format!(
                    "policy id {id:?} is already used by {previous}; policy ids must be unique"
                ));
            }
            set.add(policy.new_id(PolicyId::new(&id)))
                .map_err(|e| e.to_string())?;
        }
        if let Some(warning) = self.validate(&set, Some(&file.text))? {
            self.engine.load_warnings.push(PolicyLoadError {
                origin: file.path.display().to_string(),
                object: "policy file".to_owned(),
                reason: bounded(warning),
            });
        }

        let owner = file.path.display().to_string();
        for policy in set.policies() {
            // Conservative: a policy that names `context` anywhere (even in a string) keys
            // the decision cache by context; one that does not cannot read it.
            if policy.to_string().contains("context") {
                self.engine.reads_context = true;
            }
            self.claim(policy.id().as_ref(), &owner)?;
            self.engine
                .global
                .add(policy.clone())
                .map_err(|e| e.to_string())?;
            self.engine
                .hand_written
                .push((AsRef::<str>::as_ref(policy.id()).to_owned(), owner.clone()));
            self.engine.policy_count += 1;
        }
        Ok(())
    }
}

/// The policies of a parsed `.cedar` text in the order the text holds them (Cedar's parser
/// names them `policy0`, `policy1`, … in that order; `PolicySet::policies` iterates in no
/// set order). The index in this order is the `<stem>/<index>` id of a policy without `@id`.
pub fn in_file_order(parsed: &PolicySet) -> Vec<&Policy> {
    let mut numbered: Vec<(usize, &Policy)> = parsed
        .policies()
        .map(|p| {
            let n = AsRef::<str>::as_ref(p.id())
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (n, p)
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    numbered.into_iter().map(|(_, p)| p).collect()
}

/// Bound on a hand-written policy's `@id`.
const MAX_POLICY_ID_BYTES: usize = 256;

/// Whether a hand-written `@id` is plain: printable ASCII without space, `"` or `\`, at most
/// [`MAX_POLICY_ID_BYTES`]. Cedar prints other ids escaped (`PolicyId`'s `Display`), so a
/// listing, an audit line and a reviewer would each see another spelling of the same id.
fn is_plain_policy_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_POLICY_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The Authorization as the engine compiles it: an `allowedGenerators` entry of a
/// cluster-scoped kind grants that one generator, so its `namespace` (required by the
/// CRD, meaningless for a cluster-scoped object) becomes
/// [`crate::generators::CLUSTER_SCOPE`], the namespace such a generator is decided under.
fn canonical_spec(spec: &AuthorizationSpec) -> std::borrow::Cow<'_, AuthorizationSpec> {
    let cluster = |g: &crate::resources::AllowedGenerator| {
        crate::generators::is_cluster_scoped(&g.kind) && !g.namespace.is_empty()
    };
    if !spec.allowed_generators.iter().any(cluster) {
        return std::borrow::Cow::Borrowed(spec);
    }
    let mut spec = spec.clone();
    for g in spec.allowed_generators.iter_mut().filter(|g| cluster(g)) {
        g.namespace = crate::generators::CLUSTER_SCOPE.to_owned();
    }
    std::borrow::Cow::Owned(spec)
}

/// A diagnostic as one line, prefixed with `line:column` when it points into `text`.
fn describe(diagnostic: &(impl Diagnostic + ?Sized), text: Option<&str>) -> String {
    let mut message = diagnostic.to_string();
    if let Some(help) = diagnostic.help() {
        message = format!("{message} (help: {help})");
    }
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    match (text, offset) {
        (Some(text), Some(offset)) => {
            let (line, column) = line_column(text, offset);
            format!("line {line}:{column}: {message}")
        }
        _ => message,
    }
}

/// 1-based line and column (in characters) of a byte offset of `text` (the offset is
/// clamped to the text and moved back to a character boundary).
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut cut = offset.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &text[..cut];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn bounded(mut reason: String) -> String {
    if let Some((cut, _)) = reason.char_indices().nth(REASON_MAX) {
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

#[cfg(test)]
mod tests;
