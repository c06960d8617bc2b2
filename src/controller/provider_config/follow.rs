//! The workloads that follow a ProviderConfig (`kiln.dev/follow`): rollout bookkeeping and
//! what `status.followers` says about them.
//!
//! A change of the credentials hash or of the settings hash from one known value to another
//! opens a debounce window (kept in status, so it survives restarts); when it closes, the
//! followers are rolled out to the hashes of that moment. The first hash ever recorded opens
//! nothing: a new Secret is not a rotation, and a Kiln that starts following settings does
//! not restart everything on its first pass.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tracing::info;

use super::events::Happenings;
use crate::api::common::FollowerStatus;
use crate::api::provider_config::{ProviderConfigStatus, RolloutStatus};
use crate::controller::Context;
use crate::controller::followers::rollout::{self, short};
use crate::controller::followers::{self, Index, SYNC_WAIT, settle};
use crate::desired::follow::{
    CREDENTIALS_HASH_PREFIX, FOLLOW, Mark, SETTINGS_HASH_PREFIX, Seen, report,
};
use crate::desired::provider_config::same_scheme;
use crate::error::Result;

/// The config followed, and the hashes its followers carry now.
pub struct Followed<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub credentials: Option<&'a str>,
    pub settings: &'a str,
}

/// The outcome: the rollout and follower parts of the status, and when to look again.
pub struct Following {
    pub rollout: RolloutStatus,
    pub followers: Vec<FollowerStatus>,
    pub behind: i32,
    pub requeue: Duration,
}

/// The marks of `config`'s followers: the credentials hash (once there are credentials) and
/// the settings hash.
fn marks(config: &str, hashes: &Followed<'_>) -> Vec<Mark> {
    let mut marks = Vec::with_capacity(2);
    if let Some(h) = hashes.credentials {
        marks.push(Mark::new(CREDENTIALS_HASH_PREFIX, config, h));
    }
    marks.push(Mark::new(SETTINGS_HASH_PREFIX, config, hashes.settings));
    marks
}

fn changed(before: Option<&str>, now: Option<&str>) -> bool {
    matches!((before, now), (Some(a), Some(b)) if a != b && same_scheme(a, b))
}

pub async fn follow(
    ctx: &Context,
    index: &Index,
    current: &ProviderConfigStatus,
    hashes: &Followed<'_>,
    now: Timestamp,
    happened: &mut Happenings,
) -> Result<Following> {
    let (ns, name) = (hashes.namespace, hashes.name);
    let debounce = followers::debounce(ctx);
    let mut r = current.rollout.clone().unwrap_or_default();
    let credentials = changed(current.credentials_hash.as_deref(), hashes.credentials);
    let settings = changed(current.settings_hash.as_deref(), Some(hashes.settings));
    if (credentials || settings) && r.pending_since.is_none() {
        r.pending_since = Some(Time(settle(now)));
        happened.rollout_scheduled = Some(format!(
            "followers are rolled out after the {}s debounce window",
            debounce.as_secs()
        ));
    }
    for (what, changed) in [("credentials", credentials), ("settings", settings)] {
        if changed && !r.pending_changes.iter().any(|c| c == what) {
            r.pending_changes.push(what.to_string());
        }
    }
    let marks = marks(name, hashes);
    if !index.synced().await {
        return Ok(Following {
            rollout: r,
            followers: current.followers.clone(),
            behind: current.followers_behind.unwrap_or(0),
            requeue: SYNC_WAIT,
        });
    }
    let mut followers = index.following(ns, FOLLOW, name);
    let what = match r.pending_changes.as_slice() {
        [] => "credentials or settings".to_string(),
        changes => changes.join(" and "),
    };
    let message = format!("{what} of ProviderConfig {name} changed; pod template annotated");
    let request = rollout::Request {
        namespace: ns,
        marks: &marks,
        debounce,
        now,
        message: &message,
        count: crate::metrics::Metrics::provider_rollout,
    };
    let since = r.pending_since.as_ref().map(|t| t.0);
    let step = followers::step(ctx, &mut followers, since, &request).await?;
    if !step.rolled.is_empty() {
        info!(workloads = ?step.rolled, "followers rolled out");
        r.last_time = Some(Time(now));
        r.last_hash = hashes.credentials.map(str::to_string);
        r.last_workloads = i32::try_from(step.rolled.len()).ok();
        happened.rolled = step.rolled;
    }
    if step.done {
        r.pending_since = None;
        r.pending_changes.clear();
    }
    let seen: Vec<Seen<'_>> = followers.iter().map(|f| f.seen()).collect();
    let shown = marks[0].key.clone();
    let (lines, behind) = report(&seen, &marks, &shown, r.pending_since.is_some(), |v| {
        short(v).to_string()
    });
    Ok(Following {
        rollout: r,
        followers: lines,
        behind,
        requeue: step.requeue,
    })
}
