//! `GET .../download?redirect=true`: send the client to the object store for the archive.
//!
//! A large archive then never passes through the operator: the answer is a `307` to a
//! presigned `GET` URL of the stored archive, valid for a few minutes. The URL carries a
//! signature (never the secret key); it goes to the client that asked and nowhere else (no
//! log line, no Event). The client must be able to reach the store's endpoint. Without an
//! object store, or when the stored archive is missing (built before the store was
//! configured), the archive is streamed as usual.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use object_store::ObjectStoreExt;
use serde::Deserialize;

use super::error::ApiError;
use crate::workspace::{self, JobKey, Workspace};

/// The download's query string.
#[derive(Debug, Default, Deserialize)]
pub struct DownloadQuery {
    /// `true` (or `1`) asks for a redirect. Kept as text so that any other value means "no"
    /// rather than a plain-text 400 from the extractor.
    #[serde(default)]
    redirect: Option<String>,
}

impl DownloadQuery {
    pub fn wants_redirect(&self) -> bool {
        matches!(self.redirect.as_deref(), Some("true" | "1"))
    }
}

/// A 307 to the stored archive, or `None` to stream it instead.
pub async fn to_stored_archive(ws: &Workspace, job: &JobKey) -> Result<Option<Response>, ApiError> {
    let Some(remote) = ws.remote() else {
        return Ok(None);
    };
    let key = remote.archive_key(job);
    let unavailable = |source| -> ApiError {
        workspace::Error::ObjectStore {
            job: job.clone(),
            source,
        }
        .into()
    };
    match remote.store().head(&key).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => {
            return Err(unavailable(crate::objstore::StoreError {
                op: "find",
                key: key.to_string(),
                source: Box::new(e),
            }));
        }
    }
    let url = remote.presigned_get(job, &key).await.map_err(unavailable)?;
    let location = HeaderValue::from_str(&url)
        .map_err(|e| ApiError::internal("the presigned URL is not a valid header", &e))?;
    Ok(Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
    ))
}
