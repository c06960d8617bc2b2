//! The Job controller (`docs/architecture.md` shows its flow): workspace → declared files → plan → archive →
//! status → expiry, with a finalizer that removes the job's files when it is deleted.
//!
//! Besides its own watch, it reconciles on nudges from the HTTP file API, so that a write
//! shows in `status` at once without Kiln writing anything to the API server for it, and on
//! changes to the ConfigMaps and Secrets its declared files read ([`triggers`]), so that the
//! files, and a complete job's archive ([`archive`]), follow their sources within seconds.

mod archive;
mod status;
mod stored;
mod triggers;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lifecycle::{self, Lifecycle, Remembered, Subject};
use super::{
    Context, ReadinessProbe, Scope, backoff_on_error, drive, slim_controller, slim_for_cache,
    store_ready,
};
use crate::api::Expiration;
use crate::api::job::{JobPhase, KilnJob, KilnJobStatus};
use crate::apply;
use crate::desired::job::{missing_files, planned_paths};
use crate::error::{Error, Result};
use crate::expiry::ExpiryState;
use crate::resolve::Cluster;
use crate::resolve::declared::{self, Problem, SourceKind, Sources, Stored};
use crate::workspace::{JobKey, JobPath, Workspace};
use status::Observed;

const NAME: &str = "job";
const KIND: &str = "Job";
/// Removes the job's files and archive before the Job object goes away.
pub const FINALIZER: &str = "kiln.dev/workspace";
/// How soon a job waiting for a referenced ConfigMap or Secret (to exist, or to opt in) looks
/// again.
const SOURCE_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

pub fn start(
    ctx: Arc<Context>,
    scope: &Scope,
    shutdown: CancellationToken,
) -> (ReadinessProbe, tokio::task::JoinHandle<()>) {
    let controller = slim_controller(scope.api::<KilnJob>(&ctx.client), slim_for_cache::<KilnJob>)
        .reconcile_on(ctx.job_nudge.subscribe());
    let store = controller.store();
    let probe = store_ready(store.clone());
    // Every ConfigMap and Secret of the scope, as metadata only (on the wire and in memory:
    // a Secret's data never reaches Kiln through these watches) and without a cache of their
    // own: each event is mapped to the Jobs that read the object, and dropped.
    let (cm_jobs, secret_jobs) = (store.clone(), store.clone());
    let controller = controller
        .watches(
            scope.api::<PartialObjectMeta<ConfigMap>>(&ctx.client),
            watcher::Config::default().page_size(500),
            move |cm| triggers::jobs_for_source(&cm_jobs, SourceKind::ConfigMap, &cm),
        )
        .watches(
            scope.api::<PartialObjectMeta<Secret>>(&ctx.client),
            watcher::Config::default().page_size(500),
            move |secret| triggers::jobs_for_source(&secret_jobs, SourceKind::Secret, &secret),
        );
    ctx.metrics.register_phase_source(
        KIND,
        &["Generating", "Complete", "Failed", "Expired", "Unknown"],
        move || {
            store
                .state()
                .iter()
                .map(|j| {
                    j.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map(|p| format!("{p:?}"))
                })
                .collect()
        },
    );
    let task = tokio::spawn(drive(
        NAME,
        controller,
        reconcile,
        error_policy,
        ctx,
        shutdown,
    ));
    (probe, task)
}

#[tracing::instrument(skip_all, fields(namespace = job.namespace().unwrap_or_default(), name = job.name_any()))]
async fn reconcile(job: Arc<KilnJob>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let jobs: Api<KilnJob> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&jobs, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(&job, &ctx, &jobs).await,
            Finalizer::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn job_key(job: &KilnJob) -> Result<JobKey> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    JobKey::new(ns, uid).map_err(|e| Error::Workspace(e.to_string()))
}

/// Runs blocking workspace I/O off the async runtime.
async fn blocking<T: Send + 'static>(
    ws: &Arc<Workspace>,
    f: impl FnOnce(&Workspace) -> crate::workspace::Result<T> + Send + 'static,
) -> Result<T> {
    let ws = ws.clone();
    tokio::task::spawn_blocking(move || f(&ws))
        .await
        .map_err(|e| Error::Workspace(format!("workspace task failed: {e}")))?
        .map_err(|e| Error::Workspace(e.to_string()))
}

