//! The Job file API over HTTP against a real API server: real
//! service-account tokens from `kubectl create token`, real RBAC decided by the API server's
//! SubjectAccessReviews, the operator running as a child process, the workspace inspected on
//! disk. The Job controller itself has its own tests (`tests/job.rs`).
//!
//! Each test creates its Job and talks to it at once: the API waits (briefly) for the Job
//! controller to set up the Job's workspace directory, as a real client would need it to.
//!
//! The last tests change the ConfigMaps and Secrets a complete Job's declared files read, and
//! check that the files, `status.archive` and the archive served over HTTP follow together.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kiln::api::KilnJob;
use kiln::api::job::JobPhase;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{
    ControlPlane, Grant, HttpBody, HttpResponse, Operator, OperatorOptions, control_plane,
    eventually, http_request, namespace, noise,
};

const WAIT: Duration = Duration::from_secs(30);
const ALL_VERBS: &[&str] = &["get", "list", "create", "update", "delete"];

struct World {
    cp: &'static ControlPlane,
    ns: String,
    jobs: Api<KilnJob>,
    op: Operator,
}

async fn world(prefix: &str, extra_args: &[&str]) -> World {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(cp, OperatorOptions::namespace(&ns).with_args(extra_args)).await;
    World {
        cp,
        jobs: Api::namespaced(client, &ns),
        ns,
        op,
    }
}

impl World {
    /// A service account and its token. With `verbs`, a Role granting them on `jobs/files`
    /// in `kiln.dev` is bound to it; without, it has no access at all.
    async fn account(&self, name: &str, verbs: &[&str]) -> String {
        let can_i = verbs
            .first()
            .map(|verb| [*verb, "jobs.kiln.dev", "--subresource=files"]);
        let grant = can_i.as_ref().map(|can_i| Grant {
            rules: json!([{"apiGroups": ["kiln.dev"], "resources": ["jobs/files"], "verbs": verbs}]),
            can_i,
        });
        self.cp.service_account(&self.ns, name, grant).await
    }

    async fn create_job(&self, name: &str, project: &str) -> KilnJob {
        let job: KilnJob = serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"projectName": project},
        }))
        .expect("job");
        self.jobs
            .create(&PostParams::default(), &job)
            .await
            .expect("create job")
    }

    fn files_dir(&self, job: &KilnJob) -> PathBuf {
        self.op
            .workspace
            .join("jobs")
            .join(&self.ns)
            .join(job.uid().expect("uid"))
            .join("files")
    }

    /// Waits for the Job controller to create the Job's workspace, so that a snapshot taken
    /// afterwards only changes by what the test does.
    async fn await_workspace(&self, job: &KilnJob) {
        let dir = self.files_dir(job);
        eventually(WAIT, "the job's workspace directory", || async {
            dir.is_dir().then_some(())
        })
        .await;
    }

    /// `/api/v1/namespaces/<ns>/jobs/<job>/<rest>`.
    fn url(&self, job: &str, rest: &str) -> String {
        format!("/api/v1/namespaces/{}/jobs/{job}/{rest}", self.ns)
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        target: &str,
        body: HttpBody<'_>,
    ) -> HttpResponse {
        self.call_with(token, method, target, &[], body).await
    }

    async fn call_with(
        &self,
        token: Option<&str>,
        method: &str,
        target: &str,
        extra: &[(&str, &str)],
        body: HttpBody<'_>,
    ) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        http_request(self.op.http_addr, method, target, &headers, body).await
    }

    async fn post_json(&self, token: Option<&str>, target: &str, body: &Value) -> HttpResponse {
        let bytes = serde_json::to_vec(body).expect("json");
        self.call_with(
            token,
            "POST",
            target,
            &[("Content-Type", "application/json")],
            HttpBody::Bytes(&bytes),
        )
        .await
    }

    async fn put(&self, token: Option<&str>, job: &str, path: &str, data: &[u8]) -> HttpResponse {
        self.call(
            token,
            "PUT",
            &self.url(job, &format!("files/{path}")),
            HttpBody::Bytes(data),
        )
        .await
    }

    async fn get(&self, token: Option<&str>, target: &str) -> HttpResponse {
        self.call(token, "GET", target, HttpBody::None).await
    }

    async fn wait_job(&self, name: &str, what: &str, check: impl Fn(&KilnJob) -> bool) -> KilnJob {
        eventually(WAIT, what, || async {
            let j = self.jobs.get(name).await.ok()?;
            check(&j).then_some(j)
        })
        .await
    }
}

/// Asserts an error response: status, JSON shape and code. Returns the `error` object.
#[track_caller]
fn assert_error(r: &HttpResponse, status: u16, code: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "expected {status} {code}, got: {}",
        r.text()
    );
    let body = r.json();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["details"].is_object(), "{body}");
    error.clone()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
    Link(PathBuf),
    Other,
}

