//! Authentication: ServiceAccount JWTs verified against each federation's keys.

mod identity;

pub use identity::Identity;
