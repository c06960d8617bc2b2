//! The workspace's side of the object store: write-through, restore, deletion.
//!
//! With [`Workspace::with_remote`], the `emptyDir` is a cache of the store:
//!
//! - A write streams into its temporary file as before, then stores that file in the object
//!   store, and only then renames it into place. A failed upload deletes the temporary file:
//!   neither the disk nor the store shows anything new (S3 never exposes a partial object, and
//!   a multipart upload that fails is aborted). In the rare case that the rename is refused
//!   after the upload (a concurrent writer took the last byte of a limit), the stored object is
//!   put back to what the disk holds.
//! - A delete deletes the stored object first, then the file.
//! - [`Workspace::ensure_job`] restores a missing job directory from the store, downloading
//!   into a staging directory under `trash/` (emptied at every start, so a crash mid-restore
//!   leaves nothing) and renaming it into place once complete.
//! - [`Workspace::remove_job`] deletes the job's objects before its directory.
//!
//! Writes and deletes of the same path are serialised by a striped lock held from the store
//! request to the rename (or unlink), so the store and the disk always end with the same
//! version; writes of different paths still run in parallel.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::error::{Error, Result, io_err};
use super::fsutil;
use super::key::JobKey;
use super::path::JobPath;
use super::store::{
    ARCHIVE_FILE, FILES_DIR, JOBS_DIR, StopReason, TRASH_DIR, WalkStop, Workspace, walk,
};
use crate::objstore::Remote;

/// Number of stripes of the per-path lock.
const STRIPES: usize = 64;

/// A striped lock over (job, path).
#[derive(Debug)]
pub(crate) struct PathLocks([Mutex<()>; STRIPES]);

impl Default for PathLocks {
    fn default() -> Self {
        PathLocks(std::array::from_fn(|_| Mutex::new(())))
    }
}

impl PathLocks {
    fn lock(&self, job: &JobKey, path: &JobPath) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        (job, path.as_str()).hash(&mut h);
        let stripe = (h.finish() % STRIPES as u64) as usize;
        // The guarded value is `()`: a panic while holding it leaves nothing inconsistent.
        self.0[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Workspace {
    /// Puts the object store behind this workspace.
    pub fn with_remote(mut self, remote: Arc<Remote>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The object store behind the workspace, if any.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Stores a file about to be renamed into place. Returns the path's lock, to be held until
    /// the rename is done; `None` without an object store.
    pub(super) fn store_file(
        &self,
        job: &JobKey,
        path: &JobPath,
        file: &mut fs::File,
        size: u64,
    ) -> Result<Option<MutexGuard<'_, ()>>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let guard = self.path_locks.lock(job, path);
        remote
            .put_file_blocking(job, &remote.file_key(job, path), file, size, None)
            .map_err(|source| Error::ObjectStore {
                job: job.clone(),
                source,
            })?;
        Ok(Some(guard))
    }

    /// After an upload whose rename was refused: make the store match the disk again (the
    /// previous version, or nothing). Best effort; a failure is logged, and the next write or
    /// delete of the path settles it.
    pub(super) fn unstore_file(&self, job: &JobKey, path: &JobPath, target: &std::path::Path) {
        let Some(remote) = &self.remote else { return };
        let key = remote.file_key(job, path);
        let result = match fsutil::open_read_nofollow(target) {
            Ok(mut file) => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                remote.put_file_blocking(job, &key, &mut file, size, None)
            }
            Err(_) => remote.delete_blocking(job, &key),
        };
        if let Err(error) = result {
            tracing::warn!(job = %job, path = %path, %error, "could not undo an upload whose write was refused");
        }
    }

    /// Deletes the stored copy of a file that exists on disk. Returns the path's lock, to be
    /// held until the file is unlinked.
    pub(super) fn delete_stored(
        &self,
        job: &JobKey,
        path: &JobPath,
    ) -> Result<Option<MutexGuard<'_, ()>>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let guard = self.path_locks.lock(job, path);
        // A missing file is the caller's 404; do not bother the store with it.
        self.stat(job, path)?;
        remote
            .delete_blocking(job, &remote.file_key(job, path))
            .map_err(|source| Error::ObjectStore {
                job: job.clone(),
                source,
            })?;
        Ok(Some(guard))
    }

