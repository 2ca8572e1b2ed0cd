//! ESO's `aws` provider: AWS Secrets Manager (`service: SecretsManager`) and SSM
//! Parameter Store (`service: ParameterStore`), over the AWS client shared with the AWS
//! generators ([`client`]: SigV4, AssumeRole, error mapping).
//!
//! ```yaml
//! provider:
//!   aws:
//!     service: SecretsManager          # or ParameterStore
//!     region: eu-west-1
//!     role: arn:aws:iam::123456789012:role/esi   # optional: AssumeRole (cached ~1 h)
//!     externalID: …                                # optional, sent with AssumeRole
//!     auth:
//!       secretRef:
//!         accessKeyIDSecretRef: {name: aws, key: access-key-id, namespace: esi-system}
//!         secretAccessKeySecretRef: {name: aws, key: secret-access-key, namespace: esi-system}
//!         sessionTokenSecretRef: {name: aws, key: session-token, namespace: esi-system}  # optional
//!     endpoint: https://vpce-….secretsmanager.eu-west-1.vpce.amazonaws.com  # extension
//!     stsEndpoint: https://sts.eu-west-1.amazonaws.com                       # extension
//! ```
//!
//! Credentials come only from `auth.secretRef` (no ambient credentials, no `auth.jwt`;
//! see [`client`]). ESO fields that would change what is read or as whom
//! (`additionalRoles`, `sessionTags`, `transitiveTagKeys`, `prefix`) are refused, not
//! ignored. Keys are canonicalized as `docs/security.md` ("Canonical forms") says: a
//! Secrets Manager key is the secret's *name* (ARNs are refused), a Parameter Store key
//! the fully qualified parameter name (`/a/b`; a top-level `name` is `/name`).
//!
//! `find` lists names only (Secrets Manager `ListSecrets`, Parameter Store
//! `DescribeParameters`), hands each canonical key to the caller's filter, and reads the
//! values of the keys it accepts one by one, so a refused key is never read. A find
//! lists at most [`MAX_FIND_ENTRIES`] entries (in at most [`MAX_LIST_BYTES`] of answers,
//! keeping only the matching names of each page) and answers at most [`MAX_FIND_BYTES`].

pub(crate) mod client;
mod parameterstore;
mod secretsmanager;

use parameterstore::ParameterStore;
use secretsmanager::SecretsManager;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fake::compile_name_regexp;
use super::{
    BuildContext, FindRequest, KeyFilter, Metered, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider, property,
};
use client::{AwsClient, AwsCommonSpec, AwsConfigError};

const PROVIDER: &str = "aws";
/// Entries a `find` may list (over all pages) before it is refused as too broad.
const MAX_FIND_ENTRIES: usize = 1000;
/// Pages a `find` may ask for (AWS may answer short pages).
const MAX_FIND_PAGES: usize = 100;
/// Bytes of listing answers a `find` may read (over all pages; each page is at most
/// [`client::MAX_BODY`]). Only the names that match are kept past each page.
const MAX_LIST_BYTES: usize = 8 << 20;
/// Bytes of values a `find` may answer.
const MAX_FIND_BYTES: usize = 16 << 20;
/// Tags a `find` may ask for, and their sizes (AWS's own limits).
const MAX_FIND_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// `spec.provider.aws`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AwsProviderSpec {
    #[serde(default)]
    service: String,
    #[serde(flatten)]
    common: AwsCommonSpec,
    #[serde(rename = "externalID", default)]
    external_id: Option<String>,
    /// Role chaining: not served.
    #[serde(default)]
    additional_roles: Option<Vec<Value>>,
    /// Session tags: not served.
    #[serde(default)]
    session_tags: Option<Vec<Value>>,
    #[serde(default)]
    transitive_tag_keys: Option<Vec<Value>>,
    /// A prefix added to every key: not served (keys are names as they are).
    #[serde(default)]
    prefix: Option<String>,
}

