//! Job files behind a real S3-compatible object store (MinIO, started by
//! `hack/object-store.sh`) and a real control plane: write-through, restore after the pod's
//! workspace is lost, deletion with the Job and by the sweep, and an unreachable store.
//!
//! Nothing here mocks S3: signatures, multipart uploads, listings and presigned URLs are
//! decided by the server. A machine without the server fails these tests with the command
//! that builds it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use kiln::api::KilnJob;
use kiln::api::job::JobPhase;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{
    ControlPlane, Grant, HttpBody, HttpResponse, ObjectStore, Operator, OperatorOptions,
    control_plane, eventually, http_request, namespace, noise,
};

const WAIT: Duration = Duration::from_secs(60);
const ALL_VERBS: &[&str] = &["get", "list", "create", "update", "delete"];

struct World {
    cp: &'static ControlPlane,
    ns: String,
    jobs: Api<KilnJob>,
    op: Operator,
    s3: ObjectStore,
    token: String,
}

async fn world(prefix: &str, extra_args: &[&str]) -> World {
    let s3 = ObjectStore::start();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(
        cp,
        OperatorOptions::namespace(&ns)
            .with_args(extra_args)
            .with_env(&s3.env),
    )
    .await;
    let mut w = World {
        cp,
        jobs: Api::namespaced(client, &ns),
        ns,
        op,
        s3,
        token: String::new(),
    };
    w.token = w.account("writer").await;
    w
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl World {
    /// A service account allowed everything on `jobs/files`, and its token.
    async fn account(&self, name: &str) -> String {
        let grant = Grant {
            rules: json!([{"apiGroups": ["kiln.dev"], "resources": ["jobs/files"], "verbs": ALL_VERBS}]),
            can_i: &["create", "jobs.kiln.dev", "--subresource=files"],
        };
        self.cp.service_account(&self.ns, name, Some(grant)).await
    }

    async fn create_job(&self, name: &str, spec: Value) -> KilnJob {
        let job: KilnJob = serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("job");
        self.jobs
            .create(&PostParams::default(), &job)
            .await
            .expect("create job")
    }

    fn url(&self, job: &str, rest: &str) -> String {
        format!("/api/v1/namespaces/{}/jobs/{job}/{rest}", self.ns)
    }

    async fn call(&self, method: &str, target: &str, body: HttpBody<'_>) -> HttpResponse {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("Authorization", auth.as_str())];
        if matches!(method, "POST") {
            headers.push(("Content-Type", "application/json"));
        }
        http_request(self.op.http_addr, method, target, &headers, body).await
    }

    async fn put(&self, job: &str, path: &str, data: &[u8]) -> HttpResponse {
        self.call(
            "PUT",
            &self.url(job, &format!("files/{path}")),
            HttpBody::Bytes(data),
        )
        .await
    }

    async fn get(&self, target: &str) -> HttpResponse {
        self.call("GET", target, HttpBody::None).await
    }

    async fn wait_job(&self, name: &str, what: &str, check: impl Fn(&KilnJob) -> bool) -> KilnJob {
        eventually(WAIT, what, || async {
            let j = self.jobs.get(name).await.ok()?;
            check(&j).then_some(j)
        })
        .await
    }

    /// `<prefix>/jobs/<ns>/<uid>/` in the bucket.
    fn job_prefix(&self, job: &KilnJob) -> String {
        format!(
            "{}/jobs/{}/{}",
            self.s3.prefix(),
            self.ns,
            job.uid().expect("uid")
        )
    }

    async fn keys_of(&self, job: &KilnJob) -> Vec<String> {
        let prefix = self.job_prefix(job);
        self.s3
            .keys(&prefix)
            .await
            .into_iter()
            .map(|k| {
                k.trim_start_matches(&prefix)
                    .trim_start_matches('/')
                    .to_string()
            })
            .collect()
    }

    async fn complete(&self, name: &str) -> KilnJob {
        self.jobs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"complete": true}})),
            )
            .await
            .expect("complete the job");
        self.wait_job(name, "the job to complete with an archive", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(JobPhase::Complete) && s.archive.is_some())
        })
        .await
    }

    /// Everything a user or an admin could read about the job: status, Events, the log.
    async fn everything_visible(&self, name: &str) -> String {
        let job = self.jobs.get(name).await.expect("get job");
        let events = self
            .cp
            .kubectl(&["get", "events", "-n", &self.ns, "-o", "json"])
            .success();
        format!(
            "{}\n{events}\n{}",
            serde_json::to_string(&job).expect("json"),
            self.op.logs()
        )
    }
}

