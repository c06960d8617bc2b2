//! Low-level filesystem helpers: opening without following symlinks, temporary files that
//! clean up after themselves, directory fsync.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::path::RESERVED_PREFIX;

/// Opens an existing file for reading without following a symlink in the last component
/// (`ELOOP` then). `O_NONBLOCK` keeps a planted FIFO from blocking the open forever; it has
/// no effect on regular files, which callers check for with `fstat` afterwards.
pub(crate) fn open_read_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Whether an error from an `O_NOFOLLOW` open means "the last component is a symlink".
pub(crate) fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Distinguishes temporary files of concurrent writers within one process; the pid separates
/// processes, and `O_EXCL` catches anything left over.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name suffix unique within this process and, through the pid, across processes.
pub(crate) fn unique_suffix() -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.{n}", std::process::id())
}

/// A temporary file that is removed when dropped, unless it was persisted by a rename.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    persisted: bool,
}

impl TempFile {
    /// Creates a new, empty temporary file in `dir`. `O_CREAT|O_EXCL` never follows a symlink
    /// (POSIX), and `O_NOFOLLOW` says so explicitly.
    pub(crate) fn create_in(dir: &Path, tag: &str) -> io::Result<TempFile> {
        const ATTEMPTS: usize = 16;
        let pid = std::process::id();
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{RESERVED_PREFIX}{tag}.{pid}.{n}"));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        persisted: false,
                    });
                }
                // A leftover from an earlier process with the same pid: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary file name")))
    }

    /// Atomically moves the file to `target` (replacing a file there) and disarms the cleanup.
    /// `rename` replaces a symlink at `target` rather than following it; callers refuse
    /// symlinks before getting here anyway.
    pub(crate) fn persist(&mut self, target: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, target)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: a leftover is hidden from listings and removed at the next startup.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes a rename or an unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether a directory entry is one of Kiln's temporary files.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn open_read_nofollow_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"secret").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_read_nofollow(&link).unwrap_err();
        assert!(is_symlink_error(&err), "{err}");
        assert!(open_read_nofollow(&target).is_ok());
    }

    #[test]
    fn temp_file_is_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut t = TempFile::create_in(dir.path(), "t").unwrap();
            t.file.write_all(b"x").unwrap();
            assert!(is_temp_name(&t.path.file_name().unwrap().to_string_lossy()));
            t.path.clone()
        };
        assert!(!path.exists());

        let mut t = TempFile::create_in(dir.path(), "t").unwrap();
        t.persist(&dir.path().join("final")).unwrap();
        drop(t);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["final"]);
    }

    #[test]
    fn temp_file_is_not_created_through_a_dangling_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // Plant symlinks under every name the next few temp files could get.
        let pid = std::process::id();
        let next = TEMP_COUNTER.load(Ordering::Relaxed);
        for n in next..next + 64 {
            let name = format!("{RESERVED_PREFIX}t.{pid}.{n}");
            std::os::unix::fs::symlink(outside.path().join(&name), dir.path().join(&name)).unwrap();
        }
        // Whatever name it lands on, the file is created in `dir`, never through a link.
        if let Ok(t) = TempFile::create_in(dir.path(), "t") {
            assert!(std::fs::symlink_metadata(&t.path).unwrap().is_file());
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