/// Builds the provider of `spec.provider.aws` (metered).
pub(crate) fn build(
    ctx: &BuildContext<'_>,
    block: &Value,
) -> Result<Arc<dyn SecretProvider>, ProviderConfigError> {
    let spec: AwsProviderSpec = ctx.parse(PROVIDER, block)?;
    for (field, set) in [
        (
            "additionalRoles",
            spec.additional_roles
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "sessionTags",
            spec.session_tags.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "transitiveTagKeys",
            spec.transitive_tag_keys
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "prefix",
            spec.prefix.as_deref().is_some_and(|p| !p.is_empty()),
        ),
    ] {
        if set {
            return Err(ctx.unsupported(PROVIDER, field));
        }
    }
    let (kind, endpoint_prefix, target_prefix) = match spec.service.as_str() {
        "SecretsManager" => (SecretsManager::KIND, "secretsmanager", "secretsmanager"),
        "ParameterStore" => (ParameterStore::KIND, "ssm", "AmazonSSM"),
        "" => return Err(ctx.invalid(PROVIDER, "service is required")),
        _ => {
            return Err(ctx.unsupported(
                PROVIDER,
                "service (this server serves SecretsManager and ParameterStore)",
            ));
        }
    };
    let endpoint = client::service_endpoint(&spec.common, endpoint_prefix)
        .map_err(|why| ctx.invalid(PROVIDER, why))?;
    let client = AwsClient::from_spec(
        kind,
        &spec.common,
        ctx.secrets,
        ctx.namespace,
        ctx.settings.timeout,
        None,
    )
    .and_then(|c| c.with_external_id(spec.external_id.as_deref()))
    .map_err(|e| match e {
        AwsConfigError::Invalid(reason) => ctx.invalid(PROVIDER, reason),
        AwsConfigError::SecretRef { field, source } => ProviderConfigError::SecretRef {
            store: ctx.store.to_string(),
            field,
            source,
        },
    })?;
    let backend = Backend {
        client,
        endpoint,
        service: endpoint_prefix,
        target_prefix,
        session: store_session_name(ctx.namespace, ctx.store),
    };
    Ok(match spec.service.as_str() {
        "SecretsManager" => Arc::new(Metered::new(AwsStore::<SecretsManager>::new(backend))),
        _ => Arc::new(Metered::new(AwsStore::<ParameterStore>::new(backend))),
    })
}

/// The AssumeRole session name of a store, so CloudTrail tells stores (and tenants)
/// apart: `esi-store-{name}` for a ClusterSecretStore, `esi-store-{namespace}@{name}` for a
/// SecretStore (`@` is in no Kubernetes name, so no two stores share one). STS allows
/// `[\w+=,.@-]` and 64 characters: a longer name keeps its first 51 and ends in `=` and
/// 12 hex digits of the SHA-256 of the whole, so it stays apart from its neighbours.
fn store_session_name(namespace: Option<&str>, store: &str) -> String {
    const MAX: usize = 64;
    const DIGEST_HEX: usize = 12;
    let full = match namespace {
        Some(ns) => format!("esi-store-{ns}@{store}"),
        None => format!("esi-store-{store}"),
    };
    let mut name = client::session_name(&full);
    if full.len() > MAX {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(full.as_bytes());
        let hex: String = digest
            .iter()
            .take(DIGEST_HEX / 2)
            .map(|b| format!("{b:02x}"))
            .collect();
        name.truncate(MAX - DIGEST_HEX - 1);
        name.push('=');
        name.push_str(&hex);
    }
    name
}

/// What tells the two services apart: their canonical forms, and how a value is read and
/// names are listed. Everything else ([`AwsStore`]) is the same.
trait Service: Send + Sync + 'static {
    /// The provider kind (a metrics label).
    const KIND: &'static str;
    /// The action that reads one value.
    const GET: &'static str;
    /// The listing of `find`: action, the request's filters field, the answer's array
    /// field, page size.
    const LIST: (&'static str, &'static str, &'static str, u32);
    /// The canonical key (refused: no canonical form).
    fn canonical_key(key: &str) -> Result<String, ProviderError>;
    /// The canonical version (`None`: the current one).
    fn canonical_version(version: Option<&str>) -> Result<Option<String>, ProviderError>;
    /// The canonical form of a non-empty `find.path` (`None`: everything).
    fn canonical_path(path: &str) -> Result<Option<String>, ProviderError>;
    /// The [`Service::GET`] request for a canonical key and version.
    fn get_request(name: &str, version: Option<&str>) -> Value;
    /// The value in a [`Service::GET`] answer.
    fn payload(answer: &Value) -> Result<Vec<u8>, ProviderError>;
    /// Whether a [`Service::GET`] answer is for the canonical key and version asked (the
    /// decision was made on them): if not, [`different_secret`].
    fn check_answer(answer: &Value, name: &str, version: Option<&str>)
    -> Result<(), ProviderError>;
    /// The listing filters of a canonical find.
    fn list_filters(find: &FindRequest) -> Vec<Value>;
    /// The canonical key of a listed entry if it matches the find.
    fn matching_name(
        entry: &Value,
        find: &FindRequest,
        regex: Option<&regex::Regex>,
    ) -> Option<String>;
}

