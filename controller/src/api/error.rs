//! Errors of the device API, as HTTP responses with a JSON body:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

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
    /// The request conflicts with what is stored (e.g. enrolling a device that already
    /// has another key): 409.
    #[error("{0}")]
    Conflict(String),
    /// The server failed: 500. The message is logged; the response stays generic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "device API request failed");
                "internal server error".to_string()
            }
            other => other.to_string(),
        };
        (status, Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl From<crate::inventory::store::StoreError> for ApiError {
    fn from(e: crate::inventory::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}
