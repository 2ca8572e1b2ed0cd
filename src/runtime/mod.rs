//! Running the server: the HTTPS listener with its connection limits. (The rest of the
//! wiring — TLS choice, ledger, sweeper, reload — moves here from the binary next.)

pub mod listener;

pub use listener::{ListenerSettings, serve_https};
