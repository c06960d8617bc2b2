//! The job's archive: keep the one on disk while it holds the job's files, else build it; and,
//! when a complete job's archive changes, say why.
//!
//! A complete job's files still change when a declared file's ConfigMap or Secret does. The
//! reconcile then writes the files, rebuilds the archive, and writes the status, in that
//! order. The workspace knows which version of the files the archive holds
//! ([`Freshness`]), and the download serves an archive only when it holds the current files
//! and is the one the status names: between the steps it answers "retry shortly", never
//! with the old archive under the new status or the new one under the old.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{Context, blocking};
use crate::api::job::{ArchiveStatus, JobPhase, KilnJob, KilnJobStatus};
use crate::desired::job::download_path;
use crate::error::Result;
use crate::resolve::declared::{self, SourceKind};
use crate::workspace::{Freshness, JobKey};

/// The job's archive: the one the status records while it still holds the job's files,
/// else a new build.
pub async fn ensure(
    ctx: &Context,
    job: &KilnJob,
    current: &KilnJobStatus,
    key: &JobKey,
    created: bool,
) -> Result<ArchiveStatus> {
    let on_disk = ctx.workspace.archive_path(key).is_file();
    let freshness = {
        let key = key.clone();
        blocking(&ctx.workspace, move |ws| ws.archive_freshness(&key)).await?
    };
    if let Some(existing) = reusable(job, current, created, on_disk, &freshness) {
        return Ok(existing.clone());
    }
    let start = std::time::Instant::now();
    let key = key.clone();
    let info = blocking(&ctx.workspace, move |ws| ws.build_archive(&key)).await?;
    ctx.metrics
        .archive_built(start.elapsed().as_secs_f64(), info.size_bytes);
    Ok(ArchiveStatus {
        size_bytes: info.size_bytes as i64,
        sha256: info.sha256,
        download_path: download_path(&job.namespace().unwrap_or_default(), &job.name_any()),
        location: info.location,
    })
}

/// The archive the status records, when it can be kept (pure): the job was already complete
/// with this spec, in this workspace, and the archive on disk is that one and holds the
/// files as they are now.
fn reusable<'s>(
    job: &KilnJob,
    current: &'s KilnJobStatus,
    created: bool,
    on_disk: bool,
    freshness: &Freshness,
) -> Option<&'s ArchiveStatus> {
    let existing = current.archive.as_ref()?;
    let keep = on_disk
        && !created
        && current.observed_generation == job.metadata.generation
        && current.phase == Some(JobPhase::Complete)
        && freshness.matches(&existing.sha256);
    keep.then_some(existing)
}

/// What this reconcile found changed in the job's files.
pub struct Changes<'a> {
    /// The workspace directory was created anew (the pod was replaced).
    pub workspace_recreated: bool,
    /// Declared files (or `plan.json`) whose bytes were written.
    pub written: &'a [String],
}

/// The note of the `ArchiveRebuilt` Event, when a job that was complete with one archive is
/// complete with another (pure). It names the ConfigMaps and Secrets whose change did it,
/// never their content.
pub fn rebuilt_note(
    job: &KilnJob,
    old: &KilnJobStatus,
    new: &KilnJobStatus,
    changes: &Changes<'_>,
) -> Option<String> {
    let was = old
        .archive
        .as_ref()
        .filter(|_| old.phase == Some(JobPhase::Complete))?;
    let now = new
        .archive
        .as_ref()
        .filter(|_| new.phase == Some(JobPhase::Complete))?;
    if was.sha256 == now.sha256 {
        return None;
    }
    let cause = if changes.workspace_recreated {
        "the workspace was recreated (the operator's pod was replaced)".to_string()
    } else if old.observed_generation != job.metadata.generation {
        "the Job's spec changed".to_string()
    } else {
        changed_sources(job, changes.written)
            .unwrap_or_else(|| "the job's files changed".to_string())
    };
    Some(format!(
        "archive rebuilt because {cause}: sha256 {} -> {}, {} bytes",
        was.sha256, now.sha256, now.size_bytes
    ))
}

