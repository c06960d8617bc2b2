//! The object store behind the workspace (`--object-store s3://bucket/prefix`).
//!
//! With a store configured, the `emptyDir` workspace becomes a cache: every uploaded file and
//! every archive is written to the store before the write is acknowledged, and a job whose
//! directory is missing (the pod was replaced) is restored from the store instead of being
//! reported as lost. Declared files are not stored: they are desired state, rebuilt by the Job
//! controller from the resource.
//!
//! # Layout in the bucket
//!
//! ```text
//! <prefix>/jobs/<namespace>/<uid>/files/<path>   an uploaded file, <path> a JobPath
//! <prefix>/jobs/<namespace>/<uid>/archive.zip    the job's archive
//! ```
//!
//! the same layout as on disk, so one prefix per job holds everything that has to go when the
//! job goes ([`Remote::delete_job`], and the [`sweep`] of jobs that no longer exist).
//!
//! # Configuration
//!
//! The URL names the bucket and an optional prefix; everything else comes from the usual
//! `AWS_*` variables, read by the `object_store` crate: `AWS_ENDPOINT_URL` (any S3-compatible
//! server; path-style requests unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`), `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, web identity (IRSA:
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`), ECS container credentials, or the instance
//! metadata service. Plain `http://` endpoints are refused unless `AWS_ALLOW_HTTP=true`.
//!
//! # Blocking bridge
//!
//! The workspace is synchronous code run on Tokio's blocking pool; it reaches the store through
//! the `*_blocking` methods here, which run the request on the runtime the [`Remote`] was built
//! in (`Handle::block_on`). They must never be called from async code directly.
//!
//! # Secrets
//!
//! Credentials stay inside the `object_store` client: nothing here formats the builder or the
//! client with `Debug`, and presigned URLs (which carry a signature) are only ever returned to
//! the caller that asked for one, never logged.

pub mod sweep;

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::{Path, PathPart};
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

use crate::workspace::{JobKey, JobPath};

/// Files up to this size are stored with one `PUT`; larger ones as a multipart upload.
const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Files of one job downloaded at once when it is restored.
const RESTORE_CONCURRENCY: usize = 8;
/// How long a presigned download URL stays valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(300);

