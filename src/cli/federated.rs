//! `esi-cli`'s source of secrets on a Federation Server: the shared client
//! ([`crate::remote::RemoteClient`]) with the Pod's projected token file (read afresh for
//! every call: projected tokens rotate) and CA file (trusted for TLS besides the public
//! roots, and sent as `ca.crt`). With a SPIFFE X.509-SVID ([`ClientCredential::X509Svid`])
//! the SVID files are read afresh for every call instead and presented as the TLS client
//! certificate, without a bearer token; when they change (spiffe-helper rotated them) the
//! HTTPS client is rebuilt, so that no pooled connection keeps the old certificate.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::args::{ClientCredential, GeneratorRef, SecretId, TokenSource};
use super::error::{FetchError, SetupError};
use super::value::{SecretData, SecretValue};
use crate::remote::{
    Auth, RemoteClient, RemoteConfigError, RemoteError, RemoteSettings, Token, Trust,
};

/// Largest answer accepted: one secret, not a data dump.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// An issued or renewed credential's handle and lease, as the server's `/v1` calls answer
/// them. Never holds a value: safe to write to a handoff file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The handle (absent: nothing to renew or revoke, e.g. a Password).
    #[serde(default)]
    pub id: Option<String>,
    /// Seconds from the answer until it lapses (absent: it does not).
    #[serde(default)]
    pub lease_duration: Option<u64>,
    /// Whether it can be renewed.
    #[serde(default)]
    pub renewable: bool,
}

impl From<crate::remote::Credential> for Lease {
    fn from(c: crate::remote::Credential) -> Self {
        Lease {
            id: c.id,
            lease_duration: c.lease_duration,
            renewable: c.renewable,
        }
    }
}

/// Largest token file read (projected tokens are a few KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Largest CA bundle read.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Talks to one Federation Server.
pub struct FederatedClient {
    /// The HTTPS client, and the fingerprint of the X.509-SVID it presents (`None`: none
    /// yet, or a bearer credential).
    remote: Box<Mutex<(Option<[u8; 32]>, RemoteClient)>>,
    /// What the client is built from (rebuilt with each new X.509-SVID).
    settings: Box<RemoteSettings>,
    store: Option<String>,
    credential: ClientCredential,
}

impl std::fmt::Debug for FederatedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedClient")
            .field("base", &self.settings.url)
            .field("store", &self.store)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// The bearer token to send, if any (`None`: the TLS client certificate is the identity).
fn auth(token: &Option<Token>) -> Auth<'_> {
    token.as_ref().map_or(Auth::ClientCertificate, Auth::Bearer)
}

/// Reads the CA bundle's PEM: `None` when the default path is absent (outside a Pod), an
/// error when a named file is missing or holds no certificate.
fn read_ca(path: &Path, explicit: bool) -> Result<Option<Vec<u8>>, SetupError> {
    let err = |reason: String| SetupError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            tracing::info!(path = %path.display(), "no cluster CA file; trusting the public roots only and sending no ca.crt");
            return Ok(None);
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if meta.len() > MAX_CA_BYTES {
        return Err(err("file too large".into()));
    }
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    crate::remote::pem_certificates(&pem).map_err(|reason| {
        err(if reason.starts_with("no PEM") {
            "no PEM certificate in the file".into()
        } else {
            reason
        })
    })?;
    Ok(Some(pem))
}

/// Reads the token afresh (projected tokens rotate; a variable is read again too).
fn bearer(source: &TokenSource) -> Result<Token, FetchError> {
    let bad = |reason: String| FetchError::BadToken {
        path: source.to_string(),
        reason,
    };
    let raw = match source {
        TokenSource::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
            // A FIFO or device would block the read or never end.
            if !meta.is_file() {
                return Err(bad("not a regular file".into()));
            }
            if meta.len() > MAX_TOKEN_BYTES {
                return Err(bad("file too large for a token".into()));
            }
            zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?)
        }
        TokenSource::Env(name) => {
            let value = std::env::var_os(name).ok_or_else(|| bad("not set".into()))?;
            let bytes = zeroize::Zeroizing::new(value.into_encoded_bytes());
            if bytes.len() as u64 > MAX_TOKEN_BYTES {
                return Err(bad("too large for a token".into()));
            }
            bytes
        }
    };
    Token::from_bytes(&raw).map_err(|e| match e {
        crate::remote::TokenError::Empty => bad("empty".into()),
        other => bad(other.to_string()),
    })
}

