//! Fuzzing of the file API's request handling, the layer Kiln owns between the HTTP server
//! and the workspace: the URL path (percent-decoding by axum's router, then the workspace
//! rules), JSON bodies and batches, body size limits, the list query and its paging, and the
//! response headers built from user input. Admission (token, SubjectAccessReview, the Job)
//! is decided by the API server and tested against a real one elsewhere.

use std::io::Read;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::body::{BatchRequest, BodyReader, parse_json, read_body};
use super::files::{PathParams, job_path, params};
use super::headers::{attachment, content_type, etag_matches};
use super::jobs::check_names;
use super::listing::{ListQuery, MAX_LIMIT};
use crate::fuzz::{hostile_path, run, valid_path};
use crate::workspace::{FileInfo, JobPath};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// Everything but unreserved characters and `/` is percent-encoded, as a client would.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

#[test]
fn fuzz_file_api_url_paths() {
    // The route of `GET/PUT/DELETE .../files/{*path}`, with a handler that stops where
    // admission would start: what the file API would take as the path, or its 400.
    let router: Router = Router::new().route(
        "/api/v1/namespaces/{ns}/jobs/{name}/files/{*path}",
        get(|p: PathParams| async move {
            let parsed = params(p).and_then(|p| {
                check_names(&p.ns, &p.name)?;
                job_path(p.path.as_deref().unwrap_or_default())
            });
            match parsed {
                Ok(path) => (StatusCode::OK, path.to_string()).into_response(),
                Err(e) => e.into_response(),
            }
        }),
    );
    let rt = runtime();
    let name = prop_oneof![3 => "[a-z0-9][a-z0-9.-]{0,20}", 1 => hostile_path()];
    let path = prop_oneof![
        3 => hostile_path().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    run(
        "file-api-url-path",
        512,
        (name.clone(), name, path),
        |(ns, job, path)| {
            let enc = |b: &[u8]| percent_encode(b, NON_ALPHANUMERIC).to_string();
            let uri = format!(
                "/api/v1/namespaces/{}/jobs/{}/files/{}",
                enc(ns.as_bytes()),
                enc(job.as_bytes()),
                percent_encode(&path, PATH_SET)
            );
            let request = Request::get(&uri).body(Body::empty()).expect("a request");
            let response = rt
                .block_on(router.clone().oneshot(request))
                .expect("the router answers");
            let status = response.status();
            let body = rt
                .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .expect("a body");
            let names_ok = check_names(&ns, &job).is_ok();
            let valid = JobPath::from_bytes(&path).ok();
            if status == StatusCode::OK {
                // Accepted: exactly the path the client sent, and a valid one.
                prop_assert!(names_ok);
                prop_assert_eq!(
                    valid.as_ref().map(JobPath::as_str),
                    std::str::from_utf8(&body).ok()
                );
            } else {
                prop_assert!(
                    status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
                    "status {} for {}",
                    status,
                    uri
                );
                prop_assert!(
                    !(names_ok && valid.is_some()),
                    "{} refused with {}",
                    uri,
                    status
                );
            }
            Ok(())
        },
    );
}

#[derive(Debug, Clone)]
enum Encoding {
    Missing,
    Utf8(&'static str),
    Base64 { padded: bool },
    CorruptBase64,
    Unknown(String),
}

#[derive(Debug, Clone)]
struct BatchFile {
    path: String,
    payload: Vec<u8>,
    encoding: Encoding,
    extra_field: bool,
}

impl BatchFile {
    fn json(&self) -> Value {
        let content = match &self.encoding {
            Encoding::Base64 { padded: true } => {
                base64::engine::general_purpose::STANDARD.encode(&self.payload)
            }
            Encoding::Base64 { padded: false } => {
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.payload)
            }
            Encoding::CorruptBase64 => {
                format!(
                    "{}!",
                    base64::engine::general_purpose::STANDARD.encode(&self.payload)
                )
            }
            _ => String::from_utf8_lossy(&self.payload).into_owned(),
        };
        let mut file = json!({"path": self.path, "content": content});
        match &self.encoding {
            Encoding::Missing => {}
            Encoding::Utf8(name) => file["encoding"] = json!(name),
            Encoding::Base64 { .. } | Encoding::CorruptBase64 => file["encoding"] = json!("base64"),
            Encoding::Unknown(name) => file["encoding"] = json!(name),
        }
        if self.extra_field {
            file["encodng"] = json!("base64");
        }
        file
    }

    /// The bytes the file API must write for this file, or `None` when it must refuse it.
    fn expected(&self) -> Option<Vec<u8>> {
        match &self.encoding {
            Encoding::Missing | Encoding::Utf8(_) => Some(
                String::from_utf8_lossy(&self.payload)
                    .into_owned()
                    .into_bytes(),
            ),
            Encoding::Base64 { .. } => Some(self.payload.clone()),
            Encoding::CorruptBase64 | Encoding::Unknown(_) => None,
        }
    }
}

fn batch_file() -> impl Strategy<Value = BatchFile> {
    let encoding = prop_oneof![
        2 => Just(Encoding::Missing),
        1 => prop::sample::select(vec!["utf-8", "utf8"]).prop_map(Encoding::Utf8),
        3 => any::<bool>().prop_map(|padded| Encoding::Base64 { padded }),
        1 => Just(Encoding::CorruptBase64),
        1 => prop::sample::select(vec!["hex", "UTF-8", "Base64", "", "latin1"])
            .prop_map(|e| Encoding::Unknown(e.to_owned())),
    ];
    (
        hostile_path(),
        prop::collection::vec(any::<u8>(), 0..300),
        encoding,
        prop::bool::weighted(0.05),
    )
        .prop_map(|(path, payload, encoding, extra_field)| BatchFile {
            path,
            payload,
            encoding,
            extra_field,
        })
}

#[derive(Debug, Clone)]
enum BatchBody {
    Files {
        files: Vec<BatchFile>,
        top_extra: bool,
        cut: Option<usize>,
    },
    Bytes(Vec<u8>),
}

#[test]
fn fuzz_file_api_batch_json() {
    let body = prop_oneof![
        4 => (
            prop::collection::vec(batch_file(), 0..8),
            prop::bool::weighted(0.05),
            prop::option::weighted(0.1, any::<usize>()),
        )
            .prop_map(|(files, top_extra, cut)| BatchBody::Files { files, top_extra, cut }),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(BatchBody::Bytes),
        1 => "[\\[\\]{}\":,a-z0-9 \\\\]{0,64}".prop_map(|s| BatchBody::Bytes(s.into_bytes())),
    ];
    run("file-api-batch-json", 512, body, |body| {
        let (bytes, files, must_fail) = match &body {
            BatchBody::Bytes(b) => (b.clone(), None, false),
            BatchBody::Files {
                files,
                top_extra,
                cut,
            } => {
                let mut doc =
                    json!({"files": files.iter().map(BatchFile::json).collect::<Vec<_>>()});
                if *top_extra {
                    doc["dryRun"] = json!(true);
                }
                let mut bytes = serde_json::to_vec(&doc).expect("JSON serialises");
                let cut_short = cut.is_some_and(|c| c % (bytes.len() + 1) < bytes.len());
                if let Some(c) = cut {
                    bytes.truncate(c % (bytes.len() + 1));
                }
                let refused = *top_extra
                    || cut_short
                    || files
                        .iter()
                        .any(|f| f.extra_field || matches!(f.encoding, Encoding::Unknown(_)));
                (bytes, Some(files), refused)
            }
        };
        let request = match parse_json::<BatchRequest>(&bytes) {
            Err(e) => {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                if let Some(files) = files {
                    prop_assert!(
                        must_fail,
                        "refused a well-formed batch of {:?}: {}",
                        files,
                        e.message
                    );
                }
                return Ok(());
            }
            Ok(request) => request,
        };
        let Some(files) = files else { return Ok(()) };
        prop_assert!(!must_fail, "accepted a malformed batch");
        prop_assert_eq!(request.files.len(), files.len());
        for (got, sent) in request.files.into_iter().zip(files) {
            prop_assert_eq!(
                job_path(&got.path).is_ok(),
                JobPath::parse(&sent.path).is_ok()
            );
            match (got.into_bytes(), sent.expected()) {
                (Ok(bytes), Some(expected)) => {
                    prop_assert!(bytes == expected, "content of {:?}", sent)
                }
                (Err(e), None) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
                (got, expected) => prop_assert!(
                    false,
                    "{:?}: got {:?}, expected {:?}",
                    sent,
                    got.map(|b| b.len()),
                    expected.map(|b| b.len())
                ),
            }
        }
        Ok(())
    });
}

#[derive(Debug, Clone)]
enum Declared {
    None,
    Truthful,
    Lie(u64),
    Junk(String),
}

#[test]
fn fuzz_file_api_body_limits() {
    let rt = runtime();
    let input = (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4096), 0..12),
        prop_oneof![
            Just(Declared::None),
            Just(Declared::Truthful),
            any::<u64>().prop_map(Declared::Lie),
            (0u64..60_000).prop_map(Declared::Lie),
            "[0-9a-z -]{0,8}".prop_map(Declared::Junk),
        ],
        prop_oneof![0u64..60_000, Just(0), Just(u64::MAX)],
    );
    run("file-api-body", 512, input, |(chunks, declared, limit)| {
        let whole: Vec<u8> = chunks.concat();
        let mut headers = HeaderMap::new();
        let declared_len = match &declared {
            Declared::None => None,
            Declared::Truthful => Some(whole.len() as u64),
            Declared::Lie(n) => Some(*n),
            // A header value that is a number is a Content-Length, whatever the intent.
            Declared::Junk(j) => HeaderValue::from_str(j)
                .ok()
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        };
        match &declared {
            Declared::None => {}
            Declared::Junk(j) => {
                if let Ok(v) = HeaderValue::from_str(j) {
                    headers.insert(header::CONTENT_LENGTH, v);
                }
            }
            _ => {
                headers.insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from(declared_len.unwrap_or(0)),
                );
            }
        }
        let body = || {
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                chunks.iter().cloned().map(|c| Ok(Bytes::from(c))).collect();
            Body::from_stream(futures::stream::iter(chunks))
        };
        let read = rt.block_on(read_body(&headers, body(), limit));
        if declared_len.is_some_and(|d| d > limit) || whole.len() as u64 > limit {
            let e = read.expect_err("over the limit");
            prop_assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        } else {
            prop_assert!(read.expect("within the limit") == whole);
        }
        // The streaming reader of PUT yields the bytes in order, whatever the buffer size.
        let mut reader = rt.block_on(async { BodyReader::new(body()) });
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 + chunks.len() * 7];
        loop {
            let n = reader.read(&mut buf).expect("reading the body");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        prop_assert!(out == whole);
        Ok(())
    });
}