/// A store on one AWS service.
struct AwsStore<S> {
    backend: Backend,
    service: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for AwsStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsStore")
            .field("backend", &self.backend)
            .finish()
    }
}

impl<S: Service> AwsStore<S> {
    fn new(backend: Backend) -> Self {
        AwsStore {
            backend,
            service: PhantomData,
        }
    }

    /// The value of a canonical key at a canonical version.
    async fn read(&self, name: &str, version: Option<&str>) -> Result<Vec<u8>, ProviderError> {
        let answer = self
            .backend
            .call(S::GET, &S::get_request(name, version))
            .await?;
        S::check_answer(&answer, name, version)?;
        S::payload(&answer)
    }

    /// The value of a reference that must already be canonical.
    async fn read_canonical(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        if self.canonical_ref(remote)? != *remote {
            return Err(ProviderError::InvalidRequest(
                "reference is not in canonical form".into(),
            ));
        }
        self.read(&remote.key, remote.version.as_deref()).await
    }
}

#[async_trait::async_trait]
impl<S: Service> SecretProvider for AwsStore<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        Ok(RemoteRef {
            key: S::canonical_key(&remote.key)?,
            property: property::canonical_property(remote.property.as_deref())?,
            version: S::canonical_version(remote.version.as_deref())?,
        })
    }

    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        let path = match find.path.as_deref().filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => S::canonical_path(p)?,
        };
        canonical_tags(&find.tags)?;
        Ok(FindRequest {
            path,
            name_regexp: find.name_regexp.clone().filter(|r| !r.is_empty()),
            tags: find.tags.clone(),
        })
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        let payload = self.read_canonical(remote).await?;
        value_of(payload, remote.property.as_deref())
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let payload = self.read_canonical(remote).await?;
        map_of(&payload, remote.property.as_deref())
    }

    /// Lists names only, hands each matching canonical key to `allow`, and reads the
    /// current value of those it accepts.
    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        check_find(self.canonical_find(find)?, find)?;
        let regex = find
            .name_regexp
            .as_deref()
            .map(compile_name_regexp)
            .transpose()?;
        let (action, filters_field, items, page_size) = S::LIST;
        let mut request = Map::new();
        let filters = S::list_filters(find);
        if !filters.is_empty() {
            request.insert(filters_field.into(), Value::Array(filters));
        }
        let names = self
            .backend
            .list(action, request, items, page_size, |e| {
                S::matching_name(e, find, regex.as_ref())
            })
            .await?;
        read_allowed(names, allow, |name: String| async move {
            self.read(&name, None).await
        })
        .await
    }
}

/// One AWS JSON 1.1 service as a store reads it: the shared client, the endpoint, and the
/// names that address the service.
struct Backend {
    client: AwsClient,
    endpoint: Url,
    /// SigV4 service name (`secretsmanager`, `ssm`).
    service: &'static str,
    /// `X-Amz-Target` prefix (`secretsmanager`, `AmazonSSM`).
    target_prefix: &'static str,
    /// The role session name (the store's name), when a role is assumed.
    session: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("client", &self.client)
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// One call of `action` with `body`; the answer's JSON, or the refusal mapped.
    async fn call(&self, action: &'static str, body: &Value) -> Result<Value, ProviderError> {
        let answer = self.call_raw(action, body).await?;
        serde_json::from_slice(&answer).map_err(|_| malformed(action))
    }

    /// One call of `action` with `body`; the answer's bytes, or the refusal mapped.
    async fn call_raw(&self, action: &'static str, body: &Value) -> Result<Vec<u8>, ProviderError> {
        let creds = self.client.cached_credentials(&self.session).await?;
        let target = format!("{}.{action}", self.target_prefix);
        let (status, answer) = self
            .client
            .json_call(&creds, self.service, &self.endpoint, &target, body)
            .await?;
        if !status.is_success() {
            self.client.after_refusal(&creds, &answer);
            return Err(self.client.refusal(action, status, &answer).into());
        }
        Ok(answer)
    }

