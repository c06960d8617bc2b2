//! The Draft's desired status, computed from what the reconcile found (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::author::{Author, spec_author};
use super::lifecycle::{self, Lifecycle};
use super::publish::Outcome;
use crate::api::conditions::types::*;
use crate::api::draft::{Draft, DraftPhase, DraftStatus, PublishedRevision, RevisionRecord};
use crate::conditions::{Desired, merge};
use crate::desired::draft::Publication;
use crate::resolve::schema::Verdict;

/// At most this many entries are kept in `status.history` (the oldest go first); Events and
/// the revision ConfigMaps carry the rest of the audit trail. Keeps the object far from
/// etcd's size limit however often a draft is published.
pub const MAX_HISTORY: usize = 100;

pub fn build(
    draft: &Draft,
    current: &DraftStatus,
    verdict: &Verdict,
    outcome: Option<&(Publication, Outcome)>,
    life: &Lifecycle,
    now: Timestamp,
) -> DraftStatus {
    let mut status = current.clone();
    status.observed_generation = draft.metadata.generation;
    apply_lifecycle(&mut status, life);
    status.validation_errors = match verdict {
        Verdict::Violations(issues) => issues.clone(),
        _ => Vec::new(),
    };

    let mut desired = Vec::new();
    let (valid, validated) = match verdict {
        Verdict::Valid => (
            true,
            Desired::new(VALIDATED, true, "Valid", "config matches its schema"),
        ),
        Verdict::Violations(issues) => (
            false,
            Desired::new(
                VALIDATED,
                false,
                "SchemaViolation",
                format!(
                    "{} schema violation(s); first: {}",
                    issues.len(),
                    issues
                        .first()
                        .map(|i| format!("{}: {}", i.path, i.message))
                        .unwrap_or_default()
                ),
            ),
        ),
        Verdict::BrokenSchema { reason, message } => (
            false,
            Desired::new(VALIDATED, false, reason, message.clone()),
        ),
    };
    desired.push(validated.clone());

    // Publishing: None when `publish` is unset; otherwise what happened, or why not.
    let published = match (draft.spec.publish.as_ref(), outcome) {
        (None, _) => None,
        (Some(_), Some((publication, outcome))) => {
            let author = spec_author(&draft.metadata);
            Some(published_condition(
                &mut status,
                publication,
                outcome,
                &author,
                now,
            ))
        }
        (Some(_), None) => Some(match &status.published {
            Some(p) => Desired::new(
                PUBLISHED,
                true,
                "PreviousRevisionKept",
                format!(
                    "revision {} stays published; the current config is not valid and is not published",
                    p.revision
                ),
            ),
            None => Desired::new(
                PUBLISHED,
                false,
                "NotValid",
                "the config is not valid; nothing is published",
            ),
        }),
    };
    let publish_ok = published
        .as_ref()
        .is_none_or(|p| p.status && p.reason != "PreviousRevisionKept");
    let publish_blocked = published.as_ref().filter(|_| !publish_ok && valid).cloned();
    if let Some(p) = published {
        desired.push(p);
    }

    let ready = if !valid {
        Desired::new(READY, false, validated.reason, validated.message.clone())
    } else if let Some(p) = &publish_blocked {
        Desired::new(READY, false, p.reason, p.message.clone())
    } else if draft.spec.publish.is_some() {
        Desired::new(READY, true, "Published", "config is valid and published")
    } else {
        Desired::new(READY, true, "Valid", "config is valid (publish is not set)")
    };
    let ready_ok = ready.status;
    // An invalid config and a blocked publish both wait for a person to change something.
    let stalled = if ready_ok {
        Desired::new(STALLED, false, "Reconciled", "")
    } else {
        Desired::new(STALLED, true, ready.reason, ready.message.clone())
    };
    desired.push(ready);
    desired.push(stalled);
    desired.push(Desired::new(RECONCILING, false, "Reconciled", ""));
    desired.push(lifecycle::expiring_soon_condition(life, "the draft"));

    status.phase = Some(if ready_ok {
        DraftPhase::Ready
    } else if valid {
        DraftPhase::Pending
    } else {
        DraftPhase::Invalid
    });
    let mut remove = vec![EXPIRED];
    if draft.spec.publish.is_none() {
        remove.push(PUBLISHED);
    }
    status.conditions = merge(
        &current.conditions,
        &desired,
        &remove,
        draft.metadata.generation,
        now,
    );
    status
}