    /// Deletes the job's objects (before its directory goes).
    pub(super) fn remove_stored_job(&self, job: &JobKey) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        remote
            .delete_job_blocking(job)
            .map_err(|source| Error::ObjectStore {
                job: job.clone(),
                source,
            })?;
        Ok(())
    }

    /// Stores a freshly built archive (before it is renamed into place); returns its location.
    pub(super) fn store_archive(
        &self,
        job: &JobKey,
        file: &mut fs::File,
        size: u64,
    ) -> Result<Option<String>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let key = remote.archive_key(job);
        remote
            .put_file_blocking(job, &key, file, size, Some("application/zip"))
            .map_err(|source| Error::ObjectStore {
                job: job.clone(),
                source,
            })?;
        Ok(Some(remote.location(&key)))
    }

    /// Deletes the stored archive (before the file on disk).
    pub(super) fn remove_stored_archive(&self, job: &JobKey) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        remote
            .delete_blocking(job, &remote.archive_key(job))
            .map_err(|source| Error::ObjectStore {
                job: job.clone(),
                source,
            })
    }

    /// When the job's directory is missing and the store holds the job, restores it and
    /// returns `true`. `false` when the directory is there or the store holds nothing.
    pub(super) fn restore_if_missing(&self, job: &JobKey) -> Result<bool> {
        let Some(remote) = &self.remote else {
            return Ok(false);
        };
        let components = [JOBS_DIR, job.namespace(), job.uid(), FILES_DIR];
        match walk(self.root(), &components, None) {
            Err(WalkStop {
                why: StopReason::Missing,
                ..
            }) => {}
            // Present, or damaged in a way `ensure_job` reports.
            _ => return Ok(false),
        }
        let to_error = |source| Error::ObjectStore {
            job: job.clone(),
            source,
        };
        let stored = remote.list_job_blocking(job).map_err(to_error)?;
        if stored.is_empty() {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let staging = self.root().join(TRASH_DIR).join(format!(
            "restore.{}.{}.{}",
            job.namespace(),
            job.uid(),
            fsutil::unique_suffix()
        ));
        let staged_files = staging.join(FILES_DIR);
        fs::create_dir_all(&staged_files).map_err(io_err("create", &staged_files))?;
        let downloaded =
            remote.restore_blocking(job, &stored, &staged_files, &staging.join(ARCHIVE_FILE));
        if let Err(source) = downloaded {
            let _ = fs::remove_dir_all(&staging);
            return Err(to_error(source));
        }
        let mut st = self.lock();
        let ns_dir = walk(self.root(), &[JOBS_DIR, job.namespace()], Some(1))
            .map_err(|s| self.layout_error(s))?;
        let job_dir = ns_dir.join(job.uid());
        if fs::symlink_metadata(&job_dir).is_ok() {
            // Created meanwhile (not by Kiln's own code paths, which go through here); keep it.
            drop(st);
            let _ = fs::remove_dir_all(&staging);
            return Ok(false);
        }
        fs::rename(&staging, &job_dir).map_err(io_err("move the restored job to", &job_dir))?;
        fsutil::sync_dir(&ns_dir).map_err(io_err("sync", &ns_dir))?;
        let scanned = self.scan_job(job, &job_dir.join(FILES_DIR))?;
        st.register(job, scanned);
        drop(st);
        tracing::info!(
            job = %job,
            files = stored.files.len(),
            archive = stored.archive.is_some(),
            seconds = started.elapsed().as_secs_f64(),
            "restored the job's workspace from the object store"
        );
        Ok(true)
    }
}