/// The CLI's words for a failed call (the texts `esi-cli` has always printed).
fn fetch_error(e: RemoteError) -> FetchError {
    match e {
        RemoteError::Unauthorized => FetchError::Unauthorized,
        RemoteError::Forbidden => {
            FetchError::Forbidden("the server refused the request (HTTP 403)".into())
        }
        RemoteError::NotFound => FetchError::NotFound(
            "does not exist, or this ServiceAccount may not read it (HTTP 404)".into(),
        ),
        RemoteError::NotRenewable => FetchError::NotRenewable,
        RemoteError::RateLimited { retry_after } => FetchError::RateLimited { retry_after },
        RemoteError::Server(s) => FetchError::Server(s),
        RemoteError::Rejected(s) => FetchError::Rejected(s),
        RemoteError::Malformed(m) => FetchError::Malformed(m),
        RemoteError::Tls(t) => FetchError::Tls(t),
        RemoteError::Unreachable(u) => FetchError::Unreachable(u),
        RemoteError::Timeout => FetchError::Unreachable("the request timed out".into()),
        RemoteError::Token(t) => FetchError::BadToken {
            path: String::new(),
            reason: t.to_string(),
        },
        RemoteError::InvalidRequest(m) => FetchError::InvalidRequest(m),
    }
}

impl FederatedClient {
    /// Builds the client: TLS trusts the CA bundle plus the public (webpki) roots, and the
    /// bundle is sent as `ca.crt`. An X.509-SVID is read at the first call (and every one
    /// after), not here.
    pub fn new(
        url: &str,
        store: Option<String>,
        credential: ClientCredential,
        ca_path: &Path,
        ca_explicit: bool,
    ) -> Result<Self, SetupError> {
        if let ClientCredential::X509Svid(files) = &credential
            && let Some(jwt) = &files.jwt_svid_not_sent
        {
            tracing::warn!(
                jwt_svid = %jwt.display(),
                x509_svid = %files.cert.display(),
                "both an X.509-SVID and a JWT-SVID are given: the X.509-SVID is used, the JWT-SVID is not sent"
            );
        }
        let ca = read_ca(ca_path, ca_explicit)?;
        let mut settings = RemoteSettings::new(url);
        settings.trust = Trust {
            ca_pem: ca.clone().unwrap_or_default(),
            ca_label: ca.as_ref().map(|_| ca_path.display().to_string()),
            public_roots: true,
        };
        settings.client_ca = ca;
        settings.max_answer_bytes = MAX_ANSWER_BYTES;
        settings.user_agent = concat!("esi-cli/", env!("CARGO_PKG_VERSION"));
        settings.ca_setting = "--federated-ca-crt";
        settings.url_setting = "--federated-server-url";
        let remote = RemoteClient::new(&settings).map_err(|e| match e {
            RemoteConfigError::Ca { reason, .. } => SetupError::Ca {
                path: ca_path.display().to_string(),
                reason,
            },
            other => SetupError::Client(other.to_string()),
        })?;
        Ok(Self {
            remote: Box::new(Mutex::new((None, remote))),
            settings: Box::new(settings),
            store,
            credential,
        })
    }

