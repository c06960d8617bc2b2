//! The workspace's one error type, and its stable classification for HTTP and metrics.

use std::io;
use std::path::PathBuf;

use super::key::JobKey;
use super::path::{JobPath, PathError};

/// Broad class of a workspace error. The codes are an API: the HTTP file API returns them as
/// `error.code` and maps them to a status with [`ErrorKind::http_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's input is not acceptable (a path, a namespace, an upload that failed).
    Validation,
    /// The job, file or archive does not exist.
    NotFound,
    /// The request clashes with what is on disk (a directory where a file should go, a
    /// symlink, a job removed while the request ran).
    Conflict,
    /// A limit would be exceeded; nothing was stored.
    PayloadTooLarge,
    /// The object store behind the workspace did not answer; nothing was changed. Retry.
    Unavailable,
    /// The filesystem or the ZIP writer failed: not the caller's fault. The message may name
    /// paths on the server: log it, and show callers something generic.
    Internal,
}

impl ErrorKind {
    /// The stable code: `validation_error`, `not_found`, `conflict`, `payload_too_large`,
    /// `unavailable` or `internal_error`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation_error",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// The HTTP status that goes with the kind: 400, 404, 409, 413, 503 or 500.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Validation => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// Everything that can go wrong in the workspace, with the context needed to say what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file path broke a workspace rule.
    #[error("invalid path {path:?}: {source}")]
    InvalidPath {
        /// The path as given, truncated to 100 characters.
        path: String,
        #[source]
        source: PathError,
    },
    /// A namespace is not a DNS label.
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        namespace: String,
        reason: &'static str,
    },
    /// A uid has characters other than letters, digits and `-`.
    #[error("invalid job uid {uid:?}: {reason}")]
    InvalidUid { uid: String, reason: &'static str },

    /// The job has no workspace directory (never ensured, removed, or lost with the pod).
    #[error("job {job} has no workspace")]
    JobNotFound { job: JobKey },
    /// No regular file at this path.
    #[error("file {path} not found in job {job}")]
    FileNotFound { job: JobKey, path: JobPath },
    /// The job has no archive yet.
    #[error("job {job} has no archive")]
    ArchiveNotFound { job: JobKey },

    /// Something other than a regular file is at the path: a directory holding other files.
    #[error("cannot write {path} in job {job}: a directory with that name holds other files")]
    NotAFile { job: JobKey, path: JobPath },
    /// A directory of the path is a regular file (writing `a/b` when `a` is a file).
    #[error("cannot write {path} in job {job}: {parent} is a file, not a directory")]
    ParentIsAFile {
        job: JobKey,
        path: JobPath,
        parent: String,
    },
    /// A symlink sits where Kiln expected a file or directory. Kiln never creates one, so it
    /// was planted; Kiln refuses to follow it.
    #[error("refusing to follow the symlink at {location} (relative to the workspace root)")]
    Symlink { location: String },
    /// The job was removed while a write or an archive build was running.
    #[error("job {job} was removed while the operation ran")]
    JobRemoved { job: JobKey },
    /// A file disappeared while the archive was being built.
    #[error("file {path} of job {job} changed while its archive was being built")]
    ArchiveSourceChanged { job: JobKey, path: JobPath },

    /// The file is larger than `max_file_bytes`. For a streamed upload, `size` is how much had
    /// arrived when Kiln stopped reading: the file is at least that large.
    #[error("file {path} is {size} bytes or more, over the limit of {max} bytes per file")]
    FileTooLarge { path: JobPath, size: u64, max: u64 },
    /// The job's files would total more than `max_job_bytes` (counting writes in flight).
    #[error("job {job} would hold {would_be} bytes, over the limit of {max} bytes per job")]
    JobTooLarge {
        job: JobKey,
        would_be: u64,
        max: u64,
    },
    /// The job would hold more than `max_files_per_job` files (counting writes in flight).
    #[error("job {job} would hold {would_be} files, over the limit of {max} files per job")]
    TooManyFiles {
        job: JobKey,
        would_be: u64,
        max: u64,
    },
    /// All jobs' files would total more than `max_workspace_bytes` (counting writes in flight).
    #[error("the workspace would hold {would_be} bytes, over its budget of {max} bytes")]
    WorkspaceFull { would_be: u64, max: u64 },

    /// Reading the caller's data failed (a broken upload, bad base64 in a decoding reader).
    #[error("reading the content of {path} failed: {source}")]
    Source {
        path: JobPath,
        #[source]
        source: io::Error,
    },
    /// A filesystem call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The object store behind the workspace failed (unreachable, refusing, timing out).
    /// Nothing was changed: not on disk, not in the store.
    #[error("{source}; nothing was changed, retry later")]
    ObjectStore {
        job: JobKey,
        #[source]
        source: crate::objstore::StoreError,
    },
    /// The ZIP writer failed.
    #[error("building the archive of job {job}: {source}")]
    Archive {
        job: JobKey,
        #[source]
        source: zip::result::ZipError,
    },
}