fn list_query(
    limit: &Option<String>,
    token: &Option<String>,
    prefix: &Option<String>,
) -> ListQuery {
    let mut q = serde_json::Map::new();
    for (k, v) in [("limit", limit), ("continue", token), ("prefix", prefix)] {
        if let Some(v) = v {
            q.insert(k.to_owned(), json!(v));
        }
    }
    serde_json::from_value(Value::Object(q)).expect("a list query")
}

#[test]
fn fuzz_file_api_listing() {
    let files = prop::collection::btree_map(valid_path(), 0u64..1_000_000, 0..40);
    let limit = prop_oneof![
        1 => Just(None),
        3 => (0usize..=MAX_LIMIT + 2).prop_map(|n| Some(n.to_string())),
        2 => (1usize..6).prop_map(|n| Some(n.to_string())),
        1 => "[0-9a-z+ -]{0,6}".prop_map(Some),
    ];
    let prefix = prop_oneof![
        1 => Just(None),
        2 => "[a-z._/-]{0,3}".prop_map(Some),
        1 => "[a-z]{4097,4100}".prop_map(Some),
    ];
    let token = prop_oneof![4 => Just(None), 1 => "[A-Za-z0-9_=+/-]{0,12}".prop_map(Some)];
    run(
        "file-api-listing",
        256,
        (files, limit, prefix, token),
        |(files, limit, prefix, token)| {
            let infos: Vec<FileInfo> = files
                .iter()
                .map(|(p, size)| FileInfo {
                    path: JobPath::parse(p).expect("valid"),
                    size_bytes: *size,
                    modified: std::time::UNIX_EPOCH,
                })
                .collect();
            let limit_ok = match limit.as_deref() {
                None | Some("") => true,
                Some(l) => l
                    .parse::<usize>()
                    .is_ok_and(|n| (1..=MAX_LIMIT).contains(&n)),
            };
            let prefix_ok = prefix.as_ref().is_none_or(|p| p.len() <= 4096);
            let request = match list_query(&limit, &token, &prefix).parse() {
                Err(e) => {
                    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    let parameter = e.details["parameter"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let blamed_ok = match parameter.as_str() {
                        "limit" => !limit_ok,
                        "prefix" => !prefix_ok,
                        "continue" => token.is_some(),
                        _ => false,
                    };
                    prop_assert!(blamed_ok, "blamed {:?}", parameter);
                    return Ok(());
                }
                Ok(r) => r,
            };
            prop_assert!(limit_ok && prefix_ok);
            if token.as_deref().is_some_and(|t| !t.is_empty()) {
                return Ok(()); // a random but decodable token: covered by the parse above
            }
            // Paging through: every selected file exactly once, in order, pages within the limit.
            let wanted: Vec<&str> = files
                .keys()
                .map(String::as_str)
                .filter(|p| p.starts_with(prefix.as_deref().unwrap_or("")))
                .collect();
            let mut seen: Vec<String> = Vec::new();
            let mut next = Some(request);
            let mut pages = 0;
            while let Some(request) = next.take() {
                pages += 1;
                prop_assert!(pages <= files.len() + 2, "paging does not end");
                let page = request.page(infos.clone());
                prop_assert_eq!(page.matched_files, wanted.len());
                if let Some(l) = request.limit {
                    prop_assert!(page.files.len() <= l);
                }
                seen.extend(page.files.iter().map(|f| f.path.to_string()));
                if let Some(token) = page.continue_token {
                    next = Some(
                        list_query(&limit, &Some(token), &prefix)
                            .parse()
                            .expect("our own token"),
                    );
                }
            }
            prop_assert_eq!(seen, wanted);
            Ok(())
        },
    );
}

#[test]
fn fuzz_file_api_headers() {
    let tag = prop_oneof!["[0-9a-f]{64}", "[ -~]{0,8}"];
    let values = prop::collection::vec(
        prop_oneof!["[ -~]{0,40}", "(W/)?\"[0-9a-f]{4}\"(, *\\*)?"],
        0..4,
    );
    let project = prop_oneof![hostile_path(), any::<String>()];
    run(
        "file-api-headers",
        1024,
        (project, tag, values, valid_path()),
        |(project, tag, values, path)| {
            let disposition = attachment(&project);
            prop_assert!(
                HeaderValue::from_str(&disposition).is_ok(),
                "{:?}",
                disposition
            );
            let name = disposition
                .strip_prefix("attachment; filename=\"")
                .and_then(|rest| rest.split_once(".zip\""))
                .map(|(name, _)| name)
                .unwrap_or("<unparsed>");
            prop_assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    && !name.starts_with('.'),
                "{:?} from {:?}",
                name,
                project
            );
            let mut headers = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.append(header::IF_NONE_MATCH, v);
                }
            }
            let listed = values
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .any(|t| t == "*" || t == format!("\"{tag}\"") || t == format!("W/\"{tag}\""));
            prop_assert_eq!(etag_matches(&headers, &tag), listed);
            let _ = content_type(&JobPath::parse(&path).expect("valid"));
            Ok(())
        },
    );
}
