//! The TTL side of a reconcile, shared by Draft and Job: when the clock started, when the
//! object expires, and what to do about it. Decisions come from the pure `crate::expiry`;
//! this module only gathers their inputs from an object and acts on `Expired`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::Expiration;
use crate::duration;
use crate::error::{KubeContext, Result};
use crate::expiry::{self, ClockInput, ExpiryState, WarningPolicy};

/// Where an object stands in its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    /// The TTL in effect, as shown in status.
    pub ttl_text: String,
    pub ttl_start: Timestamp,
    pub observed_renew: Option<String>,
    pub expires_at: Timestamp,
    pub expiration: Expiration,
    pub state: ExpiryState,
}

/// What the status remembers between reconciles.
pub struct Remembered<'a> {
    pub ttl_start: Option<&'a Time>,
    pub observed_renew: Option<&'a str>,
    pub observed_generation: Option<i64>,
}

/// Computes the lifecycle of an object. `ttl` is the spec's duration text (already checked
/// by the CRD pattern), `default_ttl` Kiln's default; a spec value that parses but is
/// unusable (`0s`) is reported as an error string for the status.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    meta: &ObjectMeta,
    ttl: Option<&str>,
    default_ttl: &str,
    expiration: Option<Expiration>,
    restart_on_generation: bool,
    remembered: Remembered<'_>,
    policy: &WarningPolicy,
    now: Timestamp,
) -> std::result::Result<Lifecycle, String> {
    let ttl_text = ttl.unwrap_or(default_ttl).to_string();
    let ttl_value: SignedDuration = duration::parse_ttl(&ttl_text).map_err(|e| e.to_string())?;
    let renew = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(expiry::RENEW_ANNOTATION))
        .map(String::as_str);
    let created = meta.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    let ttl_start = expiry::clock_start(ClockInput {
        created,
        now,
        previous_start: remembered.ttl_start.map(|t| t.0),
        restart_on_generation,
        observed_generation: remembered.observed_generation,
        generation: meta.generation,
        observed_renew: remembered.observed_renew,
        renew,
    });
    let expires_at = expiry::expires_at(ttl_start, ttl_value);
    Ok(Lifecycle {
        ttl_text,
        ttl_start,
        observed_renew: renew.map(str::to_string),
        expires_at,
        expiration: expiry::effective_expiration(expiration, meta),
        state: expiry::evaluate(now, expires_at, ttl_value, policy),
    })
}

impl Lifecycle {
    /// When the next reconcile must happen for expiry, capped by `resync`.
    pub fn requeue_after(&self, now: Timestamp, resync: Duration) -> Duration {
        match self.state.requeue_at() {
            Some(at) => expiry::requeue_after(now, at).min(resync),
            None => resync,
        }
    }

    /// Seconds between `expiresAt` and now, for the expiry-lag histogram.
    pub fn lag_seconds(&self, now: Timestamp) -> f64 {
        now.duration_since(self.expires_at).as_secs_f64().max(0.0)
    }
}

/// Outcome of trying to delete an expired object.
pub enum Deleted {
    Yes,
    /// The object changed (or vanished) since it was read: an edit racing the expiry wins,
    /// and the next reconcile looks again.
    RacedWithAnEdit,
}

/// Deletes `obj` only if it is still exactly the version that was judged expired: uid and
/// resourceVersion preconditions make the API server refuse the delete when anything
/// changed in between.
pub async fn delete_if_unchanged<K>(api: &Api<K>, obj: &K) -> Result<Deleted>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: obj.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&obj.name_any(), &params).await {
        Ok(_) => Ok(Deleted::Yes),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Deleted::RacedWithAnEdit),
        Err(e) => Err(e).context(format!("deleting expired {}", obj.name_any())),
    }
}
