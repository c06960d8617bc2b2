//! The Job's desired status, computed from what the reconcile found (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::lifecycle::{self, Lifecycle};
use crate::api::conditions::types::*;
use crate::api::job::{ArchiveStatus, JobPhase, KilnJob, KilnJobStatus, SensitiveFile};
use crate::conditions::{Desired, merge};
use crate::resolve::declared::Problem;
use crate::workspace::Sensitivity;

/// Type of the condition that reports uploaded files lost with the pod's workspace.
pub const WORKSPACE_LOST: &str = "WorkspaceLost";

/// Everything the reconcile learnt about the job's workspace.
pub struct Observed {
    pub files_count: i64,
    pub total_size_bytes: i64,
    pub missing_files: Vec<String>,
    pub problems: Vec<Problem>,
    /// Uploaded files that vanished with the workspace, if any (sticky until the spec changes).
    pub lost_uploads: Option<String>,
    pub archive: Option<ArchiveStatus>,
    /// The workspace's record of files made from Secrets.
    pub sensitive: Sensitivity,
}

pub fn build(
    job: &KilnJob,
    current: &KilnJobStatus,
    seen: &Observed,
    life: &Lifecycle,
    now: Timestamp,
) -> KilnJobStatus {
    let mut status = current.clone();
    status.observed_generation = job.metadata.generation;
    apply_lifecycle(&mut status, life);
    status.files_count = Some(seen.files_count);
    status.total_size_bytes = Some(seen.total_size_bytes);
    status.missing_files = seen.missing_files.clone();
    status.archive = seen.archive.clone();
    status.sensitive_files = sensitive_files(&current.sensitive_files, &seen.sensitive);

    let complete_requested = job.spec.complete == Some(true);
    let problem = seen
        .problems
        .first()
        .map(|p| (p.reason(), p.message().to_string()));
    let (phase, ready, complete): (JobPhase, Desired, Desired) =
        if let Some(failure) = &job.spec.failure {
            let m = format!("the client reported a failure: {}", failure.message);
            (
                JobPhase::Failed,
                Desired::new(READY, false, "Failed", m.clone()),
                Desired::new(COMPLETE, false, "Failed", m),
            )
        } else if let Some((reason, message)) = &problem {
            (
                JobPhase::Generating,
                Desired::new(READY, false, reason, message.clone()),
                Desired::new(COMPLETE, false, reason, message.clone()),
            )
        } else if let Some(lost) = &seen.lost_uploads {
            (
                JobPhase::Generating,
                Desired::new(READY, false, "WorkspaceLost", lost.clone()),
                Desired::new(COMPLETE, false, "WorkspaceLost", lost.clone()),
            )
        } else if !complete_requested {
            let m = format!(
                "{} file(s) written; set spec.complete when done",
                seen.files_count
            );
            (
                JobPhase::Generating,
                Desired::new(READY, false, "Generating", m.clone()),
                Desired::new(COMPLETE, false, "NotRequested", m),
            )
        } else if !seen.missing_files.is_empty() {
            let m = format!(
                "{} planned file(s) missing: {}",
                seen.missing_files.len(),
                preview(&seen.missing_files)
            );
            (
                JobPhase::Generating,
                Desired::new(READY, false, "PlanIncomplete", m.clone()),
                Desired::new(COMPLETE, false, "PlanIncomplete", m),
            )
        } else {
            let m = match &seen.archive {
                Some(a) => format!("archive built: {} bytes, sha256 {}", a.size_bytes, a.sha256),
                None => "archive built".into(),
            };
            (
                JobPhase::Complete,
                Desired::new(READY, true, "Complete", m.clone()),
                Desired::new(COMPLETE, true, "ArchiveBuilt", m),
            )
        };
    status.message = Some(ready.message.clone());
    let stalled = match (&problem, phase) {
        (Some((reason, message)), _) => Desired::new(STALLED, true, reason, message.clone()),
        (None, JobPhase::Failed) => Desired::new(STALLED, true, "Failed", ready.message.clone()),
        _ => Desired::new(STALLED, false, "Reconciled", ""),
    };
    let mut desired = vec![
        ready,
        complete,
        stalled,
        Desired::new(RECONCILING, false, "Reconciled", ""),
        lifecycle::expiring_soon_condition(life, "the job (and its files)"),
    ];
    let mut remove = vec![EXPIRED];
    match &seen.lost_uploads {
        Some(lost) => desired.push(Desired::new(
            WORKSPACE_LOST,
            true,
            "WorkspaceLost",
            lost.clone(),
        )),
        None => remove.push(WORKSPACE_LOST),
    }
    status.phase = Some(phase);
    status.finished_time = finished_time(current, phase, now);
    status.conditions = merge(
        &current.conditions,
        &desired,
        &remove,
        job.metadata.generation,
        now,
    );
    status
}

