//! Tests of the workspace as a whole, on real directories: hostile layouts, limits,
//! atomicity, concurrency, archives.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::*;

const UID: &str = "0f8c1a2e-5b6d-4c3e-9f10-123456789abc";

fn p(s: &str) -> JobPath {
    JobPath::parse(s).unwrap()
}

fn key(uid: &str) -> JobKey {
    JobKey::new("team-a", uid).unwrap()
}

fn setup(limits: Limits) -> (tempfile::TempDir, Workspace, JobKey) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path().join("ws"), limits).unwrap();
    let job = key(UID);
    assert!(ws.ensure_job(&job).unwrap());
    (dir, ws, job)
}

fn files_dir(ws: &Workspace, job: &JobKey) -> PathBuf {
    ws.job_dir(job).join("files")
}

/// Every entry below `dir`, relative, without following symlinks.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

fn temp_leftovers(root: &Path) -> Vec<String> {
    tree(root)
        .into_iter()
        .filter(|e| e.rsplit('/').next().unwrap().starts_with(".kiln-tmp."))
        .collect()
}

fn paths(list: &[FileInfo]) -> Vec<&str> {
    list.iter().map(|f| f.path.as_str()).collect()
}

/// Yields `ok_bytes` bytes of `b'x'`, then fails.
struct FailingReader {
    ok_bytes: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            ));
        }
        let n = buf.len().min(self.ok_bytes);
        buf[..n].fill(b'x');
        self.ok_bytes -= n;
        Ok(n)
    }
}

/// Fails the test if read at all.
struct MustNotRead;

impl Read for MustNotRead {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        panic!("the reader should not have been touched");
    }
}

// ---- basic operations -----------------------------------------------------------------

#[test]
fn write_read_list_stat_delete() {
    let (_d, ws, job) = setup(Limits::default());
    let first = ws.write(&job, &p("src/main.rs"), b"fn main() {}").unwrap();
    assert!(!first.replaced);
    assert_eq!(first.info.size_bytes, 12);
    ws.write(&job, &p("README.md"), b"# hi").unwrap();
    ws.write(&job, &p("src/lib/mod.rs"), b"").unwrap();
    let again = ws.write(&job, &p("README.md"), b"# hello").unwrap();
    assert!(again.replaced);

    let list = ws.list(&job).unwrap();
    assert_eq!(paths(&list), ["README.md", "src/lib/mod.rs", "src/main.rs"]);
    assert_eq!(list[0].size_bytes, 7);
    assert_eq!(list[1].size_bytes, 0);

    assert_eq!(ws.read(&job, &p("README.md")).unwrap(), b"# hello");
    let mut open = ws.open_file(&job, &p("src/main.rs")).unwrap();
    let mut s = String::new();
    open.file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "fn main() {}");
    assert_eq!(open.info.size_bytes, 12);
    assert_eq!(ws.stat(&job, &p("src/main.rs")).unwrap().size_bytes, 12);

    assert_eq!(
        ws.job_usage(&job).unwrap(),
        JobUsage {
            files: 3,
            bytes: 19,
            archive_bytes: 0
        }
    );

    ws.delete(&job, &p("src/lib/mod.rs")).unwrap();
    assert_eq!(paths(&ws.list(&job).unwrap()), ["README.md", "src/main.rs"]);
    // The emptied directory went with it.
    assert!(!files_dir(&ws, &job).join("src/lib").exists());
    assert!(files_dir(&ws, &job).join("src").exists());

    for missing in ["src/lib/mod.rs", "nope", "src/nope/x"] {
        assert!(matches!(
            ws.read(&job, &p(missing)),
            Err(Error::FileNotFound { .. })
        ));
        assert!(matches!(
            ws.delete(&job, &p(missing)),
            Err(Error::FileNotFound { .. })
        ));
    }
    // A directory is not a file.
    assert!(matches!(
        ws.read(&job, &p("src")),
        Err(Error::FileNotFound { .. })
    ));
    assert_eq!(ws.job_usage(&job).unwrap().files, 2);
    assert_eq!(ws.usage().bytes, 19);
}

#[test]
fn list_is_sorted_bytewise() {
    let (_d, ws, job) = setup(Limits::default());
    for path in ["b", "a/b", "a.txt", "B", "a/a", "é", "z/z/z"] {
        ws.write(&job, &p(path), path.as_bytes()).unwrap();
    }
    assert_eq!(
        paths(&ws.list(&job).unwrap()),
        ["B", "a.txt", "a/a", "a/b", "b", "z/z/z", "é"]
    );
}

#[test]
fn unicode_paths_round_trip() {
    let (_d, ws, job) = setup(Limits::default());
    for path in ["日本語/ファイル.txt", "émoji-🎉.md", "a b/c d.txt"] {
        ws.write(&job, &p(path), path.as_bytes()).unwrap();
        assert_eq!(ws.read(&job, &p(path)).unwrap(), path.as_bytes());
    }
    assert_eq!(ws.list(&job).unwrap().len(), 3);
}