    /// What `keep` makes of each entry of the `items` arrays of a paginated listing
    /// (`NextToken`), asked `page_size` at a time; each page is dropped once `keep` has
    /// seen it. Refused when it would pass [`MAX_FIND_ENTRIES`] entries,
    /// [`MAX_FIND_PAGES`] pages or [`MAX_LIST_BYTES`] bytes of answers.
    async fn list<T>(
        &self,
        action: &'static str,
        request: Map<String, Value>,
        items: &str,
        page_size: u32,
        mut keep: impl FnMut(&Value) -> Option<T>,
    ) -> Result<Vec<T>, ProviderError> {
        let mut out = Vec::new();
        let mut listed = 0usize;
        let mut bytes = 0usize;
        let mut token: Option<String> = None;
        for _ in 0..MAX_FIND_PAGES {
            let mut body = request.clone();
            body.insert("MaxResults".into(), page_size.into());
            if let Some(t) = token.take() {
                body.insert("NextToken".into(), t.into());
            }
            let raw = self.call_raw(action, &Value::Object(body)).await?;
            bytes += raw.len();
            if bytes > MAX_LIST_BYTES {
                return Err(ProviderError::InvalidRequest(format!(
                    "find listing too large (more than {} MiB of {action} answers); narrow it with find.path or tags",
                    MAX_LIST_BYTES >> 20
                )));
            }
            let answer: Value = serde_json::from_slice(&raw).map_err(|_| malformed(action))?;
            drop(raw);
            let page = match answer.get(items) {
                Some(Value::Array(page)) => page.as_slice(),
                None | Some(Value::Null) => &[],
                Some(_) => return Err(malformed(action)),
            };
            listed += page.len();
            if listed > MAX_FIND_ENTRIES {
                return Err(too_broad());
            }
            out.extend(page.iter().filter_map(&mut keep));
            token = answer
                .get("NextToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
        Err(too_broad())
    }
}

fn malformed(action: &str) -> ProviderError {
    ProviderError::Backend(format!("AWS answered {action} with malformed JSON"))
}

/// A read answered for another secret or version than the one asked (and decided on):
/// no value is returned.
fn different_secret() -> ProviderError {
    ProviderError::Backend("the backend answered for a different secret".into())
}

fn too_broad() -> ProviderError {
    ProviderError::InvalidRequest(format!(
        "find would list more than {MAX_FIND_ENTRIES} entries; narrow it with find.path or tags"
    ))
}

/// A payload as a JSON object (what `property` and GetSecretMap read).
fn json_object(payload: &[u8]) -> Result<Map<String, Value>, ProviderError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ProviderError::InvalidRequest(
            "the secret is not a JSON object, so it has no properties".into(),
        )),
    }
}

/// ESO GetSecret on a payload: all of it without property, else the property of its JSON.
fn value_of(payload: Vec<u8>, property: Option<&str>) -> Result<Vec<u8>, ProviderError> {
    match property {
        None => Ok(payload),
        Some(p) => property::value_bytes(property::lookup(&json_object(&payload)?, p)?),
    }
}

/// ESO GetSecretMap on a payload: its JSON object's (or its property's) entries.
fn map_of(
    payload: &[u8],
    property: Option<&str>,
) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
    property::secret_map(&json_object(payload)?, property)
}

