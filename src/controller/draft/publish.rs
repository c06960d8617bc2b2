//! Publishing a valid draft: the current ConfigMap, one immutable ConfigMap per revision,
//! pruning, and repairing drift. What the objects look like is decided in
//! `crate::desired::draft`; this module compares with the cluster and writes the difference.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use crate::api::draft::{Draft, PublishedRevision};
use crate::apply::managers;
use crate::desired::draft::{
    Holder, Publication, Source, holder, may_need_pruning, revisions_to_prune,
};
use crate::desired::labels;
use crate::error::{KubeContext, Result};

/// What publishing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The published ConfigMap already holds this config.
    Unchanged { revision: i64 },
    /// A new revision was written (`pruned` lists the revisions deleted by `keepRevisions`).
    NewRevision { revision: i64, pruned: Vec<i64> },
    /// The published ConfigMap was edited or deleted by hand and has been restored.
    DriftCorrected { revision: i64, what: &'static str },
    /// A ConfigMap of that name exists and Kiln does not manage it: never touched.
    NameConflict,
    /// Another live draft holds this configId.
    ConfigIdInUse { holder: String },
    /// The ConfigMap records a newer revision of this draft than its status: the status was
    /// read from a cache that has not seen Kiln's last write yet (or was lost). The caller
    /// checks which; if the status really is behind, the revision is adopted as published.
    AheadOfStatus,
}

pub struct Publisher<'a> {
    pub configmaps: &'a Api<ConfigMap>,
    pub drafts: &'a Api<Draft>,
    pub namespace: &'a str,
    pub source: Source,
    /// Accept a ConfigMap revision newer than the status knows (after checking the status
    /// is current, not stale).
    pub adopt_newer: bool,
}