/// An error talking to the object store. Its `Display` is safe to show anyone: it names the
/// operation and the object, never an endpoint's answer or a credential; the cause, logged by
/// [`Remote`] where it happens, is kept as the `source`.
#[derive(Debug, thiserror::Error)]
#[error("the object store could not {op} {key}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where the store is: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl StoreUrl {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// URL (s3://bucket/prefix)"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!(
                "{bucket:?} is not a valid bucket name (3-63 lowercase letters, digits, '-', '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..")
            || prefix.contains("//")
            || prefix.chars().any(char::is_control)
        {
            return Err(format!(
                "the prefix {prefix:?} has an empty, '.' or '..' segment"
            ));
        }
        Ok(StoreUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The object store, as the workspace uses it.
pub struct Remote {
    store: Arc<AmazonS3>,
    url: StoreUrl,
    root: Path,
    runtime: tokio::runtime::Handle,
    /// Jobs whose last store operation failed, with what failed (safe to show): the Job
    /// controller turns this into a condition, and clears it once the store answers again.
    failing: Mutex<HashMap<JobKey, String>>,
}

impl fmt::Debug for Remote {
    // By hand: the client holds credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// Builds the client for `url` from the `AWS_*` environment. Must be called inside the
    /// Tokio runtime whose blocking pool will call the `*_blocking` methods.
    pub fn from_env(url: &str) -> anyhow::Result<Remote> {
        let url = StoreUrl::parse(url).map_err(|e| anyhow::anyhow!("--object-store: {e}"))?;
        let allow_http = std::env::var("AWS_ALLOW_HTTP")
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        let options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // A whole request, body included: a multipart part or a streamed download.
            .with_timeout(Duration::from_secs(300))
            .with_allow_http(allow_http);
        // Few, quick retries: a caller waits for a write-through upload, and an unreachable
        // store must turn into a 503 within seconds, not after the crate's default 3 minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
            ..RetryConfig::default()
        };
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            // The builder's errors name missing settings, never their values.
            .map_err(|e| anyhow::anyhow!("configuring the object store {url}: {e}"))?;
        let root = Path::from(url.prefix.as_str());
        Ok(Remote {
            store: Arc::new(store),
            url,
            root,
            runtime: tokio::runtime::Handle::current(),
            failing: Mutex::new(HashMap::new()),
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// `<prefix>/jobs`.
    fn jobs_root(&self) -> Path {
        self.root.clone().join("jobs")
    }

    /// `<prefix>/jobs/<namespace>`.
    fn namespace_prefix(&self, namespace: &str) -> Path {
        self.jobs_root().join(namespace)
    }

    /// `<prefix>/jobs/<namespace>/<uid>`: everything of one job.
    pub fn job_prefix(&self, job: &JobKey) -> Path {
        self.namespace_prefix(job.namespace()).join(job.uid())
    }

    fn files_prefix(&self, job: &JobKey) -> Path {
        self.job_prefix(job).join("files")
    }

    /// The key of one uploaded file. Each segment is one path part (percent-encoded where S3
    /// keys should not hold the character), so a path can never leave the job's prefix.
    pub fn file_key(&self, job: &JobKey, path: &JobPath) -> Path {
        let mut key = self.files_prefix(job);
        for segment in path.as_str().split('/') {
            key = key.join(segment);
        }
        key
    }

    /// The key of the job's archive.
    pub fn archive_key(&self, job: &JobKey) -> Path {
        self.job_prefix(job)
            .join(crate::workspace::store::ARCHIVE_FILE)
    }

    /// `s3://bucket/<key>`, for `status.archive.location`.
    pub fn location(&self, key: &Path) -> String {
        format!("s3://{}/{}", self.url.bucket, key)
    }

    /// Remembers a failure for `job` and logs its cause (which may name the endpoint, never a
    /// credential), returning the error to hand up.
    fn failed(
        &self,
        job: &JobKey,
        op: &'static str,
        key: &Path,
        e: object_store::Error,
    ) -> StoreError {
        let error = StoreError {
            op,
            key: key.to_string(),
            source: Box::new(e),
        };
        tracing::warn!(job = %job, error = %error, cause = %error.source, "object store request failed");
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.clone(), error.to_string());
        error
    }

    fn succeeded(&self, job: &JobKey) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if !failing.is_empty() {
            failing.remove(job);
        }
    }

    /// What last failed for `job`, while it has not succeeded since.
    pub fn failure(&self, job: &JobKey) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job)
            .cloned()
    }

    /// Asks the store a cheap question (a one-page listing of the job's prefix). On success
    /// the job's recorded failure is cleared: the store is back.
    pub async fn probe(&self, job: &JobKey) -> Result<(), StoreError> {
        let prefix = self.job_prefix(job);
        let first = self.store.list(Some(&prefix)).next().await;
        match first {
            Some(Err(e)) => Err(self.failed(job, "list", &prefix, e)),
            _ => {
                self.succeeded(job);
                Ok(())
            }
        }
    }

    /// Stores the content of `file` (read from its start) under `key`, with one `PUT` when
    /// small and a multipart upload otherwise (aborted on failure, so no part is left behind).
    /// Either the whole object is stored or none of it: S3 never shows a partial object.
    pub fn put_file_blocking(
        &self,
        job: &JobKey,
        key: &Path,
        file: &mut std::fs::File,
        size: u64,
        content_type: Option<&'static str>,
    ) -> Result<(), StoreError> {
        let local = |e: std::io::Error| StoreError {
            op: "read the local copy of",
            key: key.to_string(),
            source: Box::new(e),
        };
        file.seek(SeekFrom::Start(0)).map_err(local)?;
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, ct.into());
        }
        let result = if size <= SINGLE_PUT_MAX {
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            file.read_to_end(&mut data).map_err(local)?;
            let opts = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.runtime.block_on(async {
                self.store
                    .put_opts(key, PutPayload::from(Bytes::from(data)), opts)
                    .await
                    .map(|_| ())
                    .map_err(PutError::Store)
            })
        } else {
            self.runtime
                .block_on(self.put_multipart(key, file, attributes))
        };
        match result {
            Ok(()) => {
                self.succeeded(job);
                Ok(())
            }
            Err(PutError::Local(e)) => Err(local(e)),
            Err(PutError::Store(e)) => Err(self.failed(job, "store", key, e)),
        }
    }

    async fn put_multipart(
        &self,
        key: &Path,
        file: &mut std::fs::File,
        attributes: Attributes,
    ) -> Result<(), PutError> {
        let opts = object_store::PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = self.store.put_multipart_opts(key, opts).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            // Reading a local file on the blocking thread that runs this future is fine: this
            // future is only ever driven by `block_on` on the blocking pool.
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(PutError::Local(e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.write(&buf[..n]);
        }
        // `finish` aborts the upload itself when a part failed.
        writer.finish().await?;
        Ok(())
    }

    /// Deletes one object; a missing object is not an error.
    pub fn delete_blocking(&self, job: &JobKey, key: &Path) -> Result<(), StoreError> {
        match self.runtime.block_on(self.store.delete(key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.succeeded(job);
                Ok(())
            }
            Err(e) => Err(self.failed(job, "delete", key, e)),
        }
    }

    /// Deletes every object of the job. Returns how many there were.
    pub async fn delete_job(&self, job: &JobKey) -> Result<u64, StoreError> {
        let prefix = self.job_prefix(job);
        match self.delete_prefix(&prefix).await {
            Ok(n) => {
                self.succeeded(job);
                Ok(n)
            }
            Err(e) => Err(self.failed(job, "delete", &prefix, e)),
        }
    }

    pub fn delete_job_blocking(&self, job: &JobKey) -> Result<u64, StoreError> {
        self.runtime.block_on(self.delete_job(job))
    }

    /// Deletes everything under `prefix`: the listing is streamed page by page (S3 returns at
    /// most 1,000 keys a page) into bulk deletes, so memory does not grow with the prefix.
    async fn delete_prefix(&self, prefix: &Path) -> object_store::Result<u64> {
        let locations = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted = self
            .store
            .delete_stream(locations)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await?;
        Ok(deleted)
    }

    /// The job's stored files (path and size) and whether it has an archive.
    pub async fn list_job(&self, job: &JobKey) -> Result<StoredJob, StoreError> {
        let prefix = self.job_prefix(job);
        let files_prefix = self.files_prefix(job);
        let archive_key = self.archive_key(job);
        let mut stored = StoredJob::default();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.failed(job, "list", &prefix, e))?;
            if meta.location == archive_key {
                stored.archive = Some(meta.size);
                continue;
            }
            let Some(parts) = meta.location.prefix_match(&files_prefix) else {
                continue;
            };
            match job_path_of(parts) {
                Some(path) => stored.files.push((path, meta.size)),
                None => tracing::warn!(job = %job, key = %meta.location,
                    "ignoring an object Kiln could not have written"),
            }
        }
        Ok(stored)
    }

    pub fn list_job_blocking(&self, job: &JobKey) -> Result<StoredJob, StoreError> {
        self.runtime.block_on(self.list_job(job))
    }

    /// Downloads the job's stored files into `files_dir` and its archive to `archive` (both in
    /// a staging directory that only the caller knows, so plain `create_dir_all` is safe), a
    /// few at a time.
    pub fn restore_blocking(
        &self,
        job: &JobKey,
        stored: &StoredJob,
        files_dir: &std::path::Path,
        archive: &std::path::Path,
    ) -> Result<(), StoreError> {
        let mut wanted: Vec<(Path, std::path::PathBuf)> = stored
            .files
            .iter()
            .map(|(path, _)| (self.file_key(job, path), files_dir.join(path.as_str())))
            .collect();
        if stored.archive.is_some() {
            wanted.push((self.archive_key(job), archive.to_path_buf()));
        }
        let result = self.runtime.block_on(async {
            futures::stream::iter(wanted)
                .map(|(key, dest)| async move {
                    self.download(&key, &dest).await.map_err(|e| (key, e))
                })
                .buffer_unordered(RESTORE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
        });
        match result {
            Ok(_) => {
                self.succeeded(job);
                Ok(())
            }
            Err((key, DownloadError::Store(e))) => Err(self.failed(job, "download", &key, e)),
            Err((key, DownloadError::Local(e))) => Err(StoreError {
                op: "write the restored copy of",
                key: key.to_string(),
                source: Box::new(e),
            }),
        }
    }

    async fn download(&self, key: &Path, dest: &std::path::Path) -> Result<(), DownloadError> {
        let mut stream = self.store.get(key).await?.into_stream();
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Runs on a blocking-pool thread (see `restore_blocking`): plain file I/O is fine.
        let mut out = std::fs::File::create(dest)?;
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?)?;
        }
        out.flush()?;
        Ok(())
    }

    /// A presigned `GET` URL for `key`, valid for [`PRESIGN_TTL`]. Hand it to the client only.
    pub async fn presigned_get(&self, job: &JobKey, key: &Path) -> Result<String, StoreError> {
        match self
            .store
            .signed_url(object_store::signer::Method::GET, key, PRESIGN_TTL)
            .await
        {
            Ok(url) => Ok(url.to_string()),
            Err(e) => Err(self.failed(job, "sign a URL for", key, e)),
        }
    }

    /// The store's client, for the [`sweep`].
    pub fn store(&self) -> &Arc<AmazonS3> {
        &self.store
    }
}

