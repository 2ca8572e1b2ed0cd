//! Resources from a directory (or, later, Kubernetes) into one immutable snapshot.

pub mod loader;
pub mod resources;
pub mod secrets;

pub use secrets::{SecretIndex, SecretRefError};
