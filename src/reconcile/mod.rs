//! The ExternalSecret reconciler: ESO's `ExternalSecret` → Kubernetes `Secret`, with this
//! project's stores and generators.
//!
//! - [`inventory`]: what exists, built from `source` events (stores with their providers,
//!   generators, ExternalSecrets, Secrets, ConfigMaps, Namespaces), last good per object;
//! - [`sync()`]: one ExternalSecret → the whole desired Secret or a [`SyncError`] (every
//!   backend call happens there; no Kubernetes client, so both modes share it);
//! - [`policy`]: pure decisions (refresh, creation and deletion policies);
//! - [`keys`]: pure data transformations (decoding, key conversion, rewrite);
//! - [`stores`]: controller classes and ClusterSecretStore conditions;
//! - [`output`]: `esi-server reconcile --manifests DIR --output OUT`;
//! - [`rollout`]: the workloads to roll when a Secret they read changes (pure).
//!
//! Kubernetes mode (work queue, status writes, events, finalizers) comes next and calls the
//! same [`sync()`].

mod error;
pub mod es_metrics;
pub mod inventory;
pub mod keys;
pub mod kubernetes;
pub mod output;
pub mod policy;
pub mod records;
pub mod rollout;
pub mod stores;
pub mod sync;
pub mod template;

pub use error::{REASON_DELETED, REASON_MISSING, REASON_SYNCED, REASON_SYNCED_ERROR, SyncError};
pub use inventory::{ExternalSecretObject, Inventory, InventoryBuilder};
pub use sync::{DesiredSecret, IssuedCredential, SyncOptions, sync};
