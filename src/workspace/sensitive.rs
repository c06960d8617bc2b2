//! Which of a job's files were made from Secrets, and from which.
//!
//! Kiln reads Secrets with its own rights to produce declared files. Whoever reads such a file
//! afterwards must be allowed to read those Secrets too (the file API checks), so the
//! workspace remembers, per job, every path that ever held bytes derived from a Secret:
//! `<root>/jobs/<namespace>/<uid>/sensitive.json`, beside `files/` (never listed, never in the
//! archive).
//!
//! The record is written *before* the file it describes (by [`Workspace::mark_sensitive`]),
//! atomically (temporary file, fsync, rename), and entries are only ever added: a path stays
//! sensitive for as long as the job's directory exists, whatever is uploaded over it or
//! deleted later. So there is no moment at which a Secret's bytes are on disk and the record
//! does not say so. A record that cannot be read makes [`Workspace::sensitive`] fail, and the
//! file API then refuses to serve the job's files rather than guess.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result, io_err};
use super::fsutil::{self, TempFile};
use super::key::JobKey;
use super::path::JobPath;
use super::store::{Workspace, job_components, walk};

/// The record's file name inside the job's directory.
pub const SENSITIVE_FILE: &str = "sensitive.json";
/// A record larger than this is not read (it would take thousands of Secret-backed paths).
const MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

/// Path → the Secrets (names in the job's namespace) its bytes were made from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sensitivity {
    files: BTreeMap<String, BTreeSet<String>>,
}

impl Sensitivity {
    /// Adds `secrets` to `path`'s entry. Returns whether anything was new.
    pub fn add(&mut self, path: &str, secrets: impl IntoIterator<Item = String>) -> bool {
        let entry = self.files.entry(path.to_owned()).or_default();
        let before = entry.len();
        entry.extend(secrets);
        let grew = entry.len() > before;
        if entry.is_empty() {
            self.files.remove(path);
        }
        grew
    }

    /// Everything in `other` added to this record. Returns whether anything was new.
    pub fn merge(&mut self, other: &Sensitivity) -> bool {
        let mut grew = false;
        for (path, secrets) in &other.files {
            grew |= self.add(path, secrets.iter().cloned());
        }
        grew
    }

    /// The Secrets `path` was made from (empty: not sensitive).
    pub fn secrets_of(&self, path: &str) -> impl Iterator<Item = &str> {
        self.files
            .get(path)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every Secret any file of the job was made from: what its archive depends on.
    pub fn all_secrets(&self) -> BTreeSet<&str> {
        self.files.values().flatten().map(String::as_str).collect()
    }

    /// `(path, secrets)` pairs, sorted by path.
    pub fn files(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.files.iter().map(|(p, s)| (p.as_str(), s))
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// From `(path, secrets)` pairs, such as a Job's `status.sensitiveFiles`.
impl<'a> FromIterator<(&'a str, &'a [String])> for Sensitivity {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a [String])>>(pairs: I) -> Self {
        let mut s = Sensitivity::default();
        for (path, secrets) in pairs {
            s.add(path, secrets.iter().cloned());
        }
        s
    }
}

impl Workspace {
    /// Records that `path` of `job` is (about to be) made from `secrets`. Call it before
    /// writing the file: see the module docs. Adding what is already recorded writes nothing.
    pub fn mark_sensitive(&self, job: &JobKey, path: &JobPath, secrets: &[String]) -> Result<()> {
        if secrets.is_empty() {
            return Ok(());
        }
        let job_dir = walk(self.root(), &job_components(job)[..3], None)
            .map_err(|s| self.job_stop(job, s))?;
        // Read, extend, replace: the Job controller is the only writer, and it never reconciles
        // one Job twice at once.
        let mut record = self.sensitive(job)?;
        if !record.add(path.as_str(), secrets.iter().cloned()) {
            return Ok(());
        }
        let target = job_dir.join(SENSITIVE_FILE);
        let mut temp = TempFile::create_in(&job_dir, "sensitive")
            .map_err(io_err("create a temporary file in", &job_dir))?;
        let json = serde_json::to_vec(&record).map_err(|e| Error::Io {
            op: "encode",
            path: target.clone(),
            source: io::Error::other(e),
        })?;
        temp.file
            .write_all(&json)
            .and_then(|()| temp.file.sync_all())
            .map_err(io_err("write", &temp.path))?;
        temp.persist(&target)
            .map_err(io_err("rename into", &target))?;
        fsutil::sync_dir(&job_dir).map_err(io_err("sync", &job_dir))?;
        Ok(())
    }

    /// The job's record: empty when no file was ever made from a Secret, or when the job has
    /// no directory (then it has no files either).
    pub fn sensitive(&self, job: &JobKey) -> Result<Sensitivity> {
        let job_dir = match walk(self.root(), &job_components(job)[..3], None) {
            Ok(dir) => dir,
            Err(stop) => {
                return match self.job_stop(job, stop) {
                    Error::JobNotFound { .. } => Ok(Sensitivity::default()),
                    e => Err(e),
                };
            }
        };
        let path = job_dir.join(SENSITIVE_FILE);
        let file = match fsutil::open_read_nofollow(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sensitivity::default()),
            Err(e) if fsutil::is_symlink_error(&e) => return Err(self.symlink_error(&path)),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        if bytes.len() as u64 > MAX_RECORD_BYTES {
            return Err(io_err("read", &path)(io::Error::other(
                "the record is too large",
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| io_err("parse", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_only_grow_and_say_so() {
        let mut s = Sensitivity::default();
        assert!(s.add("a.txt", ["db".to_string()]));
        assert!(!s.add("a.txt", ["db".to_string()]));
        assert!(s.add("a.txt", ["api".to_string()]));
        assert!(!s.add("b.txt", []));
        assert_eq!(s.secrets_of("a.txt").collect::<Vec<_>>(), ["api", "db"]);
        assert_eq!(s.secrets_of("b.txt").count(), 0);
        let mut other = Sensitivity::default();
        other.add("c/d.txt", ["tls".to_string()]);
        assert!(s.merge(&other));
        assert!(!s.merge(&other));
        assert_eq!(
            s.all_secrets().into_iter().collect::<Vec<_>>(),
            ["api", "db", "tls"]
        );
    }
}
