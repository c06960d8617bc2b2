//! The emptyDir workspace: safe paths, atomic writes, limits, archives.
//!
//! Jobs' files live on the operator's `emptyDir` volume, not in etcd. This module is the only
//! code that touches that volume; it enforces the workspace rules (below, and for users in
//! `docs/api.md`), which are security boundaries.
//!
//! # Layout
//!
//! ```text
//! <root>/jobs/<namespace>/<uid>/files/<path>   a job's files, <path> a JobPath
//! <root>/jobs/<namespace>/<uid>/archive.zip    the job's archive, once built
//! <root>/jobs/<namespace>/<uid>/sensitive.json which files were made from which Secrets
//! <root>/trash/                                removed jobs, deleted in the background
//! ```
//!
//! Jobs are keyed by namespace and uid ([`JobKey`]), so a Job re-created under the same name
//! starts empty. Temporary files (`.kiln-tmp.*`) sit next to their target while being
//! written; that prefix is reserved and never a valid [`JobPath`] segment.
//!
//! # Rules
//!
//! - Paths: [`JobPath`] accepts only relative UTF-8 paths without `..`, `.` or empty
//!   segments, NUL, backslash, `:` or control characters, segments ≤ 255 bytes, total ≤ 1024
//!   bytes. Nothing outside `<root>/jobs/<namespace>/<uid>/` is ever written.
//! - Symlinks are never created or followed: every directory on the way to a file is checked
//!   with `lstat`, and files are opened with `O_NOFOLLOW` (or created with `O_EXCL`). A symlink
//!   where Kiln expects a file or directory is refused with [`Error::Symlink`]. The checks
//!   happen just before each use; [`store`] explains what that does and does not stop.
//! - Writes are atomic: temporary file in the target's directory, write, fsync, rename, fsync
//!   of the directory. A crash never leaves a partial file visible; leftovers are hidden from
//!   listings and deleted by [`Workspace::open`].
//! - Limits ([`Limits`]): per file, per job (bytes and file count) and for the whole
//!   workspace, checked before anything is stored, and for streamed uploads while they arrive.
//!   Replacing a file counts the difference in size. The accounting lives in memory (built by
//!   scanning once, at [`Workspace::open`]) under one mutex, so concurrent writers cannot
//!   together exceed a limit. Archives are not counted; size the `emptyDir` for the workspace
//!   budget plus the archives (about twice `max_workspace_bytes`).
//! - Archives are deterministic ([`archive`]): same files, same sha256. Each job counts the
//!   writes and deletes to its files, and its archive records the count it was built from
//!   ([`Freshness`]): an archive that no longer holds the files is never served as current.
//!
//! # Object store
//!
//! Optionally ([`Workspace::with_remote`]), an S3-compatible object store sits behind the
//! workspace and the `emptyDir` becomes its cache: uploads and archives are written through,
//! deletes go to both, and a job directory lost with the pod is restored from the store. See
//! [`crate::objstore`] and the `remote` module for the order of operations.
//!
//! # Blocking I/O
//!
//! Everything here is synchronous `std::fs` code. From async code (the controller, the axum
//! file API), run it with `tokio::task::spawn_blocking` on an `Arc<Workspace>`; bridge an
//! async request body to [`Workspace::write_from_reader`] with
//! `tokio_util::io::SyncIoBridge`. Reads return a `std::fs::File` that can be turned into a
//! `tokio::fs::File` for streaming a response.
//!
//! # Errors
//!
//! One [`Error`] enum for the module; [`Error::kind`] classifies it for HTTP
//! ([`ErrorKind::code`]: `validation_error`, `not_found`, `conflict`, `payload_too_large`,
//! `unavailable`, `internal_error`; [`ErrorKind::http_status`]), [`Error::reason`] names the variant.

pub mod archive;
pub mod error;
mod fsutil;
pub mod key;
pub mod limits;
pub mod path;
mod remote;
pub mod sensitive;
pub mod store;

pub use archive::{ArchiveInfo, Freshness, OpenArchive};
pub use error::{Error, ErrorKind, Result};
pub use key::JobKey;
pub use limits::Limits;
pub use path::{JobPath, MAX_PATH_BYTES, MAX_SEGMENT_BYTES, PathError};
pub use sensitive::Sensitivity;
pub use store::{FileInfo, JobUsage, OpenFile, Workspace, WorkspaceUsage, WriteOutcome};

#[cfg(test)]
mod tests;
