//! Deterministic ZIP archives of a job's files.
//!
//! The same files always give the same bytes, hence the same sha256 (the `ETag` of the
//! download): entries are sorted by path (byte-wise, as [`Workspace::list`] returns them),
//! every entry has the timestamp 1980-01-01 00:00:00 (the earliest a ZIP can hold), Unix mode
//! `0o644`, "made by" Unix, deflate at level 6, no extra fields, no comment, and no directory
//! entries (directories are implied by the paths). Building streams each file through the
//! ZIP writer with `std::io::copy`, so memory use does not depend on the size of the project.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, System, ZipWriter};

use super::error::{Error, Result, io_err};
use super::fsutil::{self, TempFile};
use super::key::JobKey;
use super::store::{ARCHIVE_FILE, FileInfo, Workspace, job_components, walk};

/// Files this large get ZIP64 headers. Below 4 GiB with room to spare, because deflate can
/// make incompressible data slightly larger and the choice has to be made before compressing.
const LARGE_FILE_BYTES: u64 = (4 << 30) - (64 << 20);

/// Buffer between the ZIP writer and the archive file.
const WRITE_BUFFER: usize = 256 * 1024;

/// A built archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Where it is: `<root>/jobs/<namespace>/<uid>/archive.zip`.
    pub path: PathBuf,
    /// Size of the ZIP file in bytes.
    pub size_bytes: u64,
    /// sha256 of the whole ZIP file, lowercase hex.
    pub sha256: String,
}

/// An archive opened for download.
#[derive(Debug)]
pub struct OpenArchive {
    /// The open ZIP file, positioned at the start.
    pub file: File,
    /// Its size in bytes (for `Content-Length`).
    pub size_bytes: u64,
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
    /// archive with [`Workspace::remove_archive`]) when files change afterwards is up to it.
    /// Two builds of the same job should not run at once (the last rename wins); the
    /// controller never reconciles one object twice concurrently.
    ///
    /// The archive's size is reported in the usage but not counted by the limits.
    pub fn build_archive(&self, job: &JobKey) -> Result<ArchiveInfo> {
        let generation = self
            .lock()
            .generation(job)
            .ok_or_else(|| Error::JobNotFound { job: job.clone() })?;
        let files = self.list(job)?;
        let job_dir = walk(self.root(), &job_components(job)[..3], None)
            .map_err(|s| self.job_stop(job, s))?;
        let mut temp = TempFile::create_in(&job_dir, "archive")
            .map_err(io_err("create a temporary file in", &job_dir))?;

        self.write_zip(job, &files, &mut temp.file)?;
        temp.file.sync_all().map_err(io_err("sync", &temp.path))?;
        let size_bytes = temp
            .file
            .metadata()
            .map_err(io_err("inspect", &temp.path))?
            .len();
        let sha256 = sha256_of(&mut temp.file).map_err(io_err("hash", &temp.path))?;

        let target = job_dir.join(ARCHIVE_FILE);
        {
            let mut st = self.lock();
            let current = st.jobs.get_mut(job).filter(|j| j.generation == generation);
            let Some(j) = current else {
                return Err(Error::JobRemoved { job: job.clone() });
            };
            // `rename` replaces whatever is at the target without following it.
            temp.persist(&target)
                .map_err(io_err("rename into", &target))?;
            let previous = std::mem::replace(&mut j.archive_bytes, size_bytes);
            st.archive_bytes = st.archive_bytes.saturating_sub(previous) + size_bytes;
        }
        fsutil::sync_dir(&job_dir).map_err(io_err("sync", &job_dir))?;
        Ok(ArchiveInfo {
            path: target,
            size_bytes,
            sha256,
        })
    }

    /// Opens the job's archive for download. Never follows a symlink.
    pub fn open_archive(&self, job: &JobKey) -> Result<OpenArchive> {
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
        let meta = file.metadata().map_err(io_err("inspect", &target))?;
        if !meta.is_file() {
            return Err(Error::ArchiveNotFound { job: job.clone() });
        }
        Ok(OpenArchive {
            file,
            size_bytes: meta.len(),
        })
    }

    /// Deletes the job's archive, if any (when its files changed after the build). Returns
    /// whether there was one.
    pub fn remove_archive(&self, job: &JobKey) -> Result<bool> {
        let mut st = self.lock();
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

    fn write_zip(&self, job: &JobKey, files: &[FileInfo], out: &mut File) -> Result<()> {
        let zip_err = |source| Error::Archive {
            job: job.clone(),
            source,
        };
        let options = entry_options();
        let mut zip = ZipWriter::new(BufWriter::with_capacity(WRITE_BUFFER, &mut *out));
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
                .map_err(zip_err)?;
            io::copy(&mut source.file, &mut zip).map_err(|e| Error::Io {
                op: "copy into the archive",
                path: entry.path.as_str().into(),
                source: e,
            })?;
        }
        let buffered = zip.finish().map_err(zip_err)?;
        buffered
            .into_inner()
            .map_err(|e| io_err("write the archive of", job.to_string())(e.into_error()))?;
        Ok(())
    }
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