async fn cleanup(job: &KilnJob, ctx: &Context) -> Result<Action> {
    let key = job_key(job)?;
    let removed = blocking(&ctx.workspace, move |ws| ws.remove_job(&key)).await?;
    info!(removed, "job deleted; workspace removed");
    Ok(Action::await_change())
}

async fn apply(job: &KilnJob, ctx: &Arc<Context>, jobs: &Api<KilnJob>) -> Result<Action> {
    let now = Timestamp::now();
    let current = job.status.clone().unwrap_or_default();
    let key = job_key(job)?;
    let life = lifecycle::compute(
        &job.metadata,
        job.spec.ttl.as_deref(),
        &ctx.settings.default_job_ttl,
        job.spec.expiration,
        false,
        Remembered {
            ttl_start: current.ttl_start_time.as_ref(),
            observed_renew: current.observed_renew.as_deref(),
            observed_generation: current.observed_generation,
        },
        &ctx.settings.expiry_warning,
        now,
    )
    .map_err(|m| format!("spec.ttl: {m}"))
    .and_then(|life| {
        life.with_finish(
            current.finished_time.as_ref().map(|t| t.0),
            job.spec.ttl_after_finished.as_deref(),
            &ctx.settings.expiry_warning,
            now,
        )
        .map_err(|m| format!("spec.ttlAfterFinished: {m}"))
    });
    let life = match life {
        Ok(life) => life,
        Err(message) => {
            write_status(jobs, job, status::bad_ttl(job, &current, &message, now)).await?;
            return Ok(Action::requeue(ctx.settings.resync));
        }
    };
    if life.state == ExpiryState::Expired {
        return expire(ctx, jobs, job, &current, &life, key, now).await;
    }

    let created = {
        let key = key.clone();
        blocking(&ctx.workspace, move |ws| ws.ensure_job(&key)).await?
    };
    let ns = job.namespace().unwrap_or_default();
    let sources = Sources {
        objects: Cluster::namespaced(&ctx.client, &ns),
        require_opt_in: ctx.settings.secret_sources_require_opt_in,
        withhold_secret_details: true,
    };
    let Stored { problems, written } = write_declared(ctx, job, &key, &sources).await?;
    let sensitive = {
        let key = key.clone();
        blocking(&ctx.workspace, move |ws| ws.sensitive(&key)).await?
    };

    // Counts from the workspace's accounting and one lookup per planned file: a reconcile
    // follows every upload, and walking a job of thousands of files each time would make an
    // upload stream quadratic.
    let planned = planned_paths(job.spec.plan.as_ref());
    let (usage, present) = {
        let key = key.clone();
        let planned = planned.clone();
        blocking(&ctx.workspace, move |ws| {
            let usage = ws.job_usage(&key)?;
            let present: Vec<String> = planned
                .into_iter()
                .filter(|p| JobPath::parse(p).is_ok_and(|path| ws.stat(&key, &path).is_ok()))
                .collect();
            Ok((usage, present))
        })
        .await?
    };
    let lost_uploads = lost_uploads(job, &current, created);
    let seen_missing = missing_files(&planned, present.iter().map(String::as_str));

    let ready_to_archive = job.spec.complete == Some(true)
        && job.spec.failure.is_none()
        && problems.is_empty()
        && lost_uploads.is_none()
        && seen_missing.is_empty();
    let (archive, archive_built) = if ready_to_archive {
        let ensured = archive::ensure(ctx, job, &current, &key, created).await?;
        (Some(ensured.archive), ensured.built)
    } else {
        if current.archive.is_some() {
            let key = key.clone();
            blocking(&ctx.workspace, move |ws| ws.remove_archive(&key)).await?;
        }
        (None, false)
    };

    let seen = Observed {
        files_count: usage.files as i64,
        total_size_bytes: usage.bytes as i64,
        missing_files: seen_missing,
        problems: problems.clone(),
        lost_uploads,
        archive,
        sensitive,
    };
    let mut desired = status::build(job, &current, &seen, &life, now);
    let store = stored::observe(&ctx.workspace, &key).await;
    stored::apply(&mut desired, &store, job.metadata.generation, now);
    announce(ctx, job, &current, &desired).await;
    let changes = archive::Changes {
        archive_built,
        workspace_recreated: created,
        written: &written,
    };
    if let Some(rebuilt) = archive::rebuilt(job, &current, &desired, &changes) {
        announce_rebuilt(ctx, job, &ns, rebuilt).await;
    }
    write_status(jobs, job, desired).await?;

    let mut resync = ctx.settings.resync;
    if matches!(store, stored::Seen::Unavailable(_)) {
        resync = resync.min(stored::RECHECK);
    }
    if problems
        .iter()
        .any(|p| matches!(p, Problem::SourceNotFound(_) | Problem::SourceNotAllowed(_)))
    {
        resync = resync.min(SOURCE_RECHECK);
    }
    Ok(Action::requeue(life.requeue_after(now, resync)))
}

