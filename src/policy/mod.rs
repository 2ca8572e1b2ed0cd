//! `esi-server policy …`: the policies of a manifest and policy directory, seen before
//! they reach production (issue 13).
//!
//! Every command loads the directories exactly as `serve` does ([`load`]: the one
//! [`DirectorySource`] loader, the one [`crate::authz::PolicyEngine`]), so what it shows
//! is what the server would enforce:
//!
//! * [`listing`]: `compile`, the Cedar text of every policy in force with the ids
//!   decisions report;
//! * [`validate`]: `validate` (and `check`), every load problem with its file and line;
//! * [`explain`]: `explain`, one decision through [`crate::authz::PolicyEngine::decide`]
//!   with the request built as the API builds it;
//! * [`cases`]: `test`, YAML cases run against the same engine;
//! * [`lint`]: `lint`, findings about what the policies allow (or cannot);
//! * [`diff`]: `diff`, who gains or loses what between two trees;
//! * [`report`]: `report --html`, the access matrix as one page.
//!
//! `lint`, `diff` and `report` evaluate the same requests: [`requests`] enumerates them
//! from what the trees name ([`names`]) and decides them with each tree's engine. [`git`]
//! extracts a tree at a git revision.
//!
//! This module depends on `authz`, `authn`, `api` and `config`; none of them depends on it.

pub mod cases;
pub mod diff;
pub mod explain;
pub mod git;
pub mod lint;
pub mod listing;
pub mod names;
mod render;
pub mod report;
pub mod requests;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::authz::{CheckedAuthorization, ListedPolicy};
use crate::config::{DirectorySource, Snapshot};
use crate::providers::ProviderSettings;

/// Largest file the tooling reads besides the loader (case files, tokens, a manifest
/// re-read to point at a line).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a policy command could not run (a decision that denies, or a failed case, is not
/// an error: it is the command's answer).
#[derive(Debug, thiserror::Error)]
pub enum PolicyToolError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_FILE_BYTES`].
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// A request given on the command line or in a case is not well formed.
    #[error("{0}")]
    BadRequest(String),
    /// The token could not be used.
    #[error("token: {0}")]
    Token(String),
    /// A case file is not valid.
    #[error("{path}: {reason}")]
    BadCases {
        /// The file (and line, when known).
        path: String,
        /// Why.
        reason: String,
    },
    /// Output could not be encoded.
    #[error("cannot encode the output: {0}")]
    Encode(#[from] serde_json::Error),
    /// A tree could not be extracted from git.
    #[error("git: {0}")]
    Git(String),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The directories every command reads, as `serve --manifests DIR --policies DIR`.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Directory of manifests (recursive).
    pub manifests: PathBuf,
    /// Directory of `.cedar` files.
    pub policies: Option<PathBuf>,
}

/// One tree (manifests and policies) loaded as `serve` loads it, with what the tooling
/// reads besides the snapshot.
pub struct Tree {
    /// How the tree is named in output: its manifest directory, or `REV (sha)`.
    pub label: String,
    /// Its directories.
    pub sources: Sources,
    /// The load.
    pub snapshot: Snapshot,
    /// The Authorizations in force, by name.
    pub authorizations: Vec<Arc<CheckedAuthorization>>,
    /// Every policy in force ([`crate::authz::PolicyEngine::listing`]).
    pub listing: Vec<ListedPolicy>,
    /// For a tree extracted from git: its temporary root and revision, so paths are shown
    /// as `REV:path`.
    extracted: Option<(PathBuf, String)>,
}

impl Tree {
    /// Loads `sources` ([`load`]), named `label` in output.
    pub fn load(sources: Sources, label: impl Into<String>) -> Tree {
        let snapshot = load(&sources);
        let authorizations = snapshot.policies.authorizations();
        let listing = snapshot.policies.listing();
        Tree {
            label: label.into(),
            sources,
            snapshot,
            authorizations,
            listing,
            extracted: None,
        }
    }

    /// Loads a tree extracted from git ([`git::Checkout`]).
    pub fn load_checkout(checkout: &git::Checkout) -> Tree {
        let mut tree = Tree::load(checkout.sources.clone(), checkout.label.clone());
        tree.extracted = Some((checkout.root().to_path_buf(), checkout.rev.clone()));
        tree
    }

    /// A path (or `path#document` origin) as shown: `REV:relative/path` for an extracted
    /// tree, else as given.
    pub fn shown(&self, path: &str) -> String {
        if let Some((root, rev)) = &self.extracted
            && let Some(rest) = Path::new(path).strip_prefix(root).ok()
        {
            return format!("{rev}:{}", rest.display());
        }
        path.to_owned()
    }
}