/// Every entry under `root` (symlinks not followed), with its modification time when `times`.
fn snapshot(root: &Path, times: bool) -> BTreeMap<PathBuf, (Entry, Option<SystemTime>)> {
    fn walk(
        root: &Path,
        dir: &Path,
        times: bool,
        out: &mut BTreeMap<PathBuf, (Entry, Option<SystemTime>)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            if rel == Path::new("kiln.log") {
                continue; // the operator's log, next to its workspace
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let kind = if meta.file_type().is_symlink() {
                Entry::Link(std::fs::read_link(&path).expect("readlink"))
            } else if meta.is_dir() {
                Entry::Dir
            } else if meta.is_file() {
                Entry::File(meta.len())
            } else {
                Entry::Other
            };
            let time = times.then(|| meta.modified().expect("mtime"));
            let recurse = kind == Entry::Dir;
            out.insert(rel, (kind, time));
            if recurse {
                walk(root, &path, times, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, times, &mut out);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test]
async fn write_batch_list_read_and_delete_with_a_role_bound_token() {
    let w = world("files-rw", &[]).await;
    let token = w.account("writer", ALL_VERBS).await;
    let t = Some(token.as_str());
    let job = w.create_job("site", "Site").await;

    // Right after creating the Job: the API waits for its workspace.
    let r = w.put(t, "site", "src/main.rs", b"fn main() {}\n").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["path"], "src/main.rs");
    assert_eq!(body["sizeBytes"], 13);
    let r = w
        .put(t, "site", "src/main.rs", b"fn main() { run() }\n")
        .await;
    assert_eq!(r.status, 200, "a replaced file is 200: {}", r.text());

    let files = w.url("site", "files");
    let r = w
        .post_json(
            t,
            &files,
            &json!({"path": "README.md", "content": "# Site\n"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let binary = [0u8, 159, 146, 150, 255];
    let r = w
        .post_json(
            t,
            &files,
            &json!({
                "path": "assets/logo.bin",
                "content": base64::engine::general_purpose::STANDARD.encode(binary),
                "encoding": "base64",
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A batch with one bad entry: the others are written, the result says which failed.
    let batch = w.url("site", "files/batch");
    let r = w
        .post_json(
            t,
            &batch,
            &json!({"files": [
                {"path": "a/one.txt", "content": "1"},
                {"path": "a/two.json", "content": "{}"},
                {"path": "../escape", "content": "x"},
            ]}),
        )
        .await;
    assert_eq!(r.status, 207, "{}", r.text());
    let body = r.json();
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["path"], "a/one.txt");
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[1]["status"], 201);
    assert_eq!(results[2]["path"], "../escape");
    assert_eq!(results[2]["status"], 400);
    assert_eq!(results[2]["error"]["code"], "validation_error");
    assert_eq!(
        (body["succeeded"].clone(), body["failed"].clone()),
        (json!(2), json!(1))
    );
    let r = w
        .post_json(
            t,
            &batch,
            &json!({"files": [{"path": "b.txt", "content": "b"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "an all-good batch is 200: {}", r.text());

    // `files/batch` is the batch route for POST only; other methods reach a file of that name.
    let r = w.put(t, "site", "batch", b"named batch").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = w.get(t, &batch).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"named batch"[..]));

    let r = w.get(t, &files).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listing = r.json();
    let paths: Vec<&str> = listing["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        paths,
        [
            "README.md",
            "a/one.txt",
            "a/two.json",
            "assets/logo.bin",
            "b.txt",
            "batch",
            "src/main.rs"
        ]
    );
    for f in listing["files"].as_array().expect("files") {
        let modified = f["modified"].as_str().expect("modified");
        modified
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("modified {modified:?} is not RFC 3339: {e}"));
    }
    assert_eq!(listing["files"][3]["sizeBytes"], 5);
    assert_eq!(listing["filesCount"], 7);
    assert!(listing.get("continue").is_none(), "{listing}");

    // Pages of 3 walk the same list; a prefix narrows it and its totals.
    let mut paged = Vec::new();
    let mut next = format!("{files}?limit=3");
    for _ in 0..4 {
        let r = w.get(t, &next).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        assert_eq!(page["filesCount"], 7, "{page}");
        let items = page["files"].as_array().expect("files");
        assert!(items.len() <= 3, "{page}");
        paged.extend(
            items
                .iter()
                .map(|f| f["path"].as_str().expect("path").to_owned()),
        );
        match page["continue"].as_str() {
            Some(token) => next = format!("{files}?limit=3&continue={token}"),
            None => break,
        }
    }
    assert_eq!(paged, paths, "pages of 3 list every file once, in order");
    let r = w.get(t, &format!("{files}?prefix=a/")).await;
    let page = r.json();
    assert_eq!(page["filesCount"], 2, "{page}");
    assert_eq!(page["files"][0]["path"], "a/one.txt");
    for bad in ["limit=0", "limit=many", "continue=%21%21", "limit=100000"] {
        let r = w.get(t, &format!("{files}?{bad}")).await;
        assert_error(&r, 400, "validation_error");
    }

    let r = w.get(t, &w.url("site", "files/README.md")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "# Site\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let r = w.get(t, &w.url("site", "files/assets/logo.bin")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &binary[..]));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = w.get(t, &w.url("site", "files/a/two.json")).await;
    assert_eq!(r.header("content-type"), Some("application/json"));

    // The bytes on disk are the bytes sent.
    let dir = w.files_dir(&job);
    assert_eq!(
        std::fs::read(dir.join("src/main.rs")).expect("main.rs"),
        b"fn main() { run() }\n"
    );
    assert_eq!(
        std::fs::read(dir.join("assets/logo.bin")).expect("logo"),
        binary
    );

    let one = w.url("site", "files/a/one.txt");
    let r = w.call(t, "DELETE", &one, HttpBody::None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!dir.join("a/one.txt").exists());
    assert_error(&w.get(t, &one).await, 404, "not_found");
    assert_error(
        &w.call(t, "DELETE", &one, HttpBody::None).await,
        404,
        "not_found",
    );

    // Every write nudged the Job controller, which counts the files in the status.
    w.wait_job("site", "status.filesCount to follow the uploads", |j| {
        j.status.as_ref().and_then(|s| s.files_count) == Some(6)
    })
    .await;

    // The API server's audit log never sees these writes: Events on the Job name the user,
    // grouped per few seconds, counting all 8 writes and the delete.
    let user = format!("system:serviceaccount:{}:writer", w.ns);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(w.jobs.clone().into_client(), &w.ns);
    let counted = |reason: &'static str| {
        let (events, user) = (events.clone(), user.clone());
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            let notes: Vec<String> = list
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("site"))
                .filter_map(|e| e.note.clone())
                .collect();
            let total: u64 = notes
                .iter()
                .filter_map(|n| n.strip_prefix(&format!("{user} ")))
                .filter_map(|n| n.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((total, notes))
        }
    };
    let (_, notes) = eventually(WAIT, "FilesWritten Events for all 8 writes", || async {
        counted("FilesWritten")
            .await
            .filter(|(total, _)| *total == 8)
    })
    .await;
    assert!(notes.iter().any(|n| n.contains("src/main.rs")), "{notes:?}");
    let (_, notes) = eventually(WAIT, "a FilesDeleted Event", || async {
        counted("FilesDeleted")
            .await
            .filter(|(total, _)| *total == 1)
    })
    .await;
    assert_eq!(notes, [format!("{user} deleted 1 file: a/one.txt")]);
    let log = w.op.logs();
    assert!(
        log.contains("job file changed") && log.contains("a/one.txt"),
        "the audit log line is missing"
    );

    // Metrics count requests by route template, never by raw path.
    let metrics = support::http_get(w.op.http_addr, "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(
        metrics.contains(
            r#"kiln_http_requests_total{route="/api/v1/namespaces/{ns}/jobs/{name}/files/{*path}",method="PUT",code="201"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kiln_http_request_duration_seconds_count{route="/api/v1/namespaces/{ns}/jobs/{name}/files/batch",method="POST"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains("README.md"), "{metrics}");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_and_change_nothing() {
    let w = world("files-401", &[]).await;
    let writer = w.account("writer", ALL_VERBS).await;
    let job = w.create_job("j", "p").await;
    w.await_workspace(&job).await;
    let r = w.put(Some(&writer), "j", "kept.txt", b"kept").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let before = snapshot(&w.op.workspace, true);

    let batch = serde_json::to_vec(&json!({"files": [{"path": "x", "content": "x"}]})).unwrap();
    let single = serde_json::to_vec(&json!({"path": "x", "content": "x"})).unwrap();
    let requests: Vec<(&str, String, HttpBody)> = vec![
        ("PUT", w.url("j", "files/x"), HttpBody::Bytes(b"x")),
        ("POST", w.url("j", "files"), HttpBody::Bytes(&single)),
        ("POST", w.url("j", "files/batch"), HttpBody::Bytes(&batch)),
        ("DELETE", w.url("j", "files/kept.txt"), HttpBody::None),
        ("GET", w.url("j", "files/kept.txt"), HttpBody::None),
        ("GET", w.url("j", "files"), HttpBody::None),
        ("GET", w.url("j", "download"), HttpBody::None),
        ("GET", "/api/v1/stats".to_string(), HttpBody::None),
    ];
    let authorizations = [
        None,
        Some("Bearer not-a-token"),
        Some("Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"),
        Some("Basic d3JpdGVyOnNlY3JldA=="),
        Some("Bearer"),
    ];
    for (method, target, body) in &requests {
        for auth in authorizations {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
            let r = http_request(w.op.http_addr, method, target, &headers, *body).await;
            let what = format!("{method} {target} with {auth:?}");
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "unauthorized", "{what}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        }
    }
    assert_eq!(snapshot(&w.op.workspace, true), before);
    assert!(
        !w.op.logs().contains("not-a-token"),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn a_token_without_the_role_is_403_and_writes_nothing() {
    let w = world("files-403", &[]).await;
    let writer = w.account("writer", ALL_VERBS).await;
    let stranger = w.account("stranger", &[]).await;
    let reader = w.account("reader", &["get", "list"]).await;
    let job = w.create_job("j", "p").await;
    w.await_workspace(&job).await;
    let r = w.put(Some(&writer), "j", "kept.txt", b"kept").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let before = snapshot(&w.op.workspace, true);

    let single = serde_json::to_vec(&json!({"path": "x", "content": "x"})).unwrap();
    let batch = serde_json::to_vec(&json!({"files": [{"path": "x", "content": "x"}]})).unwrap();
    let writes: Vec<(&str, String, HttpBody, &str)> = vec![
        (
            "PUT",
            w.url("j", "files/x"),
            HttpBody::Bytes(b"x"),
            "update",
        ),
        (
            "POST",
            w.url("j", "files"),
            HttpBody::Bytes(&single),
            "create",
        ),
        (
            "POST",
            w.url("j", "files/batch"),
            HttpBody::Bytes(&batch),
            "create",
        ),
        (
            "DELETE",
            w.url("j", "files/kept.txt"),
            HttpBody::None,
            "delete",
        ),
    ];
    let reads: Vec<(&str, String, HttpBody, &str)> = vec![
        ("GET", w.url("j", "files/kept.txt"), HttpBody::None, "get"),
        ("GET", w.url("j", "files"), HttpBody::None, "list"),
        ("GET", w.url("j", "download"), HttpBody::None, "get"),
    ];
    let stranger_user = format!("system:serviceaccount:{}:stranger", w.ns);
    for (method, target, body, verb) in writes.iter().chain(&reads) {
        let r = w.call(Some(&stranger), method, target, *body).await;
        let error = assert_error(&r, 403, "forbidden");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(&stranger_user), "{message}");
        assert!(message.contains("jobs/files"), "{message}");
        assert_eq!(error["details"]["verb"], *verb, "{method} {target}");
        assert_eq!(error["details"]["subresource"], "files");
        assert_eq!(error["details"]["namespace"], w.ns.as_str());
        assert_eq!(error["details"]["name"], "j");
    }
    // Reading only: reads pass, every write is refused.
    for (method, target, body, verb) in &writes {
        let r = w.call(Some(&reader), method, target, *body).await;
        let error = assert_error(&r, 403, "forbidden");
        assert_eq!(error["details"]["verb"], *verb);
    }
    let r = w.get(Some(&reader), &w.url("j", "files/kept.txt")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "kept"));
    let r = w.get(Some(&reader), &w.url("j", "files")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Denied before the Job is looked up: a stranger cannot learn which Jobs exist.
    assert_error(
        &w.get(Some(&stranger), &w.url("no-such-job", "files")).await,
        403,
        "forbidden",
    );
    assert_error(
        &w.get(Some(&reader), &w.url("no-such-job", "files")).await,
        404,
        "not_found",
    );

    assert_eq!(snapshot(&w.op.workspace, true), before);
}

#[tokio::test]
async fn hostile_paths_are_refused_and_nothing_lands_outside_the_job() {
    let w = world("files-hostile", &[]).await;
    let token = w.account("writer", ALL_VERBS).await;
    let t = Some(token.as_str());
    let job = w.create_job("j", "p").await;
    w.await_workspace(&job).await;
    // The whole operator state directory: the workspace and what is next to it.
    let root = w.op.state_dir().to_path_buf();
    let before = snapshot(&root, true);

    let long = "x".repeat(5000);
    // Request targets as sent on the wire (no client normalisation), and what the error
    // message must name.
    let put_cases: Vec<(String, &str)> = vec![
        ("../x".into(), "'..'"),
        ("a/../../x".into(), "'..'"),
        ("../../../../../../tmp/x".into(), "'..'"),
        ("%2e%2e/x".into(), "'..'"),
        ("..%2Fx".into(), "'..'"),
        ("/etc/passwd".into(), "relative"),
        ("%2Fetc%2Fpasswd".into(), "relative"),
        ("a%5Cb".into(), "backslash"),
        ("..%5C..%5Cx".into(), "backslash"),
        ("C:x".into(), "':'"),
        ("C%3A%5Cx".into(), "':'"),
        ("a%00b".into(), "NUL"),
        ("a%01b".into(), "control character"),
        (".".into(), "'.'"),
        ("a/./b".into(), "'.'"),
        ("a//b".into(), "empty"),
        ("a/".into(), "empty"),
        (long.clone(), "bytes long"),
        (".kiln-tmp.x".into(), "reserved"),
    ];
    for (path, problem) in &put_cases {
        let target = w.url("j", &format!("files/{path}"));
        let r = w.call(t, "PUT", &target, HttpBody::Bytes(b"pwned")).await;
        let error = assert_error(&r, 400, "validation_error");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(problem), "PUT {path:.60}: {message}");
        assert!(
            message.len() < 600,
            "the message does not repeat a huge path"
        );
        // Reads and deletes refuse the same paths.
        for method in ["GET", "DELETE"] {
            let r = w.call(t, method, &target, HttpBody::None).await;
            assert_error(&r, 400, "validation_error");
        }
    }

    let json_cases: Vec<(String, &str)> = vec![
        ("../x".into(), "'..'"),
        ("a/../../x".into(), "'..'"),
        ("/etc/passwd".into(), "relative"),
        ("a\\b".into(), "backslash"),
        ("C:x".into(), "':'"),
        ("a\u{0}b".into(), "NUL"),
        ("a\u{1b}b".into(), "control character"),
        (".".into(), "'.'"),
        ("..".into(), "'..'"),
        ("a//b".into(), "empty"),
        ("".into(), "empty"),
        (long.clone(), "bytes long"),
        (".kiln-tmp.x".into(), "reserved"),
    ];
    let files = w.url("j", "files");
    for (path, problem) in &json_cases {
        let r = w
            .post_json(t, &files, &json!({"path": path, "content": "pwned"}))
            .await;
        let error = assert_error(&r, 400, "validation_error");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(problem), "POST {path:.60?}: {message}");
    }
    let entries: Vec<Value> = json_cases
        .iter()
        .map(|(p, _)| json!({"path": p, "content": "pwned"}))
        .collect();
    let r = w
        .post_json(t, &w.url("j", "files/batch"), &json!({"files": entries}))
        .await;
    assert_eq!(r.status, 207, "{}", r.text());
    let body = r.json();
    for result in body["results"].as_array().expect("results") {
        assert_eq!(result["status"], 400, "{result}");
        assert_eq!(result["error"]["code"], "validation_error", "{result}");
    }
    assert_eq!(body["succeeded"], 0);

    // Hostile namespace and Job names never reach the API server.
    for target in [
        "/api/v1/namespaces/..%2F..%2Fkube-system/jobs/j/files".to_string(),
        format!("/api/v1/namespaces/{}/jobs/..%2Fx/files", w.ns),
        format!("/api/v1/namespaces/{}/jobs/J/files", w.ns),
    ] {
        assert_error(&w.get(t, &target).await, 400, "validation_error");
    }

    assert_eq!(snapshot(&root, true), before, "nothing written anywhere");
    assert_ne!(std::fs::read("/tmp/x").ok(), Some(b"pwned".to_vec()));
}

#[tokio::test]
async fn a_symlink_planted_in_the_job_directory_is_not_followed() {
    let w = world("files-symlink", &[]).await;
    let token = w.account("writer", ALL_VERBS).await;
    let t = Some(token.as_str());
    let job = w.create_job("j", "p").await;
    w.await_workspace(&job).await;

    let outside = w.op.state_dir().join("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("secret.txt"), "top secret").expect("secret");
    let files = w.files_dir(&job);
    std::os::unix::fs::symlink(&outside, files.join("link")).expect("dir symlink");
    std::os::unix::fs::symlink(outside.join("secret.txt"), files.join("secret-link"))
        .expect("file symlink");
    let outside_before = snapshot(&outside, true);

    for path in ["link/new.txt", "link/secret.txt", "secret-link"] {
        let r = w.put(t, "j", path, b"overwritten").await;
        assert_error(&r, 409, "conflict");
        let r = w
            .post_json(
                t,
                &w.url("j", "files"),
                &json!({"path": path, "content": "overwritten"}),
            )
            .await;
        assert_error(&r, 409, "conflict");
    }
    for path in ["link/secret.txt", "secret-link"] {
        let r = w.get(t, &w.url("j", &format!("files/{path}"))).await;
        let error = assert_error(&r, 409, "conflict");
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains("symlink")
        );
        assert!(!r.text().contains("top secret"));
        let r = w
            .call(
                t,
                "DELETE",
                &w.url("j", &format!("files/{path}")),
                HttpBody::None,
            )
            .await;
        assert_error(&r, 409, "conflict");
    }
    let r = w.get(t, &w.url("j", "files")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["files"], json!([]), "symlinks are not listed");

    assert_eq!(
        snapshot(&outside, true),
        outside_before,
        "outside untouched"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).expect("secret"),
        "top secret"
    );
    assert!(
        std::fs::symlink_metadata(files.join("secret-link"))
            .expect("link")
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn files_over_the_limit_are_413_and_nothing_is_stored() {
    let w = world("files-413", &["--max-file-bytes=1024"]).await;
    let token = w.account("writer", ALL_VERBS).await;
    let t = Some(token.as_str());
    let job = w.create_job("j", "p").await;
    w.await_workspace(&job).await;
    let before = snapshot(&w.op.workspace, false);
    let big = vec![b'x'; 2048];

    // Content-Length over the limit: refused before the body is read.
    let error = assert_error(
        &w.put(t, "j", "big.txt", &big).await,
        413,
        "payload_too_large",
    );
    assert_eq!(error["details"]["reason"], "file_too_large");
    // No length given: refused as soon as the stream passes the limit.
    let chunks: Vec<&[u8]> = big.chunks(300).collect();
    let r = w
        .call(
            t,
            "PUT",
            &w.url("j", "files/big-chunked.txt"),
            HttpBody::Chunked(&chunks),
        )
        .await;
    assert_error(&r, 413, "payload_too_large");

    let files = w.url("j", "files");
    let text = String::from_utf8(big.clone()).unwrap();
    let r = w
        .post_json(t, &files, &json!({"path": "big.json.txt", "content": text}))
        .await;
    assert_error(&r, 413, "payload_too_large");
    let r = w
        .post_json(
            t,
            &files,
            &json!({
                "path": "big.b64",
                "content": base64::engine::general_purpose::STANDARD.encode(&big),
                "encoding": "base64",
            }),
        )
        .await;
    assert_error(&r, 413, "payload_too_large");
    // A JSON body larger than any allowed file could make: refused by its Content-Length.
    let huge = "y".repeat(100 * 1024);
    let r = w
        .post_json(t, &files, &json!({"path": "huge.txt", "content": huge}))
        .await;
    let error = assert_error(&r, 413, "payload_too_large");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("PUT")
    );

    let r = w
        .post_json(
            t,
            &w.url("j", "files/batch"),
            &json!({"files": [
                {"path": "big-in-batch.txt", "content": text},
                {"path": "small.txt", "content": "small"},
            ]}),
        )
        .await;
    assert_eq!(r.status, 207, "{}", r.text());
    let body = r.json();
    assert_eq!(body["results"][0]["status"], 413);
    assert_eq!(body["results"][0]["error"]["code"], "payload_too_large");
    assert_eq!(body["results"][1]["status"], 201);

    let exact = vec![b'z'; 1024];
    let r = w.put(t, "j", "exact.txt", &exact).await;
    assert_eq!(r.status, 201, "exactly the limit is fine: {}", r.text());

    let dir = w.files_dir(&job);
    let rel = dir.strip_prefix(&w.op.workspace).unwrap().to_path_buf();
    let mut expected = before.clone();
    expected.insert(rel.join("small.txt"), (Entry::File(5), None));
    expected.insert(rel.join("exact.txt"), (Entry::File(1024), None));
    assert_eq!(
        snapshot(&w.op.workspace, false),
        expected,
        "only the files within the limit were stored, and no temporary file is left"
    );
}

/// Peak resident memory of a process, from `/proc/<pid>/status`.
fn vm_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[tokio::test]
async fn large_uploads_stream_to_disk() {
    const SIZE: usize = 32 << 20;
    let w = world("files-large", &["--max-file-bytes=67108864"]).await;
    let token = w.account("writer", ALL_VERBS).await;
    let t = Some(token.as_str());
    let job = w.create_job("j", "p").await;
    w.await_workspace(&job).await;
    let data = noise(SIZE, 7);
    let pid = w.op.pid().expect("operator pid");
    // Warm up every code path once, so the baseline includes their fixed costs.
    let r = w.put(t, "j", "warm.bin", &noise(1 << 20, 1)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let _ = w.get(t, &w.url("j", "files/warm.bin")).await;
    let baseline = vm_hwm_bytes(pid);

    let r = w.put(t, "j", "big.bin", &data).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let r = w
        .call(
            t,
            "PUT",
            &w.url("j", "files/big-chunked.bin"),
            HttpBody::Chunked(&chunks),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = w.get(t, &w.url("j", "files/big.bin")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(SIZE.to_string().as_str()));
    assert!(r.body == data, "the file reads back as sent");
    let peak = vm_hwm_bytes(pid);

    let dir = w.files_dir(&job);
    for name in ["big.bin", "big-chunked.bin"] {
        let on_disk = std::fs::read(dir.join(name)).expect("on disk");
        assert_eq!(sha256_hex(&on_disk), sha256_hex(&data), "{name}");
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "operator VmHWM: {} MiB before, {} MiB after two 32 MiB uploads and a download (+{} KiB)",
        baseline >> 20,
        peak >> 20,
        growth >> 10
    );
    assert!(
        growth < (SIZE as u64) / 4,
        "the operator's peak memory grew by {growth} bytes for a {SIZE}-byte upload"
    );
}

#[tokio::test]
async fn download_serves_the_archive_with_its_etag() {
    let w = world("files-download", &[]).await;
    let token = w.account("writer", ALL_VERBS).await;
    let t = Some(token.as_str());
    w.create_job("report", "Café Report/2024").await;
    let files: BTreeMap<&str, Vec<u8>> = [
        ("index.md", b"# Report\n".to_vec()),
        ("data/numbers.csv", b"a,b\n1,2\n".to_vec()),
        ("data/blob.bin", noise(100_000, 3)),
    ]
    .into();
    let entries: Vec<Value> = files
        .iter()
        .map(|(p, c)| {
            json!({"path": p, "content": base64::engine::general_purpose::STANDARD.encode(c), "encoding": "base64"})
        })
        .collect();
    let r = w
        .post_json(
            t,
            &w.url("report", "files/batch"),
            &json!({"files": entries}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let download = w.url("report", "download");
    let error = assert_error(&w.get(t, &download).await, 409, "conflict");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.complete"),
        "{error}"
    );

    w.jobs
        .patch(
            "report",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"complete": true}})),
        )
        .await
        .expect("complete the job");
    let job = w
        .wait_job("report", "the job to complete with an archive", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(JobPhase::Complete) && s.archive.is_some())
        })
        .await;
    let sha = job.status.unwrap().archive.unwrap().sha256;

    // The archive is built from the files as they were: no more writes.
    let error = assert_error(
        &w.put(t, "report", "late.txt", b"late").await,
        409,
        "conflict",
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("complete")
    );
    let r = w
        .call(
            t,
            "DELETE",
            &w.url("report", "files/index.md"),
            HttpBody::None,
        )
        .await;
    assert_error(&r, 409, "conflict");

    // The API's cache of the Job may lag the status by a moment.
    let r = eventually(WAIT, "the download", || async {
        let r = w.get(t, &download).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.header("content-type"), Some("application/zip"));
    assert_eq!(r.header("etag"), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(
        r.header("content-disposition"),
        Some(
            "attachment; filename=\"Caf__Report_2024.zip\"; filename*=UTF-8''Caf%C3%A9_Report_2024.zip"
        )
    );
    assert_eq!(
        sha256_hex(&r.body),
        sha,
        "the ETag is the sha256 of the bytes served"
    );
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(r.body.clone())).expect("a zip");
    let mut unzipped = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).expect("entry");
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        unzipped.insert(entry.name().expect("name").to_string(), bytes);
    }
    let expected: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, c)| (p.to_string(), c.clone()))
        .collect();
    assert_eq!(unzipped, expected);

    let etag = format!("\"{sha}\"");
    let r = w
        .call_with(
            t,
            "GET",
            &download,
            &[("If-None-Match", &etag)],
            HttpBody::None,
        )
        .await;
    assert_eq!(r.status, 304, "{}", r.text());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body.is_empty());
    let r = w
        .call_with(
            t,
            "GET",
            &download,
            &[("If-None-Match", "\"stale\"")],
            HttpBody::None,
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn stats_need_list_on_jobs_in_every_namespace() {
    let w = world("files-stats", &[]).await;
    let writer = w.account("writer", ALL_VERBS).await;
    w.create_job("j", "p").await;
    let r = w.put(Some(&writer), "j", "a.txt", b"12345").await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A namespaced Role is not enough: the stats cover every namespace.
    let error = assert_error(
        &w.get(Some(&writer), "/api/v1/stats").await,
        403,
        "forbidden",
    );
    assert_eq!(error["details"]["verb"], "list");
    assert_eq!(error["details"]["resource"], "jobs");
    assert_eq!(error["details"]["namespace"], Value::Null);

    let name = format!("{}-stats", w.ns);
    w.cp.kubectl(&["create", "serviceaccount", "stats", "-n", &w.ns])
        .success();
    w.cp.kubectl(&[
        "create",
        "clusterrole",
        &name,
        "--verb=list",
        "--resource=jobs.kiln.dev",
    ])
    .success();
    w.cp.kubectl(&[
        "create",
        "clusterrolebinding",
        &name,
        &format!("--clusterrole={name}"),
        &format!("--serviceaccount={}:stats", w.ns),
    ])
    .success();
    let token =
        w.cp.kubectl(&["create", "token", "stats", "-n", &w.ns])
            .success()
            .trim()
            .to_string();
    let r = eventually(WAIT, "RBAC to grant the stats", || async {
        let r = w.get(Some(&token), "/api/v1/stats").await;
        (r.status == 200).then_some(r)
    })
    .await;
    let stats = r.json();
    assert!(stats["jobs"].as_u64() >= Some(1), "{stats}");
    assert!(stats["files"].as_u64() >= Some(1), "{stats}");
    assert!(stats["bytes"].as_u64() >= Some(5), "{stats}");
    assert!(stats["archiveBytes"].is_u64(), "{stats}");
    assert_eq!(stats["limits"]["maxFileBytes"], 10 * 1024 * 1024);
    assert_eq!(stats["limits"]["maxJobBytes"], 100 * 1024 * 1024);
    assert_eq!(stats["limits"]["maxFilesPerJob"], 10_000);
    assert_eq!(stats["limits"]["maxWorkspaceBytes"], 1024 * 1024 * 1024);
}

// ---- Declared files that follow their sources -------------------------------------------

/// Far below the 10-minute resync (and the 15 s recheck of a missing source): only the
/// watches of ConfigMaps and Secrets can make a Job react this fast.
const LIVE: Duration = Duration::from_secs(10);

/// A Job whose declared files read a ConfigMap and a Secret, complete, and a token that may
/// read its files and that Secret.
struct Sourced {
    w: World,
    token: String,
    cms: Api<ConfigMap>,
    secrets: Api<Secret>,
}

impl Sourced {
    async fn new(prefix: &str) -> Sourced {
        let w = world(prefix, &[]).await;
        let grant = Grant {
            rules: json!([
                {"apiGroups": ["kiln.dev"], "resources": ["jobs/files"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            ]),
            can_i: &["get", "secrets"],
        };
        let token = w.cp.service_account(&w.ns, "reader", Some(grant)).await;
        let client = w.cp.client().await;
        let s = Sourced {
            cms: Api::namespaced(client.clone(), &w.ns),
            secrets: Api::namespaced(client, &w.ns),
            w,
            token,
        };
        for (name, data) in [
            (
                "app",
                json!({"app.cfg": "level = 1\n", "tpl": "Hi {{ who }}"}),
            ),
            ("unrelated", json!({"x": "1"})),
        ] {
            let cm = json!({"metadata": {"name": name}, "data": data});
            s.cms
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(cm).expect("cm"),
                )
                .await
                .expect("create ConfigMap");
        }
        let secret = json!({
            "metadata": {"name": "db", "annotations": {"kiln.dev/allow-job-source": "true"}},
            "stringData": {"token": "t-one"},
        });
        s.secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(secret).expect("secret"),
            )
            .await
            .expect("create Secret");
        let job: KilnJob = serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Job", "metadata": {"name": "site"},
            "spec": {"projectName": "site", "complete": true, "files": [
                {"path": "README.md", "content": "# Site\n"},
                {"path": "conf/app.cfg", "contentFrom": {"configMapKeyRef": {"name": "app", "key": "app.cfg"}}},
                {"path": "greet.txt", "template": {"sourceFrom": {"configMapKeyRef": {"name": "app", "key": "tpl"}}, "context": {"who": "Kiln"}}},
                {"path": "conf/token", "contentFrom": {"secretKeyRef": {"name": "db", "key": "token"}}},
            ]},
        }))
        .expect("job");
        s.w.jobs
            .create(&PostParams::default(), &job)
            .await
            .expect("create job");
        s
    }

    /// The Job once it is complete with an archive whose sha256 is not `not`.
    async fn complete_with_another_archive(&self, not: &str, within: Duration) -> KilnJob {
        eventually(within, "a complete job with a new archive", || async {
            let j = self.w.jobs.get("site").await.ok()?;
            let s = j.status.as_ref()?;
            let fresh = s.phase == Some(JobPhase::Complete)
                && s.observed_generation == j.metadata.generation
                && s.archive.as_ref().is_some_and(|a| a.sha256 != not);
            fresh.then_some(j)
        })
        .await
    }

    /// A file read over the file API.
    async fn file(&self, path: &str) -> Vec<u8> {
        let r = self
            .w
            .get(
                Some(&self.token),
                &self.w.url("site", &format!("files/{path}")),
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.body
    }

    /// The archive downloaded over the file API, once the API serves the one whose sha256 is
    /// `sha`. Every answer on the way is checked: a 503 while the archive is rebuilt, or an
    /// archive whose bytes are its `ETag` and hold what `expected` says that archive holds.
    async fn download(
        &self,
        sha: &str,
        expected: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> BTreeMap<String, Vec<u8>> {
        let url = self.w.url("site", "download");
        eventually(WAIT, "the download of the new archive", || async {
            let r = self.w.get(Some(&self.token), &url).await;
            if r.status == 503 {
                let error = assert_error(&r, 503, "unavailable");
                assert_eq!(error["details"]["reason"], "archive_rebuilding", "{error}");
                assert_eq!(r.header("retry-after"), Some("1"));
                return None;
            }
            assert_eq!(r.status, 200, "{}", r.text());
            let etag = r
                .header("etag")
                .expect("an ETag")
                .trim_matches('"')
                .to_string();
            assert_eq!(sha256_hex(&r.body), etag, "the bytes served are their ETag");
            let files = unzip(&r.body);
            if let Some(holds) = expected.get(&etag) {
                assert_eq!(&files, holds, "archive {etag} holds other files");
            }
            (etag == sha).then_some(files)
        })
        .await
    }

    /// The `ArchiveRebuilt` Events: their related object (`Kind/name`) and note, sorted.
    async fn rebuilt_events(&self) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.w.cp.client().await, &self.w.ns);
        let mut notes: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("ArchiveRebuilt"))
            .map(|e| {
                let related = e.related.unwrap_or_default();
                let related = format!(
                    "{}/{}",
                    related.kind.unwrap_or_default(),
                    related.name.unwrap_or_default()
                );
                (related, e.note.unwrap_or_default())
            })
            .collect();
        notes.sort();
        notes
    }

    /// `kiln_reconciles_total{controller="job"}`, once it has not moved for two seconds.
    async fn settled_job_reconciles(&self) -> u64 {
        let mut last = job_reconciles(&self.w.op).await;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = job_reconciles(&self.w.op).await;
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

/// An archive's entries, by path.
type Unzipped = BTreeMap<String, Vec<u8>>;

/// A client downloading a Job's archive in a loop: the `ETag` and files of every 200 (after
/// checking that the bytes are their `ETag`), `None` for every 503 while it is rebuilt.
struct DownloadWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Option<String>, Unzipped)>>,
}

