//! [`JobPath`]: the only way a file name supplied by a user reaches the filesystem.
//!
//! A `JobPath` is checked once, when it is parsed, against every rule of the workspace
//! (the rules below; `docs/api.md` states them for users); code that holds one never needs to check again. The
//! rules are deliberately stricter than what Linux accepts, because the files end up in a ZIP
//! that people extract on any operating system:
//!
//! - UTF-8, relative (no leading `/`), not empty, at most [`MAX_PATH_BYTES`] bytes;
//! - segments separated by `/`, each non-empty, not `.` or `..`, at most [`MAX_SEGMENT_BYTES`]
//!   bytes;
//! - no NUL, no backslash (a separator on Windows, so `a\..\x` would climb out there), no
//!   Unicode control character (category Cc: C0, DEL and C1), no Unicode format character
//!   (category Cf: the bidirectional controls U+202A–U+202E and U+2066–U+2069, zero-width
//!   characters such as U+200B–U+200D, the byte-order mark U+FEFF, soft hyphens, …). These
//!   are invisible or reorder what is shown: `invoice\u{202E}fdp.exe` displays as
//!   `invoiceexe.pdf`, so a person reviewing a listing or an archive would see another name
//!   than the one stored;
//! - no `:` anywhere: in the first segment it is a drive prefix (`C:x` is drive-relative on
//!   Windows), elsewhere it names an NTFS alternate data stream (`a.txt:hidden`). Refusing it
//!   everywhere is simpler to explain than refusing it in some positions;
//! - no segment starting with `.kiln-tmp.`, the prefix Kiln reserves for its temporary files.
//!
//! Paths are case-sensitive and not Unicode-normalised: `é` written as one code point and as
//! `e` + combining accent are two different files, as on Linux.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted path, in bytes (UTF-8).
pub const MAX_PATH_BYTES: usize = 1024;

/// Longest accepted segment (file or directory name), in bytes: the common filesystem limit.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Prefix of the temporary files Kiln creates next to the files it writes. User paths may not
/// use it, so a temporary file can never be mistaken for, or collide with, a user's file.
pub(crate) const RESERVED_PREFIX: &str = ".kiln-tmp.";

/// Why a path was refused. Segment indexes are 1-based, as a person would count them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// The bytes are not valid UTF-8.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    /// The whole path is longer than [`MAX_PATH_BYTES`].
    #[error("path is {len} bytes long, more than the maximum of {max}")]
    TooLong { len: usize, max: usize },
    /// The path starts with `/`.
    #[error("path must be relative, but it starts with '/'")]
    Absolute,
    /// The path contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// The path contains `\`.
    #[error("path contains a backslash; directories are separated by '/'")]
    Backslash,
    /// The path contains `:`.
    #[error("path contains ':' (drive prefixes and alternate data streams are not allowed)")]
    Colon,
    /// The path contains a control character other than NUL.
    #[error("path contains the control character U+{code:04X}")]
    ControlChar { code: u32 },
    /// The path contains an invisible format character (Unicode category Cf), such as a
    /// bidirectional control that makes the name display differently from what it is.
    #[error(
        "path contains the invisible format character U+{code:04X} (bidirectional controls, \
         zero-width characters and other Unicode format characters are not allowed)"
    )]
    FormatChar { code: u32 },
    /// A segment is empty: a doubled or trailing `/`.
    #[error("segment {index} is empty (a doubled or trailing '/')")]
    EmptySegment { index: usize },
    /// A segment is `.`.
    #[error("segment {index} is '.'")]
    DotSegment { index: usize },
    /// A segment is `..`.
    #[error("segment {index} is '..'; paths may not leave the job's directory")]
    ParentSegment { index: usize },
    /// A segment is longer than [`MAX_SEGMENT_BYTES`].
    #[error("segment {index} is {len} bytes long, more than the maximum of {max}")]
    SegmentTooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    /// A segment starts with the prefix reserved for Kiln's temporary files.
    #[error("segment {index} starts with '{RESERVED_PREFIX}', which is reserved for Kiln")]
    Reserved { index: usize },
}

/// A validated, relative path of a file inside a job, such as `src/main.rs`.
///
/// Ordering is byte-wise on the UTF-8 string; listings and archives use this order.
/// Serialises as a plain string; deserialising validates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobPath(String);

