//! What every reconcile gets: the client, the event recorder, metrics and settings.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
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
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Arc<Settings>,
        instance: Option<String>,
        workspace: Arc<crate::workspace::Workspace>,
        job_nudge: super::nudge::Nudge<crate::api::KilnJob>,
    ) -> Self {
        let reporter = Reporter {
            controller: "kiln".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            workspace,
            job_nudge,
            metrics,
            settings,
        }
    }

    /// Publishes an Event about `obj`. Events are the audit trail, but failing to write one
    /// must not fail the reconcile that caused it: the state change already happened.
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
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note.into(), 1024)),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(%error, reason, "could not publish an Event");
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