/// "ConfigMap \"app\" changed (conf/app.cfg)", one part per source, for the files written.
fn changed_sources(job: &KilnJob, written: &[String]) -> Option<String> {
    const SHOWN: usize = 5;
    let mut by_source: BTreeMap<(SourceKind, &str), Vec<&str>> = BTreeMap::new();
    for file in &job.spec.files {
        if !written.contains(&file.path) {
            continue;
        }
        for source in declared::sources(file) {
            by_source.entry(source).or_default().push(&file.path);
        }
    }
    if by_source.is_empty() {
        return None;
    }
    let parts: Vec<String> = by_source
        .into_iter()
        .map(|((kind, name), mut paths)| {
            paths.dedup();
            let more = paths.len().saturating_sub(SHOWN);
            let mut shown = paths.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
            if more > 0 {
                shown.push_str(&format!(" and {more} more"));
            }
            format!("{} {name:?} changed ({shown})", kind.as_str())
        })
        .collect();
    Some(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(generation: i64) -> KilnJob {
        serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": generation},
            "spec": {"projectName": "p", "complete": true, "files": [
                {"path": "a.cfg", "contentFrom": {"configMapKeyRef": {"name": "app", "key": "a"}}},
                {"path": "b.cfg", "contentFrom": {"configMapKeyRef": {"name": "app", "key": "b"}}},
                {"path": "token", "contentFrom": {"secretKeyRef": {"name": "db", "key": "t"}}},
                {"path": "README.md", "content": "hi"},
            ]}
        }))
        .unwrap()
    }

    fn status(phase: JobPhase, sha256: Option<&str>) -> KilnJobStatus {
        KilnJobStatus {
            phase: Some(phase),
            observed_generation: Some(1),
            archive: sha256.map(|sha256| ArchiveStatus {
                size_bytes: 10,
                sha256: sha256.into(),
                download_path: "/d".into(),
                location: None,
            }),
            ..KilnJobStatus::default()
        }
    }

    #[test]
    fn the_recorded_archive_is_kept_only_while_it_holds_the_files() {
        let j = job(1);
        let complete = status(JobPhase::Complete, Some("aaa"));
        let current = Freshness::Current("aaa".into());
        assert!(reusable(&j, &complete, false, true, &current).is_some());
        // Built by an earlier process, newer than every file: trusted as the status says.
        assert!(reusable(&j, &complete, false, true, &Freshness::Found).is_some());
        // A file was written since the build (a source changed): rebuild.
        assert!(reusable(&j, &complete, false, true, &Freshness::Stale).is_none());
        // Rebuilt already, but the status write did not happen: rebuild (same bytes).
        let other = Freshness::Current("bbb".into());
        assert!(reusable(&j, &complete, false, true, &other).is_none());
        // Workspace recreated, archive gone, spec changed, or not complete before.
        assert!(reusable(&j, &complete, true, true, &current).is_none());
        assert!(reusable(&j, &complete, false, false, &current).is_none());
        assert!(reusable(&job(2), &complete, false, true, &current).is_none());
        let generating = status(JobPhase::Generating, Some("aaa"));
        assert!(reusable(&j, &generating, false, true, &current).is_none());
        let none = status(JobPhase::Complete, None);
        assert!(reusable(&j, &none, false, true, &Freshness::Found).is_none());
    }

    #[test]
    fn a_rebuild_names_the_sources_that_changed() {
        let j = job(1);
        let old = status(JobPhase::Complete, Some("aaa"));
        let new = status(JobPhase::Complete, Some("bbb"));
        let written = [
            "b.cfg".to_string(),
            "a.cfg".to_string(),
            "token".to_string(),
        ];
        let changes = Changes {
            workspace_recreated: false,
            written: &written,
        };
        let note = rebuilt_note(&j, &old, &new, &changes).unwrap();
        assert_eq!(
            note,
            "archive rebuilt because ConfigMap \"app\" changed (a.cfg, b.cfg); \
             Secret \"db\" changed (token): sha256 aaa -> bbb, 10 bytes"
        );
    }

    #[test]
    fn a_rebuild_says_when_it_was_not_a_source() {
        let old = status(JobPhase::Complete, Some("aaa"));
        let new = status(JobPhase::Complete, Some("bbb"));
        let none = Changes {
            workspace_recreated: false,
            written: &[],
        };
        let note = rebuilt_note(&job(2), &old, &new, &none).unwrap();
        assert!(note.contains("the Job's spec changed"), "{note}");
        let note = rebuilt_note(&job(1), &old, &new, &none).unwrap();
        assert!(note.contains("the job's files changed"), "{note}");
        let recreated = Changes {
            workspace_recreated: true,
            written: &[],
        };
        let note = rebuilt_note(&job(1), &old, &new, &recreated).unwrap();
        assert!(note.contains("workspace was recreated"), "{note}");
    }

    #[test]
    fn no_note_unless_a_complete_job_changed_archive() {
        let j = job(1);
        let none = Changes {
            workspace_recreated: false,
            written: &[],
        };
        let complete = |sha: &str| status(JobPhase::Complete, Some(sha));
        assert!(rebuilt_note(&j, &complete("aaa"), &complete("aaa"), &none).is_none());
        // Completing for the first time is `Completed`, not a rebuild.
        let generating = status(JobPhase::Generating, None);
        assert!(rebuilt_note(&j, &generating, &complete("aaa"), &none).is_none());
        // A source deleted: the archive goes away (reported as SourceNotFound).
        assert!(rebuilt_note(&j, &complete("aaa"), &generating, &none).is_none());
    }
}
