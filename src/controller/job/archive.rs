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
use crate::workspace::{ArchiveInfo, Freshness, JobKey};

/// The archive of a reconcile.
pub struct Ensured {
    pub archive: ArchiveStatus,
    /// Whether this reconcile built it (rather than keeping the one on disk).
    pub built: bool,
}

/// The job's archive: the one on disk while it holds the job's files, else a new build.
pub async fn ensure(
    ctx: &Context,
    job: &KilnJob,
    current: &KilnJobStatus,
    key: &JobKey,
    created: bool,
) -> Result<Ensured> {
    let on_disk = ctx.workspace.archive_path(key).is_file();
    let freshness = {
        let key = key.clone();
        blocking(&ctx.workspace, move |ws| ws.archive_freshness(&key)).await?
    };
    // An archive found on disk is kept only if it is the one the status names (see
    // `Workspace::verify_found_archive`); it is then current, and hashed no more.
    let freshness = match (&freshness, &current.archive) {
        (Freshness::Found, Some(recorded)) if on_disk && !created => {
            let (key, sha, location) = (
                key.clone(),
                recorded.sha256.clone(),
                recorded.location.clone(),
            );
            let verified = blocking(&ctx.workspace, move |ws| {
                ws.verify_found_archive(&key, &sha, location)
            })
            .await?;
            if verified {
                freshness
            } else {
                Freshness::Stale
            }
        }
        _ => freshness,
    };
    if let Some(archive) = keep(job, current, created, on_disk, freshness) {
        return Ok(Ensured {
            archive,
            built: false,
        });
    }
    let start = std::time::Instant::now();
    let key = key.clone();
    let info = blocking(&ctx.workspace, move |ws| ws.build_archive(&key)).await?;
    ctx.metrics
        .archive_built(start.elapsed().as_secs_f64(), info.size_bytes);
    Ok(Ensured {
        archive: status_of(job, info),
        built: true,
    })
}

/// The archive to keep instead of building one, if any (pure):
/// - one this process built, while no file changed since: whatever the status says, which
///   can lag (a cached copy of the Job from before the last status write, or a status write
///   that failed);
/// - one found on disk from an earlier process, newer than every file: the one the status
///   records, if the job was already complete with this spec.
fn keep(
    job: &KilnJob,
    current: &KilnJobStatus,
    created: bool,
    on_disk: bool,
    freshness: Freshness,
) -> Option<ArchiveStatus> {
    if created || !on_disk {
        return None;
    }
    match freshness {
        Freshness::Current(built) => Some(status_of(job, built)),
        Freshness::Found => current.archive.clone().filter(|_| {
            current.observed_generation == job.metadata.generation
                && current.phase == Some(JobPhase::Complete)
        }),
        Freshness::Stale => None,
    }
}

fn status_of(job: &KilnJob, info: ArchiveInfo) -> ArchiveStatus {
    ArchiveStatus {
        size_bytes: i64::try_from(info.size_bytes).unwrap_or(i64::MAX),
        sha256: info.sha256,
        download_path: download_path(&job.namespace().unwrap_or_default(), &job.name_any()),
        location: info.location,
    }
}

/// What this reconcile found changed in the job's files, and whether it built the archive.
pub struct Changes<'a> {
    /// The archive was built by this reconcile (an archive kept from an earlier build was
    /// announced by the reconcile that built it).
    pub archive_built: bool,
    /// The workspace directory was created anew (the pod was replaced).
    pub workspace_recreated: bool,
    /// Declared files (or `plan.json`) whose bytes were written.
    pub written: &'a [String],
}

/// The `ArchiveRebuilt` Event of a reconcile.
#[derive(Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// Why, naming the ConfigMaps and Secrets whose change did it, never their content. No
    /// sha256: the recorder folds repeats into a series that keeps the first note, and the
    /// new sha256 is in `status.archive` anyway.
    pub note: String,
    /// The ConfigMap or Secret whose change did it (the first, when several did): the
    /// Event's related object, which keeps the Events of different sources apart.
    pub source: Option<(SourceKind, String)>,
}