#[test]
fn writes_need_an_ensured_job() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), Limits::default()).unwrap();
    let job = key("u1");
    assert!(!ws.job_exists(&job));
    assert!(matches!(
        ws.write(&job, &p("a"), b"x"),
        Err(Error::JobNotFound { .. })
    ));
    assert!(matches!(ws.list(&job), Err(Error::JobNotFound { .. })));
    assert!(matches!(
        ws.read(&job, &p("a")),
        Err(Error::JobNotFound { .. })
    ));
    assert!(matches!(ws.job_usage(&job), Err(Error::JobNotFound { .. })));
    // Nothing was created by the refused write.
    assert!(tree(&dir.path().join("jobs")).is_empty());

    assert!(ws.ensure_job(&job).unwrap());
    assert!(!ws.ensure_job(&job).unwrap());
    assert!(ws.job_exists(&job));
    ws.write(&job, &p("a"), b"x").unwrap();
}

#[test]
fn file_and_directory_names_do_not_collide() {
    let (_d, ws, job) = setup(Limits::default());
    ws.write(&job, &p("a"), b"file").unwrap();
    let err = ws.write(&job, &p("a/b"), b"x").unwrap_err();
    assert!(
        matches!(&err, Error::ParentIsAFile { parent, .. } if parent == "a"),
        "{err}"
    );
    assert_eq!(err.code(), "conflict");

    ws.write(&job, &p("x/y/z"), b"deep").unwrap();
    let err = ws.write(&job, &p("x/y"), b"x").unwrap_err();
    assert!(matches!(err, Error::NotAFile { .. }), "{err}");
    assert_eq!(err.code(), "conflict");
    // Once the directory is gone, the name is free.
    ws.delete(&job, &p("x/y/z")).unwrap();
    ws.write(&job, &p("x/y"), b"now a file").unwrap();
    assert_eq!(paths(&ws.list(&job).unwrap()), ["a", "x/y"]);
    assert_eq!(ws.job_usage(&job).unwrap().files, 2);
}

#[test]
fn jobs_are_isolated_by_namespace_and_uid() {
    let (_d, ws, job) = setup(Limits::default());
    let other_uid = key("other");
    let other_ns = JobKey::new("team-b", UID).unwrap();
    ws.ensure_job(&other_uid).unwrap();
    ws.ensure_job(&other_ns).unwrap();
    ws.write(&job, &p("f"), b"1").unwrap();
    ws.write(&other_uid, &p("f"), b"22").unwrap();
    ws.write(&other_ns, &p("f"), b"333").unwrap();
    assert_eq!(ws.read(&job, &p("f")).unwrap(), b"1");
    assert_eq!(ws.read(&other_uid, &p("f")).unwrap(), b"22");
    assert_eq!(ws.read(&other_ns, &p("f")).unwrap(), b"333");
    assert_eq!(
        ws.usage(),
        WorkspaceUsage {
            jobs: 3,
            files: 3,
            bytes: 6,
            archive_bytes: 0
        }
    );
}

// ---- symlinks ---------------------------------------------------------------------------

#[test]
fn symlinked_directory_inside_the_job_is_refused() {
    let (d, ws, job) = setup(Limits::default());
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    symlink(&outside, files_dir(&ws, &job).join("dir")).unwrap();

    for path in ["dir/x", "dir/sub/x"] {
        let err = ws.write(&job, &p(path), b"pwned").unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{path}: {err}");
        assert_eq!(err.code(), "conflict");
        let err = ws
            .write_from_reader(&job, &p(path), &b"pwned"[..], None)
            .unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{path}: {err}");
    }
    assert!(tree(&outside).is_empty(), "nothing may be written outside");

    fs::write(outside.join("secret"), b"secret").unwrap();
    assert!(matches!(
        ws.read(&job, &p("dir/secret")),
        Err(Error::Symlink { .. })
    ));
    assert!(matches!(
        ws.stat(&job, &p("dir/secret")),
        Err(Error::Symlink { .. })
    ));
    assert!(matches!(
        ws.delete(&job, &p("dir/secret")),
        Err(Error::Symlink { .. })
    ));
    assert!(outside.join("secret").exists());
    // Listing and archiving do not descend into it.
    assert!(ws.list(&job).unwrap().is_empty());
    let archive = ws.build_archive(&job).unwrap();
    let zip = zip::ZipArchive::new(fs::File::open(&archive.path).unwrap()).unwrap();
    assert_eq!(zip.len(), 0);
    assert_eq!(ws.usage().files, 0);
}

#[test]
fn symlinked_final_file_is_refused() {
    let (d, ws, job) = setup(Limits::default());
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // A dangling link: following it would create a file outside.
    symlink(outside.join("created"), files_dir(&ws, &job).join("evil")).unwrap();
    // A link to an existing file: following it would overwrite or leak it.
    let victim = d.path().join("victim");
    fs::write(&victim, b"original").unwrap();
    fs::create_dir(files_dir(&ws, &job).join("sub")).unwrap();
    symlink(&victim, files_dir(&ws, &job).join("sub/leak")).unwrap();

    for path in ["evil", "sub/leak"] {
        let err = ws.write(&job, &p(path), b"pwned").unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{path}: {err}");
        let err = ws
            .write_from_reader(&job, &p(path), io::repeat(b'x').take(1000), None)
            .unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{path}: {err}");
        assert!(matches!(
            ws.read(&job, &p(path)),
            Err(Error::Symlink { .. })
        ));
        assert!(matches!(
            ws.delete(&job, &p(path)),
            Err(Error::Symlink { .. })
        ));
    }
    assert!(tree(&outside).is_empty(), "nothing may be written outside");
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert!(ws.list(&job).unwrap().is_empty());
    assert!(temp_leftovers(ws.root()).is_empty());
}