impl DownloadWatcher {
    fn start(s: &Sourced) -> DownloadWatcher {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (addr, url) = (s.w.op.http_addr, s.w.url("site", "download"));
        let auth = format!("Bearer {}", s.token);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let r = http_request(
                    addr,
                    "GET",
                    &url,
                    &[("Authorization", &auth)],
                    HttpBody::None,
                )
                .await;
                match r.status {
                    200 => {
                        let etag = r
                            .header("etag")
                            .expect("an ETag")
                            .trim_matches('"')
                            .to_string();
                        assert_eq!(sha256_hex(&r.body), etag, "the bytes served are their ETag");
                        seen.push((Some(etag), unzip(&r.body)));
                    }
                    503 => {
                        let error = assert_error(&r, 503, "unavailable");
                        assert_eq!(error["details"]["reason"], "archive_rebuilding");
                        seen.push((None, BTreeMap::new()));
                    }
                    other => panic!("download answered {other}: {}", r.text()),
                }
            }
            seen
        });
        DownloadWatcher { stop, task }
    }

    async fn stop(self) -> Vec<(Option<String>, Unzipped)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the downloading client")
    }
}

async fn job_reconciles(op: &Operator) -> u64 {
    let (_, text) = support::http_get(op.http_addr, "/metrics")
        .await
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("kiln_reconciles_total{controller=\"job\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of job reconciles in the metrics:\n{text}"))
}

