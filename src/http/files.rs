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
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use super::AppState;
use super::audit::{FileAction, FileAudit};
use super::auth::{Access, Auth, Caller, Verb};
use super::body::{
    BatchRequest, BodyReader, FileContent, batch_body_limit, content_length, json_body_limit,
    parse_json, read_body,
};
use super::error::ApiError;
use super::headers::{attachment, content_type, etag_matches};
use super::jobs::{Jobs, Target, check_names};
use super::listing::ListQuery;
use crate::api::KilnJob;
use crate::api::job::JobPhase;
use crate::nudge::{Nudge, Throttled};
use crate::workspace::{self, FileInfo, Freshness, JobPath, Sensitivity, Workspace, WriteOutcome};

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
    pub(super) ns: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) path: Option<String>,
}

pub(super) type PathParams = Result<Path<Params>, PathRejection>;

/// The request's path parameters, or 400 (a percent-encoding that is not UTF-8, say).
pub(super) fn params(params: PathParams) -> Result<Params, ApiError> {
    params
        .map(|Path(p)| p)
        .map_err(|e| ApiError::validation(e.body_text()))
}

/// A file's path from the URL or a JSON body, or 400 naming the rule it breaks.
pub(super) fn job_path(path: &str) -> Result<JobPath, ApiError> {
    JobPath::parse(path).map_err(|e| workspace::Error::invalid_path(path, e).into())
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
    let missing = {
        let job = job.clone();
        move |e: workspace::Error| match e {
            workspace::Error::ArchiveNotFound { .. } | workspace::Error::JobNotFound { .. } => {
                ApiError::not_found(format!(
                    "the archive of job {job} is not in the workspace (lost with the operator's \
                     pod? Kiln rebuilds it when it next reconciles the job)"
                ))
                .with_details(json!({"reason": e.reason()}))
            }
            e => e.into(),
        }
    };
    // Before answering 304 too: a client holding the archive the status still names must not
    // be told it is current while its files are being replaced.
    let mut freshness = api
        .workspace
        .archive_freshness(&target.key)
        .map_err(missing.clone())?;
    if freshness == Freshness::Found {
        // Found on disk at start-up: served only once its sha256 is the status's (a process
        // killed between renaming a rebuilt archive into place and writing the status leaves
        // a newer archive under the older sha256). Hashed once; it is current afterwards.
        let (ws, key) = (api.workspace.clone(), target.key.clone());
        let (sha256, location) = (archive.sha256.clone(), archive.location.clone());
        let on_err = missing.clone();
        freshness = blocking(move || {
            ws.verify_found_archive(&key, &sha256, location)
                .and_then(|_| ws.archive_freshness(&key))
                .map_err(on_err)
        })
        .await?;
        if freshness == Freshness::Found {
            freshness = Freshness::Stale;
        }
    }
    serves(&freshness, &archive.sha256, &job)?;
    if etag_matches(&headers, &archive.sha256) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    if query.wants_redirect()
        && let Some(found) = super::redirect::to_stored_archive(&api.workspace, &target.key).await?
    {
        return Ok(found);
    }
    let (ws, key) = (api.workspace.clone(), target.key.clone());
    let open = blocking(move || ws.open_archive(&key).map_err(missing)).await?;
    // Again for the file actually opened: a rebuild may have renamed a new one into place
    // since the first look.
    serves(&open.freshness, &archive.sha256, &job)?;
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

/// `Ok` when the archive in the workspace may be served under the sha256 the Job's status
/// records; else `503` with a short `Retry-After`. A complete job's archive is rebuilt when its
/// declared files' sources change: the files are written first, then the archive, then the
/// status, and until the status (as this API's cache sees it) names the new archive, neither
/// the old one (no longer the files) nor the new one (not the `ETag` the status promises) is
/// served.
fn serves(freshness: &Freshness, recorded: &str, job: &str) -> Result<(), ApiError> {
    if freshness.matches(recorded) {
        return Ok(());
    }
    Err(ApiError::unavailable(
        format!("the archive of job {job} is being rebuilt (its files changed); retry in a moment"),
        1,
    )
    .with_details(json!({"reason": "archive_rebuilding"})))
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
