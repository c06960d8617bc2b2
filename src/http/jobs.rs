//! Which Job a file API request is about: its uid (the key of its workspace directory), its
//! phase (may it still change?) and its archive (the download's `ETag`).
//!
//! Jobs are read from a cache of their own ([`Cached`]), slimmed to what the file API reads:
//! declared files, plan, annotations and managed fields are the bulk of a Job and are dropped.

use std::sync::Arc;

use kube::{Client, ResourceExt};

use super::cache::Cached;
use super::error::ApiError;
use crate::api::KilnJob;
use crate::api::job::JobPhase;
use crate::workspace::JobKey;

/// The Jobs the file API can serve.
pub struct Jobs(Cached<KilnJob>);

/// A Job a request is about, resolved to its workspace key.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub key: JobKey,
    pub job: Arc<KilnJob>,
}

impl Jobs {
    /// Starts the watches (one per scope; `namespaces` empty means all). Must be called from
    /// within the Tokio runtime; the watches run until the process exits.
    pub fn start(client: Client, namespaces: &[String]) -> Self {
        Jobs(Cached::start(client, namespaces, "Job", slim))
    }

    /// The Job `namespace/name`, or 404. Call [`check_names`] first.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Target, ApiError> {
        let job = self.0.get(namespace, name).await?;
        let uid = job
            .uid()
            .ok_or_else(|| ApiError::internal("reading the Job failed", &"the Job has no uid"))?;
        let key = JobKey::new(namespace, uid)?;
        Ok(Target {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key,
            job,
        })
    }
}

impl Target {
    pub fn phase(&self) -> Option<JobPhase> {
        self.job.status.as_ref().and_then(|s| s.phase)
    }

    /// 409 when the Job's files may no longer change.
    pub fn check_writable(&self) -> Result<(), ApiError> {
        match write_refusal(&self.job) {
            Some(why) => Err(ApiError::conflict(format!(
                "job {}/{} {why}",
                self.namespace, self.name
            ))
            .with_details(serde_json::json!({
                "phase": self.phase(),
            }))),
            None => Ok(()),
        }
    }
}

/// Why a Job's files may no longer be written, if they may not.
fn write_refusal(job: &KilnJob) -> Option<&'static str> {
    if job.metadata.deletion_timestamp.is_some() {
        return Some("is being deleted");
    }
    match job.status.as_ref().and_then(|s| s.phase)? {
        JobPhase::Generating => None,
        JobPhase::Complete => Some("is complete; its archive is built from the files as they were"),
        JobPhase::Failed => Some("has failed; its files are kept as they were"),
        JobPhase::Expired => Some("has expired; its files were deleted"),
    }
}

/// 400 unless the names could be a namespace and a Job (see [`super::cache::check_names`]).
pub fn check_names(namespace: &str, name: &str) -> Result<(), ApiError> {
    super::cache::check_names(namespace, name, "Job")
}

/// Drops what the file API never reads from a cached Job.
fn slim(job: &mut KilnJob) {
    job.spec.files.clear();
    job.spec.plan = None;
    job.metadata.annotations = None;
    job.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::job::{KilnJobSpec, KilnJobStatus};

    fn job(phase: Option<JobPhase>) -> KilnJob {
        let mut job = KilnJob::new(
            "j",
            KilnJobSpec {
                project_name: "p".into(),
                plan: None,
                files: Vec::new(),
                complete: None,
                failure: None,
                ttl: None,
                ttl_after_finished: None,
                expiration: None,
            },
        );
        job.status = Some(KilnJobStatus {
            phase,
            ..Default::default()
        });
        job
    }

    #[test]
    fn only_generating_jobs_take_writes() {
        assert_eq!(write_refusal(&job(None)), None);
        assert_eq!(write_refusal(&job(Some(JobPhase::Generating))), None);
        for phase in [JobPhase::Complete, JobPhase::Failed, JobPhase::Expired] {
            assert!(write_refusal(&job(Some(phase))).is_some(), "{phase:?}");
        }
        let mut deleting = job(Some(JobPhase::Generating));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(write_refusal(&deleting), Some("is being deleted"));
    }

    #[test]
    fn slimming_keeps_what_the_api_reads() {
        let mut j = job(Some(JobPhase::Complete));
        j.metadata.uid = Some("u".into());
        j.metadata.annotations = Some([("a".to_string(), "b".repeat(1000))].into());
        j.spec.plan = Some(crate::api::job::Plan {
            tasks: Vec::new(),
            metadata: None,
        });
        slim(&mut j);
        assert_eq!(j.metadata.uid.as_deref(), Some("u"));
        assert_eq!(j.spec.project_name, "p");
        assert_eq!(j.status.unwrap().phase, Some(JobPhase::Complete));
        assert!(j.metadata.annotations.is_none() && j.spec.plan.is_none());
    }
}
