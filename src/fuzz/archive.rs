//! Archive building from odd trees: the archive lists exactly the job's files, in order, with
//! their bytes; its sha256 is the file's; building again gives the same bytes. Odd trees mix
//! unicode and 255-byte names, deep and empty directories, empty and large files, files that
//! span the parallel builder's runs, and entries Kiln never creates (leftover temporary
//! files, a symlink to a secret outside the workspace), none of which may reach the archive.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::{run, valid_path};
use crate::workspace::{ErrorKind, Freshness, JobKey, JobPath, Limits, Workspace};

#[derive(Debug, Clone)]
struct Tree {
    files: Vec<(String, Content)>,
    empty_dirs: Vec<String>,
    temp_leftovers: Vec<String>,
    symlink: Option<String>,
}

#[derive(Clone)]
enum Content {
    Bytes(Vec<u8>),
    Repeated(u8, usize),
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Bytes(b) if b.len() > 64 => write!(f, "Bytes(<{} bytes>)", b.len()),
            Content::Bytes(b) => write!(f, "Bytes({b:?})"),
            Content::Repeated(b, n) => write!(f, "Repeated({b}, {n})"),
        }
    }
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Bytes(b) => b.clone(),
            Content::Repeated(b, n) => vec![*b; *n],
        }
    }
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Content::Bytes),
        1 => prop::collection::vec(any::<u8>(), 0..65_536).prop_map(Content::Bytes),
        1 => (any::<u8>(), 0usize..3_000_000).prop_map(|(b, n)| Content::Repeated(b, n)),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    let files = prop_oneof![
        4 => prop::collection::vec((valid_path(), content()), 0..24),
        // More entries than one run of the parallel builder holds (512).
        1 => prop::collection::vec(
            (valid_path(), prop::collection::vec(any::<u8>(), 0..64).prop_map(Content::Bytes)),
            500..700,
        ),
    ];
    (
        files,
        prop::collection::vec(valid_path(), 0..3),
        prop::collection::vec("[a-z]{1,6}", 0..3),
        prop::option::weighted(0.2, valid_path()),
    )
        .prop_map(|(files, empty_dirs, temp_leftovers, symlink)| Tree {
            files,
            empty_dirs,
            temp_leftovers,
            symlink,
        })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn fuzz_archives() {
    let outside = tempfile::tempdir().expect("a temporary directory");
    let secret = outside.path().join("secret");
    fs::write(&secret, b"SECRET OUTSIDE THE WORKSPACE").expect("write the secret");
    run("archive", 12, tree(), |tree| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ws = Workspace::open(dir.path().join("ws"), Limits::default()).expect("workspace");
        let job = JobKey::new("fuzz", "archive-job").expect("job key");
        ws.ensure_job(&job).expect("job directory");
        let files_dir = ws.job_dir(&job).join("files");

        let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (path, content) in &tree.files {
            let p = JobPath::parse(path).expect("valid_path gives valid paths");
            let bytes = content.bytes();
            match ws.write(&job, &p, &bytes) {
                Ok(_) => {
                    expected.insert(path.clone(), bytes);
                }
                // `a` and `a/b` cannot both be files; the later one is refused.
                Err(e) if e.kind() == ErrorKind::Conflict => {}
                Err(e) => prop_assert!(false, "writing {:?} failed: {}", path, e),
            }
        }
        // Entries Kiln never creates, made behind its back.
        for d in &tree.empty_dirs {
            let _ = fs::create_dir_all(files_dir.join(d));
        }
        for name in &tree.temp_leftovers {
            let _ = fs::write(files_dir.join(format!(".kiln-tmp.{name}")), b"partial");
        }
        if let Some(link) = &tree.symlink {
            let at = files_dir.join(link);
            let made = at.parent().is_some_and(|p| fs::create_dir_all(p).is_ok())
                && std::os::unix::fs::symlink(&secret, &at).is_ok();
            let _ = made;
        }

        let info = match ws.build_archive(&job) {
            Ok(info) => info,
            // A symlink on the way to a file is refused, never followed.
            Err(e) if tree.symlink.is_some() && e.kind() == ErrorKind::Conflict => return Ok(()),
            Err(e) => {
                prop_assert!(false, "building failed: {}", e);
                unreachable!()
            }
        };
        let zip_bytes = fs::read(&info.path).expect("the archive exists");
        prop_assert_eq!(sha256_hex(&zip_bytes), info.sha256.clone());
        prop_assert_eq!(zip_bytes.len() as u64, info.size_bytes);
        prop_assert_eq!(
            ws.archive_freshness(&job).ok(),
            Some(Freshness::Current(info.clone()))
        );

        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&zip_bytes)).expect("a ZIP");
        prop_assert_eq!(zip.len(), expected.len());
        for (i, (path, bytes)) in expected.iter().enumerate() {
            let mut entry = zip.by_index(i).expect("an entry");
            let name = entry.name().map(|n| n.into_owned()).ok();
            prop_assert_eq!(
                name.as_deref(),
                Some(path.as_str()),
                "entry {} out of order",
                i
            );
            prop_assert!(entry.is_file());
            let enclosed = entry.enclosed_name();
            prop_assert_eq!(
                enclosed.as_deref(),
                Some(std::path::Path::new(path.as_str()))
            );
            let mut got = Vec::with_capacity(bytes.len());
            entry.read_to_end(&mut got).expect("the entry decompresses");
            prop_assert!(got == *bytes, "{:?}: content differs", path);
        }
        // Deterministic: the same files give the same bytes.
        let again = ws.build_archive(&job).expect("a second build");
        prop_assert_eq!(again.sha256, info.sha256);
        Ok(())
    });
}
