//! Deterministic ZIP archives of a job's files.
//!
//! The same files always give the same bytes, hence the same sha256 (the `ETag` of the
//! download): entries are sorted by path (byte-wise, as [`Workspace::list`] returns them),
//! every entry has the timestamp 1980-01-01 00:00:00 (the earliest a ZIP can hold), Unix mode
//! `0o644`, "made by" Unix, deflate at level 6, no extra fields, no comment, and no directory
//! entries (directories are implied by the paths).
//!
//! # Using every core, with the same bytes
//!
//! Deflate is the cost of a build, and entries compress independently. So the sorted files are
//! cut into runs of consecutive entries ([`chunks`], about [`CHUNK_INPUT_BYTES`] of input
//! each); a bounded pool of threads writes each run as a small ZIP of its own (same entry
//! options, same compressor) into a temporary file beside the archive, and the archive is
//! assembled in path order by copying each run's entries raw (`ZipWriter::merge_archive`: no
//! recompression, headers copied as written). An entry's bytes do not depend on where it
//! sits in the archive, so the result is byte-for-byte the archive a single thread writes
//! (a unit test pins a sha256 built by the one-thread code). At most [`in_flight`] runs exist
//! at once, on disk rather than in memory, so memory does not grow with the project's size;
//! every file is streamed with `std::io::copy`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, System, ZipArchive, ZipWriter};

use super::error::{Error, Result, io_err};
use super::fsutil::{self, TempFile};
use super::key::JobKey;
use super::store::{
    ARCHIVE_FILE, ArchiveRecord, FileInfo, JobState, Workspace, job_components, walk,
};

/// Files this large get ZIP64 headers. Below 4 GiB with room to spare, because deflate can
/// make incompressible data slightly larger and the choice has to be made before compressing.
const LARGE_FILE_BYTES: u64 = (4 << 30) - (64 << 20);

/// Buffer between the ZIP writer and the archive file.
const WRITE_BUFFER: usize = 256 * 1024;
/// Input bytes per run of entries compressed by one thread. Small enough that two cores stay
/// busy on a project of a few MiB, large enough that the per-run overhead (a temporary file,
/// its central directory) stays negligible.
const CHUNK_INPUT_BYTES: u64 = 2 << 20;
/// At most this many entries per run (many tiny files cost headers, not deflate time).
const CHUNK_MAX_FILES: usize = 512;
/// Most threads an archive build uses.
const MAX_THREADS: usize = 8;

/// A built archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Where it is: `<root>/jobs/<namespace>/<uid>/archive.zip`.
    pub path: PathBuf,
    /// Size of the ZIP file in bytes.
    pub size_bytes: u64,
    /// sha256 of the whole ZIP file, lowercase hex.
    pub sha256: String,
    /// Where the object store holds it (`s3://bucket/key`), when there is one.
    pub location: Option<String>,
}

/// An archive opened for download.
#[derive(Debug)]
pub struct OpenArchive {
    /// The open ZIP file, positioned at the start.
    pub file: File,
    /// Its size in bytes (for `Content-Length`).
    pub size_bytes: u64,
    /// Whether the opened archive holds the job's files, as it was when opened.
    pub freshness: Freshness,
}

/// Whether a job's archive holds the job's files as they are now.
///
/// The files of a complete job can still change (Kiln rewrites a declared file whose
/// ConfigMap or Secret changed), and the archive is rebuilt after them: in between, the old
/// archive must not be served as if it were current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Built by this process, and no file was written or deleted since the build started;
    /// what the build made.
    Current(ArchiveInfo),
    /// Found on disk when the job was registered (at start-up, or restored from the object
    /// store), newer than every file: built from these files by an earlier process, whose
    /// sha256 the Job's status recorded then.
    Found,
    /// No archive, or files were written or deleted since it was built.
    Stale,
}

