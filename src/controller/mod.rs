//! The controllers: one kube `Controller` per kind and watched namespace, sharing one client,
//! one event recorder and one metrics registry.
//!
//! Flow of every controller: watch → reconcile (read, decide with pure functions, apply only
//! what differs) → status → requeue at the next moment that matters (an expiry, a resync).

pub mod backoff;
pub mod context;
pub mod draft;
pub mod followers;
pub mod job;
pub mod lifecycle;
pub mod provider_config;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::nudge;
pub use crate::scope::{Scope, watcher_config};
pub use context::{Context, Settings};

use crate::error::Error;

/// Caches that must be synced before `/readyz` says ready.
pub type ReadinessProbe = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A readiness future for a controller's store.
pub fn store_ready<K>(store: Store<K>) -> ReadinessProbe
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    // Re-polled on a timer: kube-runtime's readiness signal is a oneshot channel that wakes
    // only its most recent poller, and the controller's own runner waits on it too.
    Box::pin(async move {
        loop {
            let wait = tokio::time::timeout(
                std::time::Duration::from_millis(250),
                store.wait_until_ready(),
            );
            if let Ok(Ok(())) = wait.await {
                return;
            }
        }
    })
}

/// Drives a built controller until shutdown, logging outcomes. Reconcile errors are already
/// counted and evented by the kind's `error_policy`; here they are only traced.
pub async fn drive<K, R, E>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> R,
    error_policy: impl Fn(Arc<K>, &E, Arc<Context>) -> Action,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    R: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    info!(controller = name, "controller started");
    let config = controller::Config::default().concurrency(ctx.settings.concurrency);
    let ctx_for_results = ctx.clone();
    controller
        .with_config(config)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let ctx = ctx_for_results.clone();
            async move {
                match result {
                    Ok((obj, _)) => {
                        ctx.backoff
                            .succeeded(name, obj.namespace.as_deref(), &obj.name);
                        tracing::debug!(controller = name, object = %obj, "reconciled")
                    }
                    Err(error) => warn!(controller = name, %error, "reconcile failed"),
                }
            }
        })
        .await;
    info!(controller = name, "controller stopped");
}

/// kubectl's client-side apply annotation: the whole object as last applied, again.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconcile reads from an object before it is cached: its managed fields and
/// kubectl's last-applied annotation. Both are per object and large (a `kubectl apply`'d
/// Draft would otherwise carry its config twice); with thousands of objects they are most of
/// the cache.
pub fn slim_for_cache<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A controller for `K` whose cache holds objects changed by `slim` (at least
/// [`slim_for_cache`]) before they are stored.
pub fn slim_controller<K>(api: Api<K>, slim: fn(&mut K)) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher(api, watcher_config()).modify(slim)).applied_objects();
    Controller::for_stream(stream, store)
}

/// Common `error_policy`: count the failure by class and retry after the object's backoff
/// (see [`backoff`]).
pub fn backoff_on_error<K>(
    controller: &'static str,
    ctx: &Arc<Context>,
    error: &Error,
    obj: &K,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    ctx.metrics
        .reconcile_failed(controller, error.metric_label());
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("");
    let delay = ctx
        .backoff
        .failed(controller, meta.namespace.as_deref(), name);
    warn!(controller, object = %ObjectRef::from_obj(obj), %error, retry_in = ?delay, "reconcile failed; retrying");
    // On the object, where `kubectl describe` shows it; at most one per retry.
    let (ctx, reference) = (ctx.clone(), obj.object_ref(&()));
    let note = format!(
        "{}; retrying in {}s (the operator's log has the details)",
        error.summary(),
        delay.as_secs()
    );
    tokio::spawn(async move {
        ctx.event_for(
            reference,
            kube::runtime::events::EventType::Warning,
            "ReconcileFailed",
            "Reconcile",
            note,
        )
        .await;
    });
    Action::requeue(delay)
}

/// Starts every controller in every scope; returns readiness probes and the join handles.
pub fn start(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> (Vec<ReadinessProbe>, Vec<tokio::task::JoinHandle<()>>) {
    let mut probes = Vec::new();
    let mut tasks = Vec::new();
    for scope in Scope::from_namespaces(&ctx.settings.namespaces) {
        let (workloads, workload_probes, changes) =
            followers::Workloads::start(&ctx.client, &scope, &shutdown);
        probes.extend(workload_probes);
        let workloads = Arc::new(workloads);
        for (probe, task) in [
            draft::start(
                ctx.clone(),
                &scope,
                shutdown.clone(),
                workloads.clone(),
                changes.configs,
            ),
            job::start(ctx.clone(), &scope, shutdown.clone()),
            provider_config::start(
                ctx.clone(),
                &scope,
                shutdown.clone(),
                workloads,
                changes.providers,
            ),
        ] {
            probes.push(probe);
            tasks.push(task);
        }
    }
    (probes, tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::draft::Draft;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn cached_objects_drop_managed_fields_and_the_last_applied_copy() {
        let mut draft: Draft = serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Draft",
            "metadata": {"name": "d", "annotations": {
                LAST_APPLIED: "{\"spec\":{\"config\":{\"big\":true}}}",
                "argocd.argoproj.io/tracking-id": "app:kiln.dev/Draft:ns/d",
            }},
            "spec": {"configType": "content", "config": {"id": "x"}},
        }))
        .unwrap();
        draft.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        slim_for_cache(&mut draft);
        assert_eq!(draft.metadata.managed_fields, None);
        let annotations = draft.metadata.annotations.clone().unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert!(annotations.contains_key("argocd.argoproj.io/tracking-id"));

        draft.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        slim_for_cache(&mut draft);
        assert_eq!(draft.metadata.annotations, None);
    }
}