#[test]
fn symlinked_job_directories_are_refused() {
    let (d, ws, job) = setup(Limits::default());
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let files = files_dir(&ws, &job);
    fs::remove_dir(&files).unwrap();
    symlink(&outside, &files).unwrap();

    assert!(matches!(
        ws.write(&job, &p("a"), b"x"),
        Err(Error::Symlink { .. })
    ));
    assert!(matches!(ws.list(&job), Err(Error::Symlink { .. })));
    assert!(matches!(ws.read(&job, &p("a")), Err(Error::Symlink { .. })));
    assert!(matches!(ws.build_archive(&job), Err(Error::Symlink { .. })));
    assert!(!ws.job_exists(&job));
    assert!(matches!(ws.ensure_job(&job), Err(Error::Symlink { .. })));
    assert!(tree(&outside).is_empty());
}

#[test]
fn remove_job_never_follows_symlinks() {
    let (d, ws, job) = setup(Limits::default());
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"keep").unwrap();
    ws.write(&job, &p("a/b"), b"x").unwrap();
    symlink(&outside, files_dir(&ws, &job).join("link")).unwrap();
    symlink(&outside, files_dir(&ws, &job).join("a/link")).unwrap();
    assert!(ws.remove_job(&job).unwrap());
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");

    // The job directory itself replaced by a link: the link goes, its target stays.
    let other = key("other");
    ws.ensure_job(&other).unwrap();
    let job_dir = ws.job_dir(&other);
    fs::remove_dir_all(&job_dir).unwrap();
    symlink(&outside, &job_dir).unwrap();
    assert!(ws.remove_job(&other).unwrap());
    assert!(fs::symlink_metadata(&job_dir).is_err());
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
}

#[test]
fn a_symlinked_namespace_directory_is_refused() {
    let (d, ws, _job) = setup(Limits::default());
    let outside = d.path().join("outside");
    fs::create_dir_all(outside.join("u2/files")).unwrap();
    fs::write(outside.join("u2/files/keep"), b"keep").unwrap();
    symlink(&outside, ws.root().join("jobs/evil-ns")).unwrap();
    let job = JobKey::new("evil-ns", "u2").unwrap();
    assert!(matches!(ws.ensure_job(&job), Err(Error::Symlink { .. })));
    assert!(matches!(ws.remove_job(&job), Err(Error::Symlink { .. })));
    assert!(matches!(ws.list(&job), Err(Error::Symlink { .. })));
    assert_eq!(fs::read(outside.join("u2/files/keep")).unwrap(), b"keep");
}

// ---- atomicity ----------------------------------------------------------------------------

#[test]
fn no_temporary_files_after_success_or_failure() {
    let limits = Limits {
        max_file_bytes: 100,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    ws.write(&job, &p("a/b.txt"), b"v1").unwrap();
    ws.write(&job, &p("a/b.txt"), b"v2").unwrap();
    ws.write_from_reader(&job, &p("c.txt"), &b"streamed"[..], None)
        .unwrap();
    assert!(temp_leftovers(ws.root()).is_empty());

    // Too large, mid-stream.
    assert!(matches!(
        ws.write_from_reader(&job, &p("a/b.txt"), io::repeat(b'x').take(101), None),
        Err(Error::FileTooLarge { .. })
    ));
    // The source fails mid-stream.
    let err = ws
        .write_from_reader(&job, &p("a/b.txt"), FailingReader { ok_bytes: 50 }, None)
        .unwrap_err();
    assert!(matches!(err, Error::Source { .. }), "{err}");
    assert_eq!(err.code(), "validation_error");
    // A failed replacement leaves the previous version whole.
    assert_eq!(ws.read(&job, &p("a/b.txt")).unwrap(), b"v2");
    assert!(temp_leftovers(ws.root()).is_empty());
    assert_eq!(
        ws.job_usage(&job).unwrap(),
        JobUsage {
            files: 2,
            bytes: 10,
            archive_bytes: 0
        }
    );
}

#[test]
fn a_failed_new_file_leaves_no_directories() {
    let limits = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    let err = ws
        .write_from_reader(&job, &p("deep/er/file"), io::repeat(0).take(11), None)
        .unwrap_err();
    assert!(matches!(err, Error::FileTooLarge { .. }));
    assert!(tree(&files_dir(&ws, &job)).is_empty());
    let err = ws
        .write_from_reader(
            &job,
            &p("deep/er/file"),
            FailingReader { ok_bytes: 3 },
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Source { .. }));
    assert!(tree(&files_dir(&ws, &job)).is_empty());
}

