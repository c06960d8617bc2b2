//! Embeds the git commit Kiln is built from as `KILN_GIT_COMMIT` (shown by `kiln version`).
//!
//! In order:
//! 1. the `KILN_GIT_COMMIT` environment variable, when set and not empty: the image build
//!    passes it as a build argument, because `.git` is not in its build context;
//! 2. `git rev-parse --short HEAD`, when the crate's directory is the top of a git checkout
//!    (a source tarball unpacked inside some other repository must not take that one's commit);
//! 3. `unknown`.
//!
//! The script runs again when the variable changes or HEAD moves (the files git changes on a
//! commit or a checkout), and at no other time: with no `rerun-if-changed` at all, Cargo would
//! run it after any edit in the package.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KILN_GIT_COMMIT");
    let commit = from_env()
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KILN_GIT_COMMIT={commit}");
}

fn from_env() -> Option<String> {
    let value = std::env::var("KILN_GIT_COMMIT").ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // A commit id, a short one, or `unknown`: nothing that could break the version line.
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        panic!("KILN_GIT_COMMIT={value:?}: expected a commit id (letters, digits, '-', '.')");
    }
    Some(value.to_owned())
}

fn from_git() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    if !same_dir(Path::new(&top), &manifest_dir) {
        return None;
    }
    let commit = git(&manifest_dir, &["rev-parse", "--short", "HEAD"])?;
    watch_head(&manifest_dir);
    Some(commit)
}

/// Asks Cargo to run this script again when HEAD moves: HEAD itself (a checkout), the branch's
/// ref (a commit), or packed-refs when the ref lives there. Only existing files are named:
/// Cargo treats a missing one as always changed. The refs directory is not watched as a
/// whole, so that commits on other branches (other worktrees) do not rebuild this one.
fn watch_head(dir: &Path) {
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { dir.join(p) }
    };
    let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]).map(absolute) else {
        return;
    };
    let common_dir = git(dir, &["rev-parse", "--git-common-dir"])
        .map(absolute)
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD")];
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = common_dir.join(&reference);
        if loose.is_file() {
            watched.push(loose);
        } else {
            watched.push(common_dir.join("packed-refs"));
        }
    }
    for path in watched.into_iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
