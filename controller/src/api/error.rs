//! Errors of the device API and the operators' API, as HTTP responses with a JSON body:
//! `{"error": {"code": "...", "message": "..."}}`. Every error answer has that shape,
//! including those the HTTP layer makes itself (unknown route, wrong method, body or
//! headers too large), which [`json_errors`] rewrites.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::inventory::store::StoreError;

/// What a client waits before trying again after a 503, in seconds.
pub const RETRY_AFTER_SECS: u64 = 5;

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The device is unknown, the signature or token is wrong, or the report is a
    /// replay: 401. Nothing is stored.
    #[error("{0}")]
    Unauthorized(String),
    /// No such resource: 404.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, not with this method: 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with what is stored (e.g. enrolling a device that already
    /// has another key): 409.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the route accepts: 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not JSON: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request's headers are too large: 431.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The server failed: 500. The message is logged; the response stays generic.
    #[error("internal error: {0}")]
    Internal(String),
    /// The inventory database cannot be reached or is overloaded: 503 with
    /// `Retry-After`. Nothing was stored; the same request may be sent again.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::HeadersTooLarge(_) => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request_header_fields_too_large")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// The error for a status the HTTP layer chose, with its message.
    fn for_status(status: StatusCode, message: String) -> ApiError {
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(message),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(message),
            StatusCode::CONFLICT => ApiError::Conflict(message),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::HeadersTooLarge(message),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(message),
            s if s.is_client_error() => ApiError::BadRequest(message),
            _ => ApiError::Internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "API request failed");
                "internal server error".to_string()
            }
            ApiError::Unavailable(detail) => {
                // Per request, so only at debug: during an outage every device gets one,
                // and the report writer and the engine log the outage itself.
                tracing::debug!(%detail, "API request refused: the inventory database is unavailable");
                format!("the inventory database is unavailable; try again in {RETRY_AFTER_SECS} s")
            }
            other => other.to_string(),
        };
        let mut response =
            (status, Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(&e)
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// Rewrites an error answer that is not JSON (one the HTTP layer made: 404 for an unknown
/// route, 405, 413 from a body limit, ...) into the JSON error shape, keeping its status
/// and headers (`Allow` on a 405) and its text as the message.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The HTTP layer's own messages are short; a long body is cut, not buffered whole.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message =
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let rewritten = ApiError::for_status(status, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (new_parts, body) = rewritten.into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}

/// A request body that must be JSON (`Content-Type: application/json`, or a `+json` type),
/// as raw bytes: a report's signature covers the bytes as sent. Another content type is
/// 415; a body over the router's limit is 413.
#[derive(Debug)]
pub struct JsonBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request<Body>, state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::for_status(rejection.status(), rejection.body_text()))?;
        Ok(JsonBytes(bytes))
    }
}

/// `Ok` when the request says its body is JSON; 415 otherwise.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let types: Vec<&str> =
        headers.get_all(header::CONTENT_TYPE).iter().map(|v| v.to_str().unwrap_or("(not text)")).collect();
    match types[..] {
        [one] if is_json(one) => Ok(()),
        [] => Err(ApiError::UnsupportedMediaType(
            "the body must be JSON (Content-Type: application/json), not a body without Content-Type".into(),
        )),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON (one Content-Type: application/json), not {}",
            types.join(", ")
        ))),
    }
}

/// `application/json` or `application/<anything>+json`, parameters (charset) allowed.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json", ""] {
            assert!(!is_json(no), "{no}");
        }
    }
}