#[test]
fn temporary_files_are_hidden_and_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let job = key(UID);
    {
        let ws = Workspace::open(dir.path(), Limits::default()).unwrap();
        ws.ensure_job(&job).unwrap();
        ws.write(&job, &p("a/kept.txt"), b"kept").unwrap();
        ws.build_archive(&job).unwrap();
        // What a crash mid-write would leave.
        fs::write(
            files_dir(&ws, &job).join("a/.kiln-tmp.write.1.1"),
            b"partial",
        )
        .unwrap();
        fs::write(ws.job_dir(&job).join(".kiln-tmp.archive.1.2"), b"partial").unwrap();
        assert_eq!(paths(&ws.list(&job).unwrap()), ["a/kept.txt"]);
        // What a crash mid-removal would leave.
        fs::create_dir_all(dir.path().join("trash/team-a.gone.1.1/files/x")).unwrap();
    }
    let ws = Workspace::open(dir.path(), Limits::default()).unwrap();
    assert!(temp_leftovers(dir.path()).is_empty());
    assert!(tree(&dir.path().join("trash")).is_empty());
    let usage = ws.job_usage(&job).unwrap();
    assert_eq!((usage.files, usage.bytes), (1, 4));
    assert!(usage.archive_bytes > 0);
    assert_eq!(ws.usage().archive_bytes, usage.archive_bytes);
}

// ---- limits -------------------------------------------------------------------------------

fn assert_nothing_stored(ws: &Workspace, job: &JobKey, before: JobUsage) {
    assert_eq!(ws.job_usage(job).unwrap(), before);
    assert!(temp_leftovers(ws.root()).is_empty());
}