fn condition<'a>(
    job: &'a KilnJob,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

#[tokio::test]
async fn files_and_archive_survive_the_loss_of_the_workspace() {
    let mut w = world("s3-restore", &[]).await;
    let job = w
        .create_job(
            "site",
            json!({
                "projectName": "Site",
                "plan": {"tasks": [{"name": "all", "files": ["src/main.rs", "big.bin"]}]},
                "files": [{"path": "declared.txt", "content": "from the spec\n"}],
            }),
        )
        .await;

    let mut uploaded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    uploaded.insert("src/main.rs".into(), b"fn main() {}\n".to_vec());
    // Over the single-PUT threshold: a multipart upload.
    uploaded.insert("big.bin".into(), noise(9 << 20, 7));
    for (path, data) in &uploaded {
        let r = w.put("site", path, data).await;
        assert_eq!(r.status, 201, "PUT {path}: {}", r.text());
    }
    let posted = b"# Site\n";
    let r = w
        .call(
            "POST",
            &w.url("site", "files"),
            HttpBody::Bytes(
                json!({"path": "README.md", "content": "# Site\n"})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    uploaded.insert("README.md".into(), posted.to_vec());
    let batch = json!({"files": [
        {"path": "a/one.txt", "content": "1"},
        {"path": "a/odd %#[name].bin", "content": base64::engine::general_purpose::STANDARD.encode([0u8, 255, 1]), "encoding": "base64"},
    ]});
    let r = w
        .call(
            "POST",
            &w.url("site", "files/batch"),
            HttpBody::Bytes(batch.to_string().as_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    uploaded.insert("a/one.txt".into(), b"1".to_vec());
    uploaded.insert("a/odd %#[name].bin".into(), vec![0, 255, 1]);

    // Acknowledged means stored: every upload is in the bucket already, declared files are not.
    let keys = w.keys_of(&job).await;
    for path in uploaded.keys() {
        let encoded: Vec<String> = path
            .split('/')
            .map(|s| object_store::path::PathPart::from(s).as_ref().to_string())
            .collect();
        let key = format!("files/{}", encoded.join("/"));
        assert!(keys.contains(&key), "{key} not stored: {keys:?}");
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("declared.txt") || k.contains("plan.json")),
        "declared files are desired state, not stored: {keys:?}"
    );

    let done = w.complete("site").await;
    let archive = done
        .status
        .clone()
        .and_then(|s| s.archive)
        .expect("archive");
    let location = archive.location.clone().expect("status.archive.location");
    assert!(
        location.starts_with("s3://") && location.ends_with("/archive.zip"),
        "{location}"
    );
    assert!(w.keys_of(&job).await.contains(&"archive.zip".to_string()));
    let download = w.url("site", "download");
    let before = w.get(&download).await;
    assert_eq!(before.status, 200, "{}", before.text());
    assert_eq!(sha(&before.body), archive.sha256);

    // The pod is replaced: the process dies without draining, and the emptyDir is new.
    w.op.kill_and_wipe().await;

    let after = eventually(WAIT, "the archive to be downloadable again", || async {
        let r = w.get(&download).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(
        sha(&after.body),
        archive.sha256,
        "the same archive, byte for byte"
    );
    for (path, data) in &uploaded {
        let encoded = path
            .replace('%', "%25")
            .replace('#', "%23")
            .replace(' ', "%20")
            .replace('[', "%5B")
            .replace(']', "%5D");
        let r = w.get(&w.url("site", &format!("files/{encoded}"))).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(sha(&r.body), sha(data), "{path} restored with its bytes");
    }
    let r = w.get(&w.url("site", "files/declared.txt")).await;
    assert_eq!(r.body, b"from the spec\n", "declared files are rebuilt");

    let job = w
        .wait_job("site", "the restored job to be reconciled", |j| {
            j.status.as_ref().is_some_and(|s| {
                s.phase == Some(JobPhase::Complete)
                    && s.files_count == Some(uploaded.len() as i64 + 2)
            })
        })
        .await;
    let lost = condition(&job, "WorkspaceLost");
    assert!(
        lost.is_none_or(|c| c.status != "True"),
        "no WorkspaceLost after a restore: {lost:?}"
    );
    let stored = condition(&job, "Stored").expect("Stored condition");
    assert_eq!(stored.status, "True", "{stored:?}");
    assert!(
        w.op.logs()
            .contains("restored the job's workspace from the object store")
    );

    // A redirect to the store: the bytes do not pass through Kiln.
    let r = w.get(&format!("{download}?redirect=true")).await;
    assert_eq!(r.status, 307, "{}", r.text());
    let to = r.header("location").expect("Location").to_string();
    let endpoint = w.s3.var("AWS_ENDPOINT_URL").to_string();
    let rest = to
        .strip_prefix(&endpoint)
        .unwrap_or_else(|| panic!("{to} is not on {endpoint}"));
    let addr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint address");
    let direct = http_request(addr, "GET", rest, &[], HttpBody::None).await;
    assert_eq!(direct.status, 200, "{}", direct.text());
    assert_eq!(sha(&direct.body), archive.sha256);
    let secret = w.s3.var("AWS_SECRET_ACCESS_KEY").to_string();
    assert!(!to.contains(&secret));
    assert!(!w.everything_visible("site").await.contains(&secret));
}

#[tokio::test]
async fn deleting_or_expiring_a_job_removes_its_objects_and_the_sweep_takes_orphans() {
    let w = world("s3-delete", &["--resync=2s"]).await;
    let short = w
        .create_job("short", json!({"projectName": "Short", "ttl": "8s"}))
        .await;
    let r = w.put("short", "data.bin", &noise(100_000, 1)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let deleted = w
        .create_job("deleted", json!({"projectName": "Deleted"}))
        .await;
    let r = w.put("deleted", "x.txt", b"x").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(w.keys_of(&short).await, ["files/data.bin"]);
    assert_eq!(w.keys_of(&deleted).await, ["files/x.txt"]);

    // Objects of a Job that no longer exists (written by hand: a crash between the two).
    let orphan = format!("{}/jobs/{}/0000-orphan/files/left.txt", w.s3.prefix(), w.ns);
    w.s3.client()
        .put(
            &object_store::path::Path::from(orphan.as_str()),
            PutPayload::from_static(b"left"),
        )
        .await
        .expect("put an orphan");

    w.jobs
        .delete("deleted", &Default::default())
        .await
        .expect("delete the job");
    eventually(WAIT, "the deleted Job to go", || async {
        w.jobs
            .get_opt("deleted")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        w.keys_of(&deleted).await.is_empty(),
        "the finalizer removes the objects"
    );

    eventually(WAIT, "the expired Job to go with its objects", || async {
        let gone = w.jobs.get_opt("short").await.ok().flatten().is_none();
        (gone && w.keys_of(&short).await.is_empty()).then_some(())
    })
    .await;

    let orphan_prefix = format!("{}/jobs/{}/0000-orphan", w.s3.prefix(), w.ns);
    eventually(WAIT, "the sweep to delete the orphan", || async {
        w.s3.keys(&orphan_prefix).await.is_empty().then_some(())
    })
    .await;
    let metrics = support::http_get(w.op.http_addr, "/metrics")
        .await
        .expect("metrics")
        .1;
    let swept = metrics
        .lines()
        .find(|l| l.starts_with("kiln_object_store_swept_objects_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(swept >= 1.0, "swept metric: {metrics}");
}

#[tokio::test]
async fn an_unreachable_store_is_a_503_and_kiln_recovers_by_itself() {
    let w = world("s3-fault", &[]).await;
    w.create_job("app", json!({"projectName": "App"})).await;
    let r = w.put("app", "first.txt", b"one").await;
    assert_eq!(r.status, 201, "{}", r.text());

    w.s3.stop();
    let r = w.put("app", "second.txt", &noise(50_000, 2)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(
        body["error"]["details"]["reason"], "object_store_unavailable",
        "{body}"
    );
    assert!(r.header("retry-after").is_some());
    // Nothing half-written: not listed, not readable, not on disk.
    let list = w.get(&w.url("app", "files")).await.json();
    assert_eq!(list["filesCount"], 1, "{list}");
    assert_eq!(w.get(&w.url("app", "files/second.txt")).await.status, 404);
    let r = w
        .call("DELETE", &w.url("app", "files/first.txt"), HttpBody::None)
        .await;
    assert_eq!(
        r.status,
        503,
        "a delete the store did not confirm changes nothing: {}",
        r.text()
    );
    assert_eq!(w.get(&w.url("app", "files/first.txt")).await.body, b"one");

    let job = w
        .wait_job("app", "the Stored condition to turn False", |j| {
            condition(j, "Stored").is_some_and(|c| c.status == "False")
        })
        .await;
    let c = condition(&job, "Stored").expect("Stored");
    assert_eq!(c.reason, "ObjectStoreUnavailable");
    let secret = w.s3.var("AWS_SECRET_ACCESS_KEY").to_string();
    let access = w.s3.var("AWS_ACCESS_KEY_ID").to_string();
    let visible = w.everything_visible("app").await;
    assert!(!visible.contains(&secret), "the secret key leaked");
    assert!(!visible.contains(&access), "the access key leaked");

    w.s3.resume();
    w.wait_job("app", "the Stored condition to recover", |j| {
        condition(j, "Stored").is_some_and(|c| c.status == "True")
    })
    .await;
    let r = w.put("app", "second.txt", b"two").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(w.get(&w.url("app", "files/second.txt")).await.body, b"two");
    assert_eq!(
        w.keys_of(&job).await,
        ["files/first.txt", "files/second.txt"]
    );
}

#[tokio::test]
async fn files_made_from_secrets_stay_out_of_the_bucket_and_behind_the_secret_check() {
    let mut w = world("s3-secret", &[]).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(w.jobs.clone().into_client(), &w.ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "s", "annotations": {"kiln.dev/allow-job-source": "true"}},
                "stringData": {"token": "t0ps3cret-value"},
            }))
            .expect("secret"),
        )
        .await
        .expect("create the secret");
    let job = w
        .create_job(
            "app",
            json!({
                "projectName": "App",
                "files": [{"path": "conf/token", "contentFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}],
            }),
        )
        .await;
    let r = w.put("app", "main.py", b"print('hi')\n").await;
    assert_eq!(r.status, 201, "{}", r.text());
    w.complete("app").await;
    let keys = w.keys_of(&job).await;
    assert_eq!(
        keys,
        ["archive.zip", "files/main.py"],
        "no object for the Secret's file"
    );

    w.op.kill_and_wipe().await;
    // The writer may not get the Secret: neither the archive nor a presigned URL of it.
    let download = w.url("app", "download");
    let r = eventually(WAIT, "the restored job to answer", || async {
        let r = w.get(&download).await;
        (r.status != 404 && r.status != 409).then_some(r)
    })
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = w.get(&format!("{download}?redirect=true")).await;
    assert_eq!(
        r.status,
        403,
        "no redirect without the Secret check: {}",
        r.text()
    );
    assert!(r.header("location").is_none());
    let r = w.get(&w.url("app", "files/main.py")).await;
    assert_eq!(r.body, b"print('hi')\n", "the upload was restored");
}