impl JobPath {
    /// Checks `path` against every workspace rule.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        validate(path)?;
        Ok(JobPath(path.to_owned()))
    }

    /// Like [`JobPath::parse`], for bytes that may not be UTF-8 (a percent-decoded URL).
    pub fn from_bytes(path: &[u8]) -> Result<Self, PathError> {
        let path = std::str::from_utf8(path).map_err(|_| PathError::NotUtf8)?;
        Self::parse(path)
    }

    /// The path as a string, segments separated by `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, first to last; never empty.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment: the file's own name.
    pub fn file_name(&self) -> &str {
        // A JobPath never ends with '/', so the last segment is non-empty.
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The directory segments, without the file name (empty for a top-level file).
    pub fn parent_segments(&self) -> Vec<&str> {
        let mut segments: Vec<&str> = self.segments().collect();
        segments.pop();
        segments
    }
}

fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            len: path.len(),
            max: MAX_PATH_BYTES,
        });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for c in path.chars() {
        match c {
            '\0' => return Err(PathError::Nul),
            '\\' => return Err(PathError::Backslash),
            ':' => return Err(PathError::Colon),
            c if c.is_control() => return Err(PathError::ControlChar { code: c as u32 }),
            c if is_format(c) => return Err(PathError::FormatChar { code: c as u32 }),
            _ => {}
        }
    }
    for (i, segment) in path.split('/').enumerate() {
        let index = i + 1;
        match segment {
            "" => return Err(PathError::EmptySegment { index }),
            "." => return Err(PathError::DotSegment { index }),
            ".." => return Err(PathError::ParentSegment { index }),
            s if s.len() > MAX_SEGMENT_BYTES => {
                return Err(PathError::SegmentTooLong {
                    index,
                    len: s.len(),
                    max: MAX_SEGMENT_BYTES,
                });
            }
            s if s.starts_with(RESERVED_PREFIX) => return Err(PathError::Reserved { index }),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `c` is a Unicode format character (general category Cf).
fn is_format(c: char) -> bool {
    // ASCII has none; skip the table lookup for the common case.
    !c.is_ascii()
        && unicode_general_category::get_general_category(c)
            == unicode_general_category::GeneralCategory::Format
}

impl fmt::Display for JobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JobPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for JobPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(JobPath(s))
    }
}