#[test]
fn file_limit_is_checked_before_storing() {
    let limits = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    ws.write(&job, &p("exact"), &[b'x'; 10]).unwrap();
    let before = ws.job_usage(&job).unwrap();

    let err = ws.write(&job, &p("new/big"), &[b'x'; 11]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FileTooLarge {
                size: 11,
                max: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "payload_too_large");
    assert_eq!(err.kind().http_status(), 413);
    // A declared size over the limit is refused without reading anything.
    assert!(matches!(
        ws.write_from_reader(&job, &p("big"), MustNotRead, Some(11)),
        Err(Error::FileTooLarge { .. })
    ));
    // Streamed, undeclared: stops at the first chunk over the limit, even on endless input.
    assert!(matches!(
        ws.write_from_reader(&job, &p("endless"), io::repeat(b'x'), None),
        Err(Error::FileTooLarge { max: 10, .. })
    ));
    // A declared size that lies is caught as well.
    assert!(matches!(
        ws.write_from_reader(&job, &p("liar"), &[b'x'; 11][..], Some(5)),
        Err(Error::FileTooLarge { .. })
    ));
    assert_nothing_stored(&ws, &job, before);
    assert_eq!(paths(&ws.list(&job).unwrap()), ["exact"]);
}

#[test]
fn job_limit_counts_replacements_by_difference() {
    let limits = Limits {
        max_job_bytes: 20,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    ws.write(&job, &p("a"), &[1; 15]).unwrap();
    let before = ws.job_usage(&job).unwrap();
    let err = ws.write(&job, &p("b"), &[1; 6]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::JobTooLarge {
                would_be: 21,
                max: 20,
                ..
            }
        ),
        "{err}"
    );
    assert_nothing_stored(&ws, &job, before);

    // Growing a to 20 only adds 5.
    ws.write(&job, &p("a"), &[2; 20]).unwrap();
    assert_eq!(ws.job_usage(&job).unwrap().bytes, 20);
    assert!(matches!(
        ws.write(&job, &p("a"), &[2; 21]),
        Err(Error::JobTooLarge { .. })
    ));
    // Shrinking frees room.
    ws.write(&job, &p("a"), &[3; 4]).unwrap();
    ws.write(&job, &p("b"), &[3; 16]).unwrap();
    assert_eq!(ws.job_usage(&job).unwrap().bytes, 20);
    // Empty files are always fine byte-wise.
    ws.write(&job, &p("empty"), b"").unwrap();
}

#[test]
fn job_limit_is_enforced_mid_stream() {
    let limits = Limits {
        max_file_bytes: 10 << 20,
        max_job_bytes: 100 << 10,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    ws.write(&job, &p("small"), &[0; 1000]).unwrap();
    let before = ws.job_usage(&job).unwrap();
    let err = ws
        .write_from_reader(&job, &p("dir/big"), io::repeat(7).take(1 << 20), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::JobTooLarge { max, .. } if max == 100 << 10),
        "{err}"
    );
    assert_nothing_stored(&ws, &job, before);
    assert!(!files_dir(&ws, &job).join("dir").exists());
    // With the size declared, refused before any byte is read.
    assert!(matches!(
        ws.write_from_reader(&job, &p("big"), MustNotRead, Some(1 << 20)),
        Err(Error::JobTooLarge { .. })
    ));
    assert_nothing_stored(&ws, &job, before);
}

#[test]
fn file_count_limit_is_checked_before_storing() {
    let limits = Limits {
        max_files_per_job: 2,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    ws.write(&job, &p("a"), b"1").unwrap();
    ws.write(&job, &p("b"), b"2").unwrap();
    let before = ws.job_usage(&job).unwrap();
    let err = ws
        .write_from_reader(&job, &p("c/d"), MustNotRead, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyFiles {
                would_be: 3,
                max: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "payload_too_large");
    assert_nothing_stored(&ws, &job, before);
    assert!(!files_dir(&ws, &job).join("c").exists());
    // Replacing does not add a file; deleting frees a slot.
    ws.write(&job, &p("a"), b"11").unwrap();
    ws.delete(&job, &p("b")).unwrap();
    ws.write(&job, &p("c/d"), b"3").unwrap();
    assert_eq!(ws.job_usage(&job).unwrap().files, 2);
}

#[test]
fn workspace_budget_spans_jobs() {
    let limits = Limits {
        max_workspace_bytes: 30,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    let other = key("other");
    ws.ensure_job(&other).unwrap();
    ws.write(&job, &p("a"), &[0; 20]).unwrap();
    let before = ws.job_usage(&other).unwrap();
    let err = ws.write(&other, &p("b"), &[0; 11]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkspaceFull {
                would_be: 31,
                max: 30
            }
        ),
        "{err}"
    );
    assert_nothing_stored(&ws, &other, before);
    let err = ws
        .write_from_reader(&other, &p("b"), io::repeat(0).take(200_000), None)
        .unwrap_err();
    assert!(matches!(err, Error::WorkspaceFull { .. }), "{err}");
    assert_nothing_stored(&ws, &other, before);
    ws.write(&other, &p("b"), &[0; 10]).unwrap();
    assert_eq!(ws.usage().bytes, 30);
    // Removing a job frees its share.
    ws.remove_job(&job).unwrap();
    ws.write(&other, &p("c"), &[0; 20]).unwrap();
    assert_eq!(ws.usage().bytes, 30);
}

// ---- concurrency ------------------------------------------------------------------------

#[test]
fn concurrent_writers_never_exceed_the_file_count() {
    let limits = Limits {
        max_files_per_job: 10,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    let ws = Arc::new(ws);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (ws, job) = (ws.clone(), job.clone());
            std::thread::spawn(move || {
                (0..5)
                    .filter(|i| ws.write(&job, &p(&format!("t{t}/f{i}")), b"data").is_ok())
                    .count()
            })
        })
        .collect();
    let ok: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(ok, 10);
    assert_eq!(ws.list(&job).unwrap().len(), 10);
    assert_eq!(ws.job_usage(&job).unwrap().files, 10);
    assert!(temp_leftovers(ws.root()).is_empty());
}

#[test]
fn concurrent_writers_never_exceed_the_byte_budgets() {
    let limits = Limits {
        max_job_bytes: 100,
        max_workspace_bytes: 150,
        ..Limits::default()
    };
    let (_d, ws, job) = setup(limits);
    let other = key("other");
    ws.ensure_job(&other).unwrap();
    let ws = Arc::new(ws);
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let ws = ws.clone();
            let job = if i % 2 == 0 {
                job.clone()
            } else {
                other.clone()
            };
            std::thread::spawn(move || {
                // Streamed, so that reservations (not only the final check) are exercised.
                ws.write_from_reader(&job, &p(&format!("f{i}")), &[0u8; 10][..], None)
                    .is_ok()
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 15);
    let usage = ws.usage();
    assert_eq!(usage.bytes, 150);
    let a = ws.job_usage(&job).unwrap().bytes;
    let b = ws.job_usage(&other).unwrap().bytes;
    assert!(a <= 100 && b <= 100 && a + b == 150, "{a} + {b}");
    let listed: u64 = [&job, &other]
        .iter()
        .flat_map(|j| ws.list(j).unwrap())
        .map(|f| f.size_bytes)
        .sum();
    assert_eq!(listed, 150);
}

#[test]
fn concurrent_replacements_of_one_file_keep_the_accounting_exact() {
    let (_d, ws, job) = setup(Limits::default());
    let ws = Arc::new(ws);
    let handles: Vec<_> = (1..=16usize)
        .map(|i| {
            let (ws, job) = (ws.clone(), job.clone());
            std::thread::spawn(move || ws.write(&job, &p("same"), &vec![0u8; i * 100]).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let on_disk = ws.stat(&job, &p("same")).unwrap().size_bytes;
    assert_eq!(
        ws.job_usage(&job).unwrap(),
        JobUsage {
            files: 1,
            bytes: on_disk,
            archive_bytes: 0
        }
    );
    assert_eq!(ws.usage().bytes, on_disk);
}

// ---- job lifecycle ------------------------------------------------------------------------

#[test]
fn remove_job_removes_files_and_archive() {
    let (_d, ws, job) = setup(Limits::default());
    ws.write(&job, &p("a/b"), b"x").unwrap();
    let archive = ws.build_archive(&job).unwrap();
    assert!(archive.path.exists());
    assert!(ws.remove_job(&job).unwrap());
    assert!(!ws.job_exists(&job));
    assert!(!ws.job_dir(&job).exists());
    assert!(!archive.path.exists());
    assert_eq!(ws.usage(), WorkspaceUsage::default());
    assert!(tree(&ws.root().join("trash")).is_empty());
    assert!(!ws.remove_job(&job).unwrap(), "removing twice is fine");
    assert!(matches!(
        ws.write(&job, &p("a"), b"x"),
        Err(Error::JobNotFound { .. })
    ));
    assert!(matches!(
        ws.open_archive(&job),
        Err(Error::JobNotFound { .. })
    ));
}

#[test]
fn a_lost_workspace_is_reported_by_ensure_job() {
    let (_d, ws, job) = setup(Limits::default());
    ws.write(&job, &p("a"), b"12345").unwrap();
    // The pod was replaced, or someone wiped the directory.
    fs::remove_dir_all(ws.job_dir(&job)).unwrap();
    assert!(!ws.job_exists(&job));
    assert!(
        ws.ensure_job(&job).unwrap(),
        "re-created, so the caller knows"
    );
    assert_eq!(ws.job_usage(&job).unwrap(), JobUsage::default());
    assert_eq!(ws.usage().bytes, 0);
}

#[test]
fn reopening_rebuilds_the_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key("a"), JobKey::new("team-b", "b").unwrap());
    {
        let ws = Workspace::open(dir.path(), Limits::default()).unwrap();
        for job in [&a, &b] {
            ws.ensure_job(job).unwrap();
        }
        ws.write(&a, &p("x/y"), b"123").unwrap();
        ws.write(&a, &p("z"), b"45").unwrap();
        ws.write(&b, &p("w"), b"6789").unwrap();
    }
    // Junk that is not a job is ignored.
    fs::create_dir_all(dir.path().join("jobs/Not_A_Namespace/u/files")).unwrap();
    fs::write(dir.path().join("jobs/stray-file"), b"?").unwrap();
    let ws = Workspace::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(
        ws.usage(),
        WorkspaceUsage {
            jobs: 2,
            files: 3,
            bytes: 9,
            archive_bytes: 0
        }
    );
    assert_eq!(ws.job_usage(&a).unwrap().files, 2);
    assert!(ws.job_exists(&b));
    assert!(!ws.ensure_job(&a).unwrap());
}

// ---- archives -----------------------------------------------------------------------------

fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("src/main.rs", b"fn main() { println!(\"hi\"); }\n".to_vec()),
        ("README.md", b"# Project\n".repeat(100)),
        ("plan.json", br#"{"tasks":[]}"#.to_vec()),
        (
            "assets/blob.bin",
            (0..=255u8).cycle().take(300_000).collect(),
        ),
        ("docs/日本語.md", "こんにちは".as_bytes().to_vec()),
        ("empty", Vec::new()),
    ]
}

fn unzip(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).unwrap();
            assert!(entry.is_file());
            assert_eq!(entry.last_modified(), Some(zip::DateTime::default()));
            assert_eq!(
                entry.last_modified().unwrap().to_string(),
                "1980-01-01 00:00:00"
            );
            assert_eq!(entry.unix_mode(), Some(0o100644));
            assert_eq!(entry.compression(), zip::CompressionMethod::Deflated);
            let name = entry.name().unwrap().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

#[test]
fn archives_are_deterministic_and_complete() {
    let (_d, ws, job) = setup(Limits::default());
    for (path, data) in sample_files() {
        ws.write(&job, &p(path), &data).unwrap();
    }
    let first = ws.build_archive(&job).unwrap();
    assert_eq!(first.path, ws.archive_path(&job));
    let bytes = fs::read(&first.path).unwrap();
    assert_eq!(first.size_bytes, bytes.len() as u64);
    assert_eq!(first.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(first.sha256.len(), 64);

    // Same files, rebuilt: same bytes.
    let second = ws.build_archive(&job).unwrap();
    assert_eq!(first, second);

    // Same files written in another order, at another time, in another workspace: same bytes.
    let (_d2, ws2, job2) = setup(Limits::default());
    for (path, data) in sample_files().into_iter().rev() {
        ws2.write(&job2, &p(path), &data).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    ws2.write(&job2, &p("README.md"), &b"# Project\n".repeat(100))
        .unwrap();
    let third = ws2.build_archive(&job2).unwrap();
    assert_eq!(third.sha256, first.sha256);
    assert_eq!(third.size_bytes, first.size_bytes);

    // Every file, byte for byte, sorted by path.
    let mut expected: Vec<(String, Vec<u8>)> = sample_files()
        .into_iter()
        .map(|(p, d)| (p.to_owned(), d))
        .collect();
    expected.sort();
    let entries = unzip(&first.path);
    assert_eq!(entries, expected);

    // A change of content changes the hash.
    ws.write(&job, &p("empty"), b"!").unwrap();
    assert_ne!(ws.build_archive(&job).unwrap().sha256, first.sha256);

    assert!(temp_leftovers(ws.root()).is_empty());
    let usage = ws.job_usage(&job).unwrap();
    assert_eq!(
        usage.archive_bytes,
        fs::metadata(&first.path).unwrap().len()
    );
}

#[test]
fn archive_of_an_empty_job() {
    let (_d, ws, job) = setup(Limits::default());
    let a = ws.build_archive(&job).unwrap();
    let b = ws.build_archive(&job).unwrap();
    assert_eq!(a, b);
    // Just the end-of-central-directory record.
    assert_eq!(a.size_bytes, 22);
    assert!(unzip(&a.path).is_empty());
}

#[test]
fn archive_open_and_remove() {
    let (_d, ws, job) = setup(Limits::default());
    assert!(matches!(
        ws.open_archive(&job),
        Err(Error::ArchiveNotFound { .. })
    ));
    ws.write(&job, &p("f"), b"content").unwrap();
    let info = ws.build_archive(&job).unwrap();
    let mut open = ws.open_archive(&job).unwrap();
    assert_eq!(open.size_bytes, info.size_bytes);
    let mut bytes = Vec::new();
    open.file.read_to_end(&mut bytes).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), info.sha256);
    assert_eq!(ws.usage().archive_bytes, info.size_bytes);

    assert!(ws.remove_archive(&job).unwrap());
    assert!(!ws.remove_archive(&job).unwrap());
    assert_eq!(ws.usage().archive_bytes, 0);
    assert!(matches!(
        ws.open_archive(&job),
        Err(Error::ArchiveNotFound { .. })
    ));
    // The archive is not a file of the job.
    assert_eq!(paths(&ws.list(&job).unwrap()), ["f"]);
}

#[test]
fn an_archive_is_current_until_a_file_changes() {
    let (_d, ws, job) = setup(Limits::default());
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Stale);
    ws.write(&job, &p("f"), b"one").unwrap();
    let first = ws.build_archive(&job).unwrap();
    assert_eq!(
        ws.archive_freshness(&job).unwrap(),
        Freshness::Current(first.clone())
    );
    assert_eq!(
        ws.open_archive(&job).unwrap().freshness,
        Freshness::Current(first.clone())
    );

    // A declared file rewritten (its source changed): the archive no longer holds the files.
    ws.write_declared(&job, &p("f"), b"two").unwrap();
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Stale);
    assert_eq!(ws.open_archive(&job).unwrap().freshness, Freshness::Stale);
    let second = ws.build_archive(&job).unwrap();
    assert_ne!(second.sha256, first.sha256);
    assert_eq!(
        ws.archive_freshness(&job).unwrap(),
        Freshness::Current(second.clone())
    );
    assert!(Freshness::Current(second.clone()).matches(&second.sha256));
    assert!(!Freshness::Current(second.clone()).matches(&first.sha256));

    // Deletes count too, and a removed archive holds nothing.
    ws.delete(&job, &p("f")).unwrap();
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Stale);
    ws.build_archive(&job).unwrap();
    assert!(ws.remove_archive(&job).unwrap());
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Stale);
    assert!(matches!(
        ws.archive_freshness(&key("0f8c1a2e-5b6d-4c3e-9f10-000000000000")),
        Err(Error::JobNotFound { .. })
    ));
}

