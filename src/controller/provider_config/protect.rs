//! Protection of what is in use (`docs/provider-config.md`, "Deleting a config in use"): the
//! finalizer on every config, and what happens when one is deleted. The decisions are in
//! [`crate::desired::protection`]; this module lists the workloads, reports, and removes the
//! finalizer when the verdict says so.
//!
//! Not `kube::runtime::finalizer`: its cleanup either succeeds, and the finalizer goes at
//! once, or fails, and the object is retried with backoff as an error. Holding a deletion for
//! hours while workloads still run is neither: here it is a requeue.
//!
//! Workloads are listed only while a config is being deleted. The followers index
//! (`controller::followers`) keeps only their `kiln.dev/*` annotations, not pod templates or
//! replica counts, and keeping those for every workload of the scope would cost memory for a
//! rare event. The index still wakes a held config at once when a follower stops following
//! or goes away; any other change is seen at the next look, every [`HOLD_RECHECK`].

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::KIND;
use crate::api::conditions::types::IN_USE;
use crate::api::provider_config::ProviderConfig;
use crate::apply::{self, managers};
use crate::conditions::{Desired, find, merge};
use crate::controller::Context;
use crate::desired::protection::{
    self, DELETED_WHILE_IN_USE, DELETION_HELD, Protected, Scale, User, Workload,
};
use crate::error::{Error, KubeContext, Result};

/// How often a held deletion looks for its users again: how long, at most, a config outlives
/// its last user (a workload scaled to 0 or deleted wakes nothing else).
pub const HOLD_RECHECK: Duration = Duration::from_secs(10);

/// Puts Kiln's finalizer on `pc` unless it is there: one metadata patch, once per config
/// (existing configs get it on their first reconcile after an upgrade).
pub async fn ensure_finalizer(pcs: &Api<ProviderConfig>, pc: &ProviderConfig) -> Result<()> {
    let Some(patch) = protection::add_finalizer(pc.finalizers()) else {
        return Ok(());
    };
    let name = pc.name_any();
    pcs.patch(&name, &params(), &Patch::<()>::Json(patch))
        .await
        .context(format!("adding the finalizer to ProviderConfig {name}"))?;
    info!(
        finalizer = protection::FINALIZER,
        "finalizer added (the deletion is reported first)"
    );
    Ok(())
}

/// Whether a claimant of `pc`'s type is held by Kiln's finalizer, so that the aliases must
/// stay although no live config claims the default: see [`protection::held_claimant`].
pub fn holds_aliases(store: &Store<ProviderConfig>, pc: &ProviderConfig) -> bool {
    let configs = store.state();
    protection::held_claimant(pc, configs.iter().map(|p| p.as_ref()))
}

/// `pc` is being deleted: report the running workloads that use it, then release the
/// finalizer, or keep it while `deletionPolicy: WhileUnused` and users remain.
pub async fn on_deletion(
    ctx: &Context,
    pcs: &Api<ProviderConfig>,
    pc: &ProviderConfig,
    store: &Store<ProviderConfig>,
) -> Result<Action> {
    if !pc.finalizers().iter().any(|f| f == protection::FINALIZER) {
        // Released already (or removed by hand): the garbage collector does the rest.
        return Ok(Action::await_change());
    }
    let ns = pc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = pc.name_any();
    let configs = store.state();
    let aliases_go = protection::aliases_go(pc, configs.iter().map(|p| p.as_ref()));
    let protected = Protected::new(&name, &pc.spec.provider_type, aliases_go);
    let users = find_users(ctx, &ns, &protected).await?;
    let policy = pc.spec.deletion_policy.unwrap_or_default();
    let verdict = protection::decide(policy, &protected, &users);

    let current = pc.status.clone().unwrap_or_default();
    let before = find(&current.conditions, IN_USE)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.clone());
    if let Some((reason, message)) = &verdict.in_use {
        let mut status = current.clone();
        let desired = [Desired::new(IN_USE, true, reason, message.clone())];
        status.conditions = merge(
            &current.conditions,
            &desired,
            &[],
            pc.metadata.generation,
            Timestamp::now(),
        );
        // Written before the finalizer goes, so that the object itself says why while it is
        // still there; the Event outlives it.
        apply::status(
            pcs,
            &name,
            managers::PROVIDER_CONFIG,
            pc.status.as_ref(),
            &status,
        )
        .await?;
        // Once per change of verdict, not per recheck: a held deletion waiting for an hour is
        // one Warning, and the condition keeps the current list.
        if before.as_deref() != Some(*reason) {
            warn!(?users, ?policy, "ProviderConfig deleted while in use");
            ctx.metrics.transition(KIND, reason);
            ctx.event(
                pc,
                EventType::Warning,
                DELETED_WHILE_IN_USE,
                "Delete",
                message,
            )
            .await;
        }
    }
    if !verdict.release {
        return Ok(Action::requeue(HOLD_RECHECK));
    }
    if verdict.in_use.is_none() && before.as_deref() == Some(DELETION_HELD) {
        info!("no running workload uses the config any more; deletion proceeds");
        ctx.event(
            pc,
            EventType::Normal,
            "DeletionReleased",
            "Delete",
            "no running workload uses this config any more; the deletion proceeds",
        )
        .await;
    }
    release(pcs, pc).await?;
    Ok(Action::await_change())
}