fn unzip(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).expect("entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read entry");
            (entry.name().expect("name").to_string(), data)
        })
        .collect()
}

fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_jobs_files_and_archive_follow_their_configmap_and_secret() {
    let s = Sourced::new("files-live").await;
    let first = s.complete_with_another_archive("", WAIT).await;
    let first_sha = first
        .status
        .as_ref()
        .and_then(|st| st.archive.clone())
        .expect("archive")
        .sha256;
    let mut expected = BTreeMap::new();
    expected.insert(
        first_sha.clone(),
        files(&[
            ("README.md", "# Site\n"),
            ("conf/app.cfg", "level = 1\n"),
            ("conf/token", "t-one"),
            ("greet.txt", "Hi Kiln"),
        ]),
    );
    let got = s.download(&first_sha, &expected).await;
    assert_eq!(got, expected[&first_sha]);

    // An unrelated ConfigMap changes: no reconcile of the Job at all, so no archive rebuild
    // and no status write.
    let reconciles = s.settled_job_reconciles().await;
    let version = s.w.jobs.get("site").await.expect("job").resource_version();
    s.cms
        .patch(
            "unrelated",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "2"}})),
        )
        .await
        .expect("patch unrelated");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        job_reconciles(&s.w.op).await,
        reconciles,
        "an unrelated ConfigMap woke the Job"
    );
    assert_eq!(
        s.w.jobs.get("site").await.expect("job").resource_version(),
        version
    );

    // The ConfigMap changes: both files made from it, and the archive, follow within seconds.
    // Meanwhile a client downloads without pause; every answer is checked below.
    let watcher = DownloadWatcher::start(&s);
    let started = std::time::Instant::now();
    s.cms
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"app.cfg": "level = 2\n", "tpl": "Hello {{ who }}"}})),
        )
        .await
        .expect("patch app");
    let second = s.complete_with_another_archive(&first_sha, LIVE).await;
    let second_sha = second
        .status
        .as_ref()
        .and_then(|st| st.archive.clone())
        .expect("archive")
        .sha256;
    assert!(started.elapsed() < LIVE);
    assert_eq!(s.file("conf/app.cfg").await, b"level = 2\n");
    assert_eq!(s.file("greet.txt").await, b"Hello Kiln");
    expected.insert(
        second_sha.clone(),
        files(&[
            ("README.md", "# Site\n"),
            ("conf/app.cfg", "level = 2\n"),
            ("conf/token", "t-one"),
            ("greet.txt", "Hello Kiln"),
        ]),
    );
    let got = s.download(&second_sha, &expected).await;
    assert_eq!(
        got, expected[&second_sha],
        "the archive holds the files on disk"
    );
    let seen = watcher.stop().await;
    let served: Vec<&String> = seen.iter().filter_map(|(etag, _)| etag.as_ref()).collect();
    assert!(
        served.contains(&&first_sha) && served.contains(&&second_sha),
        "{served:?}"
    );
    for (etag, files) in &seen {
        match etag {
            // Each archive served holds exactly the files of its sha256, never a mix.
            Some(etag) => assert_eq!(Some(files), expected.get(etag), "archive {etag}"),
            None => assert!(files.is_empty()),
        }
    }
    assert_eq!(
        second.status.as_ref().and_then(|st| st.phase),
        Some(JobPhase::Complete)
    );

    // The Secret changes: the same, and the Event names the Secret, never its value.
    let started = std::time::Instant::now();
    s.secrets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "t-two"}})),
        )
        .await
        .expect("patch db");
    let third = s.complete_with_another_archive(&second_sha, LIVE).await;
    let third_sha = third
        .status
        .as_ref()
        .and_then(|st| st.archive.clone())
        .expect("archive")
        .sha256;
    assert!(started.elapsed() < LIVE);
    assert_eq!(s.file("conf/token").await, b"t-two");
    expected.insert(
        third_sha.clone(),
        files(&[
            ("README.md", "# Site\n"),
            ("conf/app.cfg", "level = 2\n"),
            ("conf/token", "t-two"),
            ("greet.txt", "Hello Kiln"),
        ]),
    );
    let got = s.download(&third_sha, &expected).await;
    assert_eq!(got, expected[&third_sha]);

    // One Event per source (the related object), each naming its source and the files.
    let expected = [
        (
            "ConfigMap/app",
            "archive rebuilt because ConfigMap \"app\" changed (conf/app.cfg, greet.txt)",
        ),
        (
            "Secret/db",
            "archive rebuilt because Secret \"db\" changed (conf/token)",
        ),
    ]
    .map(|(related, note)| (related.to_string(), note.to_string()));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let notes = s.rebuilt_events().await;
        if notes == expected {
            break;
        }
        if notes.len() > expected.len() || std::time::Instant::now() > deadline {
            let log = s.w.op.logs();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("archive")).collect();
            panic!("ArchiveRebuilt Events {notes:#?}, expected {expected:#?}; the log: {lines:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_source_is_reported_at_once_and_the_files_are_kept() {
    let s = Sourced::new("files-gone").await;
    let first = s.complete_with_another_archive("", WAIT).await;
    let first_sha = first
        .status
        .as_ref()
        .and_then(|st| st.archive.clone())
        .expect("archive")
        .sha256;

    let started = std::time::Instant::now();
    s.cms
        .delete("app", &Default::default())
        .await
        .expect("delete app");
    let j = eventually(LIVE, "SourceNotFound", || async {
        let j = s.w.jobs.get("site").await.ok()?;
        let st = j.status.as_ref()?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "SourceNotFound").then_some(j)
    })
    .await;
    assert!(started.elapsed() < LIVE);
    let st = j.status.expect("status");
    assert_eq!(st.phase, Some(JobPhase::Generating));
    assert!(
        st.archive.is_none(),
        "the archive no longer matches the Job's spec"
    );
    assert!(st.message.unwrap_or_default().contains("\"app\""));
    // The files already made are kept as they were; the archive is gone until the source is
    // back.
    assert_eq!(s.file("conf/app.cfg").await, b"level = 1\n");
    let error = eventually(WAIT, "the download refused", || async {
        let r = s.w.get(Some(&s.token), &s.w.url("site", "download")).await;
        (r.status == 409).then(|| assert_error(&r, 409, "conflict"))
    })
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no archive"),
        "{error}"
    );

    // The source comes back with other content: the job completes again with it.
    let cm = json!({"metadata": {"name": "app"}, "data": {"app.cfg": "level = 3\n", "tpl": "Hi {{ who }}"}});
    s.cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm).expect("cm"),
        )
        .await
        .expect("re-create app");
    let again = s.complete_with_another_archive(&first_sha, LIVE).await;
    let sha = again
        .status
        .and_then(|st| st.archive)
        .expect("archive")
        .sha256;
    let mut expected = BTreeMap::new();
    expected.insert(
        sha.clone(),
        files(&[
            ("README.md", "# Site\n"),
            ("conf/app.cfg", "level = 3\n"),
            ("conf/token", "t-one"),
            ("greet.txt", "Hi Kiln"),
        ]),
    );
    assert_eq!(s.download(&sha, &expected).await, expected[&sha]);
}