#[test]
fn an_archive_found_at_start_up_is_trusted_only_when_newer_than_every_file() {
    // File times come from a coarse clock (a few milliseconds): a file and an archive of the
    // same tick look equally old, and such an archive is not trusted (then rebuilt, same
    // bytes). Pauses keep this test's steps in different ticks.
    let tick = std::time::Duration::from_millis(30);
    let (d, ws, job) = setup(Limits::default());
    ws.write(&job, &p("a"), b"a").unwrap();
    std::thread::sleep(tick);
    ws.build_archive(&job).unwrap();
    drop(ws);
    let root = d.path().join("ws");
    let ws = Workspace::open(&root, Limits::default()).unwrap();
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Found);
    assert!(Freshness::Found.matches("whatever the status recorded"));
    assert!(!Freshness::Stale.matches("whatever the status recorded"));

    // A file written after the archive and before a crash: the archive misses it.
    std::thread::sleep(tick);
    ws.write(&job, &p("b"), b"b").unwrap();
    drop(ws);
    let ws = Workspace::open(&root, Limits::default()).unwrap();
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Stale);
}

#[test]
fn an_archive_found_at_start_up_is_kept_only_under_its_own_sha256() {
    // A process killed after renaming a rebuilt archive into place, before the Job's status
    // named it: the archive is newer than every file (Found), but the status still records the
    // previous build. Found in the fault analysis of docs/reliability.md.
    let tick = std::time::Duration::from_millis(30);
    let (d, ws, job) = setup(Limits::default());
    ws.write(&job, &p("a"), b"one").unwrap();
    std::thread::sleep(tick);
    let previous = ws.build_archive(&job).unwrap();
    std::thread::sleep(tick);
    ws.write(&job, &p("a"), b"two").unwrap();
    std::thread::sleep(tick);
    let rebuilt = ws.build_archive(&job).unwrap();
    assert_ne!(previous.sha256, rebuilt.sha256);
    drop(ws);
    let root = d.path().join("ws");
    let ws = Workspace::open(&root, Limits::default()).unwrap();
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Found);

    // The status names the previous archive: not kept (the caller rebuilds), still Found.
    assert!(
        !ws.verify_found_archive(&job, &previous.sha256, None)
            .unwrap()
    );
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Found);

    // The status names this one: current from now on, compared by sha256.
    let location = Some("s3://bucket/key".to_owned());
    assert!(
        ws.verify_found_archive(&job, &rebuilt.sha256, location.clone())
            .unwrap()
    );
    let Freshness::Current(info) = ws.archive_freshness(&job).unwrap() else {
        panic!("a verified archive is current");
    };
    assert_eq!(info.sha256, rebuilt.sha256);
    assert_eq!(info.size_bytes, rebuilt.size_bytes);
    assert_eq!(info.location, location);
    assert!(!Freshness::Current(info).matches(&previous.sha256));
    // Nothing left to verify.
    assert!(
        !ws.verify_found_archive(&job, &rebuilt.sha256, None)
            .unwrap()
    );
}