/// What the store holds for one job.
#[derive(Debug, Default, Clone)]
pub struct StoredJob {
    /// Uploaded files and their sizes.
    pub files: Vec<(JobPath, u64)>,
    /// The archive's size, when there is one.
    pub archive: Option<u64>,
}

impl StoredJob {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.archive.is_none()
    }
}

/// The [`JobPath`] of the key parts below a job's `files/` prefix (undoing the percent-encoding
/// that [`Path`] applies to characters S3 keys should not hold).
fn job_path_of<'a>(parts: impl Iterator<Item = PathPart<'a>>) -> Option<JobPath> {
    let segments: Option<Vec<String>> = parts
        .map(|p| {
            percent_encoding::percent_decode_str(p.as_ref())
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        })
        .collect();
    JobPath::parse(&segments?.join("/")).ok()
}

enum PutError {
    Local(std::io::Error),
    Store(object_store::Error),
}

impl From<object_store::Error> for PutError {
    fn from(e: object_store::Error) -> Self {
        PutError::Store(e)
    }
}

enum DownloadError {
    Local(std::io::Error),
    Store(object_store::Error),
}

impl From<object_store::Error> for DownloadError {
    fn from(e: object_store::Error) -> Self {
        DownloadError::Store(e)
    }
}

impl From<std::io::Error> for DownloadError {
    fn from(e: std::io::Error) -> Self {
        DownloadError::Local(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let u = StoreUrl::parse("s3://kiln/prod/jobs-a/").unwrap();
        assert_eq!(u.bucket, "kiln");
        assert_eq!(u.prefix, "prod/jobs-a");
        assert_eq!(u.to_string(), "s3://kiln/prod/jobs-a");
        let u = StoreUrl::parse("s3://my-bucket").unwrap();
        assert_eq!(u.prefix, "");
        assert_eq!(u.to_string(), "s3://my-bucket");
        for bad in [
            "kiln/prod",
            "https://kiln",
            "s3://",
            "s3://UPPER",
            "s3://ab",
            "s3://kiln/a/../b",
            "s3://kiln/a//b",
            "s3://kiln/./b",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_keep_paths_inside_the_job_and_round_trip() {
        let job = JobKey::new("ns", "0b7c-uid").unwrap();
        let files = Path::from("p/jobs/ns/0b7c-uid/files");
        for raw in [
            "a.txt",
            "dir/sub/x y.json",
            "odd%name#[1].md",
            "naïve/日本.txt",
        ] {
            let path = JobPath::parse(raw).unwrap();
            let mut key = files.clone();
            for s in path.as_str().split('/') {
                key = key.join(s);
            }
            assert!(
                key.as_ref().starts_with("p/jobs/ns/0b7c-uid/files/"),
                "{key}"
            );
            let back = job_path_of(key.prefix_match(&files).unwrap()).unwrap();
            assert_eq!(back, path, "{key}");
        }
        let _ = job;
    }
}