/// The `ArchiveRebuilt` Event, when a job that was complete with one archive is complete
/// with another (pure).
pub fn rebuilt(
    job: &KilnJob,
    old: &KilnJobStatus,
    new: &KilnJobStatus,
    changes: &Changes<'_>,
) -> Option<Rebuilt> {
    if !changes.archive_built {
        return None;
    }
    let complete = |s: &KilnJobStatus| s.phase == Some(JobPhase::Complete);
    let was = old.archive.as_ref().filter(|_| complete(old))?;
    let now = new.archive.as_ref().filter(|_| complete(new))?;
    if was.sha256 == now.sha256 {
        return None;
    }
    let because = |cause: &str| Rebuilt {
        note: format!("archive rebuilt because {cause}"),
        source: None,
    };
    if changes.workspace_recreated {
        return Some(because(
            "the workspace was recreated (the operator's pod was replaced)",
        ));
    }
    if old.observed_generation != job.metadata.generation {
        return Some(because("the Job's spec changed"));
    }
    let sources = changed_sources(job, changes.written);
    let Some(((kind, name), _)) = sources.first_key_value() else {
        return Some(because("the job's files changed"));
    };
    let source = Some((*kind, name.to_string()));
    let parts: Vec<String> = sources
        .iter()
        .map(|((kind, name), paths)| {
            format!("{} {name:?} changed ({})", kind.as_str(), list(paths))
        })
        .collect();
    Some(Rebuilt {
        note: format!("archive rebuilt because {}", parts.join("; ")),
        source,
    })
}

