//! Replays the committed corpus (`corpus/<target>/*`) through each harness with plain
//! `cargo test`, so the targets' invariants are checked without a fuzzing toolchain.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn token_corpus() {
    assert!(replay("token", esi_federation_fuzz::token) >= 5);
    // The harness reaches the success path: a valid token is accepted.
    let t = esi_federation_fuzz::valid_token();
    esi_federation_fuzz::token(t.as_bytes());
}

#[test]
fn manifest_corpus() {
    assert!(replay("manifest", esi_federation_fuzz::manifest) >= 3);
}

#[test]
fn authz_corpus() {
    assert!(replay("authz", esi_federation_fuzz::authz) >= 3);
}

#[test]
fn request_body_corpus() {
    assert!(replay("request_body", esi_federation_fuzz::request_body) >= 5);
    // The harness reaches the handlers: an allowed read answers 200, a bad body 400.
    use esi_federation_fuzz::request_status;
    assert_eq!(
        request_status(b"\x01{\"remoteRef\":{\"key\":\"k\"}}"),
        Some(200)
    );
    assert_eq!(request_status(b"\x00"), Some(200));
    assert_eq!(request_status(b"\x01[1]"), Some(400));
    assert_eq!(
        request_status(b"\x03{\"find\":{\"name\":{\"regexp\":\"((\"}}}"),
        Some(400)
    );
}
