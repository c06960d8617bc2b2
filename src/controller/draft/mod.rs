//! The Draft controller (`docs/architecture.md` shows its flow): validate → publish → status → expiry.
//!
//! Watches: drafts; ConfigMaps as metadata only, mapped back to drafts either by Kiln's
//! labels and the `kiln.dev/source-draft` annotation (published ConfigMaps, for drift
//! repair) or by `spec.schemaRef` (so that editing a schema re-validates its drafts).

mod author;
mod cache;
mod follow;
mod publish;
mod status;

use std::sync::Arc;

use futures::StreamExt;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use super::followers::{Index, Target};
use super::lifecycle::{self, Lifecycle, Remembered, Subject};
use super::{
    Context, ReadinessProbe, Scope, backoff_on_error, drive, slim_controller, store_ready,
};
use crate::api::Expiration;
use crate::api::draft::Draft;
use crate::apply;
use crate::desired::draft::{DEFAULT_KEEP_REVISIONS, Publication, Source};
use crate::desired::labels;
use crate::error::{Error, Result};
use crate::expiry::ExpiryState;
use crate::resolve::Cluster;
use crate::resolve::schema::{self, Verdict};
use publish::{Outcome, Publisher};

const NAME: &str = "draft";
const KIND: &str = "Draft";
/// How often a draft waiting for a contested configId checks whether its holder is gone.
const CONTESTED_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);
/// How soon a reconcile that found its cached copy stale runs again.
const STALE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

pub fn start(
    ctx: Arc<Context>,
    scope: &Scope,
    shutdown: CancellationToken,
    workloads: Index,
    followers_changed: UnboundedReceiver<Target>,
) -> (ReadinessProbe, tokio::task::JoinHandle<()>) {
    let controller = slim_controller(scope.api::<Draft>(&ctx.client), cache::compact);
    let store = controller.store();
    let probe = store_ready(store.clone());
    let counted = store.clone();
    ctx.metrics.register_phase_source(
        KIND,
        &["Pending", "Ready", "Invalid", "Expired", "Unknown"],
        move || {
            counted
                .state()
                .iter()
                .map(|d| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map(|p| format!("{p:?}"))
                })
                .collect()
        },
    );
    // Metadata only: Kiln needs a ConfigMap's name, labels and annotations to route the
    // change, never its data, so the cache stays small however many ConfigMaps exist.
    let followed_store = store.clone();
    let controller = controller
        .watches(
            scope.api::<PartialObjectMeta<ConfigMap>>(&ctx.client),
            watcher::Config::default().page_size(500),
            move |cm| drafts_for_configmap(&store, &cm),
        )
        // A follower appeared, went, or was rolled out: the draft's status says so.
        .reconcile_on(
            UnboundedReceiverStream::new(followers_changed)
                .flat_map(move |t| futures::stream::iter(drafts_publishing(&followed_store, &t))),
        );
    let task = tokio::spawn(drive(
        NAME,
        controller,
        move |draft, ctx| reconcile(draft, ctx, workloads.clone()),
        error_policy,
        ctx,
        shutdown,
    ));
    (probe, task)
}

