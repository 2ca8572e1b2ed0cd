//! Resources from a directory (or, later, Kubernetes) into one immutable snapshot.

pub mod loader;
pub mod snapshot;
pub mod watch;

pub use loader::LoadError;
pub use snapshot::{DirectorySource, Snapshot};
