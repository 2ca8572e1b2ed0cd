//! Resources from a directory (or, later, Kubernetes) into one immutable snapshot.

pub mod loader;
pub mod resources;
pub mod secrets;
#[cfg(any())]
pub mod snapshot;
#[cfg(any())]
pub mod watch;

pub use loader::LoadError;
pub use secrets::{SecretIndex, SecretRefError};
#[cfg(any())]
pub use snapshot::{DirectorySource, GeneratorKey, Snapshot};