/// What both services' names must be: non-empty, at most `max` bytes, without `:` (an ARN,
/// or a name with a version: `colon` says what to write instead), and only ASCII letters,
/// digits and the bytes of `allowed`. `what` names the field in messages.
fn check_name_text(
    name: &str,
    what: &str,
    max: usize,
    colon: &str,
    allowed: &str,
) -> Result<(), ProviderError> {
    let bad = |why: String| Err(ProviderError::InvalidRequest(format!("{what} {why}")));
    if name.is_empty() {
        return bad("is empty".into());
    }
    if name.len() > max {
        return bad("is too long".into());
    }
    if name.contains(':') {
        return bad(colon.into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || allowed.as_bytes().contains(&b))
    {
        return bad(format!(
            "has characters names do not have (letters, digits, {allowed})"
        ));
    }
    Ok(())
}

/// The checks every `find` shares: canonical, and names a regexp or tags (as ESO).
fn check_find(canonical: FindRequest, find: &FindRequest) -> Result<(), ProviderError> {
    if canonical != *find {
        return Err(ProviderError::InvalidRequest(
            "find is not in canonical form".into(),
        ));
    }
    if find.name_regexp.is_none() && find.tags.is_empty() {
        return Err(ProviderError::InvalidRequest(
            "find needs name.regexp or tags".into(),
        ));
    }
    Ok(())
}

/// The canonical tags of a `find`: as given, bounded in number and size.
fn canonical_tags(tags: &BTreeMap<String, String>) -> Result<(), ProviderError> {
    if tags.len() > MAX_FIND_TAGS {
        return Err(ProviderError::InvalidRequest(format!(
            "find has more than {MAX_FIND_TAGS} tags"
        )));
    }
    if tags.iter().any(|(k, v)| {
        k.is_empty()
            || k.len() > MAX_TAG_KEY
            || v.len() > MAX_TAG_VALUE
            || k.chars().chain(v.chars()).any(char::is_control)
    }) {
        return Err(ProviderError::InvalidRequest(format!(
            "find tags must be 1..={MAX_TAG_KEY} byte keys and values of at most {MAX_TAG_VALUE} bytes, without control characters"
        )));
    }
    Ok(())
}

/// Reads the current value of each name `allow` accepts (in order, each once), through
/// `read`; a name gone since it was listed is left out. Bounded by [`MAX_FIND_BYTES`].
async fn read_allowed<'a, F, Fut>(
    names: Vec<String>,
    allow: &KeyFilter<'_>,
    read: F,
) -> Result<BTreeMap<String, Vec<u8>>, ProviderError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, ProviderError>> + 'a,
{
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for name in names {
        // The per-key decision, before the value is read.
        if out.contains_key(&name) || !allow(&name) {
            continue;
        }
        match read(name.clone()).await {
            Ok(value) => {
                total += value.len();
                if total > MAX_FIND_BYTES {
                    return Err(ProviderError::InvalidRequest(format!(
                        "find would answer more than {MAX_FIND_BYTES} bytes; narrow it"
                    )));
                }
                out.insert(name, value);
            }
            Err(ProviderError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::client::tests::secrets;
    use super::*;
    use crate::providers::ProviderSettings;
    use serde_json::json;

    /// A `spec.provider.aws` block for `service` at `endpoint` with `extra` fields.
    pub fn block(service: &str, endpoint: &str, extra: Value) -> Value {
        let mut b = json!({
            "service": service,
            "region": "us-east-1",
            "endpoint": endpoint,
            "auth": {"secretRef": {
                "accessKeyIDSecretRef": {"name": "aws", "key": "id", "namespace": "ns"},
                "secretAccessKeySecretRef": {"name": "aws", "key": "secret", "namespace": "ns"}
            }}
        });
        if let (Value::Object(b), Value::Object(extra)) = (&mut b, extra) {
            b.extend(extra);
        }
        b
    }

    pub fn build_block(block: &Value) -> Result<Arc<dyn SecretProvider>, ProviderConfigError> {
        let secrets = secrets();
        let settings = ProviderSettings {
            timeout: std::time::Duration::from_secs(5),
            ..ProviderSettings::default()
        };
        build(
            &BuildContext {
                store: "aws-store",
                namespace: None,
                secrets: &secrets,
                settings: &settings,
            },
            block,
        )
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        for (extra, needle) in [
            (json!({"service": ""}), "service is required"),
            (json!({"service": "CertificateManager"}), "unsupported"),
            (json!({"additionalRoles": ["arn:x"]}), "additionalRoles"),
            (
                json!({"sessionTags": [{"key": "a", "value": "b"}]}),
                "sessionTags",
            ),
            (json!({"prefix": "team/"}), "prefix"),
            (json!({"auth": {}}), "auth.secretRef is required"),
            (
                json!({"auth": {"jwt": {"serviceAccountRef": {"name": "x"}}}}),
                "auth.jwt is not supported",
            ),
            (json!({"endpoint": "ftp://x"}), "endpoint must be an http"),
            (json!({"region": "Mars"}), "region is required"),
        ] {
            let err = build_block(&block("SecretsManager", "http://127.0.0.1:1", extra))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
            assert!(!err.contains("EXAMPLEKEY"), "{err}");
        }
        // Empty lists are what ESO writes by default: accepted.
        let p = build_block(&block(
            "ParameterStore",
            "http://127.0.0.1:1",
            json!({"additionalRoles": [], "sessionTags": null, "prefix": ""}),
        ))
        .unwrap();
        assert_eq!(p.kind(), "aws/ParameterStore");
        // Missing credentials Secret: a SecretRef error (the store waits for it).
        let err = build_block(&block(
            "SecretsManager",
            "http://127.0.0.1:1",
            json!({"auth": {"secretRef": {
                "accessKeyIDSecretRef": {"name": "nope", "key": "id", "namespace": "ns"},
                "secretAccessKeySecretRef": {"name": "aws", "key": "secret", "namespace": "ns"}}}}),
        ))
        .err()
        .unwrap();
        assert!(err.is_missing_secret(), "{err}");
    }

    #[test]
    fn session_names_tell_stores_and_tenants_apart() {
        assert_eq!(store_session_name(None, "aws-prod"), "esi-store-aws-prod");
        assert_eq!(
            store_session_name(Some("team-a"), "aws-prod"),
            "esi-store-team-a@aws-prod"
        );
        // `@` is in no Kubernetes name: a ClusterSecretStore `team-a.aws-prod` is another.
        assert_ne!(
            store_session_name(Some("team-a"), "aws-prod"),
            store_session_name(None, "team-a.aws-prod")
        );
        // Long names stay within AWS's 64 characters and apart (a digest of the whole).
        let ns = "n".repeat(63);
        let a = store_session_name(Some(&ns), &format!("{}a", "s".repeat(200)));
        let b = store_session_name(Some(&ns), &format!("{}b", "s".repeat(200)));
        assert_eq!(a.len(), 64);
        assert_eq!(b.len(), 64);
        assert_ne!(a, b);
        assert!(a.starts_with("esi-store-nnn"), "{a}");
        for name in [&a, &b, &store_session_name(Some("x"), "y")] {
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_+=,.@-".contains(&c)),
                "{name}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_namespaced_store_assumes_its_role_with_its_namespace() {
        // A fake STS that records each AssumeRole's form and refuses it.
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: String| {
                record.lock().unwrap().push(body);
                async {
                    (
                        axum::http::StatusCode::FORBIDDEN,
                        "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sts = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let secrets = secrets();
        let settings = ProviderSettings {
            timeout: std::time::Duration::from_secs(5),
            ..ProviderSettings::default()
        };
        let p = build(
            &BuildContext {
                store: "aws-prod",
                namespace: Some("ns"),
                secrets: &secrets,
                settings: &settings,
            },
            &block(
                "SecretsManager",
                "http://127.0.0.1:1",
                json!({"role": "arn:aws:iam::123456789012:role/r", "stsEndpoint": sts,
                    "auth": {"secretRef": {
                        "accessKeyIDSecretRef": {"name": "aws", "key": "id"},
                        "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
            ),
        )
        .unwrap();
        let remote = RemoteRef {
            key: "db".into(),
            ..Default::default()
        };
        assert!(matches!(
            p.get_secret(&remote).await,
            Err(ProviderError::Backend(_))
        ));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].contains("RoleSessionName=esi-store-ns%40aws-prod&"),
            "{}",
            seen[0]
        );
    }

    #[test]
    fn payloads_and_properties() {
        let json = br#"{"user": "u", "n": {"x": 1}}"#.to_vec();
        assert_eq!(value_of(json.clone(), None).unwrap(), json);
        assert_eq!(value_of(json.clone(), Some("n.x")).unwrap(), b"1");
        assert_eq!(
            value_of(json.clone(), Some("nope")),
            Err(ProviderError::NotFound)
        );
        assert!(matches!(
            value_of(b"plain".to_vec(), Some("a")),
            Err(ProviderError::InvalidRequest(_))
        ));
        let map = map_of(&json, None).unwrap();
        assert_eq!(map["user"], b"u");
        assert_eq!(map["n"], br#"{"x":1}"#);
        assert!(matches!(
            map_of(b"[1]", None),
            Err(ProviderError::InvalidRequest(_))
        ));
    }

    #[test]
    fn find_tags_are_bounded() {
        let tags = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
        assert!(canonical_tags(&tags("env", "prod")).is_ok());
        for bad in [
            tags("", "x"),
            tags(&"k".repeat(129), "x"),
            tags("k", &"v".repeat(257)),
            tags("k\n", "v"),
        ] {
            assert!(canonical_tags(&bad).is_err(), "{bad:?}");
        }
        let many: BTreeMap<String, String> = (0..51)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(canonical_tags(&many).is_err());
    }

    /// A fake AWS JSON endpoint: records (target, authorization, body) and answers
    /// `answer(target, body)`.
    async fn fake_aws(
        answer: fn(&str, &Value) -> (u16, Value),
    ) -> (String, Arc<std::sync::Mutex<Vec<(String, String, Value)>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let target = header("x-amz-target");
                    let body: Value = serde_json::from_str(&body).unwrap();
                    record.lock().unwrap().push((
                        target.clone(),
                        header("authorization"),
                        body.clone(),
                    ));
                    let (status, answer) = answer(&target, &body);
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        answer.to_string(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn signed_json_calls_and_bounded_listings() {
        let (endpoint, seen) = fake_aws(|target, body| match target {
            "secretsmanager.GetSecretValue" => {
                (200, json!({"Name": body["SecretId"], "SecretString": "v",
                    "VersionId": "v1", "VersionStages": ["AWSPREVIOUS"]}))
            }
            // Always another page of 100: the listing is refused past 1000 entries.
            _ => (
                200,
                json!({"SecretList": (0..100).map(|i| json!({"Name": format!("s{i}")})).collect::<Vec<_>>(),
                    "NextToken": "more"}),
            ),
        })
        .await;
        let p = build_block(&block("SecretsManager", &endpoint, json!({}))).unwrap();
        let r = p
            .canonical_ref(&RemoteRef {
                key: "team/db".into(),
                property: None,
                version: Some("AWSPREVIOUS".into()),
            })
            .unwrap();
        assert_eq!(p.get_secret(&r).await.unwrap(), b"v");
        let find = p
            .canonical_find(&FindRequest {
                name_regexp: Some(".".into()),
                ..Default::default()
            })
            .unwrap();
        let err = p.find(&find).await.unwrap_err();
        assert!(err.to_string().contains("more than 1000 entries"), "{err}");
        // A reference that is not canonical is refused before any call.
        let raw = RemoteRef {
            key: "team/db".into(),
            property: None,
            version: Some("AWSCURRENT".into()),
        };
        assert!(matches!(
            p.get_secret(&raw).await,
            Err(ProviderError::InvalidRequest(_))
        ));
        let seen = seen.lock().unwrap();
        let (target, auth, body) = &seen[0];
        assert_eq!(target, "secretsmanager.GetSecretValue");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && auth.contains("/us-east-1/secretsmanager/aws4_request"),
            "{auth}"
        );
        assert_eq!(
            *body,
            json!({"SecretId": "team/db", "VersionStage": "AWSPREVIOUS"})
        );
        assert_eq!(seen.len(), 1 + 11, "the eleventh page passes 1000 entries");
        assert_eq!(seen[1].2, json!({"MaxResults": 100}));
        assert_eq!(seen[2].2, json!({"MaxResults": 100, "NextToken": "more"}));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn parameter_store_reads_decrypted_and_maps_not_found() {
        let (endpoint, seen) = fake_aws(|_, body| match body["Name"].as_str() {
            Some("/app/db:2") => (
                200,
                json!({"Parameter": {"Name": "/app/db", "Value": "pw"}}),
            ),
            _ => (
                400,
                json!({"__type": "ParameterNotFound", "message": "no /app/x here"}),
            ),
        })
        .await;
        let p = build_block(&block("ParameterStore", &endpoint, json!({}))).unwrap();
        let r = |key: &str, version: Option<&str>| {
            p.canonical_ref(&RemoteRef {
                key: key.into(),
                property: None,
                version: version.map(str::to_string),
            })
            .unwrap()
        };
        assert_eq!(p.get_secret(&r("/app/db", Some("2"))).await.unwrap(), b"pw");
        assert_eq!(
            p.get_secret(&r("x", None)).await,
            Err(ProviderError::NotFound)
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "AmazonSSM.GetParameter");
        assert!(seen[0].1.contains("/us-east-1/ssm/aws4_request"));
        assert_eq!(
            seen[0].2,
            json!({"Name": "/app/db:2", "WithDecryption": true})
        );
        assert_eq!(seen[1].2["Name"], "/x");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn listings_are_bounded_in_bytes() {
        // Pages of 10 entries with 20 KiB descriptions each (~200 KiB a page, well under the
        // 1 MiB answer bound and the 1000 entries): 50 pages pass 8 MiB.
        let (endpoint, seen) = fake_aws(|target, body| match target {
            "secretsmanager.ListSecrets" => {
                let page: usize = body["NextToken"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let mut answer = json!({"SecretList": (0..10).map(|i| json!({
                    "Name": format!("s{page}-{i}"),
                    "Description": "d".repeat(20 << 10),
                    "Tags": [{"Key": "env", "Value": "prod"}],
                })).collect::<Vec<_>>()});
                if page < 49 {
                    answer["NextToken"] = (page + 1).to_string().into();
                }
                (200, answer)
            }
            _ => (
                200,
                json!({"Name": body["SecretId"], "SecretString": "v",
                    "VersionStages": ["AWSCURRENT"]}),
            ),
        })
        .await;
        let p = build_block(&block("SecretsManager", &endpoint, json!({}))).unwrap();
        let find = FindRequest {
            name_regexp: Some("^s0-0$".into()),
            ..Default::default()
        };
        let err = p.find(&find).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::InvalidRequest(m) if m.contains("listing too large")),
            "{err}"
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|(t, ..)| t == "secretsmanager.ListSecrets"),
            "nothing is read"
        );
        assert!(seen.len() < 50, "{} pages", seen.len());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_answer_for_another_secret_is_refused() {
        // The fake answers every read with another secret's (or version's) value.
        let (endpoint, _) = fake_aws(|target, body| match target {
            "secretsmanager.GetSecretValue" => match body["SecretId"].as_str() {
                Some("team/db") => (
                    200,
                    json!({"Name": "team/admin", "SecretString": "admin-pw",
                        "VersionId": "v1", "VersionStages": ["AWSCURRENT"]}),
                ),
                _ => (
                    200,
                    json!({"Name": body["SecretId"], "SecretString": "old",
                        "VersionId": "v1", "VersionStages": ["AWSCURRENT"]}),
                ),
            },
            _ => (
                200,
                json!({"Parameter": {"Name": "/app/admin", "Value": "admin-pw", "Version": 1}}),
            ),
        })
        .await;
        let sm = build_block(&block("SecretsManager", &endpoint, json!({}))).unwrap();
        let ps = build_block(&block("ParameterStore", &endpoint, json!({}))).unwrap();
        let r = |p: &Arc<dyn SecretProvider>, key: &str, version: Option<&str>| {
            p.canonical_ref(&RemoteRef {
                key: key.into(),
                property: None,
                version: version.map(str::to_string),
            })
            .unwrap()
        };
        for (p, remote) in [
            (&sm, r(&sm, "team/db", None)),
            (&sm, r(&sm, "team/other", Some("AWSPREVIOUS"))),
            (&ps, r(&ps, "/app/db", None)),
        ] {
            let err = p.get_secret(&remote).await.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Backend("the backend answered for a different secret".into()),
                "{remote:?}"
            );
            assert!(!err.to_string().contains("admin"), "{err}");
        }
    }

    #[tokio::test]
    async fn silent_endpoint_times_out_with_the_settings_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let secrets = secrets();
        let settings = ProviderSettings {
            timeout: std::time::Duration::from_millis(300),
            ..ProviderSettings::default()
        };
        let p = build(
            &BuildContext {
                store: "s",
                namespace: None,
                secrets: &secrets,
                settings: &settings,
            },
            &block("SecretsManager", &format!("http://{addr}"), json!({})),
        )
        .unwrap();
        let start = std::time::Instant::now();
        let err = p
            .get_secret(&RemoteRef {
                key: "db".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(err, Err(ProviderError::Timeout));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        hold.abort();
    }

    #[tokio::test]
    async fn read_allowed_decides_before_reading() {
        let read_names = std::sync::Mutex::new(Vec::new());
        let out = read_allowed(
            vec!["a".into(), "denied".into(), "gone".into(), "a".into()],
            &|k: &str| k != "denied",
            |name: String| {
                read_names.lock().unwrap().push(name.clone());
                async move {
                    match name.as_str() {
                        "gone" => Err(ProviderError::NotFound),
                        _ => Ok(name.into_bytes()),
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(*read_names.lock().unwrap(), ["a", "gone"]);
    }
}