/// Writes `plan.json` and every declared file whose bytes differ from what is on disk. A file
/// made from Secrets is recorded as sensitive before its bytes are written.
async fn write_declared(
    ctx: &Context,
    job: &KilnJob,
    key: &JobKey,
    sources: &Sources<Cluster>,
) -> Result<Stored> {
    let (wanted, mut problems) = declared::wanted(&job.spec, sources).await?;
    let key = key.clone();
    let mut stored = blocking(&ctx.workspace, move |ws| declared::store(ws, &key, wanted)).await?;
    problems.append(&mut stored.problems);
    stored.problems = problems;
    Ok(stored)
}

/// Uploaded files that vanished with the pod's workspace. Declared files and `plan.json`
/// are rebuilt, but files that arrived over the HTTP API cannot be: say so instead of
/// pretending the job is whole. Sticky until the spec changes (the client re-uploads and
/// touches the Job, e.g. toggles `complete`).
fn lost_uploads(job: &KilnJob, current: &KilnJobStatus, created: bool) -> Option<String> {
    let generated = job.spec.files.len() as i64 + i64::from(job.spec.plan.is_some());
    let before = current.files_count.unwrap_or(0);
    if created && current.observed_generation.is_some() && before > generated {
        return Some(format!(
            "the workspace was lost (pod replaced): {} uploaded file(s) are gone; declared files were rebuilt. Upload them again, then update the Job",
            before - generated
        ));
    }
    let still = current
        .conditions
        .iter()
        .find(|c| c.type_ == status::WORKSPACE_LOST && c.status == "True");
    match still {
        Some(c) if current.observed_generation == job.metadata.generation => {
            Some(c.message.clone())
        }
        _ => None,
    }
}

async fn write_status(jobs: &Api<KilnJob>, job: &KilnJob, desired: KilnJobStatus) -> Result<()> {
    apply::status(
        jobs,
        &job.name_any(),
        apply::managers::JOB,
        job.status.as_ref(),
        &desired,
    )
    .await?;
    Ok(())
}

const SUBJECT: Subject = Subject {
    controller: NAME,
    kind: KIND,
    clock: "ttl",
};

/// The TTL ran out: delete the Job (its finalizer then removes the files), or keep it
/// marked `Expired` with its files and archive freed.
async fn expire(
    ctx: &Context,
    jobs: &Api<KilnJob>,
    job: &KilnJob,
    current: &KilnJobStatus,
    life: &Lifecycle,
    key: JobKey,
    now: Timestamp,
) -> Result<Action> {
    match life.expiration {
        Expiration::Delete => {
            lifecycle::expire_by_deleting(ctx, jobs, job, life, now, &SUBJECT).await
        }
        Expiration::MarkExpired => {
            blocking(&ctx.workspace, move |ws| ws.remove_job(&key)).await?;
            let already = current.phase == Some(JobPhase::Expired);
            lifecycle::announce_marked_expired(
                ctx,
                job,
                life,
                now,
                &SUBJECT,
                already,
                "files deleted, job kept",
            )
            .await;
            write_status(jobs, job, status::expired(job, current, life, now)).await?;
            Ok(Action::requeue(ctx.settings.resync))
        }
    }
}

