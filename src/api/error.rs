//! The one place where failures become HTTP answers.
//!
//! ESE calls answer errors as ESE does (a JSON string body); extension calls answer
//! `application/problem+json`. Either way the body holds a fixed, safe text: never a
//! secret value, a token, or a backend's raw message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::authn::AuthnError;
use crate::generators::GeneratorError;
use crate::providers::ProviderError;

/// How an error body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// ESE wire format: the message as a JSON string.
    Ese,
    /// RFC 9457 problem details.
    Problem,
}

/// A request failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Missing or invalid token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Body or token too large.
    #[error("request too large")]
    TooLarge,
    /// The header section is larger than the server accepts (RFC 6585 §5: 431).
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The body did not arrive in time (RFC 9110 §15.5.9: 408).
    #[error("request body not received in time")]
    BodyTimeout,
    /// Malformed request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Not allowed, or does not exist: indistinguishable on purpose.
    #[error("Not Found")]
    NotFound,
    /// The request cannot be done in the target's current state (RFC 9110 §15.5.10: 409),
    /// e.g. a credential the backend will not renew.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend failed.
    #[error("backend error: {0}")]
    BadGateway(String),
    /// The backend is unavailable or timed out.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A rate limit was hit (429 with `Retry-After`).
    #[error("too many requests")]
    RateLimited {
        /// Seconds until a request would be accepted again.
        retry_after_secs: u64,
    },
    /// Too many requests in flight (503 with `Retry-After`).
    #[error("server overloaded")]
    Overloaded,
    /// The audit line of this request could not be written: nothing unaudited is answered
    /// (503, as Vault refuses requests no audit device can record).
    #[error("audit log unavailable")]
    AuditUnavailable,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) | ApiError::Overloaded | ApiError::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Renders the error in `style`.
    pub fn into_styled_response(self, style: ErrorStyle) -> Response {
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            ApiError::Overloaded => Some(1),
            _ => None,
        };
        let mut resp = self.render(style);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    fn render(self, style: ErrorStyle) -> Response {
        let status = self.status();
        let detail = bounded_detail(self.to_string());
        match style {
            ErrorStyle::Ese => (status, axum::Json(detail)).into_response(),
            ErrorStyle::Problem => {
                #[derive(Serialize)]
                struct Problem<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    title: &'a str,
                    status: u16,
                    detail: &'a str,
                }
                let body = Problem {
                    kind: "about:blank",
                    title: status.canonical_reason().unwrap_or("Error"),
                    status: status.as_u16(),
                    detail: &detail,
                };
                let mut resp = (status, axum::Json(body)).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                resp
            }
        }
    }
}

/// An error on its way out: `IntoResponse` for [`ApiError`] answers its status and parks
/// the error here; [`render_errors`] (one layer per router) writes the body in that router's
/// style. Handlers and middleware just return errors.
#[derive(Debug, Clone)]
struct Pending(ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.status().into_response();
        resp.extensions_mut().insert(Pending(self));
        resp
    }
}

/// Middleware of a router: renders every [`ApiError`] answered below it in `style`
/// (headers already set, e.g. `Connection: close`, are kept), and logs the refusal.
pub async fn render_errors<F, Fut>(
    style: ErrorStyle,
    req: axum::extract::Request,
    next: F,
) -> Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut resp = next(req).await;
    let Some(Pending(error)) = resp.extensions_mut().remove::<Pending>() else {
        return resp;
    };
    tracing::info!(status = error.status().as_u16(), reason = %bounded_detail(error.to_string()), "refused");
    let mut styled = error.into_styled_response(style);
    for (name, value) in resp.headers() {
        if !styled.headers().contains_key(name) {
            styled.headers_mut().insert(name.clone(), value.clone());
        }
    }
    styled
}

impl From<AuthnError> for ApiError {
    fn from(e: AuthnError) -> Self {
        if e.is_too_large() {
            ApiError::TooLarge
        } else {
            ApiError::Unauthorized(e.to_string())
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::NotFound => ApiError::NotFound,
            ProviderError::InvalidRequest(m) | ProviderError::Unsupported(m) => {
                ApiError::BadRequest(m)
            }
            ProviderError::Backend(m) => ApiError::BadGateway(m),
            ProviderError::Unavailable(m) => ApiError::Unavailable(m),
            ProviderError::Timeout => ApiError::Unavailable("backend timed out".into()),
        }
    }
}

impl From<GeneratorError> for ApiError {
    fn from(e: GeneratorError) -> Self {
        match e {
            GeneratorError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            GeneratorError::NotRenewable => ApiError::Conflict(e.to_string()),
            _ => ApiError::BadGateway(e.to_string()),
        }
    }
}

/// Longest error detail answered or logged (characters): a message may quote caller input
/// (serde's "invalid type: string \"…\"" does), which must not make answers or log lines
/// of the caller's choosing size.
pub const DETAIL_MAX_CHARS: usize = 512;

/// `detail` cut to [`DETAIL_MAX_CHARS`] characters (on a character boundary), marked `…`.
fn bounded_detail(mut detail: String) -> String {
    if let Some((at, _)) = detail.char_indices().nth(DETAIL_MAX_CHARS) {
        detail.truncate(at);
        detail.push('…');
    }
    detail
}

#[cfg(test)]
mod tests {

    #[test]
    fn details_quoting_caller_input_are_bounded() {
        let long = ApiError::BadRequest(format!("invalid JSON body: \"{}\"", "é".repeat(70_000)));
        let detail = bounded_detail(long.to_string());
        assert_eq!(detail.chars().count(), DETAIL_MAX_CHARS + 1);
        assert!(detail.ends_with('…'));
        assert_eq!(bounded_detail("short".into()), "short");
    }

    use super::*;

    #[tokio::test]
    async fn ese_style_is_a_json_string_and_problem_style_is_problem_json() {
        let r = ApiError::NotFound.into_styled_response(ErrorStyle::Ese);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"\"Not Found\"");

        let r = ApiError::TooLarge.into_styled_response(ErrorStyle::Problem);
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 413);
    }
}