/// Removes Kiln's finalizer; the API server then deletes the object (if no other finalizer
/// remains) and the garbage collector its derived objects.
async fn release(pcs: &Api<ProviderConfig>, pc: &ProviderConfig) -> Result<()> {
    let Some(patch) = protection::remove_finalizer(pc.finalizers()) else {
        return Ok(());
    };
    let name = pc.name_any();
    match pcs.patch(&name, &params(), &Patch::<()>::Json(patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context(format!("releasing ProviderConfig {name}")),
    }
    info!("finalizer removed; the deletion proceeds");
    Ok(())
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(managers::PROVIDER_CONFIG.into()),
        ..Default::default()
    }
}

/// The running workloads of `ns` that use `protected`, sorted.
async fn find_users(ctx: &Context, ns: &str, protected: &Protected) -> Result<Vec<User>> {
    let mut users = Vec::new();
    users.extend(users_of::<Deployment>(ctx, ns, protected).await?);
    users.extend(users_of::<StatefulSet>(ctx, ns, protected).await?);
    users.extend(users_of::<DaemonSet>(ctx, ns, protected).await?);
    users.sort_by(|a, b| a.workload.cmp(&b.workload));
    Ok(users)
}

/// A workload kind whose pods may use a config.
trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + k8s_openapi::Resource
    + Clone
    + DeserializeOwned
    + Debug
{
    fn view(&self) -> Workload<'_>;
}

fn view<'a, K: Kind>(
    w: &'a K,
    scale: Scale,
    pod: Option<&'a k8s_openapi::api::core::v1::PodSpec>,
) -> Workload<'a> {
    let meta = w.meta();
    Workload {
        kind: K::KIND,
        name: meta.name.as_deref().unwrap_or_default(),
        scale,
        deleting: meta.deletion_timestamp.is_some(),
        annotations: meta.annotations.as_ref(),
        pod,
    }
}

impl Kind for Deployment {
    fn view(&self) -> Workload<'_> {
        let spec = self.spec.as_ref();
        let pod = spec.and_then(|s| s.template.spec.as_ref());
        view(self, Scale::Replicas(spec.and_then(|s| s.replicas)), pod)
    }
}

impl Kind for StatefulSet {
    fn view(&self) -> Workload<'_> {
        let spec = self.spec.as_ref();
        let pod = spec.and_then(|s| s.template.spec.as_ref());
        view(self, Scale::Replicas(spec.and_then(|s| s.replicas)), pod)
    }
}

impl Kind for DaemonSet {
    fn view(&self) -> Workload<'_> {
        let pod = self.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        view(self, Scale::EveryNode, pod)
    }
}

/// Lists `K` in pages and keeps only the users: a page is dropped before the next is read.
async fn users_of<K: Kind>(ctx: &Context, ns: &str, protected: &Protected) -> Result<Vec<User>> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let mut users = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api
            .list(&params)
            .await
            .context(format!("listing {}s", K::KIND))?;
        let views: Vec<Workload<'_>> = page.items.iter().map(Kind::view).collect();
        users.extend(protection::users(protected, &views));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(users),
        }
    }
}