/// Events for every transition.
async fn announce(ctx: &Context, job: &KilnJob, old: &KilnJobStatus, new: &KilnJobStatus) {
    use crate::api::conditions::types::{EXPIRING_SOON, READY};
    use crate::conditions::find;
    let reason_of = |s: &KilnJobStatus, t: &str| {
        find(&s.conditions, t).map(|c| (c.status.clone(), c.reason.clone()))
    };
    let ready = reason_of(new, READY);
    if reason_of(old, READY) != ready {
        let message = new.message.clone().unwrap_or_default();
        match ready.as_ref().map(|(s, r)| (s.as_str(), r.as_str())) {
            Some(("True", _)) => {
                ctx.metrics.transition(KIND, "Completed");
                ctx.event(job, EventType::Normal, "Completed", "Archive", message)
                    .await
            }
            Some((_, "Failed")) => {
                ctx.metrics.transition(KIND, "Failed");
                ctx.event(job, EventType::Warning, "Failed", "Fail", message)
                    .await
            }
            Some((
                _,
                reason @ ("PlanIncomplete" | "TemplateError" | "SourceNotFound"
                | "SourceNotAllowed" | "WorkspaceLost"),
            )) => {
                let reason: &'static str = match reason {
                    "PlanIncomplete" => "PlanIncomplete",
                    "TemplateError" => "TemplateError",
                    "SourceNotFound" => "SourceNotFound",
                    "SourceNotAllowed" => "SourceNotAllowed",
                    _ => "WorkspaceLost",
                };
                ctx.metrics.transition(KIND, reason);
                warn!(reason, %message, "job not complete");
                ctx.event(job, EventType::Warning, reason, "Generate", message)
                    .await
            }
            _ => {}
        }
    }
    if new.sensitive_files != old.sensitive_files {
        ctx.event(
            job,
            EventType::Normal,
            "SensitiveFiles",
            "Generate",
            sensitive_note(&new.sensitive_files),
        )
        .await;
    }
    if reason_of(old, EXPIRING_SOON) != reason_of(new, EXPIRING_SOON)
        && crate::conditions::is_true(&new.conditions, EXPIRING_SOON)
    {
        ctx.metrics.transition(KIND, "ExpiringSoon");
        let at = new
            .expires_at
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        ctx.event(
            job,
            EventType::Warning,
            "ExpiringSoon",
            "Expire",
            format!(
                "job and its files expire at {at}; set the kiln.dev/renew annotation to keep them"
            ),
        )
        .await;
    }
}

/// The `ArchiveRebuilt` Event, about the ConfigMap or Secret whose change caused it.
async fn announce_rebuilt(ctx: &Context, job: &KilnJob, ns: &str, rebuilt: archive::Rebuilt) {
    info!(note = %rebuilt.note, "archive rebuilt");
    ctx.metrics.transition(KIND, "ArchiveRebuilt");
    let (type_, reason, action) = (EventType::Normal, "ArchiveRebuilt", "Archive");
    match rebuilt.source {
        Some((kind, name)) => {
            let related = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(kind.as_str().into()),
                name: Some(name),
                namespace: Some(ns.into()),
                ..ObjectReference::default()
            };
            ctx.event_related(job, related, type_, reason, action, rebuilt.note)
                .await
        }
        None => ctx.event(job, type_, reason, action, rebuilt.note).await,
    }
}

/// Who may read the files made from Secrets, for the `SensitiveFiles` Event.
fn sensitive_note(files: &[crate::api::job::SensitiveFile]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = files
        .iter()
        .take(SHOWN)
        .map(|f| format!("{} (Secret {})", f.path, f.secrets.join(", ")))
        .collect();
    if files.len() > SHOWN {
        parts.push(format!("and {} more", files.len() - SHOWN));
    }
    format!(
        "files made from Secrets: {}. Only callers who may get those Secrets can read these \
         files or download the archive (see status.sensitiveFiles)",
        parts.join("; ")
    )
}

fn error_policy(job: Arc<KilnJob>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_on_error(NAME, &ctx, error, job.as_ref())
}
