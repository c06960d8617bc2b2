//! Deletes the objects of Jobs that no longer exist.
//!
//! A Job's finalizer deletes its objects before the Job goes away, so objects outlive their
//! Job only when something went wrong between the two (the finalizer removed by hand, the
//! object store unreachable while a namespace was force-deleted, a bucket shared with an older
//! install). The sweep runs at start-up and then once per resync period, on the leader only.
//!
//! Order matters: the store is listed *before* the Jobs. An object is written only while its
//! Job exists, so any object seen in the first listing belongs to a Job that existed before
//! the second listing began; if that Job is not in the second listing it is gone for good. A
//! Job created in between cannot lose its objects: none of them were in the first listing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{ListParams, PartialObjectMeta};
use kube::{Api, Client, ResourceExt};
use object_store::ObjectStore;
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use super::Remote;
use crate::api::KilnJob;
use crate::metrics::{Metrics, ResultLabels};

/// Jobs listed per page.
const PAGE: u32 = 500;

/// Runs the sweep now and then every `period` until `shutdown`.
pub async fn run(
    remote: Arc<Remote>,
    client: Client,
    namespaces: Vec<String>,
    period: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let result = match sweep(&remote, &client, &namespaces).await {
            Ok(swept) => {
                metrics.object_store_swept.inc_by(swept);
                if swept > 0 {
                    tracing::info!(swept, "deleted objects of Jobs that no longer exist");
                }
                "ok"
            }
            Err(error) => {
                tracing::warn!(%error, "sweeping the object store failed; retrying at the next resync");
                "error"
            }
        };
        metrics
            .object_store_sweeps
            .get_or_create(&ResultLabels { result })
            .inc();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// One sweep; returns how many objects it deleted.
pub async fn sweep(remote: &Remote, client: &Client, namespaces: &[String]) -> anyhow::Result<u64> {
    let store = remote.store();
    let watched: Option<HashSet<&str>> =
        (!namespaces.is_empty()).then(|| namespaces.iter().map(String::as_str).collect());
    let jobs_root = remote.jobs_root();
    let stored_namespaces = store
        .list_with_delimiter(Some(&jobs_root))
        .await
        .map_err(|e| anyhow::anyhow!("listing {}: {e}", remote.location(&jobs_root)))?
        .common_prefixes;
    let mut swept = 0;
    for ns_prefix in stored_namespaces {
        let Some(ns) = ns_prefix.filename().map(str::to_owned) else {
            continue;
        };
        // Another install may own the other namespaces' Jobs.
        if watched.as_ref().is_some_and(|w| !w.contains(ns.as_str())) {
            continue;
        }
        let stored_uids = uids_under(store.as_ref(), &ns_prefix).await?;
        if stored_uids.is_empty() {
            continue;
        }
        let live = job_uids(client, &ns).await?;
        for uid in stored_uids.difference(&live) {
            let key = crate::workspace::JobKey::new(ns.as_str(), uid.as_str());
            let Ok(key) = key else {
                tracing::warn!(namespace = %ns, uid = %uid, "ignoring a prefix Kiln could not have written");
                continue;
            };
            let n = remote
                .delete_job(&key)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(job = %key, objects = n, "deleted the objects of a Job that no longer exists");
            swept += n;
        }
    }
    Ok(swept)
}

/// The job uids that have objects under `<prefix>/jobs/<namespace>/`.
async fn uids_under(store: &dyn ObjectStore, ns_prefix: &Path) -> anyhow::Result<HashSet<String>> {
    let listing = store
        .list_with_delimiter(Some(ns_prefix))
        .await
        .map_err(|e| anyhow::anyhow!("listing {ns_prefix}: {e}"))?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .collect())
}

/// The uids of the Jobs in `namespace`, listed as metadata, page by page.
async fn job_uids(client: &Client, namespace: &str) -> anyhow::Result<HashSet<String>> {
    let api: Api<KilnJob> = Api::namespaced(client.clone(), namespace);
    let mut uids = HashSet::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api
            .list_metadata(&params)
            .await
            .map_err(|e| anyhow::anyhow!("listing jobs.kiln.dev in {namespace}: {e}"))?;
        uids.extend(
            page.items
                .iter()
                .filter_map(|j: &PartialObjectMeta<KilnJob>| j.uid()),
        );
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(uids)
}
