//! `kiln rollback`: restore a resource from an earlier revision.

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::api::Draft;
use crate::desired::draft::Publication;

/// Restores a draft's `spec.config` from published revision `revision`. The controller then
/// publishes it as a new revision: history only grows.
pub async fn draft(name: &str, revision: i64, namespace: Option<&str>) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;
    let namespace = namespace
        .map(str::to_string)
        .unwrap_or_else(|| client.default_namespace().to_string());
    let drafts: Api<Draft> = Api::namespaced(client.clone(), &namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(client, &namespace);

    // Optimistic concurrency: the replace carries the resourceVersion that was read, so a
    // concurrent edit makes it fail instead of being overwritten; then read again and retry.
    for _ in 0..5 {
        let mut draft = drafts
            .get(name)
            .await
            .with_context(|| format!("reading draft {namespace}/{name}"))?;
        let Some(publish) = draft.spec.publish.as_ref() else {
            bail!(
                "draft {namespace}/{name} has no spec.publish: it has no revisions to roll back to"
            );
        };
        let publication = Publication::new(
            &publish.config_id,
            draft.spec.config_type,
            &serde_json::Value::Null,
        );
        let cm_name = publication.revision_name(revision);
        let cm = configmaps
            .get_opt(&cm_name)
            .await
            .with_context(|| format!("reading ConfigMap {cm_name}"))?;
        let Some(cm) = cm else {
            bail!(
                "revision {revision} of {} is not available: ConfigMap {cm_name} does not exist (pruned by keepRevisions, or never published)",
                publication.name()
            );
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(&publication.key()))
            .with_context(|| format!("ConfigMap {cm_name} has no key {}", publication.key()))?;
        let config: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("ConfigMap {cm_name} does not hold JSON"))?;
        draft.spec.config = config;
        draft.status = None;
        match drafts.replace(name, &PostParams::default(), &draft).await {
            Ok(_) => {
                println!(
                    "draft {namespace}/{name}: spec.config restored from revision {revision}; Kiln will publish it as a new revision"
                );
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("updating draft {namespace}/{name}")),
        }
    }
    bail!("draft {namespace}/{name} kept changing while rolling back; try again")
}
