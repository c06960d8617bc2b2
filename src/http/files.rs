//! The Job file API: write, batch write, list, read, delete, download, stats.
//! `docs/http-api.md` is its reference.
//!
//! Every handler admits the request before anything else, in this order: the bearer token
//! (401), the namespace and Job names (400), the SubjectAccessReview (403), the Job itself
//! (404), and for writes its phase (409). Only then is the body read or the workspace touched,
//! so a refused request changes nothing and costs no more than reading its headers. Requests
//! that return a file's bytes (read, download) then also need `get` on every Secret those
//! bytes were made from (403 naming them); listings show names and sizes only.
//!
//! The workspace is synchronous; its calls run on the blocking pool. A PUT body goes to disk
//! as it arrives ([`BodyReader`]): memory does not grow with the size of the upload. JSON
//! bodies are read whole (they must be parsed whole), bounded by what the limits allow.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use kube::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use super::AppState;
use super::audit::{FileAction, FileAudit};
use super::auth::{Access, Auth, Caller, Verb};
use super::error::ApiError;
use super::jobs::{Jobs, Target, check_names};
use super::listing::ListQuery;
use crate::api::KilnJob;
use crate::api::job::JobPhase;
use crate::nudge::{Nudge, Throttled};
use crate::workspace::{self, FileInfo, JobPath, Sensitivity, Workspace, WriteOutcome};

/// JSON adds this much around a file's content (path, field names, escapes of a short text).
const JSON_OVERHEAD: u64 = 64 * 1024;
/// A batch body may always be this large, even when `max_file_bytes` is small: a batch is
/// for many small files. Large files go through PUT, which streams.
const MIN_BATCH_BODY: u64 = 16 * 1024 * 1024;
/// A client that sends nothing for this long loses its request (and the blocking thread an
/// upload holds).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request for a Job that Kiln has not set up yet waits for its workspace.
const WORKSPACE_WAIT: Duration = Duration::from_secs(5);
/// Chunk size of streamed downloads.
const READ_CHUNK: usize = 64 * 1024;
/// After a write, the Job controller is asked to count the files at most this often per Job
/// (the first write at once, the last one at the end of the window).
const STATUS_WINDOW: Duration = Duration::from_millis(500);

/// What the file API needs: the workspace, the Job controller's nudge, auth and the Jobs.
pub struct FileApi {
    workspace: Arc<Workspace>,
    nudge: Nudge<KilnJob>,
    written: Throttled<KilnJob>,
    auth: Arc<Auth>,
    jobs: Jobs,
    audit: FileAudit,
}

impl FileApi {
    /// Starts the API's Job watches (see [`Jobs`]); call from within the Tokio runtime.
    pub fn new(
        client: Client,
        auth: Arc<Auth>,
        workspace: Arc<Workspace>,
        nudge: Nudge<KilnJob>,
        audit: FileAudit,
        namespaces: &[String],
    ) -> Self {
        FileApi {
            workspace,
            written: Throttled::new(nudge.clone(), STATUS_WINDOW),
            nudge,
            auth,
            jobs: Jobs::start(client, namespaces),
            audit,
        }
    }

    /// Admits a request about one Job's files (see the module docs for the order) and returns
    /// the Job, once its workspace exists.
    async fn admit(
        &self,
        headers: &HeaderMap,
        params: &Params,
        verb: Verb,
    ) -> Result<Target, ApiError> {
        Ok(self.admit_caller(headers, params, verb).await?.1)
    }

    /// [`FileApi::admit`], also returning who is calling.
    async fn admit_caller(
        &self,
        headers: &HeaderMap,
        params: &Params,
        verb: Verb,
    ) -> Result<(Caller, Target), ApiError> {
        let caller = self.auth.authenticate(headers).await?;
        check_names(&params.ns, &params.name)?;
        self.auth
            .authorize(&caller, Access::job_files(verb, &params.ns, &params.name))
            .await?;
        let target = self.jobs.get(&params.ns, &params.name).await?;
        if matches!(verb, Verb::Create | Verb::Update | Verb::Delete) {
            target.check_writable()?;
        }
        self.await_workspace(&target).await;
        Ok((caller, target))
    }

