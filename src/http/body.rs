//! Request bodies of the file API: JSON bodies read whole within limits derived from the
//! workspace's, and raw `PUT` bodies as a blocking [`Read`] that pulls chunks only when the
//! workspace asks for them.

use std::io::{self, Read};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;

/// JSON adds this much around a file's content (path, field names, escapes of a short text).
const JSON_OVERHEAD: u64 = 64 * 1024;
/// A batch body may always be this large, even when `max_file_bytes` is small: a batch is
/// for many small files. Large files go through PUT, which streams.
const MIN_BATCH_BODY: u64 = 16 * 1024 * 1024;
/// At most this much is reserved for a JSON body before its bytes arrive.
const PREALLOCATE_MAX: u64 = 1024 * 1024;
/// A client that sends nothing for this long loses its request (and the blocking thread an
/// upload holds).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One file of a JSON write: `{path, content, encoding?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileContent {
    pub(super) path: String,
    content: String,
    #[serde(default)]
    encoding: Encoding,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Encoding {
    #[default]
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

impl FileContent {
    /// The file's bytes. Base64 is accepted with or without padding.
    pub(super) fn into_bytes(self) -> Result<Vec<u8>, ApiError> {
        match self.encoding {
            Encoding::Utf8 => Ok(self.content.into_bytes()),
            Encoding::Base64 => BASE64.decode(self.content.as_bytes()).map_err(|e| {
                ApiError::validation(format!(
                    "content of {:?} is not valid base64: {e}",
                    self.path
                ))
            }),
        }
    }
}

const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    pub(super) files: Vec<FileContent>,
}

/// Largest JSON body for one file: its content base64-encoded, plus the JSON around it.
pub(super) fn json_body_limit(max_file_bytes: u64) -> u64 {
    max_file_bytes
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(JSON_OVERHEAD)
}

pub(super) fn batch_body_limit(max_file_bytes: u64) -> u64 {
    json_body_limit(max_file_bytes).max(MIN_BATCH_BODY)
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads a whole body of at most `limit` bytes: 413 before reading when `Content-Length`
/// says it is larger, and as soon as it grows larger otherwise.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |size: u64| {
        ApiError::payload_too_large(format!(
            "the request body is {size} bytes or more, over the limit of {limit} bytes for JSON \
             bodies; upload large files with PUT .../files/<path>, which streams"
        ))
        .with_details(json!({"limitBytes": limit}))
    };
    let declared = content_length(headers);
    if let Some(size) = declared
        && size > limit
    {
        return Err(too_large(size));
    }
    // `Content-Length` is only a claim: reserving it up front would let headers alone make
    // the server allocate the whole limit (per request, before a byte arrives), or abort it
    // when the limit is configured near `u64::MAX`. Found by the file API fuzz target.
    let reserve = declared.unwrap_or(0).min(PREALLOCATE_MAX);
    let mut data = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = next_chunk(&mut stream).await? {
        if (data.len() + chunk.len()) as u64 > limit {
            return Err(too_large((data.len() + chunk.len()) as u64));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

async fn next_chunk(stream: &mut BodyDataStream) -> Result<Option<Bytes>, ApiError> {
    match tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next()).await {
        Err(_) => Err(ApiError::validation("the request body stalled")),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(ApiError::validation(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::validation(format!(
            "the request body is not valid JSON for this request: {e}"
        ))
    })
}

/// A request body as a blocking [`Read`], for [`Workspace::write_from_reader`] on the
/// blocking pool. It pulls one chunk at a time, only when the workspace asks: a write refused
/// before streaming (a limit exceeded by `Content-Length`) reads nothing, and a write that
/// exceeds a limit while streaming stops reading there.
pub(super) struct BodyReader {
    stream: BodyDataStream,
    runtime: tokio::runtime::Handle,
    chunk: Bytes,
}

impl BodyReader {
    pub(super) fn new(body: Body) -> Self {
        BodyReader {
            stream: body.into_data_stream(),
            runtime: tokio::runtime::Handle::current(),
            chunk: Bytes::new(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            // The timer is created inside `block_on`, where the runtime's time driver is.
            let stream = &mut self.stream;
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next()).await });
            match next {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body stalled",
                    ));
                }
                Ok(None) => return Ok(0),
                Ok(Some(Ok(chunk))) => self.chunk = chunk,
                Ok(Some(Err(e))) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_limits_allow_a_whole_base64_file() {
        assert_eq!(json_body_limit(3), 4 + JSON_OVERHEAD);
        assert_eq!(json_body_limit(1024), 1368 + JSON_OVERHEAD);
        assert!(json_body_limit(10 << 20) >= (10 << 20) * 4 / 3);
        assert_eq!(batch_body_limit(1024), MIN_BATCH_BODY);
        assert!(batch_body_limit(100 << 20) > MIN_BATCH_BODY);
        assert_eq!(json_body_limit(u64::MAX), u64::MAX);
    }

    #[test]
    fn content_is_decoded_by_its_encoding() {
        let file = |content: &str, encoding| FileContent {
            path: "a".into(),
            content: content.into(),
            encoding,
        };
        assert_eq!(
            file("hé", Encoding::Utf8).into_bytes().unwrap(),
            "hé".as_bytes()
        );
        assert_eq!(
            file("AAEC/w==", Encoding::Base64).into_bytes().unwrap(),
            [0, 1, 2, 255]
        );
        assert_eq!(
            file("AAEC/w", Encoding::Base64).into_bytes().unwrap(),
            [0, 1, 2, 255]
        );
        let e = file("not base64!", Encoding::Base64)
            .into_bytes()
            .unwrap_err();
        assert_eq!(e.code, "validation_error");

        let parsed: FileContent =
            serde_json::from_str(r#"{"path":"a","content":"x","encoding":"base64"}"#).unwrap();
        assert_eq!(parsed.encoding, Encoding::Base64);
        let parsed: FileContent = serde_json::from_str(r#"{"path":"a","content":"x"}"#).unwrap();
        assert_eq!(parsed.encoding, Encoding::Utf8);
        // A misspelt field would otherwise write base64 text as the content.
        assert!(
            serde_json::from_str::<FileContent>(r#"{"path":"a","content":"x","encodng":"base64"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<FileContent>(r#"{"path":"a","content":"x","encoding":"hex"}"#)
                .is_err()
        );
    }

    #[test]
    fn a_huge_content_length_reserves_nothing_much() {
        // Regression (file API fuzz target): with a limit near u64::MAX, a Content-Length of
        // 8e18 made `read_body` reserve that much and abort the process.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_LENGTH,
            axum::http::HeaderValue::from(8_311_747_327_983_681_189u64),
        );
        let body = Body::from("{}");
        let read = rt.block_on(read_body(&headers, body, u64::MAX)).unwrap();
        assert_eq!(read, b"{}");
    }

    #[test]
    fn body_reader_streams_chunks_in_order() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let chunks: Vec<Result<Bytes, io::Error>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"world")),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let mut reader = rt.block_on(async { BodyReader::new(body) });
        let out = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut small = [0u8; 4];
            loop {
                let n = reader.read(&mut small).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&small[..n]);
            }
            out
        })
        .join()
        .unwrap();
        assert_eq!(out, b"hello world");
    }
}
