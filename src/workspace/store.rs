//! [`Workspace`]: the job directories, their files and the accounting behind the limits.
//!
//! # Symlinks and TOCTOU
//!
//! Every directory on the way to a file is checked with `lstat` just before it is used (and
//! created with `mkdir`, never `mkdir -p` through whatever is there); files are opened with
//! `O_NOFOLLOW`, created with `O_CREAT|O_EXCL`, and put in place with `rename`, which replaces
//! a link instead of following it; deletion (`remove_dir_all`) does not follow links either.
//! What this does not stop is a process that swaps a checked directory for a symlink between
//! the check and the use. Only Kiln runs in the pod with the emptyDir mounted, and nothing
//! Kiln does creates a symlink (paths from users cannot name one), so such a process would
//! already be running as Kiln; the checks are there for planted links and for bugs. Resolving
//! every path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` would close that window
//! too, at the cost of Linux-only, descriptor-based code throughout.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use super::error::{Error, Result, io_err};
use super::fsutil::{self, TempFile};
use super::key::JobKey;
use super::limits::Limits;
use super::path::JobPath;

/// Directory under the root holding one directory per namespace, then one per job uid.
pub(super) const JOBS_DIR: &str = "jobs";
/// Directory under the root where removed jobs wait to be deleted (see [`Workspace::remove_job`]).
pub(super) const TRASH_DIR: &str = "trash";
/// Directory inside a job's directory holding the job's files.
pub(super) const FILES_DIR: &str = "files";
/// Name of a job's archive, next to its `files` directory.
pub(crate) const ARCHIVE_FILE: &str = "archive.zip";

/// Number of path components from the root to a job's files directory:
/// `jobs/<namespace>/<uid>/files`.
const JOB_DEPTH: usize = 4;

/// Size of the chunks a streamed upload is read, checked and written in.
const CHUNK: usize = 64 * 1024;

/// A file in a job: its path, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the job's files directory.
    pub path: JobPath,
    /// Size in bytes.
    pub size_bytes: u64,
    /// When the file was last written (the time of the write that created this version).
    pub modified: SystemTime,
}

/// A file opened for reading, with what it looked like when opened. Files are only ever
/// replaced by a rename, never changed in place, so the open handle keeps reading the version
/// described here even if the path is overwritten meanwhile.
#[derive(Debug)]
pub struct OpenFile {
    /// The open file, positioned at the start.
    pub file: File,
    /// Path, size and modification time of the opened version.
    pub info: FileInfo,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The file as now stored.
    pub info: FileInfo,
    /// `true` when an existing file was replaced (HTTP 200), `false` when created (201).
    pub replaced: bool,
}

/// One job's usage, from the in-memory accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobUsage {
    /// Number of files.
    pub files: u64,
    /// Total size of the files, in bytes (what the limits count).
    pub bytes: u64,
    /// Size of the job's archive, in bytes; 0 when there is none. Not counted by the limits.
    pub archive_bytes: u64,
}

/// The whole workspace's usage, from the in-memory accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceUsage {
    /// Number of job directories.
    pub jobs: u64,
    /// Number of files over all jobs.
    pub files: u64,
    /// Total size of all jobs' files, in bytes (what `max_workspace_bytes` counts).
    pub bytes: u64,
    /// Total size of all archives, in bytes. Not counted by the limits.
    pub archive_bytes: u64,
}

/// The accounting, guarded by one mutex. Every check-then-commit of a limit happens under it,
/// so concurrent writers can never together exceed a limit that each checked alone.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) jobs: HashMap<JobKey, JobState>,
    files: u64,
    bytes: u64,
    pub(crate) archive_bytes: u64,
    /// Bytes promised to writes in flight, over all jobs (see [`Reservation`]).
    reserved_bytes: u64,
    next_generation: u64,
}

#[derive(Debug)]
pub(crate) struct JobState {
    /// Changes each time the job's directory is (re-)registered, so that a write that started
    /// before a `remove_job` cannot commit into, or release reservations of, a new incarnation.
    pub(crate) generation: u64,
    files: u64,
    bytes: u64,
    pub(crate) archive_bytes: u64,
    reserved_bytes: u64,
    reserved_files: u64,
    /// Counts the writes and deletes committed to the job's files, so that an archive can
    /// say which version of the files it holds.
    pub(crate) files_version: u64,
    /// The archive on disk and the files it holds, if it holds the job's files at all.
    pub(crate) archive: Option<ArchiveRecord>,
}

/// Which version of a job's files its archive was built from.
#[derive(Debug, Clone)]
pub(crate) struct ArchiveRecord {
    /// The job's `files_version` when the build started.
    pub(crate) files_version: u64,
    /// What the build made; `None` for an archive found on disk, built by an earlier process.
    pub(crate) built: Option<super::ArchiveInfo>,
}

/// What a scan of a job's directory found.
pub(super) struct Scanned {
    pub(super) usage: JobUsage,
    /// Whether an archive is there that is newer than every file: built from these files.
    pub(super) archive_holds_files: bool,
}

