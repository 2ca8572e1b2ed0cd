//! Running the server: its wiring ([`serve`]) and the HTTPS listener with its connection
//! limits ([`listener`]). `main` only parses flags into a [`ServeConfig`] and calls [`serve`].

pub mod listener;
mod serve;

pub use listener::{ListenerSettings, serve_https, serve_https_reloading};
pub use serve::{
    KubernetesMode, LedgerChoice, Listening, ServeConfig, ServeError, Source, TlsSource, serve,
};
