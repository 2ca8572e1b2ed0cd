//! Bearer tokens for calls to a Federation Server, and where they come from.
//!
//! A [`Token`] holds the ready `Authorization: Bearer …` header, marked sensitive (the HTTP
//! stack never prints it) and with a redacted `Debug`. Who supplies it is the caller's
//! business: `esi-cli` reads its projected token file before every call, a store or
//! generator reads `auth.tokenSecretRef` when it is built, and Kubernetes mode asks the
//! TokenRequest API through [`ServiceAccountTokens`].

use std::fmt;

use reqwest::header::HeaderValue;

/// Longest token accepted (projected ServiceAccount tokens are a few KiB; the server's
/// own default limit is 16 KiB).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why a token cannot be used. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Empty, or only whitespace.
    #[error("the token is empty")]
    Empty,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Not text, or holds characters an HTTP header cannot carry.
    #[error("the token holds characters a token cannot have")]
    BadCharacters,
    /// The source could not give one, this time (the API server unreachable, throttling
    /// or failing, the gateway's own credentials rejected: 401, …): trying again may help.
    #[error("{0}")]
    Unavailable(String),
    /// The source refused, definitely: the API server answered 4xx (other than 401, 408
    /// and 429) — the ServiceAccount is gone, or the server may no longer ask for its
    /// tokens — or the request can never be made (an audience refused, a name that is not
    /// a Kubernetes name, no TokenRequest source: `--manifests` mode). Trying again does not help, and a value read with an earlier
    /// token must not be served in its place.
    #[error("{0}")]
    Refused(String),
}

/// A bearer token, ready to send.
#[derive(Clone)]
pub struct Token {
    header: HeaderValue,
}

impl Token {
    /// A token from its text (surrounding whitespace, e.g. a file's newline, is trimmed).
    /// Errors: [`TokenError::Empty`], [`TokenError::TooLong`],
    /// [`TokenError::BadCharacters`] (not visible ASCII).
    pub fn new(text: &str) -> Result<Token, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacters);
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| TokenError::BadCharacters)?;
        // Keeps the header out of any debug output of the HTTP stack.
        header.set_sensitive(true);
        Ok(Token { header })
    }

    /// A token from bytes (a Secret's value): UTF-8 text, then [`Token::new`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Token, TokenError> {
        let text = std::str::from_utf8(bytes).map_err(|_| TokenError::BadCharacters)?;
        Token::new(text)
    }

    /// The `Authorization` header value (sensitive).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Gives ServiceAccount tokens for an audience (Kubernetes mode: the TokenRequest API,
/// [`super::token_request::KubeTokenRequest`]). Stores and generators with
/// `auth.kubernetes.serviceAccountRef` ask it at every call; implementations cache.
/// Kubernetes client types stay behind this trait: providers and generators never see them.
#[async_trait::async_trait]
pub trait ServiceAccountTokens: Send + Sync + fmt::Debug {
    /// A token of ServiceAccount `namespace/service_account` whose `aud` holds `audiences`
    /// (never empty: that would be the API server's own audience, refused). Errors name the ServiceAccount and the
    /// cause, never a token; a namespace or name that is not a Kubernetes name
    /// (DNS-1123 label / subdomain) is refused before any request.
    async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[String],
    ) -> Result<Token, TokenError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = Token::new(" eyJ.a.b\n").unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer eyJ.a.b");
        assert!(t.header().is_sensitive());
        assert!(!format!("{t:?}").contains("eyJ"));
        assert_eq!(Token::new(" \n").unwrap_err(), TokenError::Empty);
        assert_eq!(
            Token::new("secret-token\x01x").unwrap_err(),
            TokenError::BadCharacters
        );
        assert_eq!(
            Token::new("a b").unwrap_err(),
            TokenError::BadCharacters,
            "a space would split the header"
        );
        assert_eq!(
            Token::new(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
            TokenError::TooLong
        );
        assert_eq!(
            Token::from_bytes(b"\xff\xfe").unwrap_err(),
            TokenError::BadCharacters
        );
        let e = Token::new("hunter2 x").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
