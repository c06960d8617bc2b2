//! The Job controller (DESIGN.md §1.2).

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::{Action, Controller};
use tokio_util::sync::CancellationToken;

use super::{Context, ReadinessProbe, Scope, backoff_on_error, drive, store_ready, watcher_config};
use crate::api::conditions::types;
use crate::api::job::{JobPhase as DraftPhase, KilnJob as Draft, KilnJobStatus as DraftStatus};
use crate::apply;
use crate::conditions::{self, Desired};
use crate::error::{Error, Result};

const NAME: &str = "job";

pub fn start(
    ctx: Arc<Context>,
    scope: &Scope,
    shutdown: CancellationToken,
) -> (ReadinessProbe, tokio::task::JoinHandle<()>) {
    let controller = Controller::new(scope.api::<Draft>(&ctx.client), watcher_config());
    let probe = store_ready(controller.store());
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

#[tracing::instrument(skip_all, fields(namespace = draft.namespace().unwrap_or_default(), name = draft.name_any()))]
async fn reconcile(draft: Arc<Draft>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let ns = draft
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let current = draft.status.clone().unwrap_or_default();
    let generation = draft.metadata.generation;
    let desired = DraftStatus {
        observed_generation: generation,
        phase: current.phase.or(Some(DraftPhase::Generating)),
        conditions: conditions::merge(
            &current.conditions,
            &[
                Desired::new(
                    types::READY,
                    false,
                    "Reconciling",
                    "Kiln is reconciling the job",
                ),
                Desired::new(
                    types::RECONCILING,
                    true,
                    "Progressing",
                    "Kiln is reconciling the job",
                ),
            ],
            &[],
            generation,
            Timestamp::now(),
        ),
        ..current.clone()
    };
    let api = kube::Api::<Draft>::namespaced(ctx.client.clone(), &ns);
    apply::status(
        &api,
        &draft.name_any(),
        apply::managers::JOB,
        draft.status.as_ref(),
        &desired,
    )
    .await?;
    Ok(Action::requeue(ctx.settings.resync))
}

fn error_policy(draft: Arc<Draft>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_on_error(NAME, &ctx, error, draft.as_ref())
}
