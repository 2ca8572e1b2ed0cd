//! `esi-cli`: fetches secrets from an ESI Federation Server (or the local cluster) and
//! injects them into the application (see `esi::cli`).

fn main() -> std::process::ExitCode {
    esi::cli::main_entry()
}