    /// Which of the Job's files were made from which Secrets: what its status says, plus the
    /// workspace's own record (written before the bytes, so it is never behind them).
    async fn sensitivity(&self, target: &Target) -> Result<Sensitivity, ApiError> {
        let mut known: Sensitivity = target
            .job
            .status
            .iter()
            .flat_map(|s| &s.sensitive_files)
            .map(|f| (f.path.as_str(), f.secrets.as_slice()))
            .collect();
        let (ws, key, on_err) = self.for_blocking(target);
        let recorded = blocking(move || ws.sensitive(&key).map_err(on_err)).await?;
        known.merge(&recorded);
        Ok(known)
    }

    /// 403 unless `caller` may `get` every one of `secrets`: bytes Kiln made from a Secret go
    /// only to someone the Secret's own RBAC would give them to. `what` names what was asked
    /// for (a file, the archive), for the message.
    async fn check_secrets(
        &self,
        caller: &Caller,
        target: &Target,
        secrets: BTreeSet<&str>,
        what: &str,
    ) -> Result<(), ApiError> {
        let mut denied = Vec::new();
        for secret in &secrets {
            let access = Access::get_secret(&target.namespace, secret);
            if !self.auth.allowed(caller, &access).await? {
                denied.push(*secret);
            }
        }
        if denied.is_empty() {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not read {what} of job {}/{}: it is made from Secret {}, and {} may not get {}",
            caller.username(),
            target.namespace,
            target.name,
            secrets.iter().copied().collect::<Vec<_>>().join(", "),
            caller.username(),
            denied
                .iter()
                .map(|s| format!("secret {}/{s}", target.namespace))
                .collect::<Vec<_>>()
                .join(", "),
        ))
        .with_details(json!({
            "reason": "SecretAccessRequired",
            "verb": "get",
            "group": "",
            "resource": "secrets",
            "namespace": target.namespace,
            "secrets": denied,
        })))
    }

    /// A client may create a Job and upload at once, before the Job controller has created
    /// the Job's directory (the API never creates one: a directory that vanished must be
    /// noticed as a lost workspace, not silently re-created by an upload). So when it is
    /// missing, ask the controller to reconcile now and wait a little. An expired Job's
    /// directory is gone for good: no wait.
    async fn await_workspace(&self, target: &Target) {
        if target.phase() == Some(JobPhase::Expired) || self.workspace.job_exists(&target.key) {
            return;
        }
        self.nudge.nudge(&target.namespace, &target.name);
        let deadline = Instant::now() + WORKSPACE_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.workspace.job_exists(&target.key) {
                return;
            }
        }
    }

    /// What a workspace call on the blocking pool needs: the workspace, the Job's key, and
    /// the mapping of workspace errors that explains them in terms of this Job.
    fn for_blocking(
        &self,
        target: &Target,
    ) -> (
        Arc<Workspace>,
        workspace::JobKey,
        impl Fn(workspace::Error) -> ApiError + Send + 'static,
    ) {
        let (nudge, ns, name) = (
            self.nudge.clone(),
            target.namespace.clone(),
            target.name.clone(),
        );
        let map = workspace_error(target);
        let on_err = move |e: workspace::Error| {
            // The Job reports an unreachable object store in a condition: look now.
            if e.kind() == workspace::ErrorKind::Unavailable {
                nudge.nudge(&ns, &name);
            }
            map(e)
        };
        (self.workspace.clone(), target.key.clone(), on_err)
    }

    /// After files changed: the audit trail names who changed which, and the Job controller,
    /// which counts files and bytes in the Job's status, is told to look (now, or at the end
    /// of the current window when writes come in a stream).
    fn changed<'a>(
        &self,
        caller: &Caller,
        target: &Target,
        action: FileAction,
        paths: impl IntoIterator<Item = &'a str>,
    ) {
        self.audit.record(caller, target, action, paths);
        self.written.nudge(&target.namespace, &target.name);
    }
}

/// The path parameters of the file routes (`path` only on `files/{*path}`).
#[derive(Debug, Deserialize)]
pub struct Params {
    ns: String,
    name: String,
    #[serde(default)]
    path: Option<String>,
}

