//! What every reconcile gets: the client, the event recorder, metrics and settings.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::metrics::Metrics;

/// Operator-wide settings derived from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watched namespaces; empty means all.
    pub namespaces: Vec<String>,
    /// Every object is reconciled again at least this often.
    pub resync: Duration,
    /// When `ExpiringSoon` appears.
    pub expiry_warning: crate::expiry::WarningPolicy,
    /// A Draft's retention when its spec sets none (`--default-draft-retention`).
    pub default_draft_retention: String,
    /// A Job's TTL when its spec sets none (`--default-job-ttl`).
    pub default_job_ttl: String,
    /// Shortest time between two rollouts of a workload following a ProviderConfig.
    pub rollout_debounce: Duration,
    /// Root of the job workspace (the pod's emptyDir).
    pub workspace_dir: std::path::PathBuf,
    /// Most reconciles of one controller running at once.
    pub concurrency: u16,
    /// Whether a Secret must opt in (`kiln.dev/allow-job-source`) to be a Job file source.
    pub secret_sources_require_opt_in: bool,
}

/// Shared by all reconciles of all controllers.
pub struct Context {
    pub client: Client,
    /// The job workspace (the pod's emptyDir), shared with the HTTP file API.
    pub workspace: std::sync::Arc<crate::workspace::Workspace>,
    /// Reconcile requests for jobs, sent by the HTTP file API after a write.
    pub job_nudge: super::nudge::Nudge<crate::api::KilnJob>,
    /// Key uses reported to the HTTP API, for the ProviderConfig status.
    pub key_usage: Arc<crate::key_usage::KeyUsage>,
    /// Retry delays of objects whose reconciles fail.
    pub backoff: super::backoff::Backoff,
    recorder: Recorder,
    /// Permits for Events being published in the background (see [`Context::event`]).
    events_in_flight: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
}

/// Events published at once in the background; a reconcile that would exceed it waits.
const EVENTS_IN_FLIGHT: u32 = 32;

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Arc<Settings>,
        instance: Option<String>,
        workspace: Arc<crate::workspace::Workspace>,
        job_nudge: super::nudge::Nudge<crate::api::KilnJob>,
        key_usage: Arc<crate::key_usage::KeyUsage>,
    ) -> Self {
        let reporter = Reporter {
            controller: "kiln".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            events_in_flight: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT as usize)),
            client,
            workspace,
            job_nudge,
            key_usage,
            backoff: Default::default(),
            metrics,
            settings,
        }
    }

    /// Publishes an Event about `obj`, in the background. Events are the audit trail, but
    /// failing to write one must not fail the reconcile that caused it (the state change
    /// already happened), and waiting for one must not hold a reconcile slot: with a
    /// thousand drafts expiring at once, the Events would double the time the deletions
    /// take. At most [`EVENTS_IN_FLIGHT`] are sent at once; past that the caller waits.
    /// [`Context::flush_events`] waits for the ones still in flight at shutdown.
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) where
        K: Resource<DynamicType = ()>,
    {
        self.event_for(obj.object_ref(&()), type_, reason, action, note)
            .await;
    }

    /// [`Context::event`] naming a second object it concerns (`related`). The recorder folds
    /// repeats of an Event into a series by object, reason and related object, not by note:
    /// Events about different related objects stay apart.
    pub async fn event_related<K>(
        &self,
        obj: &K,
        related: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) where
        K: Resource<DynamicType = ()>,
    {
        self.publish(
            obj.object_ref(&()),
            Some(related),
            type_,
            reason,
            action,
            note,
        )
        .await;
    }

    /// [`Context::event`] about an object known by its reference.
    pub async fn event_for(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        self.publish(reference, None, type_, reason, action, note)
            .await;
    }

    async fn publish(
        &self,
        reference: ObjectReference,
        secondary: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note.into(), 1024)),
            action: action.into(),
            secondary,
        };
        let recorder = self.recorder.clone();
        let Ok(permit) = self.events_in_flight.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                warn!(%error, reason = %event.reason, "could not publish an Event");
            }
            drop(permit);
        });
    }

    /// Waits (at most `timeout`) for the Events still being published.
    pub async fn flush_events(&self, timeout: Duration) {
        let all = self.events_in_flight.acquire_many(EVENTS_IN_FLIGHT);
        if tokio::time::timeout(timeout, all).await.is_err() {
            warn!("some Events were still being published at shutdown");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
