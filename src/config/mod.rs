//! Resources from a directory (or, later, Kubernetes) into one immutable snapshot.

pub mod loader;
pub mod resources;
pub mod secrets;
pub mod snapshot;
pub mod watch;

pub use loader::LoadError;
pub use secrets::{SecretIndex, SecretRefError};
pub use snapshot::{DirectorySource, GeneratorKey, Snapshot};
