//! The `Stored` condition: whether the job's files are safely in the object store.
//!
//! Only present when Kiln runs with an object store. The store's client records which jobs
//! saw a request fail; while one did, each reconcile asks the store a cheap question and, once
//! it answers, the condition turns True again by itself (uploads that failed with 503 are the
//! client's to retry: nothing of them was kept).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::job::KilnJobStatus;
use crate::conditions::{Desired, merge};
use crate::workspace::{JobKey, Workspace};

/// Type of the condition.
pub const STORED: &str = "Stored";
/// How soon a job whose store requests failed looks again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// What the reconcile learnt about the store, for this job.
pub enum Seen {
    /// No object store configured: no condition.
    NoStore,
    Available(String),
    Unavailable(String),
}

/// Probes the store if the job's last request failed, and says where things stand.
pub async fn observe(workspace: &Workspace, key: &JobKey) -> Seen {
    let Some(remote) = workspace.remote() else {
        return Seen::NoStore;
    };
    if remote.failure(key).is_some() {
        let _ = remote.probe(key).await;
    }
    match remote.failure(key) {
        Some(failure) => Seen::Unavailable(failure),
        None => Seen::Available(remote.url().to_string()),
    }
}

/// Sets the condition on the desired status (pure).
pub fn apply(status: &mut KilnJobStatus, seen: &Seen, generation: Option<i64>, now: Timestamp) {
    let desired = match seen {
        Seen::NoStore => return,
        Seen::Available(url) => Desired::new(
            STORED,
            true,
            "ObjectStoreAvailable",
            format!("uploaded files and the archive are stored in {url}"),
        ),
        Seen::Unavailable(failure) => Desired::new(
            STORED,
            false,
            "ObjectStoreUnavailable",
            format!("{failure}; uploads are refused with 503 until the object store answers again"),
        ),
    };
    status.conditions = merge(&status.conditions, &[desired], &[], generation, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_follows_the_store() {
        let now = Timestamp::now();
        let mut status = KilnJobStatus::default();
        apply(&mut status, &Seen::NoStore, Some(1), now);
        assert!(status.conditions.is_empty());
        apply(
            &mut status,
            &Seen::Unavailable("the object store could not store k".into()),
            Some(1),
            now,
        );
        let c = crate::conditions::find(&status.conditions, STORED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ObjectStoreUnavailable")
        );
        apply(
            &mut status,
            &Seen::Available("s3://b/p".into()),
            Some(1),
            now,
        );
        let c = crate::conditions::find(&status.conditions, STORED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ObjectStoreAvailable")
        );
    }
}