impl State {
    pub(super) fn register(&mut self, job: &JobKey, scanned: Scanned) {
        let usage = scanned.usage;
        self.forget(job);
        self.next_generation += 1;
        self.files += usage.files;
        self.bytes += usage.bytes;
        self.archive_bytes += usage.archive_bytes;
        let archive = scanned.archive_holds_files.then_some(ArchiveRecord {
            files_version: 0,
            built: None,
        });
        self.jobs.insert(
            job.clone(),
            JobState {
                generation: self.next_generation,
                files: usage.files,
                bytes: usage.bytes,
                archive_bytes: usage.archive_bytes,
                reserved_bytes: 0,
                reserved_files: 0,
                files_version: 0,
                archive,
            },
        );
    }

    /// Drops a job from the accounting. Reservations of its writes in flight stay in the
    /// workspace total until those writes end (they release them then).
    fn forget(&mut self, job: &JobKey) -> bool {
        match self.jobs.remove(job) {
            Some(j) => {
                self.files = self.files.saturating_sub(j.files);
                self.bytes = self.bytes.saturating_sub(j.bytes);
                self.archive_bytes = self.archive_bytes.saturating_sub(j.archive_bytes);
                true
            }
            None => false,
        }
    }

    pub(crate) fn generation(&self, job: &JobKey) -> Option<u64> {
        self.jobs.get(job).map(|j| j.generation)
    }
}

/// What a write in flight has been promised, so that concurrent writes are checked against
/// each other and not only against what is already committed.
///
/// `bytes` is how far the new file exceeds the file it replaces (the size of the old file is
/// credited up front); `files` is 1 when the write creates a new file. Dropping the reservation
/// gives everything back; a commit turns it into committed usage.
struct Reservation<'a> {
    state: &'a Mutex<State>,
    job: JobKey,
    generation: u64,
    old_size: u64,
    bytes: u64,
    files: u64,
}

impl Reservation<'_> {
    fn release(&mut self, st: &mut State) {
        if let Some(j) = st.jobs.get_mut(&self.job)
            && j.generation == self.generation
        {
            j.reserved_bytes = j.reserved_bytes.saturating_sub(self.bytes);
            j.reserved_files = j.reserved_files.saturating_sub(self.files);
        }
        st.reserved_bytes = st.reserved_bytes.saturating_sub(self.bytes);
        self.bytes = 0;
        self.files = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes != 0 || self.files != 0 {
            let state = self.state;
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            self.release(&mut st);
        }
    }
}

/// Where and why a walk down the directory tree stopped.
#[derive(Debug)]
pub(crate) struct WalkStop {
    /// Index of the component that stopped the walk.
    pub(crate) at: usize,
    /// The path up to and including that component.
    pub(crate) path: PathBuf,
    pub(crate) why: StopReason,
}

#[derive(Debug)]
pub(crate) enum StopReason {
    Missing,
    Symlink,
    NotADirectory,
    Io(io::Error),
}

/// The emptyDir workspace: one directory per job, keyed by namespace and uid.
///
/// Layout under the root (see the [module documentation](crate::workspace) for the rules):
///
/// ```text
/// <root>/jobs/<namespace>/<uid>/files/<path>   the job's files
/// <root>/jobs/<namespace>/<uid>/archive.zip    the job's archive, once built
/// <root>/trash/                                removed jobs, deleted in the background
/// ```
///
/// All methods are synchronous and do blocking I/O: from async code, call them inside
/// `tokio::task::spawn_blocking` (share the workspace as an `Arc<Workspace>`). A streamed
/// upload can be fed from an async body with `tokio_util::io::SyncIoBridge` inside the blocking
/// task.
///
/// One `Workspace` must own its root: [`Workspace::open`] deletes leftover temporary files and
/// builds the usage accounting from what is on disk, and from then on the accounting is kept
/// up to date in memory rather than by scanning.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    limits: Limits,
    pub(crate) state: Mutex<State>,
    /// The object store behind the workspace, when configured (see [`super::remote`]).
    pub(crate) remote: Option<std::sync::Arc<crate::objstore::Remote>>,
    /// Serialise the store-then-disk steps of writes and deletes of one path.
    pub(crate) path_locks: super::remote::PathLocks,
}