/// The sources of the declared files written, each with the paths made from it.
fn changed_sources<'j>(
    job: &'j KilnJob,
    written: &[String],
) -> BTreeMap<(SourceKind, &'j str), Vec<&'j str>> {
    let mut by_source: BTreeMap<(SourceKind, &str), Vec<&str>> = BTreeMap::new();
    for file in &job.spec.files {
        if !written.contains(&file.path) {
            continue;
        }
        for source in declared::sources(file) {
            let paths = by_source.entry(source).or_default();
            if paths.last() != Some(&file.path.as_str()) {
                paths.push(&file.path);
            }
        }
    }
    by_source
}

/// `a, b, c, d, e and 2 more`.
fn list(paths: &[&str]) -> String {
    const SHOWN: usize = 5;
    let more = paths.len().saturating_sub(SHOWN);
    let mut shown = paths[..paths.len() - more].join(", ");
    if more > 0 {
        shown.push_str(&format!(" and {more} more"));
    }
    shown
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

    fn built(sha256: &str) -> ArchiveInfo {
        ArchiveInfo {
            path: "/ws/archive.zip".into(),
            size_bytes: 20,
            sha256: sha256.into(),
            location: None,
        }
    }

    #[test]
    fn the_archive_on_disk_is_kept_only_while_it_holds_the_files() {
        let j = job(1);
        let complete = status(JobPhase::Complete, Some("aaa"));
        let keep = |j: &KilnJob, s: &KilnJobStatus, created, on_disk, f: &Freshness| {
            keep(j, s, created, on_disk, f.clone()).map(|a| a.sha256)
        };
        let current = Freshness::Current(built("aaa"));
        assert_eq!(
            keep(&j, &complete, false, true, &current).as_deref(),
            Some("aaa")
        );
        // Built by this process after the status it sees (a lagging cache, or a status write
        // that failed): kept, and the status catches up.
        let later = Freshness::Current(built("bbb"));
        assert_eq!(
            keep(&j, &complete, false, true, &later).as_deref(),
            Some("bbb")
        );
        let generating = status(JobPhase::Generating, None);
        assert_eq!(
            keep(&j, &generating, false, true, &later).as_deref(),
            Some("bbb")
        );
        // A file was written since the build (a source changed): rebuild.
        assert_eq!(keep(&j, &complete, false, true, &Freshness::Stale), None);
        // Workspace recreated, or the archive gone.
        assert_eq!(keep(&j, &complete, true, true, &current), None);
        assert_eq!(keep(&j, &complete, false, false, &current), None);

        // Built by an earlier process, newer than every file: trusted as the status says,
        // when the job was complete with this spec.
        let found = Freshness::Found;
        assert_eq!(
            keep(&j, &complete, false, true, &found).as_deref(),
            Some("aaa")
        );
        assert_eq!(keep(&job(2), &complete, false, true, &found), None);
        let generating = status(JobPhase::Generating, Some("aaa"));
        assert_eq!(keep(&j, &generating, false, true, &found), None);
        let none = status(JobPhase::Complete, None);
        assert_eq!(keep(&j, &none, false, true, &found), None);
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
            archive_built: true,
            workspace_recreated: false,
            written: &written,
        };
        let event = rebuilt(&j, &old, &new, &changes).unwrap();
        assert_eq!(
            event.note,
            "archive rebuilt because ConfigMap \"app\" changed (a.cfg, b.cfg); \
             Secret \"db\" changed (token)"
        );
        assert_eq!(event.source, Some((SourceKind::ConfigMap, "app".into())));
        let written = ["token".to_string()];
        let changes = Changes {
            archive_built: true,
            workspace_recreated: false,
            written: &written,
        };
        let event = rebuilt(&j, &old, &new, &changes).unwrap();
        assert_eq!(event.source, Some((SourceKind::Secret, "db".into())));
    }

    #[test]
    fn long_lists_of_paths_are_cut() {
        assert_eq!(list(&["a"]), "a");
        assert_eq!(list(&["a", "b", "c", "d", "e"]), "a, b, c, d, e");
        assert_eq!(
            list(&["a", "b", "c", "d", "e", "f", "g"]),
            "a, b, c, d, e and 2 more"
        );
    }

    #[test]
    fn a_rebuild_says_when_it_was_not_a_source() {
        let old = status(JobPhase::Complete, Some("aaa"));
        let new = status(JobPhase::Complete, Some("bbb"));
        let none = Changes {
            archive_built: true,
            workspace_recreated: false,
            written: &[],
        };
        let note = |j: &KilnJob, changes: &Changes<'_>| {
            let event = rebuilt(j, &old, &new, changes).unwrap();
            assert_eq!(event.source, None);
            event.note
        };
        assert!(note(&job(2), &none).contains("the Job's spec changed"));
        assert!(note(&job(1), &none).contains("the job's files changed"));
        let recreated = Changes {
            archive_built: true,
            workspace_recreated: true,
            written: &[],
        };
        assert!(note(&job(1), &recreated).contains("workspace was recreated"));
    }

    #[test]
    fn no_note_unless_a_complete_job_changed_archive() {
        let j = job(1);
        let none = Changes {
            archive_built: true,
            workspace_recreated: false,
            written: &[],
        };
        let complete = |sha: &str| status(JobPhase::Complete, Some(sha));
        assert!(rebuilt(&j, &complete("aaa"), &complete("aaa"), &none).is_none());
        // Completing for the first time is `Completed`, not a rebuild.
        let generating = status(JobPhase::Generating, None);
        assert!(rebuilt(&j, &generating, &complete("aaa"), &none).is_none());
        // A source deleted: the archive goes away (reported as SourceNotFound).
        assert!(rebuilt(&j, &complete("aaa"), &generating, &none).is_none());
        // An archive kept, with a status that lagged behind it: announced when it was built.
        let kept = Changes {
            archive_built: false,
            ..none
        };
        assert!(rebuilt(&j, &complete("aaa"), &complete("bbb"), &kept).is_none());
    }
}