impl Freshness {
    /// Whether an archive in this state may be served under the sha256 `recorded` (the one
    /// in the Job's status).
    pub fn matches(&self, recorded: &str) -> bool {
        match self {
            Freshness::Current(built) => built.sha256 == recorded,
            Freshness::Found => true,
            Freshness::Stale => false,
        }
    }
}

impl JobState {
    pub(crate) fn freshness(&self) -> Freshness {
        match &self.archive {
            Some(r) if r.files_version == self.files_version => match &r.built {
                Some(built) => Freshness::Current(built.clone()),
                None => Freshness::Found,
            },
            _ => Freshness::Stale,
        }
    }
}

impl Workspace {
    /// Builds the job's archive from its current files and atomically replaces the previous
    /// one (written to a temporary file next to it, fsynced, renamed).
    ///
    /// Files are read through the same symlink-refusing path as [`Workspace::open_file`]. A
    /// file deleted while the archive is built fails the build with
    /// [`Error::ArchiveSourceChanged`]; a file replaced meanwhile goes in as one whole version
    /// (files are only ever replaced by rename). Writes are not blocked during a build: the
    /// controller builds once the job is marked complete, and rebuilding (or deleting the
    /// archive with [`Workspace::remove_archive`]) when files change afterwards is up to it;
    /// [`Workspace::archive_freshness`] tells it (and the download) whether they did. A write
    /// that lands during the build leaves the new archive [`Freshness::Stale`].
    /// Two builds of the same job should not run at once (the last rename wins); the
    /// controller never reconciles one object twice concurrently.
    ///
    /// The archive's size is reported in the usage but not counted by the limits.
    pub fn build_archive(&self, job: &JobKey) -> Result<ArchiveInfo> {
        // Taken before the files are listed: a write committed after this point, even one
        // the listing sees, makes the archive stale, never the other way round.
        let (generation, files_version) = {
            let st = self.lock();
            let j = st
                .jobs
                .get(job)
                .ok_or_else(|| Error::JobNotFound { job: job.clone() })?;
            (j.generation, j.files_version)
        };
        let files = self.list(job)?;
        let job_dir = walk(self.root(), &job_components(job)[..3], None)
            .map_err(|s| self.job_stop(job, s))?;
        let mut temp = TempFile::create_in(&job_dir, "archive")
            .map_err(io_err("create a temporary file in", &job_dir))?;

        self.write_zip(job, &job_dir, &files, threads(), &mut temp.file)?;
        temp.file.sync_all().map_err(io_err("sync", &temp.path))?;
        let size_bytes = temp
            .file
            .metadata()
            .map_err(io_err("inspect", &temp.path))?
            .len();
        let sha256 = sha256_of(&mut temp.file).map_err(io_err("hash", &temp.path))?;
        // Stored before it is renamed into place: an archive on disk is always in the store.
        let location = self.store_archive(job, &mut temp.file, size_bytes)?;

        let target = job_dir.join(ARCHIVE_FILE);
        let info = ArchiveInfo {
            path: target.clone(),
            size_bytes,
            sha256,
            location,
        };
        {
            let mut st = self.lock();
            let current = st.jobs.get_mut(job).filter(|j| j.generation == generation);
            let Some(j) = current else {
                return Err(Error::JobRemoved { job: job.clone() });
            };
            // `rename` replaces whatever is at the target without following it. Under the
            // lock, with the record: a download opening the archive sees the two agree.
            temp.persist(&target)
                .map_err(io_err("rename into", &target))?;
            j.archive = Some(ArchiveRecord {
                files_version,
                built: Some(info.clone()),
            });
            let previous = std::mem::replace(&mut j.archive_bytes, size_bytes);
            st.archive_bytes = st.archive_bytes.saturating_sub(previous) + size_bytes;
        }
        fsutil::sync_dir(&job_dir).map_err(io_err("sync", &job_dir))?;
        Ok(info)
    }

    /// Whether the job's archive holds its files as they are now (see [`Freshness`]).
    pub fn archive_freshness(&self, job: &JobKey) -> Result<Freshness> {
        self.lock()
            .jobs
            .get(job)
            .map(JobState::freshness)
            .ok_or_else(|| Error::JobNotFound { job: job.clone() })
    }