impl Error {
    /// The class of the error, for HTTP status codes and `error.code`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidPath { .. }
            | Error::InvalidNamespace { .. }
            | Error::InvalidUid { .. }
            | Error::Source { .. } => ErrorKind::Validation,
            Error::JobNotFound { .. }
            | Error::FileNotFound { .. }
            | Error::ArchiveNotFound { .. } => ErrorKind::NotFound,
            Error::NotAFile { .. }
            | Error::ParentIsAFile { .. }
            | Error::Symlink { .. }
            | Error::JobRemoved { .. }
            | Error::ArchiveSourceChanged { .. } => ErrorKind::Conflict,
            Error::FileTooLarge { .. }
            | Error::JobTooLarge { .. }
            | Error::TooManyFiles { .. }
            | Error::WorkspaceFull { .. } => ErrorKind::PayloadTooLarge,
            Error::ObjectStore { .. } => ErrorKind::Unavailable,
            Error::Io { .. } | Error::Archive { .. } => ErrorKind::Internal,
        }
    }

    /// Shorthand for `self.kind().code()`.
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// A stable snake_case label per variant, finer than [`Error::code`]: for metrics and for
    /// `error.details.reason` (which limit was hit, for instance).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidPath { .. } => "invalid_path",
            Error::InvalidNamespace { .. } => "invalid_namespace",
            Error::InvalidUid { .. } => "invalid_uid",
            Error::JobNotFound { .. } => "job_not_found",
            Error::FileNotFound { .. } => "file_not_found",
            Error::ArchiveNotFound { .. } => "archive_not_found",
            Error::NotAFile { .. } => "not_a_file",
            Error::ParentIsAFile { .. } => "parent_is_a_file",
            Error::Symlink { .. } => "symlink",
            Error::JobRemoved { .. } => "job_removed",
            Error::ArchiveSourceChanged { .. } => "archive_source_changed",
            Error::FileTooLarge { .. } => "file_too_large",
            Error::JobTooLarge { .. } => "job_too_large",
            Error::TooManyFiles { .. } => "too_many_files",
            Error::WorkspaceFull { .. } => "workspace_full",
            Error::Source { .. } => "source_read_failed",
            Error::Io { .. } => "io",
            Error::Archive { .. } => "archive",
            Error::ObjectStore { .. } => "object_store_unavailable",
        }
    }

    /// Wraps a [`PathError`] with the offending input, truncated for the message.
    pub fn invalid_path(path: &str, source: PathError) -> Self {
        Error::InvalidPath {
            path: super::key::truncate_for_message(path),
            source,
        }
    }
}

/// Builds the `map_err` closure for a filesystem call on `path`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// Result of workspace operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_stable() {
        let job = JobKey::new("ns", "u").unwrap();
        let path = JobPath::parse("a").unwrap();
        let cases = [
            (
                Error::invalid_path("../x", PathError::ParentSegment { index: 1 }),
                "validation_error",
                400,
            ),
            (Error::JobNotFound { job: job.clone() }, "not_found", 404),
            (
                Error::NotAFile {
                    job: job.clone(),
                    path: path.clone(),
                },
                "conflict",
                409,
            ),
            (
                Error::Symlink {
                    location: "jobs/ns/u/files/a".into(),
                },
                "conflict",
                409,
            ),
            (
                Error::FileTooLarge {
                    path,
                    size: 2,
                    max: 1,
                },
                "payload_too_large",
                413,
            ),
            (
                Error::WorkspaceFull {
                    would_be: 2,
                    max: 1,
                },
                "payload_too_large",
                413,
            ),
            (
                Error::Io {
                    op: "open",
                    path: "/x".into(),
                    source: io::Error::other("boom"),
                },
                "internal_error",
                500,
            ),
        ];
        for (err, code, status) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(err.kind().http_status(), status, "{err}");
        }
    }

    #[test]
    fn messages_carry_context() {
        let job = JobKey::new("ns", "u").unwrap();
        let msg = Error::JobTooLarge {
            job,
            would_be: 120,
            max: 100,
        }
        .to_string();
        assert!(
            msg.contains("ns/u") && msg.contains("120") && msg.contains("100"),
            "{msg}"
        );
    }
}