fn published_condition(
    status: &mut DraftStatus,
    publication: &Publication,
    outcome: &Outcome,
    author: &Author,
    now: Timestamp,
) -> Desired {
    match outcome {
        Outcome::Unchanged { revision } | Outcome::DriftCorrected { revision, .. } => {
            if status.published.as_ref().map(|p| (p.revision, &p.hash))
                != Some((*revision, &publication.hash))
            {
                status.published = Some(PublishedRevision {
                    config_map: publication.name(),
                    revision: *revision,
                    hash: publication.hash.clone(),
                    time: Time(now),
                });
            }
            Desired::new(
                PUBLISHED,
                true,
                "Published",
                format!(
                    "revision {revision} is published in ConfigMap {}",
                    publication.name()
                ),
            )
        }
        Outcome::NewRevision { revision, pruned } => {
            status.published = Some(PublishedRevision {
                config_map: publication.name(),
                revision: *revision,
                hash: publication.hash.clone(),
                time: Time(now),
            });
            for record in status.history.iter_mut() {
                if pruned.contains(&record.revision) {
                    record.pruned = true;
                }
            }
            status.history.push(RevisionRecord {
                revision: *revision,
                config_map: publication.revision_name(*revision),
                hash: publication.hash.clone(),
                time: Time(now),
                pruned: false,
                changed_by: author.manager.clone(),
                change_cause: author.cause.clone(),
            });
            let excess = status.history.len().saturating_sub(MAX_HISTORY);
            status.history.drain(..excess);
            Desired::new(
                PUBLISHED,
                true,
                "Published",
                format!(
                    "revision {revision} is published in ConfigMap {}",
                    publication.name()
                ),
            )
        }
        // Resolved by the reconcile before the status is built; kept total for safety.
        Outcome::AheadOfStatus => Desired::new(PUBLISHED, true, "Published", "published"),
        Outcome::NameConflict => Desired::new(
            PUBLISHED,
            false,
            "NameConflict",
            format!(
                "ConfigMap {} exists and is not managed by Kiln; it is left untouched",
                publication.name()
            ),
        ),
        Outcome::ConfigIdInUse { holder } => Desired::new(
            PUBLISHED,
            false,
            "ConfigIdInUse",
            format!(
                "configId {:?} is published by draft {holder}",
                publication.config_id
            ),
        ),
    }
}

fn apply_lifecycle(status: &mut DraftStatus, life: &Lifecycle) {
    status.retention = Some(life.ttl_text.clone());
    status.expiration = Some(life.expiration);
    status.ttl_start_time = Some(Time(life.ttl_start));
    status.observed_renew = life.observed_renew.clone();
    status.expires_at = Some(Time(life.expires_at));
}

/// Status of a draft kept after its retention ran out (`MarkExpired`).
pub fn expired(
    draft: &Draft,
    current: &DraftStatus,
    life: &Lifecycle,
    now: Timestamp,
) -> DraftStatus {
    let mut status = current.clone();
    status.observed_generation = draft.metadata.generation;
    apply_lifecycle(&mut status, life);
    status.phase = Some(DraftPhase::Expired);
    let message = format!(
        "retention {} ran out at {}; edit the draft or set the kiln.dev/renew annotation to revive it",
        life.ttl_text, life.expires_at
    );
    status.conditions = merge(
        &current.conditions,
        &lifecycle::expired_conditions(message),
        &[],
        draft.metadata.generation,
        now,
    );
    status
}

/// Status of a draft whose retention cannot be used (`0s`).
pub fn bad_retention(
    draft: &Draft,
    current: &DraftStatus,
    message: &str,
    now: Timestamp,
) -> DraftStatus {
    let mut status = current.clone();
    status.observed_generation = draft.metadata.generation;
    status.phase = Some(DraftPhase::Invalid);
    status.conditions = merge(
        &current.conditions,
        &[
            Desired::new(
                READY,
                false,
                "InvalidRetention",
                format!("spec.retention: {message}"),
            ),
            Desired::new(
                STALLED,
                true,
                "InvalidRetention",
                format!("spec.retention: {message}"),
            ),
            Desired::new(RECONCILING, false, "Reconciled", ""),
        ],
        &[],
        draft.metadata.generation,
        now,
    );
    status
}