impl Workspace {
    /// Opens (creating if needed) the workspace at `root`: deletes what a crash left behind
    /// (temporary files, half-removed jobs) and scans every job to rebuild the accounting.
    ///
    /// The root itself may be a symlink (an admin's choice); nothing below it may be.
    pub fn open(root: impl Into<PathBuf>, limits: Limits) -> Result<Workspace> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create the workspace root", &root))?;
        let ws = Workspace {
            root,
            limits,
            state: Mutex::new(State::default()),
            remote: None,
            path_locks: Default::default(),
        };
        for dir in [JOBS_DIR, TRASH_DIR] {
            walk(&ws.root, &[dir], Some(0)).map_err(|s| ws.layout_error(s))?;
        }
        ws.empty_trash()?;
        let mut st = State::default();
        ws.scan_all(&mut st)?;
        *ws.lock() = st;
        Ok(ws)
    }

    /// The workspace's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The limits every write is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The job's directory: `<root>/jobs/<namespace>/<uid>`.
    pub fn job_dir(&self, job: &JobKey) -> PathBuf {
        self.root
            .join(JOBS_DIR)
            .join(job.namespace())
            .join(job.uid())
    }

    /// Where the job's archive is (or will be): `<root>/jobs/<namespace>/<uid>/archive.zip`.
    pub fn archive_path(&self, job: &JobKey) -> PathBuf {
        self.job_dir(job).join(ARCHIVE_FILE)
    }

    /// Creates the job's directory if it does not exist. Returns `true` when it was created
    /// now, `false` when it was already there: a job that had files and gets `true` has lost
    /// its workspace (the pod was replaced), which the controller reports as `WorkspaceLost`.
    ///
    /// Writes need the job's directory: they fail with [`Error::JobNotFound`] until this was
    /// called, so that a lost workspace is noticed rather than silently re-created by an upload.
    ///
    /// With an object store, a missing directory is first restored from the store; a job
    /// restored that way was not lost, and this returns `false`.
    pub fn ensure_job(&self, job: &JobKey) -> Result<bool> {
        if self.remote.is_some() && self.restore_if_missing(job)? {
            return Ok(false);
        }
        let mut st = self.lock();
        let components = job_components(job);
        match walk(&self.root, &components, None) {
            Ok(files_dir) => {
                if st.generation(job).is_none() {
                    // A directory this process did not create or had not seen: count it.
                    let scanned = self.scan_job(job, &files_dir)?;
                    st.register(job, scanned);
                }
                Ok(false)
            }
            Err(WalkStop {
                why: StopReason::Missing,
                ..
            }) => {
                // The accounting may still remember a directory that vanished underneath.
                st.forget(job);
                walk(&self.root, &components, Some(1)).map_err(|s| self.layout_error(s))?;
                st.register(
                    job,
                    Scanned {
                        usage: JobUsage::default(),
                        archive_holds_files: false,
                    },
                );
                Ok(true)
            }
            Err(stop) => Err(self.job_stop(job, stop)),
        }
    }

    /// Whether the job's directory exists (in the accounting and on disk).
    pub fn job_exists(&self, job: &JobKey) -> bool {
        let st = self.lock();
        st.generation(job).is_some() && walk(&self.root, &job_components(job), None).is_ok()
    }

    /// Removes the job's directory, its files and its archive. Returns whether there was
    /// anything to remove; removing a job twice is not an error.
    ///
    /// The directory is first renamed into `<root>/trash/` (instant, under the lock), then
    /// deleted without holding the lock, so a large job does not stall other jobs' writes.
    /// Writes to the job still in flight fail with [`Error::JobRemoved`]. Deletion never
    /// follows symlinks.
    ///
    /// With an object store, the job's objects are deleted first: if that fails, nothing is
    /// removed and the caller retries.
    pub fn remove_job(&self, job: &JobKey) -> Result<bool> {
        self.remove_stored_job(job)?;
        let trashed;
        let mut removed;
        {
            let mut st = self.lock();
            removed = st.forget(job);
            let ns_dir = match walk(&self.root, &[JOBS_DIR, job.namespace()], None) {
                Ok(dir) => dir,
                Err(WalkStop {
                    why: StopReason::Missing,
                    ..
                }) => return Ok(removed),
                Err(stop) => return Err(self.layout_error(stop)),
            };
            let job_dir = ns_dir.join(job.uid());
            match fs::symlink_metadata(&job_dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => trashed = None,
                Err(e) => return Err(io_err("inspect", &job_dir)(e)),
                Ok(m) if m.is_dir() => {
                    let target = self.root.join(TRASH_DIR).join(format!(
                        "{}.{}.{}",
                        job.namespace(),
                        job.uid(),
                        fsutil::unique_suffix()
                    ));
                    fs::rename(&job_dir, &target).map_err(io_err("move to the trash", &job_dir))?;
                    trashed = Some(target);
                    removed = true;
                }
                // A planted symlink or other entry: unlink the entry itself, never its target.
                Ok(_) => {
                    fs::remove_file(&job_dir).map_err(io_err("remove", &job_dir))?;
                    trashed = None;
                    removed = true;
                }
            }
            // Only succeeds when this was the namespace's last job.
            let _ = fs::remove_dir(&ns_dir);
        }
        if let Some(dir) = trashed {
            fs::remove_dir_all(&dir).map_err(io_err("delete", &dir))?;
        }
        Ok(removed)
    }

    /// Writes a file from memory; see [`Workspace::write_from_reader`].
    pub fn write(&self, job: &JobKey, path: &JobPath, data: &[u8]) -> Result<WriteOutcome> {
        self.write_from_reader(job, path, data, Some(data.len() as u64))
    }

    /// Writes a file, creating its directories, replacing an existing file atomically.
    ///
    /// The content is streamed, in 64 KiB chunks, into a temporary file in the target's
    /// directory, fsynced, renamed over the target, and the directory fsynced: readers see the
    /// old file or the new one, never a part. `size_hint` (a `Content-Length`, or the length of
    /// data in memory) lets a write that is sure to exceed a limit be refused before anything
    /// is created; without it, the limits are checked as the data arrives, and the write stops
    /// and deletes its temporary file as soon as one is exceeded. The final state is checked
    /// once more, exactly, before the rename, so limits hold even against concurrent writers.
    ///
    /// Replacing a file counts only the difference in size against the job and workspace
    /// budgets. Errors: the limit ones ([`Error::FileTooLarge`], [`Error::JobTooLarge`],
    /// [`Error::TooManyFiles`], [`Error::WorkspaceFull`]), [`Error::JobNotFound`] (call
    /// [`Workspace::ensure_job`] first), [`Error::NotAFile`] / [`Error::ParentIsAFile`] when a
    /// directory and a file would share a name, [`Error::Symlink`], [`Error::Source`] when
    /// `reader` fails.
    ///
    /// With an object store, the file is stored there (from the temporary file) before the
    /// rename: the write succeeds only once the bytes are in the store, and a failed upload
    /// leaves nothing behind on disk ([`Error::ObjectStore`]).
    pub fn write_from_reader<R: Read>(
        &self,
        job: &JobKey,
        path: &JobPath,
        reader: R,
        size_hint: Option<u64>,
    ) -> Result<WriteOutcome> {
        self.write_impl(job, path, reader, size_hint, true)
    }

    /// Writes a declared file (or `plan.json`): like [`Workspace::write`], but never to the
    /// object store. Declared files are desired state, rebuilt from the Job after a restore.
    pub fn write_declared(
        &self,
        job: &JobKey,
        path: &JobPath,
        data: &[u8],
    ) -> Result<WriteOutcome> {
        self.write_impl(job, path, data, Some(data.len() as u64), false)
    }

    fn write_impl<R: Read>(
        &self,
        job: &JobKey,
        path: &JobPath,
        mut reader: R,
        size_hint: Option<u64>,
        store: bool,
    ) -> Result<WriteOutcome> {
        if let Some(size) = size_hint
            && size > self.limits.max_file_bytes
        {
            return Err(Error::FileTooLarge {
                path: path.clone(),
                size,
                max: self.limits.max_file_bytes,
            });
        }
        let (mut res, mut temp, dir) = self.prepare_write(job, path, size_hint)?;
        let result = self.stream_and_commit(&mut res, &mut temp, &dir, path, &mut reader, store);
        match result {
            Ok(outcome) => {
                drop(temp);
                fsutil::sync_dir(&dir).map_err(io_err("sync", &dir))?;
                Ok(outcome)
            }
            Err(e) => {
                // Remove the temporary file first, so that the directories it kept alive can go.
                drop(temp);
                let mut st = self.lock();
                prune_empty_dirs(&self.files_dir(job), &dir);
                res.release(&mut st);
                Err(e)
            }
        }
    }

    /// Opens a file for streaming. Never follows a symlink (`O_NOFOLLOW` on the file, and
    /// every directory on the way checked).
    pub fn open_file(&self, job: &JobKey, path: &JobPath) -> Result<OpenFile> {
        let dir = self.existing_dir(job, path)?;
        let target = dir.join(path.file_name());
        let file = fsutil::open_read_nofollow(&target).map_err(|e| {
            if fsutil::is_symlink_error(&e) {
                self.symlink_error(&target)
            } else if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) {
                file_not_found(job, path)
            } else {
                io_err("open", &target)(e)
            }
        })?;
        let meta = file.metadata().map_err(io_err("inspect", &target))?;
        if !meta.is_file() {
            return Err(file_not_found(job, path));
        }
        Ok(OpenFile {
            file,
            info: file_info(path.clone(), &meta),
        })
    }

    /// Reads a whole file into memory. For large files prefer [`Workspace::open_file`].
    pub fn read(&self, job: &JobKey, path: &JobPath) -> Result<Vec<u8>> {
        let mut open = self.open_file(job, path)?;
        let mut data = Vec::with_capacity(usize::try_from(open.info.size_bytes).unwrap_or(0));
        open.file
            .read_to_end(&mut data)
            .map_err(io_err("read", self.files_dir(job).join(path.as_str())))?;
        Ok(data)
    }

    /// Size and modification time of one file.
    pub fn stat(&self, job: &JobKey, path: &JobPath) -> Result<FileInfo> {
        let dir = self.existing_dir(job, path)?;
        let target = dir.join(path.file_name());
        match fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => Err(self.symlink_error(&target)),
            Ok(m) if m.is_file() => Ok(file_info(path.clone(), &m)),
            Ok(_) => Err(file_not_found(job, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(file_not_found(job, path)),
            Err(e) => Err(io_err("inspect", &target)(e)),
        }
    }

    /// Deletes a file, and the directories that it leaves empty.
    ///
    /// With an object store, the stored copy is deleted first; if that fails, nothing changes.
    pub fn delete(&self, job: &JobKey, path: &JobPath) -> Result<()> {
        let _path_lock = self.delete_stored(job, path)?;
        let synced_dir;
        {
            let mut st = self.lock();
            if st.generation(job).is_none() {
                return Err(Error::JobNotFound { job: job.clone() });
            }
            let dir = self.existing_dir(job, path)?;
            let target = dir.join(path.file_name());
            let size = match fs::symlink_metadata(&target) {
                Ok(m) if m.file_type().is_symlink() => return Err(self.symlink_error(&target)),
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => return Err(file_not_found(job, path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(file_not_found(job, path));
                }
                Err(e) => return Err(io_err("inspect", &target)(e)),
            };
            fs::remove_file(&target).map_err(io_err("delete", &target))?;
            if let Some(j) = st.jobs.get_mut(job) {
                j.files_version += 1;
                j.files = j.files.saturating_sub(1);
                j.bytes = j.bytes.saturating_sub(size);
            }
            st.files = st.files.saturating_sub(1);
            st.bytes = st.bytes.saturating_sub(size);
            // Under the lock: a writer creates its directories and its temporary file under
            // it too, so a directory is never pruned between those two steps.
            synced_dir = prune_empty_dirs(&self.files_dir(job), &dir);
        }
        fsutil::sync_dir(&synced_dir).map_err(io_err("sync", &synced_dir))
    }

    /// The job's files, sorted by path (byte-wise). Temporary files, symlinks and other
    /// non-regular entries (none of which Kiln creates) are not listed.
    pub fn list(&self, job: &JobKey) -> Result<Vec<FileInfo>> {
        let files_dir =
            walk(&self.root, &job_components(job), None).map_err(|s| self.job_stop(job, s))?;
        let mut files = Vec::new();
        walk_tree(&files_dir, false, |info| files.push(info))?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// The job's usage, from the accounting (no scan).
    pub fn job_usage(&self, job: &JobKey) -> Result<JobUsage> {
        let st = self.lock();
        st.jobs
            .get(job)
            .map(|j| JobUsage {
                files: j.files,
                bytes: j.bytes,
                archive_bytes: j.archive_bytes,
            })
            .ok_or_else(|| Error::JobNotFound { job: job.clone() })
    }

    /// The whole workspace's usage, from the accounting (no scan).
    pub fn usage(&self) -> WorkspaceUsage {
        let st = self.lock();
        WorkspaceUsage {
            jobs: st.jobs.len() as u64,
            files: st.files,
            bytes: st.bytes,
            archive_bytes: st.archive_bytes,
        }
    }

    // ---- internals -------------------------------------------------------------------

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain counters updated with saturating arithmetic; a panic elsewhere
        // while holding the lock cannot leave it half-updated in a way worth refusing service.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn files_dir(&self, job: &JobKey) -> PathBuf {
        self.job_dir(job).join(FILES_DIR)
    }

    /// Checks the limits that can be checked up front, creates the directories and the
    /// temporary file, all under the lock.
    fn prepare_write(
        &self,
        job: &JobKey,
        path: &JobPath,
        size_hint: Option<u64>,
    ) -> Result<(Reservation<'_>, TempFile, PathBuf)> {
        let mut st = self.lock();
        let generation = st
            .generation(job)
            .ok_or_else(|| Error::JobNotFound { job: job.clone() })?;
        let mut res = Reservation {
            state: &self.state,
            job: job.clone(),
            generation,
            old_size: 0,
            bytes: 0,
            files: 0,
        };
        match self.prepare_locked(&mut st, &mut res, job, path, size_hint) {
            Ok((temp, dir)) => Ok((res, temp, dir)),
            Err(e) => {
                res.release(&mut st);
                Err(e)
            }
        }
    }

    fn prepare_locked(
        &self,
        st: &mut State,
        res: &mut Reservation<'_>,
        job: &JobKey,
        path: &JobPath,
        size_hint: Option<u64>,
    ) -> Result<(TempFile, PathBuf)> {
        let mut components = job_components(job).to_vec();
        components.extend(path.parent_segments());
        // Look before creating anything, so that a refused write leaves no directory behind.
        let existing = match walk(&self.root, &components, None) {
            Ok(dir) => {
                let target = dir.join(path.file_name());
                Some(self.inspect_target(job, path, &target)?)
            }
            Err(WalkStop {
                at,
                why: StopReason::Missing,
                ..
            }) if at >= JOB_DEPTH => None,
            Err(stop) => return Err(self.write_stop(job, path, stop)),
        };
        let old_size = existing.flatten();
        res.old_size = old_size.unwrap_or(0);
        if old_size.is_none() {
            let max = self.limits.max_files_per_job;
            let j = job_state(st, job, res.generation)?;
            let would_be = j.files + j.reserved_files + 1;
            if would_be > max {
                return Err(Error::TooManyFiles {
                    job: job.clone(),
                    would_be,
                    max,
                });
            }
            j.reserved_files += 1;
            res.files = 1;
        }
        if let Some(size) = size_hint {
            self.grow_locked(st, res, size)?;
        }
        let dir = walk(&self.root, &components, Some(JOB_DEPTH))
            .map_err(|s| self.write_stop(job, path, s))?;
        match TempFile::create_in(&dir, "write") {
            Ok(temp) => Ok((temp, dir)),
            Err(e) => {
                prune_empty_dirs(&self.files_dir(job), &dir);
                Err(io_err("create a temporary file in", &dir)(e))
            }
        }
    }

    /// What is at a write's target: `Some(size)` of a file to replace, `None` if nothing.
    fn inspect_target(&self, job: &JobKey, path: &JobPath, target: &Path) -> Result<Option<u64>> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.file_type().is_symlink() => Err(self.symlink_error(target)),
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            // An empty directory is what a failed or deleted upload below it left: reclaim it.
            Ok(m) if m.is_dir() && fs::remove_dir(target).is_ok() => Ok(None),
            Ok(_) => Err(Error::NotAFile {
                job: job.clone(),
                path: path.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("inspect", target)(e)),
        }
    }

    /// Grows a reservation to cover a new file of `new_size` bytes, if the limits allow.
    fn grow_locked(&self, st: &mut State, res: &mut Reservation<'_>, new_size: u64) -> Result<()> {
        let needed = new_size.saturating_sub(res.old_size);
        if needed <= res.bytes {
            return Ok(());
        }
        let delta = needed - res.bytes;
        let (max_job, max_ws) = (self.limits.max_job_bytes, self.limits.max_workspace_bytes);
        let ws_would_be = st
            .bytes
            .saturating_add(st.reserved_bytes)
            .saturating_add(delta);
        let j = job_state(st, &res.job, res.generation)?;
        let job_would_be = j
            .bytes
            .saturating_add(j.reserved_bytes)
            .saturating_add(delta);
        if job_would_be > max_job {
            return Err(Error::JobTooLarge {
                job: res.job.clone(),
                would_be: job_would_be,
                max: max_job,
            });
        }
        if ws_would_be > max_ws {
            return Err(Error::WorkspaceFull {
                would_be: ws_would_be,
                max: max_ws,
            });
        }
        j.reserved_bytes += delta;
        st.reserved_bytes += delta;
        res.bytes += delta;
        Ok(())
    }

    fn stream_and_commit<R: Read>(
        &self,
        res: &mut Reservation<'_>,
        temp: &mut TempFile,
        dir: &Path,
        path: &JobPath,
        reader: &mut R,
        store: bool,
    ) -> Result<WriteOutcome> {
        let max_file = self.limits.max_file_bytes;
        let mut buf = vec![0u8; CHUNK];
        let mut written: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Source {
                        path: path.clone(),
                        source,
                    });
                }
            };
            written += n as u64;
            // Checked before the chunk is written: nothing over a limit ever reaches the disk.
            if written > max_file {
                return Err(Error::FileTooLarge {
                    path: path.clone(),
                    size: written,
                    max: max_file,
                });
            }
            if written.saturating_sub(res.old_size) > res.bytes {
                let mut st = self.lock();
                self.grow_locked(&mut st, res, written)?;
            }
            temp.file
                .write_all(&buf[..n])
                .map_err(io_err("write", &temp.path))?;
        }
        // Held from the upload to the rename, so that a concurrent write or delete of the same
        // path cannot leave the store and the disk holding different versions.
        let path_lock = if store && self.remote.is_some() {
            // The local fsync and the upload both have to finish before the rename, and
            // neither needs the other: run them side by side, so the write costs the slower
            // of the two rather than their sum.
            let mut upload = temp
                .file
                .try_clone()
                .map_err(io_err("reopen", &temp.path))?;
            let (synced, stored) = std::thread::scope(|scope| {
                let file = &temp.file;
                let sync = scope.spawn(move || file.sync_all());
                let stored = self.store_file(&res.job, path, &mut upload, written);
                (sync.join(), stored)
            });
            let synced =
                synced.unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")));
            let guard = stored?;
            if let Err(e) = synced {
                // Stored but not durable here: put the store back to what the disk holds.
                self.unstore_file(&res.job, path, &dir.join(path.file_name()));
                return Err(io_err("sync", &temp.path)(e));
            }
            guard
        } else {
            temp.file.sync_all().map_err(io_err("sync", &temp.path))?;
            None
        };
        let meta = temp
            .file
            .metadata()
            .map_err(io_err("inspect", &temp.path))?;
        let target = dir.join(path.file_name());
        let replaced = {
            let mut st = self.lock();
            let result = self.commit_locked(&mut st, res, temp, &target, path, written);
            res.release(&mut st);
            if result.is_err() && path_lock.is_some() {
                self.unstore_file(&res.job, path, &target);
            }
            result?
        };
        Ok(WriteOutcome {
            info: file_info(path.clone(), &meta),
            replaced,
        })
    }

    /// Checks the final state exactly, against committed usage only, and renames the file into
    /// place. Returns whether a file was replaced.
    fn commit_locked(
        &self,
        st: &mut State,
        res: &Reservation<'_>,
        temp: &mut TempFile,
        target: &Path,
        path: &JobPath,
        written: u64,
    ) -> Result<bool> {
        let job = &res.job;
        job_state(st, job, res.generation)?;
        // Another writer may have created, replaced or deleted the file since `prepare_write`.
        let old = self.inspect_target(job, path, target)?;
        let old_size = old.unwrap_or(0);
        let new_files = u64::from(old.is_none());
        let l = &self.limits;
        let ws_would_be = st.bytes.saturating_sub(old_size).saturating_add(written);
        let j = job_state(st, job, res.generation)?;
        let job_would_be = j.bytes.saturating_sub(old_size).saturating_add(written);
        let files_would_be = j.files + new_files;
        if files_would_be > l.max_files_per_job {
            return Err(Error::TooManyFiles {
                job: job.clone(),
                would_be: files_would_be,
                max: l.max_files_per_job,
            });
        }
        if job_would_be > l.max_job_bytes {
            return Err(Error::JobTooLarge {
                job: job.clone(),
                would_be: job_would_be,
                max: l.max_job_bytes,
            });
        }
        if ws_would_be > l.max_workspace_bytes {
            return Err(Error::WorkspaceFull {
                would_be: ws_would_be,
                max: l.max_workspace_bytes,
            });
        }
        temp.persist(target)
            .map_err(io_err("rename into", target))?;
        j.files_version += 1;
        j.bytes = job_would_be;
        j.files = files_would_be;
        st.bytes = ws_would_be;
        st.files += new_files;
        Ok(old.is_some())
    }

    /// The directory holding `path`, which must exist (for reads and deletes).
    fn existing_dir(&self, job: &JobKey, path: &JobPath) -> Result<PathBuf> {
        let mut components = job_components(job).to_vec();
        components.extend(path.parent_segments());
        walk(&self.root, &components, None).map_err(|stop| {
            if stop.at < JOB_DEPTH {
                return self.job_stop(job, stop);
            }
            match stop.why {
                StopReason::Missing | StopReason::NotADirectory => file_not_found(job, path),
                StopReason::Symlink => self.symlink_error(&stop.path),
                StopReason::Io(e) => io_err("inspect", stop.path)(e),
            }
        })
    }

    /// Maps a stopped walk over the job's own directories.
    pub(crate) fn job_stop(&self, job: &JobKey, stop: WalkStop) -> Error {
        match stop.why {
            StopReason::Missing => Error::JobNotFound { job: job.clone() },
            _ => self.layout_error(stop),
        }
    }

    /// Maps a stopped walk during a write: a file where a directory should be is the
    /// caller's conflict; in the job's own directories it is damage.
    fn write_stop(&self, job: &JobKey, path: &JobPath, stop: WalkStop) -> Error {
        if stop.at < JOB_DEPTH {
            return self.job_stop(job, stop);
        }
        match stop.why {
            StopReason::NotADirectory => Error::ParentIsAFile {
                job: job.clone(),
                path: path.clone(),
                parent: path
                    .parent_segments()
                    .get(..=stop.at - JOB_DEPTH)
                    .map(|dirs| dirs.join("/"))
                    .unwrap_or_default(),
            },
            _ => self.layout_error(stop),
        }
    }

    /// Maps a stopped walk that should not have stopped.
    pub(crate) fn layout_error(&self, stop: WalkStop) -> Error {
        match stop.why {
            StopReason::Symlink => self.symlink_error(&stop.path),
            StopReason::Missing => io_err("find", stop.path)(io::ErrorKind::NotFound.into()),
            StopReason::NotADirectory => {
                io_err("expect a directory at", stop.path)(io::ErrorKind::NotADirectory.into())
            }
            StopReason::Io(e) => io_err("inspect", stop.path)(e),
        }
    }

    pub(crate) fn symlink_error(&self, at: &Path) -> Error {
        let location = at.strip_prefix(&self.root).unwrap_or(at);
        tracing::warn!(location = %location.display(), "refusing to follow a symlink in the workspace");
        Error::Symlink {
            location: location.display().to_string(),
        }
    }

    fn empty_trash(&self) -> Result<()> {
        let trash = self.root.join(TRASH_DIR);
        let entries = fs::read_dir(&trash).map_err(io_err("list", &trash))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &trash))?;
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(io_err("delete", &path))?;
        }
        Ok(())
    }

    /// Registers every job directory found on disk.
    fn scan_all(&self, st: &mut State) -> Result<()> {
        let jobs_dir = self.root.join(JOBS_DIR);
        for ns in fs::read_dir(&jobs_dir).map_err(io_err("list", &jobs_dir))? {
            let ns = ns.map_err(io_err("list", &jobs_dir))?;
            let ns_is_dir = ns.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let Some(ns_name) = ns.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !ns_is_dir {
                tracing::warn!(entry = %ns.path().display(), "ignoring an unexpected entry in the workspace");
                continue;
            }
            let ns_dir = ns.path();
            for uid in fs::read_dir(&ns_dir).map_err(io_err("list", &ns_dir))? {
                let uid = uid.map_err(io_err("list", &ns_dir))?;
                let uid_is_dir = uid.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let key = uid
                    .file_name()
                    .to_str()
                    .and_then(|u| JobKey::new(ns_name.as_str(), u).ok());
                let (Some(key), true) = (key, uid_is_dir) else {
                    tracing::warn!(entry = %uid.path().display(), "ignoring an unexpected entry in the workspace");
                    continue;
                };
                match walk(&self.root, &job_components(&key), None) {
                    Ok(files_dir) => {
                        let scanned = self.scan_job(&key, &files_dir)?;
                        st.register(&key, scanned);
                    }
                    Err(stop) => {
                        tracing::warn!(job = %key, error = %self.layout_error(stop), "ignoring a damaged job directory");
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts a job's files and archive, deleting temporary files left by a crash. Only called
    /// when no write to the job can be in flight (at startup, or before it is registered).
    ///
    /// An archive newer than every file was built from these files (a build lists the files
    /// first and writes the archive last; every write renames a new file into place, with a
    /// new modification time). One that is not may miss a change made just before a crash,
    /// and is reported as not holding the files, so that it is rebuilt rather than served.
    /// File times come from a coarse clock, so an archive built within a few milliseconds of
    /// its last file looks no newer and is rebuilt too: the same bytes, at the cost of a
    /// build that was quick the first time.
    pub(super) fn scan_job(&self, job: &JobKey, files_dir: &Path) -> Result<Scanned> {
        let mut usage = JobUsage::default();
        let mut newest_file = None;
        walk_tree(files_dir, true, |info| {
            usage.files += 1;
            usage.bytes += info.size_bytes;
            newest_file = newest_file.max(Some(info.modified));
        })?;
        let mut archive_holds_files = false;
        let job_dir = self.job_dir(job);
        for entry in fs::read_dir(&job_dir).map_err(io_err("list", &job_dir))? {
            let entry = entry.map_err(io_err("list", &job_dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if fsutil::is_temp_name(&name) {
                let _ = fs::remove_file(entry.path());
            } else if name == ARCHIVE_FILE
                && let Ok(m) = fs::symlink_metadata(entry.path())
                && m.is_file()
            {
                usage.archive_bytes = m.len();
                archive_holds_files = m.modified().is_ok_and(|built| newest_file < Some(built));
            }
        }
        Ok(Scanned {
            usage,
            archive_holds_files,
        })
    }
}

/// The components from the root to a job's files directory.
pub(crate) fn job_components(job: &JobKey) -> [&str; JOB_DEPTH] {
    [JOBS_DIR, job.namespace(), job.uid(), FILES_DIR]
}

fn job_state<'s>(st: &'s mut State, job: &JobKey, generation: u64) -> Result<&'s mut JobState> {
    match st.jobs.get_mut(job) {
        Some(j) if j.generation == generation => Ok(j),
        _ => Err(Error::JobRemoved { job: job.clone() }),
    }
}

fn file_not_found(job: &JobKey, path: &JobPath) -> Error {
    Error::FileNotFound {
        job: job.clone(),
        path: path.clone(),
    }
}

fn file_info(path: JobPath, meta: &fs::Metadata) -> FileInfo {
    FileInfo {
        path,
        size_bytes: meta.len(),
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

/// Walks `components` below `root` one `lstat` at a time, refusing symlinks and anything that
/// is not a directory. From index `create_from` on, missing directories are created (and
/// their parent fsynced, so that the new entry survives a crash with the file in it).
/// See the module documentation for why checking with `lstat` is enough.
pub(crate) fn walk(
    root: &Path,
    components: &[&str],
    create_from: Option<usize>,
) -> std::result::Result<PathBuf, WalkStop> {
    let mut path = root.to_path_buf();
    for (at, component) in components.iter().enumerate() {
        path.push(component);
        let may_create = create_from.is_some_and(|from| at >= from);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let stop = |why| WalkStop {
                at,
                path: path.clone(),
                why,
            };
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => return Err(stop(StopReason::Symlink)),
                Ok(m) if m.is_dir() => break,
                Ok(_) => return Err(stop(StopReason::NotADirectory)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && may_create => {
                    match fs::create_dir(&path) {
                        Ok(()) => {
                            if let Some(parent) = path.parent() {
                                fsutil::sync_dir(parent).map_err(|e| stop(StopReason::Io(e)))?;
                            }
                            break;
                        }
                        // Created by someone else meanwhile: look again at what it is.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 3 => {}
                        Err(e) => return Err(stop(StopReason::Io(e))),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(stop(StopReason::Missing));
                }
                Err(e) => return Err(stop(StopReason::Io(e))),
            }
        }
    }
    Ok(path)
}

/// Removes `from` and its ancestors up to (not including) `stop_at` while they are empty.
/// Returns the deepest directory still standing: the one whose entries changed last.
fn prune_empty_dirs(stop_at: &Path, from: &Path) -> PathBuf {
    let mut dir = from.to_path_buf();
    while dir != stop_at && dir.starts_with(stop_at) {
        if fs::remove_dir(&dir).is_err() {
            break;
        }
        dir.pop();
    }
    dir
}

/// Visits every regular file under `files_dir` whose path is a valid [`JobPath`]. Symlinks are
/// never followed (`file_type` comes from the directory entry, i.e. `lstat`). Entries that
/// vanish during the walk (a concurrent delete) are skipped.
fn walk_tree(files_dir: &Path, remove_temps: bool, mut visit: impl FnMut(FileInfo)) -> Result<()> {
    let mut stack = vec![(files_dir.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != files_dir => continue,
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!(entry = %entry.path().display(), "ignoring a file name that is not UTF-8");
                continue;
            };
            if fsutil::is_temp_name(name) {
                if remove_temps {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            let rel = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspect", entry.path())(e)),
            };
            if file_type.is_dir() {
                stack.push((entry.path(), rel));
            } else if file_type.is_file() {
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("inspect", entry.path())(e)),
                };
                match JobPath::parse(&rel) {
                    Ok(path) => visit(file_info(path, &meta)),
                    Err(error) => {
                        tracing::warn!(entry = %entry.path().display(), %error, "ignoring a file Kiln could not have written");
                    }
                }
            } else {
                tracing::warn!(entry = %entry.path().display(), "ignoring a symlink or special file in a job's workspace");
            }
        }
    }
    Ok(())
}
