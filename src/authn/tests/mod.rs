//! The authenticator's tests that span modules: generated keys and static key sets
//! (`keys`), JWKS fetched from a local HTTPS server (`server`), OIDC federations' discovery
//! and claim rules (`oidc`), third-party token vectors (`vectors`), with shared keys and
//! claims (`support`). Unit tests of one module stay beside its code.

mod keys;
mod oidc;
mod server;
pub(crate) mod support;
mod vectors;
