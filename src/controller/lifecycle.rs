//! The TTL side of a reconcile, shared by Draft and Job: when the clock started, when the
//! object expires, and what to do about it. Decisions come from the pure `crate::expiry`;
//! this module only gathers their inputs from an object and acts on `Expired`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::Context;
use crate::api::Expiration;
use crate::duration;
use crate::error::{KubeContext, Result};
use crate::expiry::{self, ClockInput, ExpiryState, WarningPolicy};

/// Where an object stands in its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    /// The TTL in effect, as shown in status.
    pub ttl_text: String,
    /// Its value.
    pub ttl: SignedDuration,
    /// `ttlAfterFinished`, when the deadline counted from the job's finish is the earlier one
    /// and so the one `expires_at` shows.
    pub after_finished: Option<String>,
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
        ttl: ttl_value,
        after_finished: None,
        ttl_start,
        observed_renew: renew.map(str::to_string),
        expires_at,
        expiration: expiry::effective_expiration(expiration, meta),
        state: expiry::evaluate(now, expires_at, ttl_value, policy),
    })
}

impl Lifecycle {
    /// Adds a job's second deadline: `ttl_after_finished` counted from `finished_at` (the
    /// first time the job was seen `Complete` or `Failed`). The earlier deadline wins; without
    /// a finish time or without the setting, nothing changes. An unusable duration (`0s`) is
    /// an error string for the status, as for the TTL.
    pub fn with_finish(
        self,
        finished_at: Option<Timestamp>,
        ttl_after_finished: Option<&str>,
        policy: &WarningPolicy,
        now: Timestamp,
    ) -> std::result::Result<Lifecycle, String> {
        let Some(text) = ttl_after_finished else {
            return Ok(self);
        };
        let after: SignedDuration = duration::parse_ttl(text).map_err(|e| e.to_string())?;
        let Some(finished_at) = finished_at else {
            return Ok(self);
        };
        let (expires_at, ttl, finish_won) =
            expiry::earliest_expiry((self.expires_at, self.ttl), Some((finished_at, after)));
        if !finish_won {
            return Ok(self);
        }
        Ok(Lifecycle {
            after_finished: Some(text.to_string()),
            expires_at,
            state: expiry::evaluate(now, expires_at, ttl, policy),
            ..self
        })
    }

    /// The clock that runs out first, for messages: `ttl 48h`, `ttlAfterFinished 1h`.
    pub fn clock_text(&self, clock: &str) -> String {
        match &self.after_finished {
            Some(after) => format!("ttlAfterFinished {after}"),
            None => format!("{clock} {}", self.ttl_text),
        }
    }
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

/// Names an object kind in expiry Events, logs and metrics.
pub struct Subject {
    pub controller: &'static str,
    pub kind: &'static str,
    /// `retention` for a Draft, `ttl` for a Job.
    pub clock: &'static str,
}

/// `expiration: Delete`: deletes the object unless it changed since it was read; on success
/// records the expiry (metric, Event, log). Cleanup of what it owns follows from ownership
/// or its finalizer.
pub async fn expire_by_deleting<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    life: &Lifecycle,
    now: Timestamp,
    who: &Subject,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match delete_if_unchanged(api, obj).await? {
        Deleted::Yes => {
            let lag = life.lag_seconds(now);
            ctx.metrics.expired(who.controller, who.kind, lag);
            let note = format!(
                "{} ran out; {} deleted",
                life.clock_text(who.clock),
                who.controller
            );
            ctx.event(obj, EventType::Normal, "Expired", "Delete", note)
                .await;
            info!(lag, "expired {} deleted", who.controller);
            Ok(Action::await_change())
        }
        Deleted::RacedWithAnEdit => Ok(Action::requeue(Duration::from_millis(200))),
    }
}

/// `expiration: MarkExpired`: records the expiry once, when the object first becomes
/// `Expired` (`already` says whether it was before this reconcile).
pub async fn announce_marked_expired<K>(
    ctx: &Context,
    obj: &K,
    life: &Lifecycle,
    now: Timestamp,
    who: &Subject,
    already: bool,
    kept: &str,
) where
    K: Resource<DynamicType = ()>,
{
    if already {
        return;
    }
    ctx.metrics
        .expired(who.controller, who.kind, life.lag_seconds(now));
    let note = format!("{} ran out; {kept}", life.clock_text(who.clock));
    ctx.event(obj, EventType::Normal, "Expired", "MarkExpired", note)
        .await;
}

