//! ESO's `vault` provider (HashiCorp Vault / OpenBao KV v1 and v2).
//!
//! ```yaml
//! provider:
//!   vault:
//!     server: https://vault.example.com:8200
//!     path: secret            # KV mount; unset: the key's first segment is the mount
//!     version: v2             # v1 | v2 (default v2)
//!     namespace: team-a       # X-Vault-Namespace
//!     caBundle: <base64 PEM>
//!     auth:
//!       tokenSecretRef: {name: vault, key: token, namespace: eso}
//!       # or
//!       appRole: {path: approle, roleId: …, secretRef: {name: …, key: …}}
//! ```
//!
//! Tokens and values never reach logs, errors or Debug output: header values are
//! marked sensitive and errors carry only status codes and fixed text.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fake::compile_name_regexp;
use super::property;
use super::{
    BuildContext, FindRequest, KeyFilter, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider,
};
mod client;

pub(crate) use client::{ConnectionError, ConnectionSpec, VaultClient, status_error};
use client::{check_segment, segments};

const PROVIDER: &str = "vault";

/// Bounds of a `find` walk: entries (secrets and folders) visited, and folder depth.
const MAX_FIND_ENTRIES: usize = 1000;
const MAX_FIND_DEPTH: usize = 16;

/// Mount verdicts kept (distinct mounts) and for how long (a remount is seen after this).
const MOUNT_CACHE_ENTRIES: u64 = 256;
const MOUNT_CACHE_TTL: Duration = Duration::from_secs(300);

/// `spec.provider.vault` (the fields we serve; others ESO knows are ignored or rejected):
/// the connection ([`ConnectionSpec`], shared with the `VaultDynamicSecret` generator) and
/// the KV mount.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VaultSpec {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    version: Option<KvVersion>,
    #[serde(flatten)]
    connection: ConnectionSpec,
}

/// KV engine version.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum KvVersion {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

/// Serves secrets from one Vault/OpenBao KV mount (or from the key's first segment).
pub struct VaultProvider {
    client: VaultClient,
    mount: Option<Vec<String>>,
    version: KvVersion,
    /// Verdicts on mounts (`a/b` → is a KV mount of this store's version), from
    /// `sys/internal/ui/mounts`; see [`VaultProvider::ensure_kv_mount`].
    mounts: moka::sync::Cache<String, bool>,
}

impl std::fmt::Debug for VaultProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultProvider")
            .field("client", &self.client)
            .field("mount", &self.mount)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Vault mounts that never hold KV secrets: a store's key may not name them as its
/// mount (the server's own token, policies and mount table live there).
const NEVER_KV_MOUNTS: [&str; 4] = ["auth", "sys", "identity", "cubbyhole"];

/// Refuses a mount a key may never name (see [`NEVER_KV_MOUNTS`]).
fn check_mount_name(mount: &str) -> Result<(), &'static str> {
    if NEVER_KV_MOUNTS.contains(&mount) {
        return Err("names a Vault system mount, not a KV mount");
    }
    Ok(())
}

