//! Response headers of the file API: the download's `ETag` check and `Content-Disposition`,
//! and the `Content-Type` guessed from a file's name.

use axum::http::{HeaderMap, header};

use crate::workspace::JobPath;

/// Whether `If-None-Match` names the archive's sha256 (or `*`). Weak tags compare equal, as
/// RFC 9110 wants for `If-None-Match`.
pub(super) fn etag_matches(headers: &HeaderMap, sha256: &str) -> bool {
    let ours = format!("\"{sha256}\"");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

/// `Content-Disposition` for `<projectName>.zip`. `filename` keeps `[A-Za-z0-9._-]` and turns
/// everything else into `_` (and a leading `.` too, so the download is not a hidden file);
/// when that lost letters of other scripts, `filename*` (RFC 5987) keeps them, under the
/// same rule for everything that is not a letter or digit, so that no client can be given a
/// path separator, a quote or a control character in either.
pub(super) fn attachment(project: &str) -> String {
    let sanitise = |keep: fn(char) -> bool| -> String {
        project
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if keep(c) && !(i == 0 && c == '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let ascii = sanitise(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let unicode = sanitise(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let mut value = format!("attachment; filename=\"{ascii}.zip\"");
    if unicode != ascii {
        let encoded: String = unicode
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        value.push_str(&format!("; filename*=UTF-8''{encoded}.zip"));
    }
    value
}

/// A Content-Type guessed from the file name: JSON, plain text for common text formats, else
/// bytes. Markup and scripts are served as plain text on purpose: the API is not a web server.
pub(super) fn content_type(path: &JobPath) -> &'static str {
    const TEXT: &str = "text/plain; charset=utf-8";
    let name = path.file_name();
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "txt" | "md" | "markdown" | "rst" | "adoc" | "yaml" | "yml" | "toml" | "ini" | "cfg"
        | "conf" | "env" | "properties" | "csv" | "tsv" | "log" | "xml" | "html" | "htm"
        | "css" | "scss" | "svg" | "js" | "mjs" | "cjs" | "jsx" | "ts" | "tsx" | "vue" | "rs"
        | "py" | "go" | "java" | "kt" | "kts" | "scala" | "c" | "h" | "cc" | "cpp" | "hpp"
        | "cs" | "rb" | "php" | "pl" | "lua" | "swift" | "r" | "sql" | "graphql" | "proto"
        | "tf" | "hcl" | "sh" | "bash" | "zsh" | "ps1" | "bat" | "j2" | "jinja" | "tpl"
        | "gitignore" | "dockerignore" | "editorconfig" | "lock" | "gradle" => TEXT,
        _ if matches!(
            name,
            "Dockerfile" | "Makefile" | "README" | "LICENSE" | "NOTICE" | "CODEOWNERS"
        ) =>
        {
            TEXT
        }
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn attachment_names_are_sanitised() {
        assert_eq!(
            attachment("my-app_1.0"),
            r#"attachment; filename="my-app_1.0.zip""#
        );
        assert_eq!(
            attachment("../../etc/pass wd\"\r\n"),
            r#"attachment; filename="_._.._etc_pass_wd___.zip""#
        );
        assert_eq!(
            attachment(".hidden"),
            r#"attachment; filename="_hidden.zip""#
        );
        assert_eq!(
            attachment("Café/x"),
            "attachment; filename=\"Caf__x.zip\"; filename*=UTF-8''Caf%C3%A9_x.zip"
        );
        for name in ["a\u{0}b", "日本語", "x;y=\"z\"", "a\\b"] {
            assert!(HeaderValue::from_str(&attachment(name)).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn if_none_match_compares_tags() {
        let mut h = HeaderMap::new();
        assert!(!etag_matches(&h, "abc"));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(etag_matches(&h, "abc"));
        assert!(!etag_matches(&h, "ab"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(etag_matches(&h, "anything"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("abc"));
        assert!(!etag_matches(&h, "abc"), "an unquoted tag is not a tag");
    }

    #[test]
    fn content_types_are_guessed_from_names() {
        let ct = |p: &str| content_type(&JobPath::parse(p).unwrap());
        assert_eq!(ct("a/config.json"), "application/json");
        assert_eq!(ct("README.md"), "text/plain; charset=utf-8");
        assert_eq!(ct("src/index.HTML"), "text/plain; charset=utf-8");
        assert_eq!(ct("Dockerfile"), "text/plain; charset=utf-8");
        assert_eq!(ct("logo.png"), "application/octet-stream");
        assert_eq!(ct("noext"), "application/octet-stream");
    }
}