#[test]
fn an_archive_holds_the_version_of_the_files_its_build_started_from() {
    let (_d, ws, job) = setup(Limits::default());
    ws.write(&job, &p("f"), b"one").unwrap();
    // The build takes its version of the files before listing them; a write committed after
    // that point (here: before the record is set back to that version) makes it stale.
    let before = ws.lock().jobs.get(&job).unwrap().files_version;
    ws.write(&job, &p("g"), b"late").unwrap();
    let info = ws.build_archive(&job).unwrap();
    assert_eq!(
        ws.archive_freshness(&job).unwrap(),
        Freshness::Current(info.clone())
    );
    ws.lock().jobs.get_mut(&job).unwrap().archive = Some(store::ArchiveRecord {
        files_version: before,
        built: Some(info),
    });
    assert_eq!(ws.archive_freshness(&job).unwrap(), Freshness::Stale);
}

#[test]
fn a_symlinked_archive_is_not_served() {
    let (d, ws, job) = setup(Limits::default());
    let secret = d.path().join("secret");
    fs::write(&secret, b"secret").unwrap();
    symlink(&secret, ws.archive_path(&job)).unwrap();
    assert!(matches!(ws.open_archive(&job), Err(Error::Symlink { .. })));
    // Building replaces the link itself, leaving its target alone.
    ws.build_archive(&job).unwrap();
    assert_eq!(fs::read(&secret).unwrap(), b"secret");
    assert!(
        fs::symlink_metadata(ws.archive_path(&job))
            .unwrap()
            .is_file()
    );
}

