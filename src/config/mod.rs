//! Resources into one immutable snapshot: the snapshot builder that every source feeds
//! (`snapshot`), and directory mode's reloader (`watch`).

pub mod kubernetes;
pub mod snapshot;
pub mod watch;

pub use crate::source::LoadError;
pub use snapshot::{DirectoryReloader, DirectorySource, Snapshot, SnapshotBuilder};