impl VaultProvider {
    /// Parses `spec.provider.vault` and resolves its secret refs.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        block: &Value,
    ) -> Result<Self, ProviderConfigError> {
        let spec: VaultSpec = ctx.parse(PROVIDER, block)?;
        let mount = match spec.path.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => None,
            Some(p) => {
                let parts =
                    segments(p).map_err(|why| ctx.invalid(PROVIDER, format!("path {why}")))?;
                check_mount_name(&parts[0])
                    .map_err(|why| ctx.invalid(PROVIDER, format!("path {why}")))?;
                Some(parts)
            }
        };
        let client = VaultClient::from_spec(
            spec.connection,
            ctx.secrets,
            ctx.namespace,
            ctx.settings.timeout,
        )
        .map_err(|e| match e {
            ConnectionError::Invalid(reason) => ctx.invalid(PROVIDER, reason),
            ConnectionError::Unsupported(reason) => ctx.unsupported(PROVIDER, reason),
            ConnectionError::SecretRef { field, source } => ProviderConfigError::SecretRef {
                store: ctx.store.to_string(),
                field,
                source,
            },
        })?;
        Ok(VaultProvider {
            client,
            mount,
            version: spec.version.unwrap_or(KvVersion::V2),
            mounts: moka::sync::Cache::builder()
                .max_capacity(MOUNT_CACHE_ENTRIES)
                .time_to_live(MOUNT_CACHE_TTL)
                .build(),
        })
    }

    /// Strips what ESO lets a key carry besides the mount-relative path: a leading
    /// `{path}/` (stores with a mount), then on v2 a leading `data/`. The two steps are
    /// applied once each; see [`VaultProvider::canonical_parts`].
    fn strip_prefixes(&self, mount: &[String], mut parts: Vec<String>) -> Vec<String> {
        if !mount.is_empty() && parts.len() > mount.len() && parts[..mount.len()] == mount[..] {
            parts.drain(..mount.len());
        }
        if self.version == KvVersion::V2 && parts.len() > 1 && parts[0] == "data" {
            parts.remove(0);
        }
        parts
    }

    /// Whether [`VaultProvider::strip_prefixes`] would change `parts` again, i.e. the
    /// path cannot be a canonical key.
    fn strippable(&self, mount: &[String], parts: &[String]) -> bool {
        (!mount.is_empty() && parts.len() > mount.len() && parts[..mount.len()] == mount[..])
            || (self.version == KvVersion::V2 && parts.len() > 1 && parts[0] == "data")
    }

    /// The one canonical (mount, path in mount) of a caller's key (or find path, with
    /// `what` naming it in errors; `allow_root` lets a find path name the mount itself).
    ///
    /// Rule (ESO's `buildPath`, made unambiguous):
    /// * segments are split on `/`; empty, `.`, `..` segments and control characters are
    ///   refused (no traversal, no `a//b`, no leading or trailing `/`);
    /// * with `path` set, the mount is `path`; a leading `{path}/` is dropped, then (v2)
    ///   a leading `data/`;
    /// * without `path`, the first segment is the mount (`auth`, `sys`, `identity` and
    ///   `cubbyhole` are refused outright), then (v2) a leading `data/` is dropped;
    /// * if what is left would be stripped again (its object's path itself starts with
    ///   the mount or with `data/`), two objects compete for the spelling: refused.
    ///
    /// The canonical key is the mount-relative path (stores with `path`) or
    /// `{mount}/{path}` (stores without), and it maps to itself.
    fn canonical_parts(
        &self,
        key: &str,
        what: &str,
        allow_root: bool,
    ) -> Result<(Vec<String>, Vec<String>), ProviderError> {
        let bad = |why: &str| ProviderError::InvalidRequest(format!("{what} {why}"));
        if key.is_empty() {
            return Err(bad("is empty"));
        }
        let parts = segments(key).map_err(bad)?;
        let (mount, rest) = match &self.mount {
            Some(mount) => (mount.clone(), self.strip_prefixes(mount, parts)),
            None => {
                if parts.len() < 2 && !allow_root {
                    return Err(bad("must start with the mount when the store sets no path"));
                }
                let mut parts = parts;
                let mount = vec![parts.remove(0)];
                check_mount_name(&mount[0]).map_err(bad)?;
                let rest = self.strip_prefixes(&[], parts);
                (mount, rest)
            }
        };
        let own_mount: &[String] = if self.mount.is_some() { &mount } else { &[] };
        if self.strippable(own_mount, &rest) {
            return Err(bad(
                "is ambiguous: its path inside the mount starts with the mount or `data/` again",
            ));
        }
        if rest.is_empty() && !allow_root {
            return Err(bad("names no secret inside the mount"));
        }
        Ok((mount, rest))
    }

    /// The canonical key text of (mount, path): see [`VaultProvider::canonical_parts`].
    fn key_text(&self, mount: &[String], path: &[String]) -> String {
        match &self.mount {
            Some(_) => path.join("/"),
            None => mount
                .iter()
                .chain(path)
                .cloned()
                .collect::<Vec<_>>()
                .join("/"),
        }
    }

    /// The canonical version: v2 takes a decimal number (leading zeros dropped; `0`,
    /// Vault's "latest", is the same as none); v1 has no versions.
    fn canonical_version(&self, version: Option<&str>) -> Result<Option<String>, ProviderError> {
        let Some(v) = version.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if self.version == KvVersion::V1 {
            return Err(ProviderError::Unsupported(
                "versions need a KV v2 store".into(),
            ));
        }
        if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProviderError::InvalidRequest(
                "version must be a number".into(),
            ));
        }
        let trimmed = v.trim_start_matches('0');
        Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
    }

    /// The (mount, path) of a reference that must already be canonical.
    fn locate_canonical(
        &self,
        remote: &RemoteRef,
    ) -> Result<(Vec<String>, Vec<String>), ProviderError> {
        if self.canonical_ref(remote)? != *remote {
            return Err(ProviderError::InvalidRequest(
                "reference is not in canonical form".into(),
            ));
        }
        self.canonical_parts(&remote.key, "key", false)
    }

    /// `{server}/v1/{mount}/{kind}/{rest}` (`kind` is `data`/`metadata` on v2, none on v1).
    fn url(
        &self,
        mount: &[String],
        kind: Option<&str>,
        rest: &[String],
    ) -> Result<Url, ProviderError> {
        let mut all = vec!["v1".to_string()];
        all.extend(mount.iter().cloned());
        all.extend(kind.map(str::to_string));
        all.extend(rest.iter().cloned());
        self.client.url(&all)
    }

    /// Refuses a mount that is not a KV mount of this store's version, before any call
    /// under it (issue 19: a store without `path` took any first segment as its mount
    /// and proxied `auth/token/lookup-self`, `sys/…`, `database/creds/…` reads).
    ///
    /// Asks `GET /v1/sys/internal/ui/mounts/{mount}` (any token with a capability under
    /// the mount may) once per mount and caches the verdict for 5 minutes: the answer
    /// must be the mount itself (`path` = `{mount}/`, not a mount further up), of type
    /// `kv` (or the legacy `generic`, v1 only) with `options.version` equal to the
    /// store's (absent means 1). Another engine or another version is refused
    /// (`InvalidRequest`, cached). Vault refusing the check (403: no such mount, or a
    /// token without access), failing or unreachable fails the call (`Backend` /
    /// `Unavailable`, not cached). Fail closed either way.
    async fn ensure_kv_mount(&self, mount: &[String]) -> Result<(), ProviderError> {
        let key = mount.join("/");
        let verdict = match self.mounts.get(&key) {
            Some(v) => v,
            None => {
                let v = self.mount_is_kv(mount, &key).await?;
                self.mounts.insert(key, v);
                v
            }
        };
        if verdict {
            Ok(())
        } else {
            Err(ProviderError::InvalidRequest(format!(
                "key is not inside a KV {} mount",
                match self.version {
                    KvVersion::V1 => "v1",
                    KvVersion::V2 => "v2",
                }
            )))
        }
    }

    /// Asks Vault what `mount` is (see [`VaultProvider::ensure_kv_mount`]).
    async fn mount_is_kv(&self, mount: &[String], key: &str) -> Result<bool, ProviderError> {
        // Fails before any cache entry is made: only definite answers are kept.
        let mut all = vec!["v1", "sys", "internal", "ui", "mounts"]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        all.extend(mount.iter().cloned());
        let url = self.client.url(&all)?;
        let (status, body) = self.client.call(reqwest::Method::GET, url, None).await?;
        if !status.is_success() {
            // Vault answers 403 both for "no such mount" and for a token it refuses: no
            // verdict to keep, and the call fails (closed) as a refusal by Vault.
            tracing::info!(status = status.as_u16(), "vault mount check refused");
            return Err(match status_error(status) {
                ProviderError::NotFound => ProviderError::Backend("vault answered HTTP 404".into()),
                e => e,
            });
        }
        let data = body.get("data").unwrap_or(&Value::Null);
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
        let path = data.get("path").and_then(Value::as_str).unwrap_or_default();
        let version = match data
            .get("options")
            .and_then(|o| o.get("version"))
            .and_then(Value::as_str)
        {
            None | Some("1") | Some("") => Some(KvVersion::V1),
            Some("2") => Some(KvVersion::V2),
            Some(_) => None,
        };
        let ok = path == format!("{key}/")
            && match kind {
                "kv" => version == Some(self.version),
                "generic" => self.version == KvVersion::V1,
                _ => false,
            };
        if !ok {
            tracing::info!(
                mount_type = kind,
                "vault mount is not a KV mount of the store's version"
            );
        }
        Ok(ok)
    }

    /// The secret's data object at `(mount, path)`, optionally at a version (v2).
    async fn read(
        &self,
        mount: &[String],
        path: &[String],
        version: Option<&str>,
    ) -> Result<Map<String, Value>, ProviderError> {
        self.ensure_kv_mount(mount).await?;
        let body = match self.version {
            KvVersion::V2 => {
                let mut url = self.url(mount, Some("data"), path)?;
                if let Some(v) = self.canonical_version(version)? {
                    url.query_pairs_mut().append_pair("version", &v);
                }
                let mut body = self.client.get(url).await?;
                body.get_mut("data")
                    .and_then(|d| d.get_mut("data"))
                    .map(Value::take)
                    .unwrap_or(Value::Null)
            }
            KvVersion::V1 => {
                self.canonical_version(version)?;
                let url = self.url(mount, None, path)?;
                let mut body = self.client.get(url).await?;
                body.get_mut("data").map(Value::take).unwrap_or(Value::Null)
            }
        };
        match body {
            Value::Object(m) => Ok(m),
            // A deleted or destroyed v2 version answers `data: null`.
            Value::Null => Err(ProviderError::NotFound),
            _ => Err(ProviderError::Backend(
                "vault answered an unexpected shape".into(),
            )),
        }
    }

    /// Lists a v2 metadata folder: (entry, is_folder). A missing folder is empty.
    async fn list(
        &self,
        mount: &[String],
        folder: &[String],
    ) -> Result<Vec<(String, bool)>, ProviderError> {
        self.ensure_kv_mount(mount).await?;
        let mut url = self.url(mount, Some("metadata"), folder)?;
        // `LIST` is spelled `GET ?list=true` over plain HTTP.
        if folder.is_empty() {
            url.set_path(&format!("{}/", url.path().trim_end_matches('/')));
        }
        url.query_pairs_mut().append_pair("list", "true");
        let body = match self.client.get(url).await {
            Ok(body) => body,
            Err(ProviderError::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let keys = body
            .get("data")
            .and_then(|d| d.get("keys"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(key) = key.as_str() else { continue };
            let (name, is_folder) = match key.strip_suffix('/') {
                Some(name) => (name, true),
                None => (key, false),
            };
            // Skip names we could not address safely later.
            if check_segment(name).is_ok() && !name.contains('/') {
                out.push((name.to_string(), is_folder));
            }
        }
        Ok(out)
    }

    /// Tags of a v2 secret (its `custom_metadata`).
    async fn tags(
        &self,
        mount: &[String],
        path: &[String],
    ) -> Result<Map<String, Value>, ProviderError> {
        self.ensure_kv_mount(mount).await?;
        let url = self.url(mount, Some("metadata"), path)?;
        let mut body = self.client.get(url).await?;
        match body
            .get_mut("data")
            .and_then(|d| d.get_mut("custom_metadata"))
            .map(Value::take)
        {
            Some(Value::Object(m)) => Ok(m),
            _ => Ok(Map::new()),
        }
    }
}

/// Appends segments to the server URL's path (percent-encoding each).

#[async_trait::async_trait]
impl SecretProvider for VaultProvider {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        let (mount, path) = self.canonical_parts(&remote.key, "key", false)?;
        Ok(RemoteRef {
            key: self.key_text(&mount, &path),
            property: property::canonical_property(remote.property.as_deref())?,
            version: self.canonical_version(remote.version.as_deref())?,
        })
    }

    /// `path` follows the key rule (a trailing `/` is allowed and dropped; without a
    /// store `path` it must name the mount, and may be the mount alone).
    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        let path = match find.path.as_deref().filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => {
                let p = p.strip_suffix('/').unwrap_or(p);
                let (mount, rest) = self.canonical_parts(p, "find.path", true)?;
                Some(self.key_text(&mount, &rest)).filter(|t| !t.is_empty())
            }
        };
        Ok(FindRequest {
            path,
            name_regexp: find.name_regexp.clone().filter(|r| !r.is_empty()),
            tags: find.tags.clone(),
        })
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        let (mount, path) = self.locate_canonical(remote)?;
        let data = self.read(&mount, &path, remote.version.as_deref()).await?;
        property::secret_value(&data, remote.property.as_deref())
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let (mount, path) = self.locate_canonical(remote)?;
        let data = self.read(&mount, &path, remote.version.as_deref()).await?;
        property::secret_map(&data, remote.property.as_deref())
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        if self.canonical_find(find)? != *find {
            return Err(ProviderError::InvalidRequest(
                "find is not in canonical form".into(),
            ));
        }
        if self.version != KvVersion::V2 {
            return Err(ProviderError::Unsupported(
                "find needs a KV v2 store".into(),
            ));
        }
        if find.name_regexp.is_none() && find.tags.is_empty() {
            return Err(ProviderError::InvalidRequest(
                "find needs name.regexp or tags".into(),
            ));
        }
        let regex = find
            .name_regexp
            .as_deref()
            .map(compile_name_regexp)
            .transpose()?;
        let (mount, base) = match (&self.mount, find.path.as_deref()) {
            (Some(mount), None) => (mount.clone(), Vec::new()),
            (_, Some(p)) => self.canonical_parts(p, "find.path", true)?,
            (None, None) => {
                return Err(ProviderError::InvalidRequest(
                    "find.path must name the mount when the store sets no path".into(),
                ));
            }
        };

        // Breadth-first walk, bounded in entries and depth.
        let mut secrets: Vec<Vec<String>> = Vec::new();
        let mut folders = vec![(base, 0usize)];
        let mut visited = 0usize;
        while let Some((folder, depth)) = folders.pop() {
            for (name, is_folder) in self.list(&mount, &folder).await? {
                visited += 1;
                if visited > MAX_FIND_ENTRIES {
                    return Err(ProviderError::InvalidRequest(format!(
                        "find would visit more than {MAX_FIND_ENTRIES} entries; narrow find.path"
                    )));
                }
                let mut path = folder.clone();
                path.push(name);
                if is_folder {
                    if depth + 1 > MAX_FIND_DEPTH {
                        return Err(ProviderError::InvalidRequest(format!(
                            "find would descend more than {MAX_FIND_DEPTH} folders; narrow find.path"
                        )));
                    }
                    folders.push((path, depth + 1));
                } else {
                    secrets.push(path);
                }
            }
        }

        let mut out = BTreeMap::new();
        for path in secrets {
            // Names are canonical keys: what `get` on this store accepts and decides on.
            // A secret whose path has no canonical key (see `canonical_parts`) is left out.
            let name = self.key_text(&mount, &path);
            if self.strippable(if self.mount.is_some() { &mount } else { &[] }, &path) {
                continue;
            }
            if let Some(re) = &regex
                && !re.is_match(&name)
            {
                continue;
            }
            if !find.tags.is_empty() {
                let tags = self.tags(&mount, &path).await?;
                let all_match = find
                    .tags
                    .iter()
                    .all(|(k, v)| tags.get(k).and_then(Value::as_str) == Some(v.as_str()));
                if !all_match {
                    continue;
                }
            }
            // The per-key decision, before the value is read.
            if !allow(&name) {
                continue;
            }
            match self.read(&mount, &path, None).await {
                Ok(data) => {
                    out.insert(name, property::secret_value(&data, None)?);
                }
                // Deleted since listed (or only soft-deleted versions): not a secret now.
                Err(ProviderError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::resources::SecretIndex;
    use crate::resources::SecretObject;
    use serde_json::json;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn secrets() -> SecretIndex {
        let mut idx = SecretIndex::default();
        idx.insert(
            "eso",
            "vault",
            &SecretObject {
                string_data: [
                    ("token".to_string(), "s.root-token-value\n".to_string()),
                    ("role".to_string(), "role-123".to_string()),
                    ("secret".to_string(), "secret-456".to_string()),
                ]
                .into(),
                ..Default::default()
            },
        )
        .unwrap();
        idx
    }

    fn build(block: Value) -> Result<VaultProvider, ProviderConfigError> {
        build_with(block, Duration::from_secs(5))
    }

    fn build_with(block: Value, timeout: Duration) -> Result<VaultProvider, ProviderConfigError> {
        let secrets = secrets();
        let settings = ProviderSettings {
            timeout,
            ..ProviderSettings::default()
        };
        let ctx = BuildContext {
            store: "vault-store",
            namespace: None,
            secrets: &secrets,
            settings: &settings,
        };
        VaultProvider::from_spec(&ctx, &block)
    }

    fn token_auth() -> Value {
        json!({"tokenSecretRef": {"name": "vault", "key": "token", "namespace": "eso"}})
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn parts(p: &VaultProvider, key: &str) -> Result<(Vec<String>, Vec<String>), ProviderError> {
        p.canonical_parts(key, "key", false)
    }

    fn key_of(p: &VaultProvider, key: &str) -> Result<String, ProviderError> {
        p.canonical_ref(&RemoteRef {
            key: key.into(),
            ..Default::default()
        })
        .map(|r| r.key)
    }

    #[test]
    fn locates_keys_like_eso() {
        let p =
            build(json!({"server": "http://vault:8200/", "path": "secret", "auth": token_auth()}))
                .unwrap();
        assert_eq!(parts(&p, "db").unwrap(), (strs(&["secret"]), strs(&["db"])));
        assert_eq!(
            parts(&p, "a/b").unwrap(),
            (strs(&["secret"]), strs(&["a", "b"]))
        );
        // Issue 8: every ESO spelling of one object has one canonical key.
        for spelling in [
            "admin/root",
            "secret/admin/root",
            "secret/data/admin/root",
            "data/admin/root",
        ] {
            assert_eq!(key_of(&p, spelling).unwrap(), "admin/root", "{spelling}");
            assert_eq!(
                parts(&p, spelling).unwrap(),
                (strs(&["secret"]), strs(&["admin", "root"]))
            );
        }
        assert_eq!(
            p.url(&strs(&["secret"]), Some("data"), &strs(&["a b", "c?d"]))
                .unwrap()
                .as_str(),
            "http://vault:8200/v1/secret/data/a%20b/c%3Fd"
        );
        // `%` is encoded: a literal `%2F` in a segment never becomes a `/` at Vault.
        assert_eq!(
            p.url(&strs(&["secret"]), Some("data"), &strs(&["a%2Fb"]))
                .unwrap()
                .as_str(),
            "http://vault:8200/v1/secret/data/a%252Fb"
        );
        for bad in [
            "",
            "../sys/seal",
            "a/../../b",
            "a//b",
            "/a",
            "a/",
            "a/./b",
            "a\nb",
            // Ambiguous: the object's own path would start with the mount or `data/`.
            "secret/secret/x",
            "secret/data/data/x",
            "data/secret/x",
            "data/data/x",
        ] {
            assert!(
                matches!(parts(&p, bad), Err(ProviderError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
        let no_path =
            build(json!({"server": "http://vault:8200", "version": "v1", "auth": token_auth()}))
                .unwrap();
        assert_eq!(
            parts(&no_path, "kv/team/db").unwrap(),
            (strs(&["kv"]), strs(&["team", "db"]))
        );
        assert_eq!(key_of(&no_path, "kv/data/db").unwrap(), "kv/data/db");
        assert!(parts(&no_path, "db").is_err());
        let v2_no_path =
            build(json!({"server": "http://vault:8200", "auth": token_auth()})).unwrap();
        assert_eq!(
            parts(&v2_no_path, "secret/data/db").unwrap(),
            (strs(&["secret"]), strs(&["db"]))
        );
        assert_eq!(key_of(&v2_no_path, "secret/data/db").unwrap(), "secret/db");
        assert!(parts(&v2_no_path, "secret/data/data/db").is_err());
        // Issue 19: Vault's own mounts are never a store's mount.
        for bad in [
            "auth/token/lookup-self",
            "sys/internal/ui/mounts",
            "identity/entity/id",
            "cubbyhole/x",
        ] {
            assert!(parts(&v2_no_path, bad).is_err(), "{bad}");
            assert!(parts(&no_path, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_refs_and_finds() {
        let p =
            build(json!({"server": "http://vault:8200/", "path": "secret", "auth": token_auth()}))
                .unwrap();
        let c = p
            .canonical_ref(&RemoteRef {
                key: "secret/data/app".into(),
                property: Some(String::new()),
                version: Some("007".into()),
            })
            .unwrap();
        assert_eq!(
            c,
            RemoteRef {
                key: "app".into(),
                property: None,
                version: Some("7".into())
            }
        );
        assert_eq!(p.canonical_ref(&c).unwrap(), c, "idempotent");
        assert_eq!(
            p.canonical_ref(&RemoteRef {
                key: "app".into(),
                version: Some("0".into()),
                ..Default::default()
            })
            .unwrap()
            .version,
            None
        );
        // Reads refuse what is not canonical.
        assert!(matches!(
            p.locate_canonical(&RemoteRef {
                key: "secret/app".into(),
                ..Default::default()
            }),
            Err(ProviderError::InvalidRequest(_))
        ));
        let find = |path: &str| FindRequest {
            path: Some(path.into()),
            name_regexp: Some(".".into()),
            ..Default::default()
        };
        assert_eq!(
            p.canonical_find(&find("secret/data/team/")).unwrap().path,
            Some("team".into())
        );
        let no_path = build(json!({"server": "http://vault:8200", "auth": token_auth()})).unwrap();
        // Issue 8: ESO's spelling of a find path on a store without `path`.
        for spelling in ["secret/data/team", "secret/team", "secret/team/"] {
            assert_eq!(
                no_path.canonical_find(&find(spelling)).unwrap().path,
                Some("secret/team".into()),
                "{spelling}"
            );
        }
        assert_eq!(
            no_path.canonical_find(&find("secret")).unwrap().path,
            Some("secret".into())
        );
        assert!(no_path.canonical_find(&find("sys/x")).is_err());
    }

    /// Property (issue 8): for random objects and random spellings, every spelling that
    /// reaches the same backend object (the Vault URL actually requested, read back the
    /// way Vault routes it) is decided on the same key, and so decided alike, by a
    /// policy set with a key-level forbid. Seeded, so a failure replays.
    #[test]
    fn spellings_of_one_object_decide_alike() {
        use crate::authn::Identity;
        use crate::authz::{Action, PolicyEngine, PolicyFile, Resource};
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        let (engine, errors) = PolicyEngine::build(
            &[],
            &[PolicyFile {
                path: "p.cedar".into(),
                text: r#"
                    permit (principal, action, resource);
                    forbid (principal, action == Esi::Action::"get", resource is Esi::RemoteKey)
                    when { resource.key like "admin/*" || resource.key like "secret/admin/*"
                        || resource.key like "*/data/*" };
                "#
                .into(),
            }],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let who = Identity::of_service_account("f", "i", "n", "s");
        let stores = [
            json!({"server": "http://vault:8200", "path": "secret", "auth": token_auth()}),
            json!({"server": "http://vault:8200", "path": "secret", "version": "v1", "auth": token_auth()}),
            json!({"server": "http://vault:8200", "path": "kv/team", "auth": token_auth()}),
            json!({"server": "http://vault:8200", "auth": token_auth()}),
            json!({"server": "http://vault:8200", "version": "v1", "auth": token_auth()}),
        ];
        const WORDS: [&str; 10] = [
            "admin", "root", "secret", "data", "kv", "team", "a", "%2F", "..", "metadata",
        ];
        let mut rng = StdRng::seed_from_u64(0x8_19);
        for spec in stores {
            let p = build(spec).unwrap();
            let v2 = p.version == KvVersion::V2;
            // object URL path -> set of canonical keys decided for it
            let mut seen: BTreeMap<String, (String, bool)> = BTreeMap::new();
            for _ in 0..4000 {
                let len = rng.random_range(1..5);
                let words: Vec<&str> = (0..len)
                    .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                    .collect();
                let mut spelling = words.join("/");
                // Sometimes spell it the ESO way: with the mount and/or `data/`.
                match rng.random_range(0..4) {
                    0 => {}
                    1 => spelling = format!("data/{spelling}"),
                    2 => spelling = format!("secret/{spelling}"),
                    _ => spelling = format!("secret/data/{spelling}"),
                }
                let Ok(c) = p.canonical_ref(&RemoteRef {
                    key: spelling.clone(),
                    ..Default::default()
                }) else {
                    continue;
                };
                assert_eq!(p.canonical_ref(&c).unwrap(), c, "idempotent: {spelling}");
                let (mount, path) = p.locate_canonical(&c).unwrap();
                let url = p.url(&mount, v2.then_some("data"), &path).unwrap();
                // What Vault reads: the decoded URL path.
                let object: Vec<String> = url
                    .path_segments()
                    .unwrap()
                    .map(|s| {
                        url::form_urlencoded::parse(format!("x={s}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    })
                    .collect();
                let object = object.join("/");
                let allowed = engine
                    .decide(
                        &who,
                        Action::Get,
                        &Resource::RemoteKey {
                            store: "s".into(),
                            key: c.key.clone(),
                        },
                    )
                    .allowed;
                match seen.get(&object) {
                    Some((key, decided)) => {
                        assert_eq!(key, &c.key, "{spelling} reaches {object}");
                        assert_eq!(*decided, allowed, "{spelling} reaches {object}");
                    }
                    None => {
                        seen.insert(object, (c.key.clone(), allowed));
                    }
                }
            }
            assert!(seen.len() > 50, "too few objects reached: {}", seen.len());
            assert!(seen.values().any(|(_, a)| !a) && seen.values().any(|(_, a)| *a));
        }
    }

    #[test]
    fn config_errors() {
        let cases = [
            json!({"path": "secret", "auth": token_auth()}),
            json!({"server": "ftp://vault", "auth": token_auth()}),
            json!({"server": "http://u:p@vault", "auth": token_auth()}),
            json!({"server": "http://vault"}),
            json!({"server": "http://vault", "auth": {}}),
            json!({"server": "http://vault", "version": "v3", "auth": token_auth()}),
            json!({"server": "http://vault", "auth": {"kubernetes": {"role": "r"}}}),
            json!({"server": "http://vault", "auth": {"tokenSecretRef": {"name": "vault", "key": "token", "namespace": "eso"},
                "appRole": {"roleId": "r", "secretRef": {"name": "vault", "key": "secret", "namespace": "eso"}}}}),
            json!({"server": "http://vault", "auth": {"appRole": {"secretRef": {"name": "vault", "key": "secret", "namespace": "eso"}}}}),
            json!({"server": "http://vault", "auth": {"tokenSecretRef": {"name": "vault", "key": "nope", "namespace": "eso"}}}),
            json!({"server": "http://vault", "caBundle": "%%%", "auth": token_auth()}),
            json!({"server": "http://vault", "caProvider": {"type": "Secret"}, "auth": token_auth()}),
            json!({"server": "http://vault", "path": "a/../b", "auth": token_auth()}),
        ];
        for case in cases {
            let err = build(case.clone()).err();
            assert!(err.is_some(), "{case}");
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(!msg.contains("root-token-value"), "{msg}");
        }
        let ok = build(json!({"server": "http://vault", "auth": {"appRole": {
            "roleRef": {"name": "vault", "key": "role", "namespace": "eso"},
            "secretRef": {"name": "vault", "key": "secret", "namespace": "eso"}}}}))
        .unwrap();
        let dbg = format!("{ok:?}");
        assert!(
            !dbg.contains("secret-456") && !dbg.contains("role-123"),
            "{dbg}"
        );
    }

    /// What the mock answers for `sys/internal/ui/mounts/{m}`: `secret` is KV v2, `kv`
    /// KV v1, `transit` another engine; anything else is refused (403), as Vault does.
    fn mount_answer(mount: &str) -> (u16, Value) {
        let (kind, version) = match mount {
            "secret" => ("kv", json!({"version": "2"})),
            "kv" => ("kv", json!({"version": "1"})),
            "transit" => ("transit", Value::Null),
            _ => {
                return (
                    403,
                    json!({"errors": ["preflight capability check returned 403"]}),
                );
            }
        };
        (
            200,
            json!({"data": {"type": kind, "options": version, "path": format!("{mount}/")}}),
        )
    }

    /// A mock Vault: answers `sys/internal/ui/mounts/…` itself (see [`mount_answer`]),
    /// and every other request with `answers` in order, recording each such request head
    /// (mount checks are recorded in the second list).
    async fn serve(answers: Vec<(u16, Value)>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let (addr, seen, _) = serve_counting(answers).await;
        (addr, seen)
    }

    type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    async fn serve_counting(answers: Vec<(u16, Value)>) -> (String, Seen, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let checks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (record, record_checks) = (seen.clone(), checks.clone());
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 16384];
                let mut head = Vec::new();
                loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    head.extend_from_slice(&buf[..n]);
                    if n == 0 || head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                // Read a JSON body announced by Content-Length, if any.
                if let Some(len) = text.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                }) {
                    let start = text.find("\r\n\r\n").unwrap() + 4;
                    let mut have = head.len() - start;
                    while have < len {
                        let n = sock.read(&mut buf).await.unwrap();
                        have += n;
                    }
                }
                let mount = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/v1/sys/internal/ui/mounts/"))
                    .map(str::to_string);
                let (status, body) = match mount {
                    Some(m) => {
                        record_checks.lock().unwrap().push(m.clone());
                        mount_answer(&m)
                    }
                    None => {
                        record.lock().unwrap().push(text);
                        match answers.next() {
                            Some(a) => a,
                            None => return,
                        }
                    }
                };
                let body = body.to_string();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(reply.as_bytes()).await.unwrap();
                sock.shutdown().await.ok();
            }
        });
        (format!("http://{addr}"), seen, checks)
    }

    /// Issue 19: a KV v1 store without `path` is no proxy to Vault's other APIs. Vault's
    /// own mounts are refused before any call; any other mount is verified once (cached)
    /// and refused unless it is a KV mount of the store's version.
    #[tokio::test]
    async fn keys_stay_inside_kv_mounts_of_the_store_version() {
        let (server, seen, checks) = serve_counting(vec![(200, json!({"data": {"a": "1"}}))]).await;
        let p = build(json!({"server": server, "version": "v1", "auth": token_auth()})).unwrap();
        let get = |key: &str| RemoteRef {
            key: key.into(),
            property: Some("a".into()),
            version: None,
        };
        for key in [
            "auth/token/lookup-self",
            "sys/internal/ui/mounts",
            "identity/entity/id/x",
            "cubbyhole/x",
        ] {
            assert!(
                matches!(
                    p.canonical_ref(&get(key)),
                    Err(ProviderError::InvalidRequest(_))
                ),
                "{key}"
            );
        }
        for key in ["transit/keys/k", "secret/data/x"] {
            let r = p.canonical_ref(&get(key)).unwrap();
            assert!(
                matches!(
                    p.get_secret(&r).await,
                    Err(ProviderError::InvalidRequest(_))
                ),
                "{key}"
            );
        }
        // Vault refuses the check for a mount that does not exist (or the token): fail.
        assert_eq!(
            p.get_secret(&get("database/creds/app")).await,
            Err(ProviderError::Backend("permission denied by vault".into()))
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing but mount checks was called"
        );
        assert_eq!(p.get_secret(&get("kv/x")).await.unwrap(), b"1");
        assert_eq!(
            p.get_secret(&get("transit/keys/k")).await,
            Err(ProviderError::InvalidRequest(
                "key is not inside a KV v1 mount".into()
            ))
        );
        // One check per mount: verdicts are cached.
        assert_eq!(
            *checks.lock().unwrap(),
            ["transit", "secret", "database", "kv"]
        );
        // A store whose `path` is a Vault system mount does not load.
        assert!(
            build(json!({"server": server, "path": "sys", "version": "v1", "auth": token_auth()}))
                .is_err()
        );
    }

    #[tokio::test]
    async fn sends_token_namespace_and_version() {
        let (server, seen) = serve(vec![(
            200,
            json!({"data": {"data": {"user": "u", "n": {"x": 1}}, "metadata": {"version": 3}}}),
        )])
        .await;
        let p = build(
            json!({"server": server, "path": "secret", "namespace": "team-a/sub",
            "auth": token_auth()}),
        )
        .unwrap();
        let value = p
            .get_secret(&RemoteRef {
                key: "app/db".into(),
                property: Some("n.x".into()),
                version: Some("3".into()),
            })
            .await
            .unwrap();
        assert_eq!(value, b"1");
        let req = seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(
            req.starts_with("get /v1/secret/data/app/db?version=3 "),
            "{req}"
        );
        assert!(
            req.contains("x-vault-token: s.root-token-value\r\n"),
            "{req}"
        );
        assert!(req.contains("x-vault-namespace: team-a/sub\r\n"), "{req}");
    }

    #[tokio::test]
    async fn maps_statuses() {
        let (server, _) = serve(vec![
            (404, json!({"errors": []})),
            (403, json!({"errors": ["permission denied"]})),
            (503, json!({"errors": ["sealed"]})),
            (200, json!({"data": null})),
        ])
        .await;
        let p =
            build(json!({"server": server, "path": "kv", "version": "v1", "auth": token_auth()}))
                .unwrap();
        let r = RemoteRef {
            key: "x".into(),
            ..Default::default()
        };
        assert_eq!(p.get_secret(&r).await, Err(ProviderError::NotFound));
        assert_eq!(
            p.get_secret(&r).await,
            Err(ProviderError::Backend("permission denied by vault".into()))
        );
        assert!(matches!(
            p.get_secret(&r).await,
            Err(ProviderError::Unavailable(_))
        ));
        assert_eq!(p.get_secret(&r).await, Err(ProviderError::NotFound));
        // Versions are a KV v2 feature; checked before any call.
        let versioned = RemoteRef {
            version: Some("1".into()),
            ..r.clone()
        };
        assert!(matches!(
            p.get_secret(&versioned).await,
            Err(ProviderError::Unsupported(_))
        ));
        assert!(matches!(
            p.find(&FindRequest {
                name_regexp: Some(".*".into()),
                ..Default::default()
            })
            .await,
            Err(ProviderError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn approle_logs_in_once_and_again_on_403() {
        let (server, seen) = serve(vec![
            (
                200,
                json!({"auth": {"client_token": "tok-1", "lease_duration": 3600}}),
            ),
            (200, json!({"data": {"data": {"a": "1"}}})),
            (200, json!({"data": {"data": {"a": "2"}}})),
            (403, json!({"errors": ["permission denied"]})),
            (
                200,
                json!({"auth": {"client_token": "tok-2", "lease_duration": 3600}}),
            ),
            (200, json!({"data": {"data": {"a": "3"}}})),
        ])
        .await;
        let p = build(
            json!({"server": server, "path": "secret", "namespace": "ns1", "auth": {
            "namespace": "auth-ns",
            "appRole": {"path": "my-approle", "roleId": "role-123",
                "secretRef": {"name": "vault", "key": "secret", "namespace": "eso"}}}}),
        )
        .unwrap();
        let r = RemoteRef {
            key: "k".into(),
            property: Some("a".into()),
            version: None,
        };
        assert_eq!(p.get_secret(&r).await.unwrap(), b"1");
        assert_eq!(p.get_secret(&r).await.unwrap(), b"2");
        assert_eq!(p.get_secret(&r).await.unwrap(), b"3");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 6);
        let login = seen[0].to_ascii_lowercase();
        assert!(
            login.starts_with("post /v1/auth/my-approle/login "),
            "{login}"
        );
        assert!(login.contains("x-vault-namespace: auth-ns\r\n"), "{login}");
        assert!(
            seen[1]
                .to_ascii_lowercase()
                .contains("x-vault-token: tok-1\r\n")
        );
        assert!(
            seen[1]
                .to_ascii_lowercase()
                .contains("x-vault-namespace: ns1\r\n")
        );
        assert!(
            seen[2]
                .to_ascii_lowercase()
                .contains("x-vault-token: tok-1\r\n")
        );
        assert!(
            seen[4]
                .to_ascii_lowercase()
                .starts_with("post /v1/auth/my-approle/login ")
        );
        assert!(
            seen[5]
                .to_ascii_lowercase()
                .contains("x-vault-token: tok-2\r\n")
        );
    }

    #[tokio::test]
    async fn approle_renews_before_lease_end() {
        let (server, seen) = serve(vec![
            (
                200,
                json!({"auth": {"client_token": "short", "lease_duration": 1}}),
            ),
            (200, json!({"data": {"data": {"a": "1"}}})),
            (
                200,
                json!({"auth": {"client_token": "huge", "lease_duration": u64::MAX}}),
            ),
            (200, json!({"data": {"data": {"a": "2"}}})),
            (200, json!({"data": {"data": {"a": "3"}}})),
        ])
        .await;
        let p = build(json!({"server": server, "path": "secret", "auth": {
            "appRole": {"roleId": "role-123",
                "secretRef": {"name": "vault", "key": "secret", "namespace": "eso"}}}}))
        .unwrap();
        let r = RemoteRef {
            key: "k".into(),
            property: Some("a".into()),
            version: None,
        };
        assert_eq!(p.get_secret(&r).await.unwrap(), b"1");
        // A 1 s lease is renewed after 0.8 s.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(p.get_secret(&r).await.unwrap(), b"2");
        assert_eq!(p.get_secret(&r).await.unwrap(), b"3");
        let seen = seen.lock().unwrap();
        assert!(
            seen[2]
                .to_ascii_lowercase()
                .starts_with("post /v1/auth/approle/login ")
        );
        assert!(
            seen[4]
                .to_ascii_lowercase()
                .contains("x-vault-token: huge\r\n")
        );
    }

    #[tokio::test]
    async fn approle_login_failure_is_safe() {
        let (server, _) = serve(vec![(
            400,
            json!({"errors": ["invalid role or secret ID"]}),
        )])
        .await;
        let p = build(json!({"server": server, "path": "secret", "auth": {
            "appRole": {"roleId": "role-123",
                "secretRef": {"name": "vault", "key": "secret", "namespace": "eso"}}}}))
        .unwrap();
        let err = p
            .get_secret(&RemoteRef {
                key: "k".into(),
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ProviderError::Backend(_)));
        let msg = err.to_string();
        assert!(
            !msg.contains("secret-456") && !msg.contains("role-123"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let p = build_with(
            json!({"server": format!("http://{addr}"), "path": "secret", "auth": token_auth()}),
            Duration::from_millis(300),
        )
        .unwrap();
        let err = p
            .get_secret(&RemoteRef {
                key: "k".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(err, Err(ProviderError::Timeout));
        hold.abort();
    }

    #[tokio::test]
    async fn closed_port_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let p = build(
            json!({"server": format!("http://{addr}"), "path": "secret", "auth": token_auth()}),
        )
        .unwrap();
        let err = p
            .get_secret(&RemoteRef {
                key: "k".into(),
                ..Default::default()
            })
            .await;
        assert!(matches!(err, Err(ProviderError::Unavailable(_))), "{err:?}");
    }
}