/// Where the old tree of `diff` and `report` comes from.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// No old tree (`report` of one tree).
    None,
    /// Other directories.
    Dirs(Sources),
    /// `A..B`: the same directories at revisions A and B (B empty: `HEAD`); `A`: at A, and
    /// the working tree as the new one.
    Git(String),
}

/// The new tree and, when compared, the old one (with the git checkouts they were read
/// from, removed when this is dropped).
pub struct Trees {
    /// The old tree.
    pub old: Option<Tree>,
    /// The new tree.
    pub new: Tree,
    _checkouts: Vec<git::Checkout>,
}

impl Trees {
    /// Loads `new` (working-tree directories) and the `baseline`. Errors: a git revision
    /// that does not resolve, a directory outside the repository, an extraction failure.
    pub fn load(new: Sources, baseline: Baseline) -> Result<Trees, PolicyToolError> {
        let shown = |s: &Sources| s.manifests.display().to_string();
        match baseline {
            Baseline::None => Ok(Trees {
                old: None,
                new: Tree::load(new.clone(), shown(&new)),
                _checkouts: Vec::new(),
            }),
            Baseline::Dirs(old) => Ok(Trees {
                old: Some(Tree::load(old.clone(), shown(&old))),
                new: Tree::load(new.clone(), shown(&new)),
                _checkouts: Vec::new(),
            }),
            Baseline::Git(range) => {
                let (a, b) = git::parse_range(&range)?;
                let old_checkout = git::extract(&new, &a)?;
                let old = Tree::load_checkout(&old_checkout);
                let mut checkouts = vec![old_checkout];
                let new = match b {
                    Some(b) => {
                        let c = git::extract(&new, &b)?;
                        let tree = Tree::load_checkout(&c);
                        checkouts.push(c);
                        tree
                    }
                    None => Tree::load(new.clone(), format!("working tree ({})", shown(&new))),
                };
                Ok(Trees {
                    old: Some(old),
                    new,
                    _checkouts: checkouts,
                })
            }
        }
    }
}

/// Loads the directories once, with the loader of `serve` (and `check`).
pub fn load(sources: &Sources) -> Snapshot {
    DirectorySource {
        manifests: sources.manifests.clone(),
        policies: sources.policies.clone(),
        provider_settings: ProviderSettings::default(),
    }
    .load()
}