/// A tree large enough to span several archive chunks: many small text files, a few large
/// ones (one larger than a chunk), an empty file, names in several scripts and depths.
fn chunky_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut noise = |len: usize| {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    for i in 0..300 {
        let text = format!("line {i} of a source file\n").repeat(1 + i % 40);
        files.push((format!("src/mod{}/file{i:03}.rs", i % 7), text.into_bytes()));
    }
    files.push(("assets/big.bin".into(), noise(3 << 20)));
    files.push(("assets/medium.bin".into(), noise(700 << 10)));
    files.push(("docs/长文.md".into(), "文字\n".repeat(50_000).into_bytes()));
    files.push(("empty".into(), Vec::new()));
    files.push(("z/last.txt".into(), b"end\n".to_vec()));
    files
}

#[test]
fn archives_keep_the_bytes_of_the_sequential_build() {
    let (_d, ws, job) = setup(Limits::default());
    for (path, data) in chunky_files() {
        ws.write(&job, &p(&path), &data).unwrap();
    }
    // Built by the one-thread code before archives were compressed in parallel.
    const GOLDEN: &str = "93618c3f416e6454effcd29961d86095e854c6c85c81f9ea259d9d20df7b0b3f";
    let built = ws.build_archive(&job).unwrap();
    assert_eq!(
        (built.sha256.as_str(), built.size_bytes),
        (GOLDEN, 3_910_468)
    );

    // The same, on one thread and on many, into a file of its own.
    let files = ws.list(&job).unwrap();
    let job_dir = ws.job_dir(&job);
    for threads in [1, 2, 3, 8] {
        let mut out = tempfile::tempfile().unwrap();
        ws.write_zip(&job, &job_dir, &files, threads, &mut out)
            .unwrap();
        let mut bytes = Vec::new();
        io::Seek::rewind(&mut out).unwrap();
        out.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            GOLDEN,
            "{threads} threads"
        );
    }
    assert_eq!(temp_leftovers(ws.root()), Vec::<String>::new());
    let mut expected = chunky_files();
    expected.sort();
    assert_eq!(unzip(&built.path), expected);
}

#[test]
fn a_parallel_build_fails_cleanly_when_a_file_goes_away() {
    let (_d, ws, job) = setup(Limits::default());
    for (path, data) in chunky_files() {
        ws.write(&job, &p(&path), &data).unwrap();
    }
    let files = ws.list(&job).unwrap();
    ws.delete(&job, &p("src/mod3/file150.rs")).unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let e = ws
        .write_zip(&job, &ws.job_dir(&job), &files, 4, &mut out)
        .unwrap_err();
    assert!(matches!(e, Error::ArchiveSourceChanged { .. }), "{e:?}");
    assert_eq!(temp_leftovers(ws.root()), Vec::<String>::new());
}
