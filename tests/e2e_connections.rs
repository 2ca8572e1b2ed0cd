//! End to end, the connection layer (security review finding 5): connections that never
//! finish the TLS handshake, that finish it and send nothing, HTTP/1 keep-alive connections
//! left idle, and HTTP/2 connections kept up only by PINGs are all closed; one source cannot
//! hold more than its share of connections, and another source is still served.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const FLAGS: &[&str] = &[
    "--tls-handshake-timeout",
    "1s",
    "--first-request-timeout",
    "1s",
    "--idle-timeout",
    "2s",
    "--max-connections-per-source",
    "4",
];

fn server() -> Server {
    Server::start_with_args(&[], &[], FLAGS)
}

fn addr(server: &Server) -> std::net::SocketAddr {
    server.url.trim_start_matches("https://").parse().unwrap()
}

async fn tcp_from(server: &Server, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr(server)).await.unwrap()
}

async fn tls_from(
    server: &Server,
    source: &str,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = tls_trusting(&server.ca_pem());
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tcp_from(server, source).await;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// Reads until the peer closes; how long that took (fails after `limit`).
async fn closed_within<S: AsyncReadExt + Unpin>(mut stream: S, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf))
            .await
        {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn http1_get(stream: &mut TlsStream<TcpStream>) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_closed() {
    install_crypto();
    let server = server();
    // No TLS handshake at all.
    let tcp = tcp_from(&server, "127.0.0.1").await;
    let took = closed_within(tcp, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "{took:?}");
    // Handshake done, nothing sent.
    let tls = tls_from(&server, "127.0.0.1", b"http/1.1").await.unwrap();
    let took = closed_within(tls, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_kept() {
    install_crypto();
    let server = server();
    let mut tls = tls_from(&server, "127.0.0.1", b"http/1.1").await.unwrap();
    // Reuse within the idle time works, past the first-request deadline.
    for _ in 0..3 {
        assert!(http1_get(&mut tls).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let took = closed_within(tls, Duration::from_secs(6)).await;
    assert!(took >= Duration::from_millis(1000), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_pings_do_not_keep_a_connection_open() {
    install_crypto();
    let server = server();
    let tls = tls_from(&server, "127.0.0.1", b"h2").await.unwrap();
    let (mut client, mut connection) = h2::client::handshake(tls).await.unwrap();
    let mut pings = connection.ping_pong().unwrap();
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let req = http::Request::get(format!("{}/healthz", server.url))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // Only PINGs from now on: answered, but the connection still ends after the idle time.
    let start = Instant::now();
    let pinger = tokio::spawn(async move {
        let mut answered = 0;
        while pings.ping(h2::Ping::opaque()).await.is_ok() {
            answered += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answered
    });
    tokio::time::timeout(Duration::from_secs(8), conn)
        .await
        .expect("HTTP/2 connection kept open by PINGs")
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert!(pinger.await.unwrap() >= 3, "PINGs were answered meanwhile");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_source_cannot_take_every_connection() {
    install_crypto();
    let server = server();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tls_from(&server, "127.0.0.1", b"http/1.1").await.unwrap());
    }
    // The fifth from the same source is closed before the handshake.
    assert!(tls_from(&server, "127.0.0.1", b"http/1.1").await.is_err());
    // Another source is served.
    let mut other = tls_from(&server, "127.0.0.2", b"http/1.1").await.unwrap();
    assert!(http1_get(&mut other).await.starts_with("HTTP/1.1 200"));
    // A place freed is a place to take.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = tls_from(&server, "127.0.0.1", b"http/1.1").await.unwrap();
    assert!(http1_get(&mut again).await.starts_with("HTTP/1.1 200"));
    drop((held, again));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains(r#"esi_connections_total{reason="refused_per_source"} 1"#),
        "{metrics}"
    );
}

/// Security review finding 6: slow uploaders (a JWS-shaped token, `Content-Length: 60000`,
/// one byte sent) from one source hold at most that source's share of the in-flight permits,
/// each for at most the body read deadline (408); another source keeps being answered.
#[tokio::test(flavor = "multi_thread")]
async fn slow_uploaders_from_one_source_do_not_starve_others() {
    install_crypto();
    let server = Server::start_with_args(
        &[],
        &[],
        &[
            "--max-concurrent-requests",
            "16",
            "--max-concurrent-requests-per-source",
            "8",
            "--body-read-timeout",
            "2s",
        ],
    );
    let token = mint(
        "ec-1",
        &sa_claims("https://slow.example", "aud", "ns", "sa"),
        None,
    );
    let mut uploaders = Vec::new();
    for _ in 0..20 {
        let mut tls = tls_from(&server, "127.0.0.1", b"http/1.1").await.unwrap();
        let head = format!(
            "POST /secretstore/s/secrets/k HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        uploaders.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(8), tls.read(&mut buf))
                .await
                .map_or(0, |r| r.unwrap_or(0));
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another source is answered at once (all 16 global permits would be held otherwise).
    let start = Instant::now();
    let mut other = tls_from(&server, "127.0.0.2", b"http/1.1").await.unwrap();
    other
        .write_all(b"POST /secretstore/s/secrets/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), other.read(&mut buf))
        .await
        .expect("another source starved")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // The slow ones: 8 held until the body deadline (408), the rest shed at once (503).
    let mut by_status = std::collections::BTreeMap::new();
    for u in uploaders {
        let answer = u.await.unwrap();
        let status = answer.get(9..12).unwrap_or("none").to_string();
        *by_status.entry(status).or_insert(0) += 1;
    }
    assert_eq!(by_status.get("408"), Some(&8), "{by_status:?}");
    assert_eq!(by_status.get("503"), Some(&12), "{by_status:?}");
}
