//! `POST /api/v1/namespaces/{ns}/providerconfigs/{name}/usage` `{"key": "primary"}`: a client
//! reports that it used one of a ProviderConfig's keys. `docs/http-api.md` is its reference.
//!
//! Admission as for the file API: the bearer token (401), the names (400), a
//! SubjectAccessReview for `create` on `providerconfigs/usage` (403), the ProviderConfig and
//! the key (404), from a cache, so a report costs the API server nothing. The report is
//! counted in a metric and recorded in memory; the ProviderConfig's status shows it after the
//! next flush (see [`KeyUsage`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::{Access, Auth};
use super::body::{parse_json, read_body};
use super::cache::{Cached, check_names};
use super::error::ApiError;
use crate::api::provider_config::ProviderConfig;
use crate::key_usage::KeyUsage;
use crate::metrics::Metrics;

/// A report body is a key name; anything larger is not one.
const MAX_BODY: u64 = 4 * 1024;

/// What the usage route needs.
pub struct UsageApi {
    auth: Arc<Auth>,
    configs: Cached<ProviderConfig>,
    usage: Arc<KeyUsage>,
    metrics: Arc<Metrics>,
}

impl UsageApi {
    /// Starts the ProviderConfig watches; call from within the Tokio runtime.
    pub fn new(
        client: Client,
        auth: Arc<Auth>,
        usage: Arc<KeyUsage>,
        metrics: Arc<Metrics>,
        namespaces: &[String],
    ) -> Self {
        UsageApi {
            auth,
            configs: Cached::start(client, namespaces, "ProviderConfig", slim),
            usage,
            metrics,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Params {
    ns: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    key: String,
}

/// `POST .../providerconfigs/{name}/usage`: 202 once recorded.
pub async fn report(
    State(state): State<AppState>,
    params: Result<Path<Params>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let api = &state.usage;
    let Path(p) = params.map_err(|e| ApiError::validation(e.body_text()))?;
    let caller = api.auth.authenticate(&headers).await?;
    check_names(&p.ns, &p.name, "ProviderConfig")?;
    api.auth
        .authorize(&caller, Access::provider_usage(&p.ns, &p.name))
        .await?;
    let config = api.configs.get(&p.ns, &p.name).await?;
    let report: Report = parse_json(&read_body(&headers, body, MAX_BODY).await?)?;
    if !config.spec.api_keys.iter().any(|k| k.name == report.key) {
        let known: Vec<&str> = config
            .spec
            .api_keys
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        return Err(ApiError::not_found(format!(
            "ProviderConfig {}/{} has no key {:?} (its keys: {})",
            p.ns,
            p.name,
            crate::workspace::key::truncate_for_message(&report.key),
            known.join(", ")
        ))
        .with_details(json!({"reason": "KeyNotFound"})));
    }
    let now = Timestamp::now();
    api.usage.record(&p.ns, &p.name, &report.key, now);
    api.metrics.provider_key_used(&p.ns, &p.name, &report.key);
    Ok((StatusCode::ACCEPTED, Json(json!({"key": report.key}))).into_response())
}

/// Drops what the usage route never reads: it needs the key names only.
fn slim(pc: &mut ProviderConfig) {
    pc.metadata.managed_fields = None;
    pc.metadata.annotations = None;
    pc.spec.settings = None;
    pc.status = None;
}
