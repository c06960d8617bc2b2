//! Rolling out followers: each one whose pod template lacks a mark and whose own debounce
//! window has passed gets the marks, which makes its controller replace the pods.
//!
//! The candidates come from the index (no list request); the patch is a JSON merge patch of
//! annotations, conditional on the resourceVersion the index saw, not server-side apply:
//! Kiln does not own these objects, and one field manager applying the marks of several
//! followed objects would remove the others' each time.

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;

use super::{Follower, Workload};
use crate::apply::managers;
use crate::controller::Context;
use crate::desired::follow::{FollowerPlan, Mark, plan, rollout_patch};
use crate::error::{KubeContext, Result};

/// The result of one rollout pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Workloads annotated in this pass, as `Kind/name`.
    pub rolled: Vec<String>,
    /// The earliest moment a deferred follower may be rolled out; None when none waits.
    pub wait_until: Option<Timestamp>,
}

/// What one rollout pass needs to know.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub marks: &'a [Mark],
    pub debounce: SignedDuration,
    pub now: Timestamp,
    /// The Event message on a rolled-out workload: what changed.
    pub message: &'a str,
    /// Counts one rolled-out workload of a kind.
    pub count: fn(&crate::metrics::Metrics, &str),
}

/// How many followers' patches are in flight at once: a new revision followed by fifty
/// workloads reaches them all in a few round trips, without a burst of fifty requests.
const IN_FLIGHT: usize = 8;

/// What became of one follower due for a rollout.
enum Patched {
    Rolled(String),
    /// Changed since the index saw it: look again at this time.
    Retry(Timestamp),
    Gone,
}

/// Rolls out `followers` as `req` says.
pub async fn roll(ctx: &Context, followers: &[Follower], req: &Request<'_>) -> Result<Pass> {
    let mut pass = Pass::default();
    let mut due = Vec::new();
    for follower in followers {
        match plan(
            req.marks,
            follower.annotations.as_ref(),
            follower.template.as_ref(),
            req.debounce,
            req.now,
        ) {
            FollowerPlan::UpToDate => {}
            FollowerPlan::Wait { until } => defer(&mut pass, until),
            FollowerPlan::Roll => due.push(follower),
        }
    }
    // The futures are made up front (they do nothing until polled): a closure inside the
    // stream would make the reconcile's future too general for the compiler to prove `Send`.
    let patches: Vec<_> = due
        .into_iter()
        .map(|follower| -> BoxFuture<'_, Result<Patched>> {
            match follower.kind {
                "Deployment" => Box::pin(patch::<Deployment>(ctx, follower, req)),
                "StatefulSet" => Box::pin(patch::<StatefulSet>(ctx, follower, req)),
                _ => Box::pin(patch::<DaemonSet>(ctx, follower, req)),
            }
        })
        .collect();
    let mut results = stream::iter(patches).buffer_unordered(IN_FLIGHT);
    // Every patch is awaited, even after an error, so that the pass reports each one sent.
    let mut first_error = None;
    while let Some(result) = results.next().await {
        match result {
            Ok(Patched::Rolled(name)) => pass.rolled.push(name),
            Ok(Patched::Retry(at)) => defer(&mut pass, at),
            Ok(Patched::Gone) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    pass.rolled.sort();
    match first_error {
        Some(e) => Err(e),
        None => Ok(pass),
    }
}

async fn patch<W: Workload>(
    ctx: &Context,
    follower: &Follower,
    req: &Request<'_>,
) -> Result<Patched> {
    let api: Api<W> = Api::namespaced(ctx.client.clone(), req.namespace);
    let (kind, name) = (follower.kind, follower.name.as_str());
    let patch = rollout_patch(req.marks, &follower.resource_version, req.now);
    let params = PatchParams {
        field_manager: Some(managers::ROLLOUT.into()),
        ..Default::default()
    };
    match api.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(patched) => {
            (req.count)(&ctx.metrics, kind);
            ctx.event(
                &patched,
                EventType::Normal,
                "RolloutTriggered",
                "Rollout",
                req.message,
            )
            .await;
            Ok(Patched::Rolled(format!("{kind}/{name}")))
        }
        // Changed since the index saw it (perhaps rolled out for something else it follows):
        // look again shortly, with the index's newer copy, rather than restart it twice.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Patched::Retry(req.now + SignedDuration::from_secs(1)))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Patched::Gone),
        Err(e) => Err(e).context(format!("rolling out {kind} {name}")),
    }
}

fn defer(pass: &mut Pass, until: Timestamp) {
    pass.wait_until = Some(pass.wait_until.map_or(until, |w| w.min(until)));
}

/// The first 12 hex digits of a hash (after its scheme), for messages.
pub fn short(hash: &str) -> &str {
    let digits = hash.rsplit_once(':').map_or(hash, |(_, d)| d);
    &digits[..digits.len().min(12)]
}
