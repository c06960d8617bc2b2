//! Rolling out the workloads that follow a ProviderConfig (`kiln.dev/follow`): when its
//! credentials hash has changed and the debounce window has passed, each follower's pod
//! template gets `kiln.dev/credentials-hash-<config>: <hash>`, which makes its controller
//! replace the pods.
//!
//! Workloads are listed only when a rollout is due (rare), never watched: Kiln keeps no cache
//! of the namespace's Deployments. The patch is a JSON merge patch of two annotations, not
//! server-side apply: Kiln does not own these objects, and one field manager applying the
//! annotations of several configs would remove the others' each time.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::apply::managers;
use crate::controller::Context;
use crate::desired::provider_config::{FollowerPlan, followed, plan_follower, rollout_patch};
use crate::error::{KubeContext, Result};

/// A workload kind that can follow a ProviderConfig.
trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug
{
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>>;
}

impl Workload for Deployment {
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
    }
}

impl Workload for StatefulSet {
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
    }
}

impl Workload for DaemonSet {
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
    }
}

/// The result of one rollout pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Workloads annotated in this pass, as `Kind/name`.
    pub rolled: Vec<String>,
    /// The earliest moment a deferred follower may be rolled out; None when none waits.
    pub wait_until: Option<Timestamp>,
}

/// What one rollout pass needs to know.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub config: &'a str,
    pub hash: &'a str,
    pub debounce: SignedDuration,
    pub now: Timestamp,
}

/// Rolls out every follower of `req.config` whose pod template lacks `req.hash` and whose own
/// debounce window has passed.
pub async fn roll(ctx: &Context, req: &Request<'_>) -> Result<Pass> {
    let mut pass = Pass::default();
    roll_kind::<Deployment>(ctx, req, &mut pass).await?;
    roll_kind::<StatefulSet>(ctx, req, &mut pass).await?;
    roll_kind::<DaemonSet>(ctx, req, &mut pass).await?;
    Ok(pass)
}

async fn roll_kind<W: Workload>(ctx: &Context, req: &Request<'_>, pass: &mut Pass) -> Result<()> {
    let api: Api<W> = Api::namespaced(ctx.client.clone(), req.namespace);
    let kind = W::kind(&()).into_owned();
    let kind = kind.as_str();
    for workload in list(&api, kind).await? {
        if !followed(workload.meta().annotations.as_ref()).contains(&req.config) {
            continue;
        }
        let plan = plan_follower(
            req.config,
            req.hash,
            workload.meta().annotations.as_ref(),
            workload.template_annotations(),
            req.debounce,
            req.now,
        );
        match plan {
            FollowerPlan::UpToDate => {}
            FollowerPlan::Wait { until } => defer(pass, until),
            FollowerPlan::Roll => {
                let name = workload.name_any();
                let version = workload.resource_version().unwrap_or_default();
                let patch = rollout_patch(req.config, req.hash, &version, req.now);
                let params = PatchParams {
                    field_manager: Some(managers::PROVIDER_CONFIG.into()),
                    ..Default::default()
                };
                match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                    Ok(patched) => {
                        pass.rolled.push(format!("{kind}/{name}"));
                        ctx.metrics.provider_rollout(kind);
                        ctx.event(
                            &patched,
                            EventType::Normal,
                            "RolloutTriggered",
                            "Rollout",
                            format!(
                                "credentials of ProviderConfig {} changed; pod template annotated with hash {}",
                                req.config,
                                short(req.hash)
                            ),
                        )
                        .await;
                    }
                    // Changed since it was listed (perhaps rolled out for another config):
                    // look again shortly rather than restart it twice.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        defer(pass, req.now + SignedDuration::from_secs(1))
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e).context(format!("rolling out {kind} {name}")),
                }
            }
        }
    }
    Ok(())
}

async fn list<W: Workload>(api: &Api<W>, kind: &str) -> Result<Vec<W>> {
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api
            .list(&params)
            .await
            .context(format!("listing {kind}s"))?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

fn defer(pass: &mut Pass, until: Timestamp) {
    pass.wait_until = Some(pass.wait_until.map_or(until, |w| w.min(until)));
}

/// The first 12 hex digits of a hash (after its scheme), for messages.
pub fn short(hash: &str) -> &str {
    let digits = hash.rsplit_once(':').map_or(hash, |(_, d)| d);
    &digits[..digits.len().min(12)]
}