impl TryFrom<&str> for JobPath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<JobPath> for String {
    fn from(p: JobPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused_with_the_right_reason() {
        let long_name = "a".repeat(5000);
        let long_segment = format!("dir/{}", "b".repeat(256));
        let cases: Vec<(&str, PathError)> = vec![
            ("", PathError::Empty),
            ("../x", PathError::ParentSegment { index: 1 }),
            ("..", PathError::ParentSegment { index: 1 }),
            ("a/../../x", PathError::ParentSegment { index: 2 }),
            ("a/..", PathError::ParentSegment { index: 2 }),
            ("/etc/passwd", PathError::Absolute),
            ("/", PathError::Absolute),
            ("//x", PathError::Absolute),
            ("a\\b", PathError::Backslash),
            ("..\\..\\x", PathError::Backslash),
            ("C:x", PathError::Colon),
            ("C:\\x", PathError::Colon),
            ("c:/windows", PathError::Colon),
            ("a.txt:stream", PathError::Colon),
            ("a\0b", PathError::Nul),
            ("a\nb", PathError::ControlChar { code: 0x0a }),
            ("a\tb", PathError::ControlChar { code: 0x09 }),
            ("a\x1bb", PathError::ControlChar { code: 0x1b }),
            ("a\x7fb", PathError::ControlChar { code: 0x7f }),
            ("a\u{85}b", PathError::ControlChar { code: 0x85 }),
            // Format characters (Cf): bidirectional overrides, embeddings and isolates,
            // zero-width characters, the byte-order mark, soft hyphen, Arabic number sign.
            (
                "invoice\u{202E}fdp.exe",
                PathError::FormatChar { code: 0x202E },
            ),
            ("a\u{202A}b", PathError::FormatChar { code: 0x202A }),
            ("a\u{200B}b", PathError::FormatChar { code: 0x200B }),
            ("a\u{200D}b", PathError::FormatChar { code: 0x200D }),
            ("a\u{2066}b", PathError::FormatChar { code: 0x2066 }),
            ("a\u{2067}b", PathError::FormatChar { code: 0x2067 }),
            ("a\u{2068}b", PathError::FormatChar { code: 0x2068 }),
            ("dir/a\u{2069}b", PathError::FormatChar { code: 0x2069 }),
            ("\u{FEFF}a", PathError::FormatChar { code: 0xFEFF }),
            ("a\u{AD}b", PathError::FormatChar { code: 0xAD }),
            ("a\u{600}b", PathError::FormatChar { code: 0x600 }),
            ("a\u{E0001}b", PathError::FormatChar { code: 0xE0001 }),
            (".", PathError::DotSegment { index: 1 }),
            ("./a", PathError::DotSegment { index: 1 }),
            ("a/./b", PathError::DotSegment { index: 2 }),
            ("a//b", PathError::EmptySegment { index: 2 }),
            ("a/", PathError::EmptySegment { index: 2 }),
            (
                &long_name,
                PathError::TooLong {
                    len: 5000,
                    max: MAX_PATH_BYTES,
                },
            ),
            (
                &long_segment,
                PathError::SegmentTooLong {
                    index: 2,
                    len: 256,
                    max: MAX_SEGMENT_BYTES,
                },
            ),
            (".kiln-tmp.x", PathError::Reserved { index: 1 }),
            ("a/.kiln-tmp.archive", PathError::Reserved { index: 2 }),
        ];
        for (input, expected) in cases {
            assert_eq!(
                JobPath::parse(input),
                Err(expected),
                "input {input:?} should be refused"
            );
        }
    }

    #[test]
    fn ordinary_and_unicode_paths_are_accepted() {
        let max_segment = "s".repeat(MAX_SEGMENT_BYTES);
        let max_path = ["d"; MAX_PATH_BYTES / 2].join("/") + "x";
        assert_eq!(max_path.len(), MAX_PATH_BYTES);
        for ok in [
            "README.md",
            "src/main.rs",
            "a/b/c/d/e.txt",
            ".gitignore",
            ".github/workflows/ci.yml",
            "...",
            "..a",
            "a..",
            "a b/c d.txt",
            "日本語/ファイル.txt",
            "émoji-🎉.md",
            "Ünïcödé/Straße.yaml",
            ".kiln-tmp",
            "kiln-tmp.x",
            max_segment.as_str(),
            max_path.as_str(),
        ] {
            let parsed = JobPath::parse(ok);
            assert!(parsed.is_ok(), "{ok:?} should be accepted: {parsed:?}");
        }
    }

    #[test]
    fn non_utf8_bytes_are_refused() {
        assert_eq!(JobPath::from_bytes(b"a/\xff.txt"), Err(PathError::NotUtf8));
        assert_eq!(
            JobPath::from_bytes("ok/é.txt".as_bytes()).map(String::from),
            Ok("ok/é.txt".to_owned())
        );
    }

    #[test]
    fn segments_and_file_name() {
        let p = JobPath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "b", "c.txt"]);
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(p.parent_segments(), ["a", "b"]);
        let top = JobPath::parse("top.txt").unwrap();
        assert_eq!(top.file_name(), "top.txt");
        assert!(top.parent_segments().is_empty());
    }

    #[test]
    fn serde_validates() {
        let p: JobPath = serde_json::from_str("\"a/b.txt\"").unwrap();
        assert_eq!(p.as_str(), "a/b.txt");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"a/b.txt\"");
        assert!(serde_json::from_str::<JobPath>("\"../x\"").is_err());
    }

    #[test]
    fn ordering_is_bytewise() {
        let mut paths: Vec<JobPath> = ["b", "a/b", "a.txt", "B", "a/a"]
            .into_iter()
            .map(|p| JobPath::parse(p).unwrap())
            .collect();
        paths.sort();
        let sorted: Vec<&str> = paths.iter().map(JobPath::as_str).collect();
        assert_eq!(sorted, ["B", "a.txt", "a/a", "a/b", "b"]);
    }
}
