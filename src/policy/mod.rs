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
//! * [`cases`]: `test`, YAML cases run against the same engine.
//!
//! This module depends on `authz`, `authn`, `api` and `config`; none of them depends on it.

pub mod cases;
pub mod explain;
pub mod listing;
mod render;
pub mod validate;

use std::path::{Path, PathBuf};

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
}

/// The directories every command reads, as `serve --manifests DIR --policies DIR`.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Directory of manifests (recursive).
    pub manifests: PathBuf,
    /// Directory of `.cedar` files.
    pub policies: Option<PathBuf>,
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