    fn current(&self) -> RemoteClient {
        self.remote
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// The client and bearer token for one call, each credential read afresh: the token
    /// file (or variable), or the X.509-SVID files (a changed SVID gets a new client).
    fn caller(&self) -> Result<(RemoteClient, Option<Token>), FetchError> {
        let files = match &self.credential {
            ClientCredential::Bearer(source) => {
                return Ok((self.current(), Some(bearer(source)?)));
            }
            ClientCredential::X509Svid(files) => files,
        };
        let svid = super::svid::load(files)?;
        let mut slot = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.0 != Some(svid.fingerprint) {
            let mut settings = (*self.settings).clone();
            settings.client_identity = Some(svid.identity);
            let client = RemoteClient::new(&settings).map_err(|e| FetchError::BadSvid {
                path: files.cert.display().to_string(),
                reason: e.to_string(),
                rotating: false,
            })?;
            if slot.0.is_some() {
                tracing::info!(path = %files.cert.display(), "X.509-SVID rotated; new connections present it");
            }
            *slot = (Some(svid.fingerprint), client);
        }
        Ok((slot.1.clone(), None))
    }

    /// The URL of an ESE call; each part is one path segment (a `/` in a name is `%2F`).
    pub fn url_for(&self, id: &SecretId) -> Result<reqwest::Url, FetchError> {
        let segments: Vec<&str> = match id {
            SecretId::Store(name) => {
                let store = self
                    .store
                    .as_deref()
                    .ok_or(FetchError::InvalidRequest("no --federated-store"))?;
                vec!["secretstore", store, "secrets", name.as_str()]
            }
            SecretId::Generator(GeneratorRef {
                namespace,
                kind,
                name,
            }) => vec![
                "generators",
                namespace.as_str(),
                kind.as_str(),
                name.as_str(),
            ],
            SecretId::Local(_) => {
                return Err(FetchError::Malformed("a local secret asked of the server"));
            }
        };
        self.current().url_of(&segments).map_err(fetch_error)
    }

    /// One attempt at issuing a generator's credential with its handle (`POST /v1/generators/…`).
    pub async fn issue_once(&self, g: &GeneratorRef) -> Result<(SecretData, Lease), FetchError> {
        let (remote, token) = self.caller()?;
        let issued = remote
            .issue(auth(&token), &g.namespace, &g.kind, &g.name)
            .await
            .map_err(fetch_error)?;
        let keys = issued
            .data
            .into_iter()
            .map(|(k, v)| (k, SecretValue::new(v.to_vec())))
            .collect();
        Ok((SecretData::from_keys(keys), issued.credential.into()))
    }

    /// One attempt at renewing credential `id` by `increment` seconds (`None`: the
    /// backend's default). [`FetchError::NotRenewable`] when a new one is needed.
    pub async fn renew_once(&self, id: &str, increment: Option<u64>) -> Result<Lease, FetchError> {
        let (remote, token) = self.caller()?;
        remote
            .renew(auth(&token), id, increment)
            .await
            .map(Lease::from)
            .map_err(fetch_error)
    }

    /// One attempt at revoking credential `id`. Already gone (404) counts as revoked.
    pub async fn revoke_once(&self, id: &str) -> Result<(), FetchError> {
        let (remote, token) = self.caller()?;
        remote.revoke(auth(&token), id).await.map_err(fetch_error)
    }

    /// One attempt at one secret (the caller retries).
    pub async fn fetch_once(&self, id: &SecretId) -> Result<SecretData, FetchError> {
        let (remote, token) = self.caller()?;
        match id {
            SecretId::Store(name) => {
                let store = self
                    .store
                    .as_deref()
                    .ok_or(FetchError::InvalidRequest("no --federated-store"))?;
                let value = remote
                    .ese_secret(auth(&token), store, name)
                    .await
                    .map_err(fetch_error)?;
                Ok(SecretData::from_store_value(value.to_string()))
            }
            SecretId::Generator(g) => {
                let map = remote
                    .ese_generate(auth(&token), &g.namespace, &g.kind, &g.name)
                    .await
                    .map_err(fetch_error)?;
                let keys: BTreeMap<String, SecretValue> = map
                    .into_iter()
                    .map(|(k, v)| (k, SecretValue::new(v.as_bytes().to_vec())))
                    .collect();
                Ok(SecretData::from_keys(keys))
            }
            SecretId::Local(_) => Err(FetchError::Malformed("a local secret asked of the server")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn client(url: &str) -> FederatedClient {
        FederatedClient::new(
            url,
            Some("vault-prod".into()),
            ClientCredential::Bearer(TokenSource::File("/nonexistent/token".into())),
            Path::new("/nonexistent/ca.crt"),
            false,
        )
        .unwrap()
    }

    #[test]
    fn urls_encode_names_as_one_segment() {
        let c = client("https://esi.example.com");
        let u = c
            .url_for(&SecretId::Store("api-keys/service-a".into()))
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/secretstore/vault-prod/secrets/api-keys%2Fservice-a"
        );
        let c = client("https://esi.example.com/prefix/");
        let u = c
            .url_for(&SecretId::Generator(GeneratorRef {
                namespace: "ns".into(),
                kind: "Password".into(),
                name: "a b?".into(),
            }))
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/prefix/generators/ns/Password/a%20b%3F"
        );
    }

    /// Review finding 7: a name the path cannot carry (`..`) was reported as a
    /// "malformed answer" of the server, which never answered.
    #[test]
    fn names_a_path_cannot_carry_are_invalid_requests() {
        let c = client("https://esi.example.com");
        for id in [
            SecretId::Store("..".into()),
            SecretId::Generator(GeneratorRef {
                namespace: "..".into(),
                kind: "Password".into(),
                name: "pw".into(),
            }),
        ] {
            let e = c.url_for(&id).unwrap_err();
            assert!(matches!(e, FetchError::InvalidRequest(_)), "{e:?}");
            assert!(e.to_string().starts_with("invalid request: "), "{e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn token_file_problems_are_clear_and_never_show_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| TokenSource::File(dir.path().join(name));
        let e = bearer(&file("nope")).unwrap_err().to_string();
        assert!(
            e.starts_with("bad token file") && e.contains("No such file"),
            "{e}"
        );
        std::fs::write(dir.path().join("empty"), "  \n").unwrap();
        assert!(
            bearer(&file("empty"))
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            bearer(&TokenSource::File(dir.path().to_path_buf()))
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        std::fs::write(dir.path().join("bad"), "secret-token-abc\x01def").unwrap();
        let e = bearer(&file("bad")).unwrap_err().to_string();
        assert!(!e.contains("secret-token"), "{e}");
        let mut f = std::fs::File::create(dir.path().join("good")).unwrap();
        writeln!(f, "eyJ.a.b").unwrap();
        let t = bearer(&file("good")).unwrap();
        let h = t.header();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer eyJ.a.b");
        assert!(!format!("{h:?}").contains("eyJ"));
        assert!(!format!("{t:?}").contains("eyJ"));
    }

    /// Issue 18: a CI system's token from an environment variable, read for every call.
    #[test]
    fn tokens_from_the_environment() {
        // A name no other test uses; set before any thread of this test reads it.
        let name = "ESI_CLI_TEST_OIDC_TOKEN_3F7A";
        let env = TokenSource::Env(name.into());
        let e = bearer(&env).unwrap_err().to_string();
        assert_eq!(e, format!("bad token environment variable {name}: not set"));
        // SAFETY: this test alone uses the variable.
        unsafe { std::env::set_var(name, "eyJ.c.d\n") };
        let t = bearer(&env).unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer eyJ.c.d");
        unsafe { std::env::set_var(name, "secret-oidc-token\x01") };
        let e = bearer(&env).unwrap_err().to_string();
        assert!(!e.contains("secret-oidc"), "{e}");
        unsafe { std::env::set_var(name, "x".repeat(64 * 1024 + 1)) };
        assert!(bearer(&env).unwrap_err().to_string().contains("too large"));
        unsafe { std::env::remove_var(name) };
    }

    /// A TLS server that requires a client certificate of `ca` and answers every request
    /// with the JSON string "v"; it reports each connection's client leaf and whether the
    /// request carried an `Authorization` header.
    async fn mtls_server(
        ca_pem: &str,
    ) -> (
        String,
        Vec<u8>,
        tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, bool)>,
    ) {
        use rustls_pki_types::pem::PemObject;
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tls.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let _ = tx.send((leaf, head.contains("\r\nauthorization:")));
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\nconnection: close\r\n\r\n\"v\"",
                    )
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        (url, cert.pem().into_bytes(), rx)
    }

    /// Issue 18: with an X.509-SVID, esi-cli presents it as the TLS client certificate and
    /// sends no bearer token; when spiffe-helper rotates the files, the next call presents
    /// the new SVID (a new client, not a pooled connection with the old one); files gone
    /// bad fail clearly.
    #[tokio::test]
    async fn x509_svids_are_presented_and_rotated() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = crate::cli::svid::tests::Ca::new();
        let (url, server_ca, mut seen) = mtls_server(&ca.pem()).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, server_ca).unwrap();
        let cert = dir.path().join("svid.pem");
        let key = dir.path().join("svid_key.pem");
        let write = |chain: &str, k: &str| {
            std::fs::write(&cert, chain).unwrap();
            std::fs::write(&key, k).unwrap();
        };
        let leaf_der = |pem: &str| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        let (first, first_key) = ca.svid(&["spiffe://example.org/ns/prod/sa/api"]);
        write(&first, &first_key);
        let client = FederatedClient::new(
            &url,
            Some("mesh-store".into()),
            ClientCredential::X509Svid(crate::cli::args::X509SvidFiles {
                cert: cert.clone(),
                key: key.clone(),
                jwt_svid_not_sent: None,
            }),
            &ca_file,
            true,
        )
        .unwrap();
        let id = SecretId::Store("db".into());
        let data = client.fetch_once(&id).await.unwrap();
        assert_eq!(data.raw.unwrap().as_str(), Some("v"));
        let (leaf, bearer) = seen.recv().await.unwrap();
        assert_eq!(leaf, leaf_der(&first));
        assert!(
            !bearer,
            "a bearer token was sent with the client certificate"
        );

        // Rotated in place: the next call presents the new SVID.
        let (second, second_key) = ca.svid(&["spiffe://example.org/ns/prod/sa/api"]);
        write(&second, &second_key);
        client.fetch_once(&id).await.unwrap();
        let (leaf, bearer) = seen.recv().await.unwrap();
        assert_eq!(leaf, leaf_der(&second));
        assert!(!bearer);

        // A key of another certificate (a half-finished rotation): refused before any call.
        let (_, stray) = ca.svid(&["spiffe://example.org/x"]);
        std::fs::write(&key, stray).unwrap();
        let e = client.fetch_once(&id).await.unwrap_err().to_string();
        assert!(e.contains("is not the private key"), "{e}");
        std::fs::remove_file(&cert).unwrap();
        let e = client.fetch_once(&id).await.unwrap_err().to_string();
        assert!(
            e.starts_with("bad X.509-SVID") && e.contains("svid.pem"),
            "{e}"
        );
        assert!(
            seen.try_recv().is_err(),
            "no request was made with bad files"
        );
    }

    #[test]
    fn ca_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        // Default path absent: tolerated; named path absent: an error.
        assert!(read_ca(&dir.path().join("x"), false).unwrap().is_none());
        assert!(read_ca(&dir.path().join("x"), true).is_err());
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a certificate").unwrap();
        assert!(
            read_ca(&junk, true)
                .unwrap_err()
                .to_string()
                .contains("no PEM")
        );
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let good = dir.path().join("ca.crt");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let pem = read_ca(&good, true).unwrap().unwrap();
        assert_eq!(pem, ca.cert.pem().into_bytes());
        FederatedClient::new(
            "https://h",
            None,
            ClientCredential::Bearer(TokenSource::File(good.clone())),
            &good,
            true,
        )
        .unwrap();
    }
}