/// The `ExpiringSoon` condition for `life`; `what` names what expires ("the draft").
pub fn expiring_soon_condition(life: &Lifecycle, what: &str) -> crate::conditions::Desired {
    use crate::api::conditions::types::EXPIRING_SOON;
    use crate::conditions::Desired;
    match life.state {
        ExpiryState::ExpiringSoon { requeue_at } => Desired::new(
            EXPIRING_SOON,
            true,
            "ExpiresSoon",
            format!("{what} expires at {requeue_at}"),
        ),
        _ => Desired::new(EXPIRING_SOON, false, "NotExpiringSoon", ""),
    }
}

/// The conditions of an object kept after its TTL ran out (`MarkExpired`).
pub fn expired_conditions(message: String) -> Vec<crate::conditions::Desired> {
    use crate::api::conditions::types::{EXPIRED, EXPIRING_SOON, READY, RECONCILING, STALLED};
    use crate::conditions::Desired;
    vec![
        Desired::new(EXPIRED, true, "TtlExpired", message.clone()),
        Desired::new(READY, false, "Expired", message),
        Desired::new(EXPIRING_SOON, false, "Expired", ""),
        Desired::new(RECONCILING, false, "Reconciled", ""),
        Desired::new(STALLED, false, "Reconciled", ""),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("timestamp")
    }

    fn job_life(ttl: &str, now: Timestamp) -> Lifecycle {
        let meta = ObjectMeta {
            creation_timestamp: Some(Time(at(0))),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        let remembered = Remembered {
            ttl_start: None,
            observed_renew: None,
            observed_generation: None,
        };
        compute(
            &meta,
            Some(ttl),
            "48h",
            None,
            false,
            remembered,
            &WarningPolicy::default(),
            now,
        )
        .expect("valid ttl")
    }

    #[test]
    fn ttl_after_finished_shortens_the_life_of_a_finished_job() {
        let policy = WarningPolicy::default();
        let now = at(2 * 3600);
        let life = job_life("48h", now);
        assert_eq!(life.expires_at, at(48 * 3600));

        // Not finished yet, or no ttlAfterFinished: unchanged.
        let same = life.clone().with_finish(None, Some("1h"), &policy, now);
        assert_eq!(same.as_ref(), Ok(&life));
        let same = life.clone().with_finish(Some(at(3600)), None, &policy, now);
        assert_eq!(same.as_ref(), Ok(&life));

        // Finished at 1h with 1h after finishing: expires at 2h, which is now.
        let short = life
            .clone()
            .with_finish(Some(at(3600)), Some("1h"), &policy, now)
            .expect("valid");
        assert_eq!(short.expires_at, at(2 * 3600));
        assert_eq!(short.state, ExpiryState::Expired);
        assert_eq!(short.clock_text("ttl"), "ttlAfterFinished 1h");
        assert_eq!(
            short.ttl_text, "48h",
            "status still shows the TTL in effect"
        );

        // Ten minutes before: ExpiringSoon with 10% of the winning (1h) TTL as the lead.
        let before = job_life("48h", at(2 * 3600 - 300))
            .with_finish(Some(at(3600)), Some("1h"), &policy, at(2 * 3600 - 300))
            .expect("valid");
        assert_eq!(
            before.state,
            ExpiryState::ExpiringSoon {
                requeue_at: at(2 * 3600)
            }
        );

        // A long ttlAfterFinished never extends the TTL from creation.
        let long = life
            .clone()
            .with_finish(Some(at(3600)), Some("100h"), &policy, now)
            .expect("valid");
        assert_eq!(long.expires_at, at(48 * 3600));
        assert_eq!(long.clock_text("ttl"), "ttl 48h");
    }

    #[test]
    fn an_unusable_ttl_after_finished_is_an_error_even_before_the_finish() {
        let life = job_life("48h", at(0));
        let err = life
            .with_finish(None, Some("0s"), &WarningPolicy::default(), at(0))
            .expect_err("0s");
        assert!(!err.is_empty());
    }
}
