//! The workloads that follow a published config (`kiln.dev/follow-config:
//! <configId>-<configType>`): rollout bookkeeping and what `status.followers` says.
//!
//! A new revision whose content differs from the one before opens a debounce window (kept in
//! status, so it survives restarts); when it closes, the followers are rolled out to the
//! revision of that moment. Nothing else rolls them out: not the first publication (nothing
//! ran with an older one), not drift repair (it restores the same content), not a restart of
//! Kiln (the status already records the revision).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tracing::info;

use crate::api::common::FollowerStatus;
use crate::api::draft::{ConfigRolloutStatus, DraftStatus, PublishedRevision};
use crate::controller::Context;
use crate::controller::followers::{self, Index, SYNC_WAIT, rollout, settle};
use crate::desired::follow::{CONFIG_REVISION_PREFIX, FOLLOW_CONFIG, Mark, Seen, report};
use crate::error::Result;

/// The rollout and follower parts of the status, and when to look again.
pub struct Following {
    pub rollout: ConfigRolloutStatus,
    pub followers: Vec<FollowerStatus>,
    pub behind: i32,
    pub requeue: Duration,
    /// Workloads rolled out in this reconcile, as `Kind/name`.
    pub rolled: Vec<String>,
}

/// Whether the status carries rollout state or followers that a reconcile must build on.
pub fn has_state(status: &DraftStatus) -> bool {
    status.rollout.is_some() || !status.followers.is_empty()
}

/// Whether going from `before` to `now` is a change followers must see.
pub fn is_new_content(before: Option<&PublishedRevision>, now: &PublishedRevision) -> bool {
    before.is_some_and(|b| b.revision != now.revision && b.hash != now.hash)
}

/// Whether `current` records a debounce window that has closed by `now`: the reconcile that
/// sees it rolls the followers out (or finds them rolled out) and clears it.
pub fn window_closed(current: &DraftStatus, debounce: SignedDuration, now: Timestamp) -> bool {
    let Some(since) = current
        .rollout
        .as_ref()
        .and_then(|r| r.pending_since.as_ref())
    else {
        return false;
    };
    let due = since.0.checked_add(debounce).unwrap_or(now);
    now >= due
}

pub async fn follow(
    ctx: &Context,
    index: &Index,
    ns: &str,
    published_name: &str,
    current: &DraftStatus,
    published: &PublishedRevision,
    now: Timestamp,
) -> Result<Following> {
    let debounce = followers::debounce(ctx);
    let mut r = current.rollout.clone().unwrap_or_default();
    if is_new_content(current.published.as_ref(), published) && r.pending_since.is_none() {
        r.pending_since = Some(Time(settle(now)));
    }
    let revision = published.revision;
    let marks = [Mark::new(
        CONFIG_REVISION_PREFIX,
        published_name,
        revision.to_string(),
    )];
    if !index.synced().await {
        return Ok(Following {
            rollout: r,
            followers: current.followers.clone(),
            behind: current.followers_behind.unwrap_or(0),
            requeue: SYNC_WAIT,
            rolled: Vec::new(),
        });
    }
    let mut followers = index.following(ns, FOLLOW_CONFIG, published_name);
    let message =
        format!("config {published_name} has a new revision {revision}; pod template annotated");
    let request = rollout::Request {
        namespace: ns,
        marks: &marks,
        debounce,
        now,
        message: &message,
        count: crate::metrics::Metrics::config_rollout,
    };
    let since = r.pending_since.as_ref().map(|t| t.0);
    let step = followers::step(ctx, &mut followers, since, &request).await?;
    if !step.rolled.is_empty() {
        info!(workloads = ?step.rolled, revision, "followers rolled out");
        r.last_time = Some(Time(now));
        r.last_revision = Some(revision);
        r.last_workloads = i32::try_from(step.rolled.len()).ok();
    }
    if step.done {
        r.pending_since = None;
    }
    let seen: Vec<Seen<'_>> = followers.iter().map(|f| f.seen()).collect();
    let (lines, behind) = report(
        &seen,
        &marks,
        &marks[0].key,
        r.pending_since.is_some(),
        str::to_string,
    );
    Ok(Following {
        rollout: r,
        followers: lines,
        behind,
        requeue: step.requeue,
        rolled: step.rolled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(revision: i64, hash: &str) -> PublishedRevision {
        PublishedRevision {
            config_map: "app-content".into(),
            revision,
            hash: hash.into(),
            time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn only_a_new_revision_with_new_content_is_a_change() {
        // First publication: nothing ran with an older one.
        assert!(!is_new_content(None, &rev(1, "a")));
        // Drift repair or a restart: same revision.
        assert!(!is_new_content(Some(&rev(2, "a")), &rev(2, "a")));
        assert!(is_new_content(Some(&rev(2, "a")), &rev(3, "b")));
        // A rollback is new content too: the pods run the one before.
        assert!(is_new_content(Some(&rev(3, "b")), &rev(4, "a")));
        // A new revision of identical content (a configId taken over): nothing to restart.
        assert!(!is_new_content(Some(&rev(3, "b")), &rev(4, "b")));
    }

    #[test]
    fn a_window_is_closed_from_its_start_plus_the_debounce() {
        let start = Timestamp::from_second(1_000).expect("time");
        let debounce = SignedDuration::from_secs(30);
        let pending = |since: Option<Timestamp>| DraftStatus {
            rollout: Some(ConfigRolloutStatus {
                pending_since: since.map(Time),
                ..Default::default()
            }),
            ..Default::default()
        };
        let at = |s| Timestamp::from_second(s).expect("time");
        assert!(!window_closed(&DraftStatus::default(), debounce, at(5_000)));
        assert!(!window_closed(&pending(None), debounce, at(5_000)));
        assert!(!window_closed(&pending(Some(start)), debounce, at(1_029)));
        assert!(window_closed(&pending(Some(start)), debounce, at(1_030)));
        assert!(window_closed(&pending(Some(start)), debounce, at(5_000)));
    }
}
