//! The ExternalSecret reconciler.

pub mod rollout;