type PathParams = Result<Path<Params>, PathRejection>;

/// The request's path parameters, or 400 (a percent-encoding that is not UTF-8, say).
fn params(params: PathParams) -> Result<Params, ApiError> {
    params
        .map(|Path(p)| p)
        .map_err(|e| ApiError::validation(e.body_text()))
}

/// A file's path from the URL or a JSON body, or 400 naming the rule it breaks.
fn job_path(path: &str) -> Result<JobPath, ApiError> {
    JobPath::parse(path).map_err(|e| workspace::Error::invalid_path(path, e).into())
}

/// One file of a JSON write: `{path, content, encoding?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContent {
    path: String,
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
    fn into_bytes(self) -> Result<Vec<u8>, ApiError> {
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
struct BatchRequest {
    files: Vec<FileContent>,
}

/// Largest JSON body for one file: its content base64-encoded, plus the JSON around it.
fn json_body_limit(max_file_bytes: u64) -> u64 {
    max_file_bytes
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(JSON_OVERHEAD)
}

fn batch_body_limit(max_file_bytes: u64) -> u64 {
    json_body_limit(max_file_bytes).max(MIN_BATCH_BODY)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
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
    let mut data = Vec::with_capacity(declared.unwrap_or(0) as usize);
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
struct BodyReader {
    stream: BodyDataStream,
    runtime: tokio::runtime::Handle,
    chunk: Bytes,
}

impl BodyReader {
    fn new(body: Body) -> Self {
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

/// Runs workspace code on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("a workspace task failed", &e))?
}

/// Maps a workspace error, explaining a missing job directory in terms of the Job.
fn workspace_error(target: &Target) -> impl Fn(workspace::Error) -> ApiError + Send + 'static {
    let job = format!("{}/{}", target.namespace, target.name);
    move |e| match e {
        workspace::Error::JobNotFound { .. } => ApiError::not_found(format!(
            "job {job} has no files workspace: Kiln has not set it up yet (retry shortly), \
             or it was lost with the operator's pod"
        ))
        .with_details(json!({"reason": e.reason()})),
        e => e.into(),
    }
}

fn file_json(info: &FileInfo) -> Value {
    json!({
        "path": info.path.as_str(),
        "sizeBytes": info.size_bytes,
        "modified": rfc3339(info.modified),
    })
}

fn rfc3339(time: std::time::SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// 201 with the file when it was created, 200 when it replaced one.
fn written_response(outcome: &WriteOutcome) -> Response {
    let status = if outcome.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, Json(file_json(&outcome.info))).into_response()
}

/// `POST .../files` `{path, content, encoding?}`.
pub async fn create(
    State(state): State<AppState>,
    p: PathParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let (caller, target) = api.admit_caller(&headers, &p, Verb::Create).await?;
    let limit = json_body_limit(api.workspace.limits().max_file_bytes);
    let file: FileContent = parse_json(&read_body(&headers, body, limit).await?)?;
    let path = job_path(&file.path)?;
    let (ws, key, on_err) = api.for_blocking(&target);
    let outcome = blocking(move || {
        let data = file.into_bytes()?;
        ws.write(&key, &path, &data).map_err(on_err)
    })
    .await?;
    api.changed(
        &caller,
        &target,
        FileAction::Write,
        [outcome.info.path.as_str()],
    );
    Ok(written_response(&outcome))
}

/// `PUT .../files/{*path}` with the raw bytes as body, streamed to disk.
pub async fn put(
    State(state): State<AppState>,
    p: PathParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let (caller, target) = api.admit_caller(&headers, &p, Verb::Update).await?;
    let path = job_path(p.path.as_deref().unwrap_or_default())?;
    // With a Content-Length the workspace refuses an over-limit file before reading a byte.
    let size_hint = content_length(&headers);
    let reader = BodyReader::new(body);
    let (ws, key, on_err) = api.for_blocking(&target);
    let outcome = blocking(move || {
        ws.write_from_reader(&key, &path, reader, size_hint)
            .map_err(on_err)
    })
    .await?;
    api.changed(
        &caller,
        &target,
        FileAction::Write,
        [outcome.info.path.as_str()],
    );
    Ok(written_response(&outcome))
}

/// `POST .../files/batch` `{files: [{path, content, encoding?}]}`: each file is written on
/// its own; 200 when all were, 207 with per-file results otherwise.
pub async fn batch(
    State(state): State<AppState>,
    p: PathParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let (caller, target) = api.admit_caller(&headers, &p, Verb::Create).await?;
    let limit = batch_body_limit(api.workspace.limits().max_file_bytes);
    let request: BatchRequest = parse_json(&read_body(&headers, body, limit).await?)?;
    if request.files.is_empty() {
        return Err(ApiError::validation("the batch has no files"));
    }
    let (ws, key, on_err) = api.for_blocking(&target);
    let results = blocking(move || {
        Ok(request
            .files
            .into_iter()
            .map(|file| {
                let path = file.path.clone();
                let written = job_path(&file.path).and_then(|p| {
                    let data = file.into_bytes()?;
                    ws.write(&key, &p, &data).map_err(&on_err)
                });
                match written {
                    Ok(outcome) => {
                        let mut result = file_json(&outcome.info);
                        result["status"] = json!(if outcome.replaced { 200 } else { 201 });
                        result
                    }
                    Err(e) => json!({
                        "path": path,
                        "status": e.status.as_u16(),
                        "error": e.body(),
                    }),
                }
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let failed = results.iter().filter(|r| r.get("error").is_some()).count();
    if failed < results.len() {
        let written = results
            .iter()
            .filter(|r| r.get("error").is_none())
            .filter_map(|r| r["path"].as_str());
        api.changed(&caller, &target, FileAction::Write, written);
    }
    let status = if failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((
        status,
        Json(json!({
            "results": results,
            "succeeded": results.len() - failed,
            "failed": failed,
        })),
    )
        .into_response())
}

/// `GET .../files[?limit=&continue=&prefix=]`: the files with their sizes and modification
/// times, sorted by path, a page at a time when asked (see [`super::listing`]).
pub async fn list(
    State(state): State<AppState>,
    p: PathParams,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let target = api.admit(&headers, &p, Verb::List).await?;
    let Query(query) = query.map_err(|e| ApiError::validation(e.body_text()))?;
    let request = query.parse()?;
    let (ws, key, on_err) = api.for_blocking(&target);
    let files = blocking(move || ws.list(&key).map_err(on_err)).await?;
    let page = request.page(files);
    let mut body = json!({
        "files": page.files.iter().map(file_json).collect::<Vec<_>>(),
        "filesCount": page.matched_files,
        "totalSizeBytes": page.matched_bytes,
    });
    if let Some(token) = page.continue_token {
        body["continue"] = Value::String(token);
    }
    Ok(Json(body).into_response())
}

/// `GET .../files/{*path}`: the file's bytes, streamed.
pub async fn read(
    State(state): State<AppState>,
    p: PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let (caller, target) = api.admit_caller(&headers, &p, Verb::Get).await?;
    let path = job_path(p.path.as_deref().unwrap_or_default())?;
    let sensitivity = api.sensitivity(&target).await?;
    let secrets = sensitivity.secrets_of(path.as_str()).collect();
    api.check_secrets(&caller, &target, secrets, &format!("file {path}"))
        .await?;
    let content_type = content_type(&path);
    let (ws, key, on_err) = api.for_blocking(&target);
    let open = blocking(move || ws.open_file(&key, &path).map_err(on_err)).await?;
    Ok(stream_file(
        open.file,
        open.info.size_bytes,
        &[(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
    ))
}

/// `DELETE .../files/{*path}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    p: PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let (caller, target) = api.admit_caller(&headers, &p, Verb::Delete).await?;
    let path = job_path(p.path.as_deref().unwrap_or_default())?;
    let (ws, key, on_err) = api.for_blocking(&target);
    let deleted = path.clone();
    blocking(move || ws.delete(&key, &path).map_err(on_err)).await?;
    api.changed(&caller, &target, FileAction::Delete, [deleted.as_str()]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `files/batch` is the batch route, so a file named `batch` at the top of a job is reached
/// through these: GET, PUT and DELETE of `files/batch` are about that file.
fn batch_file(p: PathParams) -> PathParams {
    p.map(|Path(mut p)| {
        p.path = Some("batch".into());
        Path(p)
    })
}

pub async fn read_batch_file(
    state: State<AppState>,
    p: PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read(state, batch_file(p), headers).await
}

pub async fn put_batch_file(
    state: State<AppState>,
    p: PathParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put(state, batch_file(p), headers, body).await
}

pub async fn delete_batch_file(
    state: State<AppState>,
    p: PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete(state, batch_file(p), headers).await
}

/// `GET .../download`: the Job's ZIP, streamed, with `ETag` = its sha256; with
/// `?redirect=true` and an object store, a 307 to a presigned URL of the stored archive.
pub async fn download(
    State(state): State<AppState>,
    p: PathParams,
    Query(query): Query<super::redirect::DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let p = params(p)?;
    let (caller, target) = api.admit_caller(&headers, &p, Verb::Get).await?;
    let sensitivity = api.sensitivity(&target).await?;
    api.check_secrets(&caller, &target, sensitivity.all_secrets(), "the archive")
        .await?;
    let job = format!("{}/{}", target.namespace, target.name);
    let phase = target.phase();
    if phase == Some(JobPhase::Expired) {
        return Err(ApiError::not_found(format!(
            "job {job} has expired; its files and archive were deleted"
        )));
    }
    let Some(archive) = target.job.status.as_ref().and_then(|s| s.archive.clone()) else {
        return Err(ApiError::conflict(format!(
            "job {job} has no archive yet: set spec.complete to true and wait for phase Complete"
        ))
        .with_details(json!({"phase": phase})));
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", archive.sha256))
        .map_err(|e| ApiError::internal("the Job's archive sha256 is not a valid ETag", &e))?;
    if etag_matches(&headers, &archive.sha256) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    if query.wants_redirect()
        && let Some(found) = super::redirect::to_stored_archive(&api.workspace, &target.key).await?
    {
        return Ok(found);
    }
    let (ws, key) = (api.workspace.clone(), target.key.clone());
    let open = blocking(move || {
        ws.open_archive(&key).map_err(|e| match e {
            workspace::Error::ArchiveNotFound { .. } | workspace::Error::JobNotFound { .. } => {
                ApiError::not_found(format!(
                    "the archive of job {job} is not in the workspace (lost with the operator's \
                     pod? Kiln rebuilds it when it next reconciles the job)"
                ))
                .with_details(json!({"reason": e.reason()}))
            }
            e => e.into(),
        })
    })
    .await?;
    let disposition = HeaderValue::from_str(&attachment(&target.job.spec.project_name))
        .map_err(|e| ApiError::internal("building Content-Disposition failed", &e))?;
    Ok(stream_file(
        open.file,
        open.size_bytes,
        &[
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zip"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-cache"),
            ),
        ],
    ))
}

/// `GET /api/v1/stats`: the workspace's usage and limits.
pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let api = &state.files;
    let caller = api.auth.authenticate(&headers).await?;
    api.auth.authorize(&caller, Access::list_all_jobs()).await?;
    let usage = api.workspace.usage();
    Ok(Json(json!({
        "jobs": usage.jobs,
        "files": usage.files,
        "bytes": usage.bytes,
        "archiveBytes": usage.archive_bytes,
        "limits": api.workspace.limits(),
    }))
    .into_response())
}

/// A 200 streaming `file` (`size` bytes) with `headers`.
fn stream_file(
    file: std::fs::File,
    size: u64,
    headers: &[(header::HeaderName, HeaderValue)],
) -> Response {
    let stream = ReaderStream::with_capacity(tokio::fs::File::from_std(file), READ_CHUNK);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    // Content types are guessed from the name; a browser must not second-guess them.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in headers {
        h.insert(name, value.clone());
    }
    response
}

/// Whether `If-None-Match` names the archive's sha256 (or `*`). Weak tags compare equal, as
/// RFC 9110 wants for `If-None-Match`.
fn etag_matches(headers: &HeaderMap, sha256: &str) -> bool {
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
fn attachment(project: &str) -> String {
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
fn content_type(path: &JobPath) -> &'static str {
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
