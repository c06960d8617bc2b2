//! Workspace path validation ([`JobPath`]) and job keys ([`JobKey`]): whatever is accepted
//! stays inside the job's directory, on paper and on a real filesystem.

use std::path::{Component, Path};

use proptest::prelude::*;

use super::{hostile_path, run};
use crate::workspace::{ErrorKind, JobKey, JobPath, Limits, PathError, Workspace};

/// The rules, written out again independently of `path.rs` (by segment and by character,
/// with `std::path` as the judge of what escapes), so the two must agree.
fn allowed_by_the_rules(s: &str) -> bool {
    let char_ok = |c: char| {
        !(c == '\\' || c == ':' || c.is_control())
            && (c.is_ascii()
                || unicode_general_category::get_general_category(c)
                    != unicode_general_category::GeneralCategory::Format)
    };
    !s.is_empty()
        && s.len() <= 1024
        && s.chars().all(char_ok)
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.len() <= 255
                && !seg.starts_with(".kiln-tmp.")
        })
}

/// What the error says is wrong really is wrong with `s`.
fn error_is_truthful(s: &str, e: &PathError) -> bool {
    let segment = |index: usize| s.split('/').nth(index.wrapping_sub(1));
    match e {
        PathError::Empty => s.is_empty(),
        PathError::NotUtf8 => false,
        PathError::TooLong { len, .. } => *len == s.len() && s.len() > 1024,
        PathError::Absolute => s.starts_with('/'),
        PathError::Nul => s.contains('\0'),
        PathError::Backslash => s.contains('\\'),
        PathError::Colon => s.contains(':'),
        PathError::ControlChar { code } => {
            char::from_u32(*code).is_some_and(|c| c.is_control() && s.contains(c))
        }
        PathError::FormatChar { code } => char::from_u32(*code).is_some_and(|c| s.contains(c)),
        PathError::EmptySegment { index } => segment(*index) == Some(""),
        PathError::DotSegment { index } => segment(*index) == Some("."),
        PathError::ParentSegment { index } => segment(*index) == Some(".."),
        PathError::SegmentTooLong { index, len, .. } => {
            segment(*index).is_some_and(|seg| seg.len() == *len && *len > 255)
        }
        PathError::Reserved { index } => {
            segment(*index).is_some_and(|seg| seg.starts_with(".kiln-tmp."))
        }
    }
}

#[test]
fn fuzz_workspace_paths() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ws = Workspace::open(dir.path().join("ws"), Limits::default()).expect("workspace");
    let job = JobKey::new("fuzz", "0f8c1a2e-5b6d-4c3e-9f10-123456789abc").expect("job key");
    ws.ensure_job(&job).expect("job directory");
    let files = ws.job_dir(&job).join("files");
    let files_real = files.canonicalize().expect("files directory");

    run("workspace-path", 512, hostile_path(), |s| {
        let parsed = JobPath::parse(&s);
        prop_assert_eq!(
            parsed.is_ok(),
            allowed_by_the_rules(&s),
            "rules disagree on {:?}",
            s
        );
        prop_assert_eq!(JobPath::from_bytes(s.as_bytes()), parsed.clone());
        let p = match parsed {
            Err(e) => {
                prop_assert!(error_is_truthful(&s, &e), "{:?} refused as {:?}", s, e);
                prop_assert!(serde_json::from_value::<JobPath>(serde_json::json!(s)).is_err());
                return Ok(());
            }
            Ok(p) => p,
        };
        // On paper: only normal components, one per segment, so joining cannot climb out.
        let components: Vec<Component> = Path::new(p.as_str()).components().collect();
        prop_assert!(components.iter().all(|c| matches!(c, Component::Normal(_))));
        prop_assert_eq!(components.len(), p.segments().count());
        let mut rebuilt = p.parent_segments().join("/");
        if !rebuilt.is_empty() {
            rebuilt.push('/');
        }
        rebuilt.push_str(p.file_name());
        prop_assert_eq!(rebuilt.as_str(), p.as_str());
        let json = serde_json::to_value(&p).expect("a path serialises");
        prop_assert_eq!(
            serde_json::from_value::<JobPath>(json).ok(),
            Some(p.clone())
        );

        // On disk: the file lands where the path says, inside the job's directory.
        match ws.write(&job, &p, s.as_bytes()) {
            Ok(_) => {
                let at = files.join(p.as_str());
                let real = at.canonicalize().expect("the written file exists");
                prop_assert!(
                    real.starts_with(&files_real),
                    "{:?} escaped to {:?}",
                    s,
                    real
                );
                prop_assert_eq!(ws.read(&job, &p).expect("read back"), s.as_bytes());
                ws.delete(&job, &p).expect("delete");
                prop_assert!(!at.exists());
            }
            // A directory left where an earlier case wrote `p/...` (or the reverse).
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => prop_assert!(false, "writing {:?} failed: {}", s, e),
        }
        Ok(())
    });
}

#[test]
fn fuzz_job_keys() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ws = Workspace::open(dir.path().join("ws"), Limits::default()).expect("workspace");
    let jobs = ws.root().join("jobs");
    let part = prop_oneof![
        3 => "[a-z0-9-]{1,70}",
        1 => "[a-zA-Z0-9./\\\\:-]{0,10}",
        1 => super::hostile_path(),
    ];
    run("job-key", 512, (part.clone(), part), |(ns, uid)| {
        let Ok(key) = JobKey::new(&ns, &uid) else {
            return Ok(());
        };
        let dir = ws.job_dir(&key);
        let rel = dir
            .strip_prefix(&jobs)
            .expect("a job directory is under jobs/");
        prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        prop_assert_eq!(rel.components().count(), 2, "{:?}", dir);
        Ok(())
    });
}
