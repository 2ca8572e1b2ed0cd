//! The baseline of `scripts/bench.sh`: a bare axum handler over rustls (HTTP/1.1 and h2,
//! aws-lc-rs, the server's own stack) reading any POST's body and answering fixed bytes, with nothing else
//! on the path: no token, no decision, no backend, no logs, no limits. What the machine
//! can do for one HTTPS request; esi-server's own cost is measured against it.
//!
//! `bare_https CERT KEY BODY_FILE` prints `listening on https://127.0.0.1:PORT` and serves
//! until killed. CERT must be a leaf certificate chain (rustls refuses a CA as a server
//! certificate), KEY its PKCS#8/SEC1/PKCS#1 key, BODY_FILE the bytes to answer.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cert, key, body] = args.as_slice() else {
        return Err("usage: bare_https CERT KEY BODY_FILE".into());
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let body = Bytes::from(std::fs::read(body)?);
    let app = Router::new().route(
        "/{*path}",
        // The request body is read, as esi-server reads it (answering before it is read
        // makes an h2 client see its upload reset).
        post(move |_request: Bytes| {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
    let handle = axum_server::Handle::new();
    let listening = handle.clone();
    tokio::spawn(async move {
        if let Some(addr) = listening.listening().await {
            println!("listening on https://{addr}");
        }
    });
    axum_server::bind_rustls(SocketAddr::from(([127, 0, 0, 1], 0)), tls)
        .handle(handle)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
