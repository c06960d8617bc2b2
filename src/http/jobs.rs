//! Which Job a file API request is about: its uid (the key of its workspace directory), its
//! phase (may it still change?) and its archive (the download's `ETag`).
//!
//! Jobs are read from a cache kept by a watch of its own, one per watched namespace (or one
//! for all), rather than with a GET per request: an upload of a thousand files would otherwise
//! cost the API server a thousand reads of the same object. The cached copies are slimmed
//! (declared files, plan, annotations and managed fields dropped): the API needs none of them
//! and they are the bulk of a Job. A Job the cache does not have yet (created a moment ago,
//! or before the first list completes) is read from the API server directly, so a client may
//! create a Job and upload to it at once.
//!
//! The controllers have caches of their own; this one is separate because it lives as long
//! as the HTTP server (on every replica, leader or not) and holds only what the API reads.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::debug;

use super::error::ApiError;
use crate::api::KilnJob;
use crate::api::job::JobPhase;
use crate::controller::{Scope, watcher_config};
use crate::workspace::JobKey;

/// The Jobs the file API can serve.
pub struct Jobs {
    client: Client,
    stores: Vec<(Scope, Store<KilnJob>)>,
}

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
        let mut stores = Vec::new();
        for scope in Scope::from_namespaces(namespaces) {
            let (store, writer) = reflector::store();
            let watch = watcher(scope.api::<KilnJob>(&client), watcher_config())
                .default_backoff()
                .modify(slim)
                .reflect(writer)
                .for_each(|event| async move {
                    if let Err(error) = event {
                        debug!(%error, "file API job watch");
                    }
                });
            tokio::spawn(watch);
            stores.push((scope, store));
        }
        Jobs { client, stores }
    }

    /// The Job `namespace/name`, or 404. Call [`check_names`] first.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Target, ApiError> {
        let store = self
            .stores
            .iter()
            .find(|(scope, _)| match scope {
                Scope::All => true,
                Scope::Namespace(ns) => ns == namespace,
            })
            .map(|(_, store)| store)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "Kiln does not manage Jobs in namespace {namespace} (see its --namespaces)"
                ))
            })?;
        let job = match store.get(&ObjectRef::new(name).within(namespace)) {
            Some(job) => job,
            None => Api::<KilnJob>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| ApiError::internal("reading the Job failed", &e))?
                .map(Arc::new)
                .ok_or_else(|| {
                    ApiError::not_found(format!("job {namespace}/{name} does not exist"))
                })?,
        };
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

/// 400 unless `namespace` is a DNS label and `name` a DNS subdomain, as Kubernetes requires.
/// Checked before any review or read, so that nothing built from a URL that no object could
/// have ever reaches the API server.
pub fn check_names(namespace: &str, name: &str) -> Result<(), ApiError> {
    let dns = |s: &str, max: usize, dots: bool| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !dns(namespace, 63, false) {
        return Err(ApiError::validation(format!(
            "{:?} is not a valid namespace name",
            crate::workspace::key::truncate_for_message(namespace)
        )));
    }
    if !dns(name, 253, true) {
        return Err(ApiError::validation(format!(
            "{:?} is not a valid Job name",
            crate::workspace::key::truncate_for_message(name)
        )));
    }
    Ok(())
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
    fn names_must_be_kubernetes_names() {
        assert!(check_names("team-a", "job.v1-2").is_ok());
        for (ns, name) in [
            ("", "j"),
            ("Team", "j"),
            ("a.b", "j"),
            ("-a", "j"),
            ("..", "j"),
            (&"a".repeat(64), "j"),
            ("ns", ""),
            ("ns", ".."),
            ("ns", "a/b"),
            ("ns", "A"),
            ("ns", "a\0"),
            ("ns", &"a".repeat(254)),
        ] {
            let e = check_names(ns, name).unwrap_err();
            assert_eq!(e.code, "validation_error", "{ns:?} {name:?}");
        }
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