/// The drafts a ConfigMap change concerns: the draft that published it, or the drafts whose
/// `schemaRef` names it.
fn drafts_for_configmap(
    store: &Store<Draft>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<Draft>> {
    let Some(ns) = cm.namespace() else {
        return Vec::new();
    };
    if labels::managed_by_kiln(cm.metadata.labels.as_ref())
        && cm.labels().contains_key(labels::ROLE)
    {
        return cm
            .annotations()
            .get(labels::SOURCE_DRAFT)
            .map(|draft| vec![ObjectRef::new(draft).within(&ns)])
            .unwrap_or_default();
    }
    let name = cm.name_any();
    store
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| d.spec.schema_ref.as_ref().is_some_and(|r| r.name == name))
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// The drafts that publish the config `target` names (`<configId>-<configType>`).
fn drafts_publishing(store: &Store<Draft>, target: &Target) -> Vec<ObjectRef<Draft>> {
    store
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(target.namespace.as_str()))
        .filter(|d| published_name(d).as_deref() == Some(target.name.as_str()))
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// The name of the ConfigMap `draft` publishes, which followers name.
fn published_name(draft: &Draft) -> Option<String> {
    let publish = draft.spec.publish.as_ref()?;
    Some(format!("{}-{}", publish.config_id, draft.spec.config_type))
}

#[tracing::instrument(skip_all, fields(namespace = draft.namespace().unwrap_or_default(), name = draft.name_any()))]
async fn reconcile(draft: Arc<Draft>, ctx: Arc<Context>, workloads: Index) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    if draft.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = draft
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = draft.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let drafts: Api<Draft> = Api::namespaced(ctx.client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let current = draft.status.clone().unwrap_or_default();

    let life = lifecycle::compute(
        &draft.metadata,
        draft.spec.retention.as_deref(),
        &ctx.settings.default_draft_retention,
        draft.spec.expiration,
        true,
        Remembered {
            ttl_start: current.ttl_start_time.as_ref(),
            observed_renew: current.observed_renew.as_deref(),
            observed_generation: current.observed_generation,
        },
        &ctx.settings.expiry_warning,
        now,
    );
    let life = match life {
        Ok(life) => life,
        Err(message) => {
            let desired = status::bad_retention(&draft, &current, &message, now);
            write_status(&drafts, &draft, desired).await?;
            return Ok(Action::requeue(ctx.settings.resync));
        }
    };

    if life.state == ExpiryState::Expired {
        return expire(&ctx, &drafts, &draft, &current, &life, now).await;
    }

    // A rollout window that has closed is acted on from the status's record of it. If Kiln's
    // own write that recorded the rollout has not reached the cache yet (the followers'
    // watch can wake this draft first), this copy would close the window again, roll
    // nothing, and write the record of that rollout away.
    let debounce = super::followers::debounce(&ctx);
    if follow::window_closed(&current, debounce, now) && is_stale(&drafts, &draft).await? {
        return Ok(Action::requeue(STALE_RETRY));
    }

    let config = cache::config(&draft)?;
    let objects = Cluster::namespaced(&ctx.client, &ns);
    let verdict = schema::check(&objects, &draft.spec, &config).await?;
    let outcome = match (&verdict, &draft.spec.publish) {
        (Verdict::Valid, Some(publish)) => {
            let publication = Publication::new(&publish.config_id, draft.spec.config_type, &config);
            let mut publisher = Publisher {
                configmaps: &configmaps,
                drafts: &drafts,
                namespace: &ns,
                source: Source {
                    name: draft.name_any(),
                    uid,
                },
                adopt_newer: false,
            };
            let keep = publish.keep_revisions.unwrap_or(DEFAULT_KEEP_REVISIONS);
            let previous = current.published.as_ref();
            let mut outcome = publisher.sync(&publication, previous, keep).await?;
            if outcome == Outcome::AheadOfStatus {
                if is_stale(&drafts, &draft).await? {
                    // Kiln's own last write has not reached the cache yet; acting on this
                    // copy would write an older status over the newer one.
                    return Ok(Action::requeue(STALE_RETRY));
                }
                publisher.adopt_newer = true;
                outcome = publisher.sync(&publication, previous, keep).await?;
            }
            Some((publication, outcome))
        }
        _ => None,
    };

    let mut desired = status::build(&draft, &current, &verdict, outcome.as_ref(), &life, now);
    let following = match (published_name(&draft), desired.published.clone()) {
        (Some(name), Some(published)) => {
            // Rollout decisions build on the last status written: one made from a cached copy
            // that has not seen Kiln's own last write would forget a rollout just done (and
            // could repeat it). Checked only for drafts with rollout state, a few.
            if follow::has_state(&current) && is_stale(&drafts, &draft).await? {
                return Ok(Action::requeue(STALE_RETRY));
            }
            Some(follow::follow(&ctx, &workloads, &ns, &name, &current, &published, now).await?)
        }
        _ => None,
    };
    if let Some(f) = &following {
        desired.rollout = Some(f.rollout.clone()).filter(|r| *r != Default::default());
        desired.followers = f.followers.clone();
        desired.followers_behind = Some(f.behind).filter(|_| !f.followers.is_empty());
    }
    announce(
        &ctx,
        &draft,
        &current,
        &desired,
        outcome.as_ref().map(|(_, o)| o),
        &verdict,
    )
    .await;
    if let Some(f) = following.as_ref().filter(|f| !f.rolled.is_empty()) {
        let revision = desired.published.as_ref().map_or(0, |p| p.revision);
        ctx.event(
            draft.as_ref(),
            EventType::Normal,
            "RolloutTriggered",
            "Rollout",
            format!("rolled out {} to revision {revision}", f.rolled.join(", ")),
        )
        .await;
    }
    write_status(&drafts, &draft, desired).await?;
    // The holder of a contested configId may go away (deleted, expired) without anything
    // this draft watches changing: look again soon, not only at the next resync.
    let mut resync = match outcome {
        Some((_, Outcome::ConfigIdInUse { .. })) => ctx.settings.resync.min(CONTESTED_RECHECK),
        _ => ctx.settings.resync,
    };
    if let Some(f) = &following {
        resync = resync.min(f.requeue);
    }
    Ok(Action::requeue(life.requeue_after(now, resync)))
}

/// Whether the API server holds a newer version of `draft` than the cache gave us.
async fn is_stale(drafts: &Api<Draft>, draft: &Draft) -> Result<bool> {
    let fresh = drafts
        .get_metadata_opt(&draft.name_any())
        .await
        .map_err(|source| Error::Kube {
            action: "reading draft metadata".into(),
            source,
        })?;
    Ok(fresh.is_some_and(|f| f.resource_version() != draft.resource_version()))
}

async fn write_status(
    drafts: &Api<Draft>,
    draft: &Draft,
    desired: crate::api::DraftStatus,
) -> Result<()> {
    apply::status(
        drafts,
        &draft.name_any(),
        apply::managers::DRAFT,
        draft.status.as_ref(),
        &desired,
    )
    .await?;
    Ok(())
}

const SUBJECT: Subject = Subject {
    controller: NAME,
    kind: KIND,
    clock: "retention",
};

/// The retention ran out: delete the draft (if nothing changed since it was read), or
/// keep it marked `Expired`. Published ConfigMaps are never owned by a draft: they stay.
async fn expire(
    ctx: &Context,
    drafts: &Api<Draft>,
    draft: &Draft,
    current: &crate::api::DraftStatus,
    life: &Lifecycle,
    now: Timestamp,
) -> Result<Action> {
    match life.expiration {
        Expiration::Delete => {
            lifecycle::expire_by_deleting(ctx, drafts, draft, life, now, &SUBJECT).await
        }
        Expiration::MarkExpired => {
            let already = crate::conditions::is_true(
                &current.conditions,
                crate::api::conditions::types::EXPIRED,
            );
            lifecycle::announce_marked_expired(
                ctx,
                draft,
                life,
                now,
                &SUBJECT,
                already,
                "draft kept and marked Expired",
            )
            .await;
            write_status(drafts, draft, status::expired(draft, current, life, now)).await?;
            Ok(Action::requeue(ctx.settings.resync))
        }
    }
}

/// Events for every transition: they are the audit trail.
async fn announce(
    ctx: &Context,
    draft: &Draft,
    old: &crate::api::DraftStatus,
    new: &crate::api::DraftStatus,
    outcome: Option<&Outcome>,
    verdict: &Verdict,
) {
    use crate::api::conditions::types::{EXPIRING_SOON, VALIDATED};
    use crate::conditions::find;
    let changed = |t: &str| {
        let (a, b) = (find(&old.conditions, t), find(&new.conditions, t));
        a.map(|c| (&c.status, &c.reason)) != b.map(|c| (&c.status, &c.reason))
    };
    if changed(VALIDATED) || old.validation_errors != new.validation_errors {
        match verdict {
            Verdict::Valid => {
                ctx.event(
                    draft,
                    EventType::Normal,
                    "Validated",
                    "Validate",
                    "config is valid",
                )
                .await
            }
            Verdict::Violations(issues) => {
                ctx.metrics.transition(KIND, "ValidationFailed");
                let first = issues
                    .iter()
                    .take(3)
                    .map(|i| format!("{}: {}", i.path, i.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                ctx.event(
                    draft,
                    EventType::Warning,
                    "ValidationFailed",
                    "Validate",
                    format!("{} schema violation(s): {first}", issues.len()),
                )
                .await
            }
            Verdict::BrokenSchema { reason, message } => {
                ctx.event(
                    draft,
                    EventType::Warning,
                    reason,
                    "Validate",
                    message.clone(),
                )
                .await
            }
        }
    }
    match outcome {
        Some(Outcome::NewRevision { revision, pruned }) => {
            ctx.metrics.transition(KIND, "Published");
            let pruned = if pruned.is_empty() {
                String::new()
            } else {
                format!("; pruned revisions {pruned:?}")
            };
            // Who changed it, as the history entry just recorded says.
            let record = new.history.iter().rev().find(|h| h.revision == *revision);
            let by = match (
                record.and_then(|h| h.changed_by.as_ref()),
                record.and_then(|h| h.change_cause.as_ref()),
            ) {
                (Some(manager), Some(cause)) => format!(" (changed by {manager}: {cause})"),
                (Some(manager), None) => format!(" (changed by {manager})"),
                (None, Some(cause)) => format!(" ({cause})"),
                (None, None) => String::new(),
            };
            ctx.event(
                draft,
                EventType::Normal,
                "Published",
                "Publish",
                format!("published revision {revision}{by}{pruned}"),
            )
            .await;
        }
        Some(Outcome::DriftCorrected { revision, what }) => {
            ctx.metrics.transition(KIND, "DriftCorrected");
            ctx.event(
                draft,
                EventType::Warning,
                "DriftCorrected",
                "Publish",
                format!("published ConfigMap was {what} by hand; restored revision {revision}"),
            )
            .await;
        }
        Some(Outcome::NameConflict) if changed(crate::api::conditions::types::PUBLISHED) => {
            ctx.event(draft, EventType::Warning, "NameConflict", "Publish", "a ConfigMap of the published name exists and is not managed by Kiln; it is left untouched").await;
        }
        Some(Outcome::ConfigIdInUse { holder })
            if changed(crate::api::conditions::types::PUBLISHED) =>
        {
            ctx.event(
                draft,
                EventType::Warning,
                "ConfigIdInUse",
                "Publish",
                format!("configId is published by draft {holder}"),
            )
            .await;
        }
        _ => {}
    }
    if changed(EXPIRING_SOON) && crate::conditions::is_true(&new.conditions, EXPIRING_SOON) {
        ctx.metrics.transition(KIND, "ExpiringSoon");
        let at = new
            .expires_at
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        ctx.event(
            draft,
            EventType::Warning,
            "ExpiringSoon",
            "Expire",
            format!(
                "draft expires at {at}; edit it or set the kiln.dev/renew annotation to keep it"
            ),
        )
        .await;
    }
}

fn error_policy(draft: Arc<Draft>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_on_error(NAME, &ctx, error, draft.as_ref())
}
