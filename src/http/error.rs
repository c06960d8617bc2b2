//! The file API's one error type and its JSON shape: `{"error": {"code", "message", "details"}}`.
//!
//! The codes are an API (docs/http-api.md, "Errors"): `validation_error` (400), `unauthorized` (401),
//! `forbidden` (403), `not_found` (404), `conflict` (409), `payload_too_large` (413),
//! `unavailable` (503: the object store behind the workspace did not answer, nothing was
//! stored; or a complete job's archive is being rebuilt; retry), `internal_error` (500).
//! Internal errors are logged with their detail and answered with a generic message, because
//! their detail names paths and objects on the server.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::error;

use crate::workspace;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// `Retry-After` of a 503, in seconds.
    pub retry_after: u32,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Value::Object(Default::default()),
            // The object store's retries already took a few seconds; a client may try again.
            retry_after: 5,
        }
    }

    /// Adds `details` (a JSON object) to the error.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 503, to be retried after `retry_after` seconds.
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// Logs `detail` (which may name server paths or API objects) and returns a generic 500.
    pub fn internal(context: &str, detail: &dyn std::fmt::Display) -> Self {
        error!(%detail, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("{context}; the operator's log has the details"),
        )
    }

    /// The `error` object alone, as batch results embed it.
    pub fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message, "details": self.details})
    }
}

impl From<workspace::Error> for ApiError {
    fn from(e: workspace::Error) -> Self {
        let kind = e.kind();
        if kind == workspace::ErrorKind::Internal {
            return ApiError::internal("the workspace failed", &e);
        }
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, kind.code(), e.to_string())
            .with_details(json!({"reason": e.reason()}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.body()}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme is expected.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{Error, JobPath, PathError};

    #[test]
    fn workspace_errors_keep_their_code_and_reason() {
        let e: ApiError = Error::invalid_path("../x", PathError::ParentSegment { index: 1 }).into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "validation_error");
        assert!(e.message.contains("'..'"), "{}", e.message);
        assert_eq!(e.details["reason"], "invalid_path");

        let e: ApiError = Error::FileTooLarge {
            path: JobPath::parse("a").unwrap(),
            size: 2,
            max: 1,
        }
        .into();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.code, "payload_too_large");
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let r = ApiError::unavailable("rebuilding", 1).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let e: ApiError = Error::ObjectStore {
            job: crate::workspace::JobKey::new("ns", "u").unwrap(),
            source: crate::objstore::StoreError {
                op: "put",
                key: "k".into(),
                source: Box::new(std::io::Error::other("down")),
            },
        }
        .into();
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn internal_errors_hide_server_paths() {
        let e: ApiError = Error::Io {
            op: "open",
            path: "/var/lib/kiln/workspace/jobs/ns/u/files/secret".into(),
            source: std::io::Error::other("boom"),
        }
        .into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, "internal_error");
        assert!(!e.message.contains("/var/lib"), "{}", e.message);
        assert!(!e.body().to_string().contains("/var/lib"));
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let r = ApiError::unauthorized("no token").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
