//! Paging of a Job's file list: `GET .../files?limit=&continue=&prefix=`.
//!
//! The cursor is the last path of the previous page: the next page starts at the first path
//! after it in byte order. Unlike a Kubernetes list, a page is not read from a snapshot: a file
//! written or deleted while a client pages may or may not show up, but a file that exists
//! throughout is listed exactly once, in order, however the listing is cut.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::error::ApiError;
use crate::workspace::FileInfo;

/// The largest `limit` a client may ask for (a Job holds 10,000 files by default).
pub const MAX_LIMIT: usize = 10_000;
/// The longest `prefix` accepted; a path is never longer.
const MAX_PREFIX_BYTES: usize = 4096;

/// The query parameters of the list route, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    prefix: Option<String>,
}

/// A checked [`ListQuery`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// At most this many files; all of them when `None`.
    pub limit: Option<usize>,
    /// List only paths after this one.
    pub after: Option<String>,
    /// List only paths that start with this.
    pub prefix: String,
}

impl ListQuery {
    /// Checks the parameters: 400 with the parameter's name for a bad one.
    pub fn parse(self) -> Result<ListRequest, ApiError> {
        let limit = match self.limit.as_deref() {
            None | Some("") => None,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
                _ => {
                    return Err(bad_parameter(
                        "limit",
                        format!("limit must be a whole number from 1 to {MAX_LIMIT}, not {text:?}"),
                    ));
                }
            },
        };
        let after = match self.continue_token.as_deref() {
            None | Some("") => None,
            Some(token) => Some(decode_token(token).ok_or_else(|| {
                bad_parameter(
                    "continue",
                    "continue must be the token of an earlier page of this list, unchanged",
                )
            })?),
        };
        let prefix = self.prefix.unwrap_or_default();
        if prefix.len() > MAX_PREFIX_BYTES {
            return Err(bad_parameter(
                "prefix",
                format!("prefix is longer than {MAX_PREFIX_BYTES} bytes"),
            ));
        }
        Ok(ListRequest {
            limit,
            after,
            prefix,
        })
    }
}

/// One page of a listing, with the totals of everything the prefix selects.
#[derive(Debug)]
pub struct Page {
    pub files: Vec<FileInfo>,
    /// The token for the next page; `None` on the last page.
    pub continue_token: Option<String>,
    /// Files the prefix selects, on every page.
    pub matched_files: usize,
    /// Their bytes.
    pub matched_bytes: u64,
}

impl ListRequest {
    /// Cuts `files` (sorted by path, byte-wise) into the page asked for.
    pub fn page(&self, files: Vec<FileInfo>) -> Page {
        let matching = files
            .into_iter()
            .filter(|f| f.path.as_str().starts_with(&self.prefix));
        let (mut matched_files, mut matched_bytes) = (0usize, 0u64);
        let mut page = Vec::new();
        let mut more = false;
        for file in matching {
            matched_files += 1;
            matched_bytes += file.size_bytes;
            let after_cursor = self
                .after
                .as_deref()
                .is_none_or(|after| file.path.as_str().as_bytes() > after.as_bytes());
            if !after_cursor {
                continue;
            }
            if self.limit.is_some_and(|limit| page.len() >= limit) {
                more = true;
            } else {
                page.push(file);
            }
        }
        let continue_token = more
            .then(|| page.last().map(|f| encode_token(f.path.as_str())))
            .flatten();
        Page {
            files: page,
            continue_token,
            matched_files,
            matched_bytes,
        }
    }
}

fn encode_token(last_path: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_path.as_bytes())
}

fn decode_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

fn bad_parameter(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(message).with_details(serde_json::json!({"parameter": name}))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::workspace::JobPath;

    fn files(paths: &[&str]) -> Vec<FileInfo> {
        let mut files: Vec<FileInfo> = paths
            .iter()
            .map(|p| FileInfo {
                path: JobPath::parse(p).expect("a valid path"),
                size_bytes: p.len() as u64,
                modified: SystemTime::UNIX_EPOCH,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    fn query(limit: Option<&str>, token: Option<&str>, prefix: Option<&str>) -> ListQuery {
        ListQuery {
            limit: limit.map(str::to_owned),
            continue_token: token.map(str::to_owned),
            prefix: prefix.map(str::to_owned),
        }
    }

    fn paths(page: &Page) -> Vec<&str> {
        page.files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn without_parameters_everything_is_one_page() {
        let request = query(None, None, None).parse().expect("valid");
        let page = request.page(files(&["b", "a/x", "a/y"]));
        assert_eq!(paths(&page), ["a/x", "a/y", "b"]);
        assert_eq!(page.continue_token, None);
        assert_eq!((page.matched_files, page.matched_bytes), (3, 7));
    }

    #[test]
    fn pages_list_every_file_once_in_order() {
        let all = ["a", "a/b", "b", "c/d/e", "c/é", "z"];
        for limit in 1..=7 {
            let mut seen = Vec::new();
            let mut token: Option<String> = None;
            for _ in 0..10 {
                let request = query(Some(&limit.to_string()), token.as_deref(), None)
                    .parse()
                    .expect("valid");
                let page = request.page(files(&all));
                assert!(page.files.len() <= limit);
                assert_eq!(page.matched_files, all.len(), "totals on every page");
                seen.extend(paths(&page).into_iter().map(str::to_owned));
                token = page.continue_token;
                if token.is_none() {
                    break;
                }
            }
            assert_eq!(token, None, "limit {limit}: the last page has no token");
            assert_eq!(seen, all, "limit {limit}");
        }
    }

    #[test]
    fn a_page_ending_exactly_at_the_end_has_no_token() {
        let request = query(Some("2"), None, None).parse().expect("valid");
        assert_eq!(request.page(files(&["a", "b"])).continue_token, None);
    }

    #[test]
    fn files_written_between_pages_do_not_repeat_or_hide_others() {
        let first = query(Some("2"), None, None)
            .parse()
            .expect("valid")
            .page(files(&["a", "c", "e"]));
        let token = first.continue_token.expect("more to come");
        // "b" appears before the cursor (not listed), "d" after it (listed), "c" deleted.
        let second = query(Some("2"), Some(&token), None)
            .parse()
            .expect("valid")
            .page(files(&["a", "b", "d", "e"]));
        assert_eq!(paths(&second), ["d", "e"]);
    }

    #[test]
    fn a_prefix_selects_paths_and_totals() {
        let request = query(Some("1"), None, Some("reports/"))
            .parse()
            .expect("valid");
        let page = request.page(files(&["reports/a.md", "reports/b.md", "reportsx", "z"]));
        assert_eq!(paths(&page), ["reports/a.md"]);
        assert_eq!(page.matched_files, 2);
        let token = page.continue_token.expect("more to come");
        let next = query(Some("1"), Some(&token), Some("reports/"))
            .parse()
            .expect("valid")
            .page(files(&["reports/a.md", "reports/b.md", "reportsx", "z"]));
        assert_eq!(paths(&next), ["reports/b.md"]);
        assert_eq!(next.continue_token, None);
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        for (q, name) in [
            (query(Some("0"), None, None), "limit"),
            (query(Some("10001"), None, None), "limit"),
            (query(Some("-1"), None, None), "limit"),
            (query(Some("ten"), None, None), "limit"),
            (query(None, Some("not base64!"), None), "continue"),
            (query(None, Some("__8"), None), "continue"), // not UTF-8
            (query(None, None, Some(&"p".repeat(5000))), "prefix"),
        ] {
            let e = q.parse().expect_err(name);
            assert_eq!(e.body()["details"]["parameter"], name, "{e:?}");
        }
    }
}