    /// Checks an archive found on disk ([`Freshness::Found`]) against the sha256 the Job's
    /// status records, and when they agree makes it [`Freshness::Current`] (with `location`,
    /// the status's), so that it is not hashed again and the download compares sha256s.
    /// Returns whether the archive is now current under `recorded`; `false` means the caller
    /// should build it again.
    ///
    /// "Newer than every file" is not enough on its own: a process killed after renaming a
    /// rebuilt archive into place but before the Job's status named it leaves an archive that
    /// holds the files under a status that names the previous one. Hashing tells the two
    /// apart, once per archive and process.
    pub fn verify_found_archive(
        &self,
        job: &JobKey,
        recorded: &str,
        location: Option<String>,
    ) -> Result<bool> {
        let (generation, files_version) = {
            let st = self.lock();
            let j = st
                .jobs
                .get(job)
                .ok_or_else(|| Error::JobNotFound { job: job.clone() })?;
            if j.freshness() != Freshness::Found {
                return Ok(false);
            }
            (j.generation, j.files_version)
        };
        let mut open = self.open_archive(job)?;
        let path = self.archive_path(job);
        let sha256 = sha256_of(&mut open.file).map_err(io_err("hash", &path))?;
        if sha256 != recorded {
            return Ok(false);
        }
        let mut st = self.lock();
        let Some(j) = st.jobs.get_mut(job) else {
            return Err(Error::JobRemoved { job: job.clone() });
        };
        // Only if nothing changed meanwhile: a write or a build since then decides instead.
        if j.generation != generation || j.files_version != files_version {
            return Ok(false);
        }
        match &mut j.archive {
            Some(record) if record.built.is_none() => {
                record.built = Some(ArchiveInfo {
                    path,
                    size_bytes: open.size_bytes,
                    sha256,
                    location,
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Opens the job's archive for download, with its [`Freshness`] at that moment (taken
    /// under the lock that a build renames the archive under, so the two describe the same
    /// file). Never follows a symlink.
    pub fn open_archive(&self, job: &JobKey) -> Result<OpenArchive> {
        let st = self.lock();
        let freshness = st
            .jobs
            .get(job)
            .map(JobState::freshness)
            .ok_or_else(|| Error::JobNotFound { job: job.clone() })?;
        let job_dir = walk(self.root(), &job_components(job)[..3], None)
            .map_err(|s| self.job_stop(job, s))?;
        let target = job_dir.join(ARCHIVE_FILE);
        let file = fsutil::open_read_nofollow(&target).map_err(|e| {
            if fsutil::is_symlink_error(&e) {
                self.symlink_error(&target)
            } else if e.kind() == io::ErrorKind::NotFound {
                Error::ArchiveNotFound { job: job.clone() }
            } else {
                io_err("open", &target)(e)
            }
        })?;
        drop(st);
        let meta = file.metadata().map_err(io_err("inspect", &target))?;
        if !meta.is_file() {
            return Err(Error::ArchiveNotFound { job: job.clone() });
        }
        Ok(OpenArchive {
            file,
            size_bytes: meta.len(),
            freshness,
        })
    }

    /// Deletes the job's archive, if any (when its files changed after the build). Returns
    /// whether there was one.
    pub fn remove_archive(&self, job: &JobKey) -> Result<bool> {
        self.remove_stored_archive(job)?;
        let mut st = self.lock();
        // Forgotten first: whatever happens below, what is left must not be served.
        if let Some(j) = st.jobs.get_mut(job) {
            j.archive = None;
        }
        let job_dir = match walk(self.root(), &job_components(job)[..3], None) {
            Ok(dir) => dir,
            Err(stop) => {
                return match self.job_stop(job, stop) {
                    Error::JobNotFound { .. } => Ok(false),
                    e => Err(e),
                };
            }
        };
        let target = job_dir.join(ARCHIVE_FILE);
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("delete", &target)(e)),
        }
        if let Some(j) = st.jobs.get_mut(job) {
            let previous = std::mem::take(&mut j.archive_bytes);
            st.archive_bytes = st.archive_bytes.saturating_sub(previous);
        }
        drop(st);
        fsutil::sync_dir(&job_dir).map_err(io_err("sync", &job_dir))?;
        Ok(true)
    }

    /// Writes the ZIP of `files` (sorted) to `out`, compressing on up to `threads` threads.
    pub(crate) fn write_zip(
        &self,
        job: &JobKey,
        job_dir: &Path,
        files: &[FileInfo],
        threads: usize,
        out: &mut File,
    ) -> Result<()> {
        let zip_err = |source| Error::Archive {
            job: job.clone(),
            source,
        };
        let mut zip = ZipWriter::new(BufWriter::with_capacity(WRITE_BUFFER, &mut *out));
        let runs = chunks(files, CHUNK_INPUT_BYTES, CHUNK_MAX_FILES);
        let threads = threads.min(runs.len());
        if threads <= 1 {
            self.write_entries(job, files, &mut zip)?;
        } else {
            self.compress_in_parallel(job, job_dir, &runs, threads, |run| {
                let archive = ZipArchive::new(run).map_err(zip_err)?;
                zip.merge_archive(archive).map_err(zip_err)
            })?;
        }
        let buffered = zip.finish().map_err(zip_err)?;
        buffered
            .into_inner()
            .map_err(|e| io_err("write the archive of", job.to_string())(e.into_error()))?;
        Ok(())
    }

    /// Streams each of `files` into `zip` as an entry, in order.
    fn write_entries<W: Write + Seek>(
        &self,
        job: &JobKey,
        files: &[FileInfo],
        zip: &mut ZipWriter<W>,
    ) -> Result<()> {
        let options = entry_options();
        for entry in files {
            let mut source = match self.open_file(job, &entry.path) {
                Ok(f) => f,
                Err(Error::FileNotFound { path, .. }) => {
                    return Err(Error::ArchiveSourceChanged {
                        job: job.clone(),
                        path,
                    });
                }
                Err(e) => return Err(e),
            };
            let options = options.large_file(source.info.size_bytes >= LARGE_FILE_BYTES);
            zip.start_file(entry.path.as_str(), options)
                .map_err(|source| Error::Archive {
                    job: job.clone(),
                    source,
                })?;
            io::copy(&mut source.file, zip).map_err(|e| Error::Io {
                op: "copy into the archive",
                path: entry.path.as_str().into(),
                source: e,
            })?;
        }
        Ok(())
    }

    /// Compresses each run into a ZIP of its own on `threads` threads and hands them to
    /// `merge` in order, as each becomes the next one due. The first error stops the build:
    /// no new run starts, and the error is returned once the threads have stopped.
    fn compress_in_parallel(
        &self,
        job: &JobKey,
        job_dir: &Path,
        runs: &[&[FileInfo]],
        threads: usize,
        mut merge: impl FnMut(File) -> Result<()>,
    ) -> Result<()> {
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        // A run may start only with a ticket; the merging side returns one per merged run. So
        // at most `in_flight` runs are being compressed or waiting to be merged.
        let (tickets, ticket) = mpsc::sync_channel::<()>(in_flight(threads));
        let ticket = Mutex::new(ticket);
        let (done, finished) = mpsc::channel::<(usize, Result<TempFile>)>();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let done = done.clone();
                let (next, stop, ticket) = (&next, &stop, &ticket);
                scope.spawn(move || {
                    loop {
                        let took = ticket.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        if took.is_err() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(run) = runs.get(i) else { return };
                        let compressed = self.compress_run(job, job_dir, run);
                        if done.send((i, compressed)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done);
            let result = (|| {
                for _ in 0..in_flight(threads) {
                    let _ = tickets.send(());
                }
                let mut waiting = BTreeMap::new();
                let mut due = 0;
                while due < runs.len() {
                    let Ok((i, compressed)) = finished.recv() else {
                        return Err(io_err("compress", job_dir)(io::Error::other(
                            "an archive thread stopped early",
                        )));
                    };
                    waiting.insert(i, compressed?);
                    while let Some(mut run) = waiting.remove(&due) {
                        run.file.rewind().map_err(io_err("rewind", &run.path))?;
                        let file = run.file.try_clone().map_err(io_err("reopen", &run.path))?;
                        merge(file)?;
                        due += 1;
                        let _ = tickets.send(());
                    }
                }
                Ok(())
            })();
            // Unblock and stop the threads whatever happened; the scope then joins them.
            stop.store(true, Ordering::Relaxed);
            drop(tickets);
            result
        })
    }

    /// One run of entries as a ZIP in a temporary file beside the archive (deleted when
    /// dropped; a crash leaves a `.kiln-tmp.*` file that the next start removes).
    fn compress_run(&self, job: &JobKey, job_dir: &Path, run: &[FileInfo]) -> Result<TempFile> {
        let zip_err = |source| Error::Archive {
            job: job.clone(),
            source,
        };
        let mut temp = TempFile::create_in(job_dir, "archive-run")
            .map_err(io_err("create a temporary file in", job_dir))?;
        let mut zip = ZipWriter::new(BufWriter::with_capacity(WRITE_BUFFER, &mut temp.file));
        self.write_entries(job, run, &mut zip)?;
        let buffered = zip.finish().map_err(zip_err)?;
        buffered
            .into_inner()
            .map_err(|e| io_err("write", job_dir)(e.into_error()))?;
        Ok(temp)
    }
}

/// Threads for a build: the cores this process may use, at most [`MAX_THREADS`].
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS)
}

/// Runs compressed or waiting to be merged at once: enough that a slow run does not idle
/// the other threads, few enough to bound the temporary files.
fn in_flight(threads: usize) -> usize {
    threads * 2
}

/// Cuts sorted `files` into runs of consecutive entries of about `target` input bytes (a
/// larger file is a run of its own) and at most `max_files` entries.
fn chunks(files: &[FileInfo], target: u64, max_files: usize) -> Vec<&[FileInfo]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, file) in files.iter().enumerate() {
        if i > start && (bytes + file.size_bytes > target || i - start >= max_files) {
            runs.push(&files[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += file.size_bytes;
    }
    if start < files.len() {
        runs.push(&files[start..]);
    }
    runs
}

/// The options every entry gets; everything that could vary is pinned.
fn entry_options() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(6))
        .last_modified_time(DateTime::DEFAULT)
        .unix_permissions(0o644)
        .system(System::Unix)
}

fn sha256_of(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    io::copy(file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::JobPath;

    fn file(path: &str, size: u64) -> FileInfo {
        FileInfo {
            path: JobPath::parse(path).unwrap(),
            size_bytes: size,
            modified: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn runs_are_consecutive_and_bounded() {
        let files: Vec<FileInfo> = [3, 3, 3, 10, 1, 1, 1, 1, 1]
            .iter()
            .enumerate()
            .map(|(i, &size)| file(&format!("f{i}"), size))
            .collect();
        let sizes = |runs: Vec<&[FileInfo]>| -> Vec<Vec<u64>> {
            runs.iter()
                .map(|r| r.iter().map(|f| f.size_bytes).collect())
                .collect()
        };
        assert_eq!(
            sizes(chunks(&files, 6, 100)),
            [vec![3, 3], vec![3], vec![10], vec![1, 1, 1, 1, 1]]
        );
        assert_eq!(
            sizes(chunks(&files, 100, 4)),
            [vec![3, 3, 3, 10], vec![1, 1, 1, 1], vec![1]]
        );
        assert!(chunks(&[], 6, 4).is_empty());
        assert_eq!(chunks(&files, 0, 100).len(), files.len());
    }
}