impl Publisher<'_> {
    /// Makes the cluster hold `publication`; `previous` is what this draft last published.
    pub async fn sync(
        &self,
        publication: &Publication,
        previous: Option<&PublishedRevision>,
        keep: i32,
    ) -> Result<Outcome> {
        let name = publication.name();
        let existing = self
            .configmaps
            .get_opt(&name)
            .await
            .context(format!("reading ConfigMap {name}"))?;
        let last = previous.map(|p| p.revision).unwrap_or(0);
        let republish_previous = previous.is_some_and(|p| p.hash == publication.hash);
        match holder(existing.as_ref(), &self.source) {
            Holder::Unmanaged => Ok(Outcome::NameConflict),
            Holder::Other {
                draft,
                uid,
                revision,
            } => {
                if self.draft_alive(&draft, &uid).await? {
                    return Ok(Outcome::ConfigIdInUse { holder: draft });
                }
                // The recorded draft is gone (expired or deleted): the ConfigMap is permanent,
                // and a new draft for the same configId continues its revision numbering.
                self.publish_new(publication, revision.max(last) + 1, keep)
                    .await
            }
            Holder::Free if republish_previous => {
                self.apply_current(publication, last).await?;
                Ok(Outcome::DriftCorrected {
                    revision: last,
                    what: "deleted",
                })
            }
            Holder::Free => self.publish_new(publication, last + 1, keep).await,
            Holder::This { revision, .. } if revision > last && !self.adopt_newer => {
                Ok(Outcome::AheadOfStatus)
            }
            Holder::This { revision, hash } => {
                let Some(cm) = existing.as_ref() else {
                    return Ok(Outcome::Unchanged { revision });
                };
                if hash.as_deref() == Some(publication.hash.as_str()) || republish_previous {
                    let at = if republish_previous { last } else { revision };
                    if publication.matches(cm, &self.source, at) {
                        Ok(Outcome::Unchanged { revision: at })
                    } else {
                        self.apply_current(publication, at).await?;
                        Ok(Outcome::DriftCorrected {
                            revision: at,
                            what: "edited",
                        })
                    }
                } else {
                    self.publish_new(publication, revision.max(last) + 1, keep)
                        .await
                }
            }
        }
    }

    async fn draft_alive(&self, name: &str, uid: &str) -> Result<bool> {
        if name.is_empty() {
            return Ok(false);
        }
        let draft = self
            .drafts
            .get_opt(name)
            .await
            .context(format!("reading draft {name}"))?;
        Ok(draft.is_some_and(|d| d.uid().as_deref() == Some(uid)))
    }

    async fn publish_new(
        &self,
        publication: &Publication,
        revision: i64,
        keep: i32,
    ) -> Result<Outcome> {
        self.write_revision(publication, revision).await?;
        self.apply_current(publication, revision).await?;
        let pruned = if may_need_pruning(revision, keep) {
            self.prune(publication, keep).await?
        } else {
            Vec::new()
        };
        Ok(Outcome::NewRevision { revision, pruned })
    }

    /// Writes the immutable revision ConfigMap. A leftover of that name with other content
    /// (from a draft that held the configId before) is replaced, since immutable ConfigMaps
    /// cannot be updated. The create comes first: the name is almost always free, so reading
    /// it beforehand would cost a request on every new revision.
    async fn write_revision(&self, publication: &Publication, revision: i64) -> Result<()> {
        let name = publication.revision_name(revision);
        let desired = publication.revision(self.namespace, &self.source, revision);
        if self.create_revision(&name, &desired).await? {
            return Ok(());
        }
        let existing = self
            .configmaps
            .get_opt(&name)
            .await
            .context(format!("reading ConfigMap {name}"))?;
        if existing.is_some_and(|cm| cm.data == desired.data) {
            return Ok(());
        }
        self.delete_revision(&name, "replacing stale").await?;
        // Reconciles of one draft never overlap, so only a writer outside Kiln can take the
        // name between the delete and this create; its object is then left alone.
        self.create_revision(&name, &desired).await?;
        Ok(())
    }

    /// Creates a revision ConfigMap; `false` when one of that name already exists.
    async fn create_revision(&self, name: &str, desired: &ConfigMap) -> Result<bool> {
        let params = PostParams {
            field_manager: Some(managers::DRAFT.into()),
            ..Default::default()
        };
        match self.configmaps.create(&params, desired).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e).context(format!("creating revision ConfigMap {name}")),
        }
    }

    async fn apply_current(&self, publication: &Publication, revision: i64) -> Result<()> {
        let name = publication.name();
        let cm = publication.published(self.namespace, &self.source, revision);
        self.configmaps
            .patch(
                &name,
                &PatchParams::apply(managers::DRAFT).force(),
                &Patch::Apply(&cm),
            )
            .await
            .context(format!("applying ConfigMap {name}"))?;
        Ok(())
    }

    /// Deletes the oldest revision ConfigMaps of this configId beyond `keep`.
    async fn prune(&self, publication: &Publication, keep: i32) -> Result<Vec<i64>> {
        let selector = format!(
            "{}={},{}={},{}={},{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_KILN,
            labels::CONFIG_ID,
            publication.config_id,
            labels::CONFIG_TYPE,
            publication.config_type,
            labels::ROLE,
            labels::ROLE_REVISION
        );
        let list = self
            .configmaps
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .context("listing revision ConfigMaps")?;
        let revisions: Vec<i64> = list
            .items
            .iter()
            .filter_map(|cm| {
                cm.labels()
                    .get(labels::REVISION)
                    .and_then(|r| r.parse().ok())
            })
            .collect();
        let prune = revisions_to_prune(revisions, keep);
        for revision in &prune {
            self.delete_revision(&publication.revision_name(*revision), "pruning")
                .await?;
        }
        Ok(prune)
    }

    /// Deletes a revision ConfigMap; one already gone is fine.
    async fn delete_revision(&self, name: &str, why: &str) -> Result<()> {
        match self.configmaps.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).context(format!("{why} revision ConfigMap {name}")),
        }
    }
}