/// What the status said, plus what the workspace recorded: entries are never dropped while the
/// Job exists, so that an archive restored or kept from earlier files stays guarded even when
/// the workspace's own record is gone with the pod.
fn sensitive_files(current: &[SensitiveFile], recorded: &Sensitivity) -> Vec<SensitiveFile> {
    let mut all: Sensitivity = current
        .iter()
        .map(|f| (f.path.as_str(), f.secrets.as_slice()))
        .collect();
    all.merge(recorded);
    all.files()
        .map(|(path, secrets)| SensitiveFile {
            path: path.to_owned(),
            secrets: secrets.iter().cloned().collect(),
        })
        .collect()
}

fn preview(paths: &[String]) -> String {
    let mut s = paths
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > 10 {
        s.push_str(&format!(", … ({} more)", paths.len() - 10));
    }
    s
}

/// When the job finished: kept from the status once recorded (so `ttlAfterFinished` counts
/// from the first finish, and the status does not change on every pass), set to `now` on the
/// pass that first sees it `Complete` or `Failed`, cleared when it is `Generating` again.
pub fn finished_time(current: &KilnJobStatus, phase: JobPhase, now: Timestamp) -> Option<Time> {
    match phase {
        JobPhase::Complete | JobPhase::Failed => Some(
            current
                .finished_time
                .clone()
                .unwrap_or_else(|| Time(crate::expiry::floor_second(now))),
        ),
        JobPhase::Generating => None,
        JobPhase::Expired => current.finished_time.clone(),
    }
}

fn apply_lifecycle(status: &mut KilnJobStatus, life: &Lifecycle) {
    status.ttl = Some(life.ttl_text.clone());
    status.expiration = Some(life.expiration);
    status.ttl_start_time = Some(Time(life.ttl_start));
    status.observed_renew = life.observed_renew.clone();
    status.expires_at = Some(Time(life.expires_at));
}

/// Status of a job kept after its TTL ran out (`MarkExpired`): its files and archive are gone.
pub fn expired(
    job: &KilnJob,
    current: &KilnJobStatus,
    life: &Lifecycle,
    now: Timestamp,
) -> KilnJobStatus {
    let mut status = current.clone();
    status.observed_generation = job.metadata.generation;
    apply_lifecycle(&mut status, life);
    status.phase = Some(JobPhase::Expired);
    status.files_count = Some(0);
    status.total_size_bytes = Some(0);
    status.archive = None;
    let message = format!(
        "{} ran out at {}; files and archive deleted, the Job is kept",
        life.clock_text("ttl"),
        life.expires_at
    );
    status.message = Some(message.clone());
    status.conditions = merge(
        &current.conditions,
        &lifecycle::expired_conditions(message),
        &[WORKSPACE_LOST],
        job.metadata.generation,
        now,
    );
    status
}

/// Status of a job whose TTL cannot be used (`0s`).
pub fn bad_ttl(
    job: &KilnJob,
    current: &KilnJobStatus,
    message: &str,
    now: Timestamp,
) -> KilnJobStatus {
    let mut status = current.clone();
    status.observed_generation = job.metadata.generation;
    let message = message.to_string();
    status.message = Some(message.clone());
    status.conditions = merge(
        &current.conditions,
        &[
            Desired::new(READY, false, "InvalidTtl", message.clone()),
            Desired::new(STALLED, true, "InvalidTtl", message),
            Desired::new(RECONCILING, false, "Reconciled", ""),
        ],
        &[],
        job.metadata.generation,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finish_is_recorded_once_and_forgotten_when_generating_again() {
        let at = |s: i64| Timestamp::from_second(s).expect("timestamp");
        let now = Timestamp::new(100, 600_000_000).expect("timestamp");
        let fresh = KilnJobStatus::default();
        for phase in [JobPhase::Complete, JobPhase::Failed] {
            assert_eq!(finished_time(&fresh, phase, now), Some(Time(at(100))));
        }
        assert_eq!(finished_time(&fresh, JobPhase::Generating, now), None);
        let finished = KilnJobStatus {
            finished_time: Some(Time(at(50))),
            ..KilnJobStatus::default()
        };
        assert_eq!(
            finished_time(&finished, JobPhase::Complete, now),
            Some(Time(at(50)))
        );
        assert_eq!(
            finished_time(&finished, JobPhase::Expired, now),
            Some(Time(at(50)))
        );
        assert_eq!(finished_time(&finished, JobPhase::Generating, now), None);
    }
}
