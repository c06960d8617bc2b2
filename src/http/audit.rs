//! The audit trail of the file API. Its writes and deletes change a Job's files without an
//! API server request, so the API server's audit log never sees them; Kiln records them
//! itself, in two places:
//!
//! - the operator's log, one line per file (target `kiln::audit`, level info): user, Job,
//!   action, path;
//! - Events on the Job naming the user (`FilesWritten`, `FilesDeleted`), grouped: the writes
//!   of one user to one Job within [`WINDOW`] become one Event with their count and first
//!   paths. An upload of a thousand files then costs the API server a few Events rather than a
//!   thousand, and `kubectl describe job` stays readable.
//!
//! A group is published when its window closes; the groups still open when the operator
//! stops are published then (see [`FileAudit::flush`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{info, warn};

use super::auth::Caller;
use super::jobs::Target;

/// Writes of one user to one Job within this long share an Event.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Paths named in one Event; the rest are counted.
const NAMED_PATHS: usize = 10;

/// What happened to the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileAction {
    Write,
    Delete,
}

impl FileAction {
    fn reason(self) -> &'static str {
        match self {
            FileAction::Write => "FilesWritten",
            FileAction::Delete => "FilesDeleted",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            FileAction::Write => "wrote",
            FileAction::Delete => "deleted",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    job_uid: String,
    user: String,
    action: FileAction,
}

/// The writes of one group so far.
#[derive(Debug)]
struct Group {
    job: ObjectReference,
    paths: Vec<String>,
    count: u64,
}

/// Records the file API's changes; cheap to clone.
#[derive(Clone)]
pub struct FileAudit {
    recorder: Recorder,
    open: Arc<Mutex<HashMap<GroupKey, Group>>>,
}

impl FileAudit {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "kiln".into(),
            instance,
        };
        FileAudit {
            recorder: Recorder::new(client, reporter),
            open: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupKey, Group>> {
        // Plain maps of strings: a panic elsewhere cannot leave them inconsistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `caller` did `action` to `paths` of the Job. Must be called from within
    /// the Tokio runtime (the first change of a group starts its window there).
    pub fn record<'a>(
        &self,
        caller: &Caller,
        target: &Target,
        action: FileAction,
        paths: impl IntoIterator<Item = &'a str>,
    ) {
        let user = caller.username().to_owned();
        let key = GroupKey {
            job_uid: target.key.uid().to_owned(),
            user: user.clone(),
            action,
        };
        let mut opened = false;
        {
            let mut open = self.lock();
            let group = open.entry(key.clone()).or_insert_with(|| {
                opened = true;
                Group {
                    job: target.job.object_ref(&()),
                    paths: Vec::new(),
                    count: 0,
                }
            });
            for path in paths {
                info!(target: "kiln::audit", user = %user, namespace = %target.namespace,
                      job = %target.name, action = action.verb(), path, "job file changed");
                group.count += 1;
                if group.paths.len() < NAMED_PATHS {
                    group.paths.push(path.to_owned());
                }
            }
        }
        if opened {
            let audit = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(WINDOW).await;
                let group = audit.lock().remove(&key);
                if let Some(group) = group {
                    audit.publish(&key, group).await;
                }
            });
        }
    }

    /// Publishes every open group now (at shutdown).
    pub async fn flush(&self) {
        let open: Vec<(GroupKey, Group)> = self.lock().drain().collect();
        for (key, group) in open {
            self.publish(&key, group).await;
        }
    }

    async fn publish(&self, key: &GroupKey, group: Group) {
        let event = Event {
            type_: EventType::Normal,
            reason: key.action.reason().into(),
            note: Some(note(&key.user, key.action, &group)),
            action: match key.action {
                FileAction::Write => "WriteFiles".into(),
                FileAction::Delete => "DeleteFiles".into(),
            },
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &group.job).await {
            warn!(%error, reason = %event.reason, "could not publish a file audit Event");
        }
    }
}

/// `alice wrote 3 files: a.txt, b/c.txt, d.md`, or with more than [`NAMED_PATHS`]:
/// `alice wrote 1000 files: a, b, … (990 more)`. Events cap notes at 1 KiB; long paths are
/// cut to keep the user and the count.
fn note(user: &str, action: FileAction, group: &Group) -> String {
    let noun = if group.count == 1 { "file" } else { "files" };
    let mut note = format!("{user} {} {} {noun}: ", action.verb(), group.count);
    let more = group.count.saturating_sub(group.paths.len() as u64);
    let tail = if more > 0 {
        format!(" … ({more} more)")
    } else {
        String::new()
    };
    let budget = 1000usize.saturating_sub(note.len() + tail.len());
    let listed = group.paths.join(", ");
    if listed.len() <= budget {
        note.push_str(&listed);
    } else {
        let mut end = budget.saturating_sub(1);
        while !listed.is_char_boundary(end) {
            end -= 1;
        }
        note.push_str(&listed[..end]);
        note.push('…');
    }
    note.push_str(&tail);
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(paths: &[&str], count: u64) -> Group {
        Group {
            job: ObjectReference::default(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            count,
        }
    }

    #[test]
    fn notes_name_the_user_the_count_and_the_paths() {
        assert_eq!(
            note("alice", FileAction::Write, &group(&["a.txt"], 1)),
            "alice wrote 1 file: a.txt"
        );
        assert_eq!(
            note("ci", FileAction::Delete, &group(&["a", "b"], 2)),
            "ci deleted 2 files: a, b"
        );
        assert_eq!(
            note("ci", FileAction::Write, &group(&["a", "b"], 1000)),
            "ci wrote 1000 files: a, b … (998 more)"
        );
    }

    #[test]
    fn long_paths_are_cut_but_user_and_count_stay() {
        let long = "é".repeat(2000);
        let n = note(
            "system:serviceaccount:team:ci",
            FileAction::Write,
            &group(&[&long], 5),
        );
        assert!(n.len() <= 1024, "{}", n.len());
        assert!(n.starts_with("system:serviceaccount:team:ci wrote 5 files: "));
        assert!(n.ends_with(" … (4 more)"), "{n}");
    }
}
