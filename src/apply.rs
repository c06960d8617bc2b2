//! Server-side apply helpers. Kiln compares before it writes: a reconcile that changes
//! nothing sends no request, so a resync of a settled world costs zero writes.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{KubeContext, Result};

/// Field managers, one per controller.
pub mod managers {
    pub const DRAFT: &str = "kiln/draft";
    pub const JOB: &str = "kiln/job";
    pub const PROVIDER_CONFIG: &str = "kiln/providerconfig";
    /// The rollout marks on followers' pod templates, whichever object they follow: one
    /// name for GitOps tools to recognise (`docs/argocd.md`).
    pub const ROLLOUT: &str = "kiln/rollout";
}

/// Applies `desired` as the object's whole status, owned by `manager`, unless it already
/// equals `current`. Returns whether a write was sent.
pub async fn status<K, S>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    current: Option<&S>,
    desired: &S,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await
    .context(format!("applying the status of {}/{name}", K::kind(&())))?;
    Ok(true)
}
