//! ESI Federation: a secrets-federation gateway.
//!
//! Request path (one way): `api` → `authn` (verify the ServiceAccount JWT) →
//! `authz` (Cedar decision) → `providers` / `generators` (backend) → answer.
//! `source` says which objects exist (a directory of manifests; Kubernetes next) as events;
//! `config` builds them into one immutable snapshot that requests read without locks and
//! that is swapped atomically on change.

pub mod api;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cli;
pub mod config;
pub mod generators;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod reconcile;
pub mod remote;
pub mod resources;
pub mod runtime;
pub mod source;
pub mod status;
pub mod support;
pub mod template;
pub mod tls;
pub mod webhook;