/// Reads a file of at most [`MAX_FILE_BYTES`].
pub(crate) fn read_bounded(path: &Path) -> Result<String, PolicyToolError> {
    use std::io::Read;
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| PolicyToolError::Read {
        path: shown(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| PolicyToolError::Read {
            path: shown(),
            source,
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(PolicyToolError::TooLarge { path: shown() });
    }
    Ok(text)
}

/// Trees written to temporary directories, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Sources, Tree};

    /// A KubernetesFederation `name` of issuer `https://<name>.example` with static keys.
    pub fn federation(name: &str) -> String {
        format!(
            r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: {name}}}
spec:
  issuer: https://{name}.example
  audiences: [esi]
  jwks: '{{"keys": [{{"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "x": "haeMVoAV7dT5dXsoSvSni6Cc7MezOw4ptr7FFXCBKJs", "y": "BpvYuWiV4yKbO4cYVS1DNUtZl3sly2wYDOlxnm0xAuE", "kid": "k"}}]}}'
"#
        )
    }

    /// A ClusterSecretStore `name` (ESO's fake provider) holding key `k`.
    pub fn store(name: &str) -> String {
        format!(
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {{name: {name}}}\nspec:\n  provider:\n    fake:\n      data:\n        - {{key: k, value: v}}\n"
        )
    }

    /// An Authorization `name` of federation `alpha` for `subject`, with `grants` (YAML
    /// lines under `spec`, two-space indented).
    pub fn authorization(name: &str, subject: &str, grants: &str) -> String {
        format!(
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: alpha}}\n  subject: {{oidc: {{issuer: https://alpha.example, subject: \"{subject}\"}}}}\n{grants}"
        )
    }

    /// An OIDCFederation `name` of issuer `https://<name>.example` (keys by discovery,
    /// never fetched by the tools) handing claim `environment` to policies.
    pub fn oidc_federation(name: &str) -> String {
        format!(
            "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OIDCFederation\nmetadata: {{name: {name}}}\nspec: {{issuer: 'https://{name}.example', audiences: [esi], claims: [environment]}}\n"
        )
    }

    /// An Authorization `name` of federation `fed` of kind `kind` (its issuer
    /// `https://<fed>.example`) for `subject`, with `grants` as for [`authorization`].
    pub fn authorization_of(
        name: &str,
        kind: &str,
        fed: &str,
        subject: &str,
        grants: &str,
    ) -> String {
        format!(
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: {kind}, name: {fed}}}\n  subject: {{oidc: {{issuer: https://{fed}.example, subject: \"{subject}\"}}}}\n{grants}"
        )
    }

    /// A SpiffeFederation `name` of trust domain `td` with a static bundle.
    pub fn spiffe_federation(name: &str, td: &str) -> String {
        format!(
            r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: {name}}}
spec:
  trustDomain: {td}
  audiences: [esi]
  bundle: '{{"keys": [{{"kty": "EC", "use": "jwt-svid", "crv": "P-256", "x": "haeMVoAV7dT5dXsoSvSni6Cc7MezOw4ptr7FFXCBKJs", "y": "BpvYuWiV4yKbO4cYVS1DNUtZl3sly2wYDOlxnm0xAuE", "kid": "k"}}]}}'
"#
        )
    }

    /// An Authorization `name` of SpiffeFederation `fed` for `spiffe_id` (a `spiffeID`
    /// subject), with `grants` as for [`authorization`].
    pub fn spiffe_authorization(name: &str, fed: &str, spiffe_id: &str, grants: &str) -> String {
        format!(
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: SpiffeFederation, name: {fed}}}\n  subject: {{spiffe: {{spiffeID: '{spiffe_id}'}}}}\n{grants}"
        )
    }

    /// Federation `alpha`, store `main`, and Authorization `app` giving `apps/app` all of
    /// `main`; tests add what they need.
    pub fn app_world() -> Vec<String> {
        vec![
            federation("alpha"),
            store("main"),
            authorization(
                "app",
                "system:serviceaccount:apps:app",
                "  allowedClusterSecretStores: [main]\n",
            ),
        ]
    }

    /// The documents joined into `manifests/world.yaml`, and `policies` as `.cedar` files,
    /// loaded.
    pub fn tree(documents: &[String], policies: &[(&str, &str)]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let manifests = dir.path().join("manifests");
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        std::fs::create_dir_all(&policy_dir).expect("mkdir");
        std::fs::write(manifests.join("world.yaml"), documents.join("---\n")).expect("write");
        for (name, text) in policies {
            std::fs::write(policy_dir.join(name), text).expect("write");
        }
        let tree = Tree::load(
            Sources {
                manifests,
                policies: Some(policy_dir),
            },
            "test",
        );
        (dir, tree)
    }
}
