//! The Job controller against a real API server: declared files
//! on disk, templates, the plan, the archive, workspace loss, TTL and the finalizer.
//! The HTTP file API has its own tests (`tests/job_files.rs`).

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kiln::api::KilnJob;
use kiln::api::job::JobPhase;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{Operator, OperatorOptions, control_plane, eventually, namespace};

const WAIT: Duration = Duration::from_secs(30);

struct World {
    ns: String,
    jobs: Api<KilnJob>,
    client: kube::Client,
    op: Operator,
}

async fn world(prefix: &str) -> World {
    world_with(prefix, &[]).await
}

/// A world whose operator runs with `args` besides the usual ones.
async fn world_with(prefix: &str, args: &[&str]) -> World {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(cp, OperatorOptions::namespace(&ns).with_args(args)).await;
    World {
        jobs: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        op,
    }
}

fn job(name: &str, spec: serde_json::Value) -> KilnJob {
    serde_json::from_value(json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "Job", "metadata": {"name": name}, "spec": spec}))
        .expect("job")
}

impl World {
    async fn create(&self, j: &KilnJob) -> KilnJob {
        self.jobs
            .create(&PostParams::default(), j)
            .await
            .expect("create job")
    }

    async fn wait(&self, name: &str, what: &str, check: impl Fn(&KilnJob) -> bool) -> KilnJob {
        eventually(WAIT, what, || async {
            let j = self.jobs.get(name).await.ok()?;
            let s = j.status.as_ref()?;
            (s.observed_generation == j.metadata.generation && check(&j)).then_some(j)
        })
        .await
    }

    fn files_dir(&self, j: &KilnJob) -> PathBuf {
        self.op
            .workspace
            .join("jobs")
            .join(&self.ns)
            .join(j.uid().expect("uid"))
            .join("files")
    }

    fn archive(&self, j: &KilnJob) -> PathBuf {
        self.op
            .workspace
            .join("jobs")
            .join(&self.ns)
            .join(j.uid().expect("uid"))
            .join("archive.zip")
    }

    async fn patch(&self, name: &str, patch: serde_json::Value) {
        self.jobs
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("patch job");
    }
}

fn phase(j: &KilnJob) -> Option<JobPhase> {
    j.status.as_ref()?.phase
}

fn reason(j: &KilnJob, type_: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

fn unzip(path: &PathBuf) -> BTreeMap<String, Vec<u8>> {
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(path).expect("open zip")).expect("zip");
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).expect("entry");
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        let name = entry.name().expect("entry name").to_string();
        out.insert(name, bytes);
    }
    out
}

#[tokio::test]
async fn declared_files_of_every_source_land_on_disk() {
    let w = world("j-declared").await;
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), &w.ns);
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns);
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "src"}, "data": {"app.cfg": "debug = true\n", "tpl": "Hi {{ who }}!"}})).expect("cm"))
        .await
        .expect("cm");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "s", "annotations": {"kiln.dev/allow-job-source": "true"}},
                       "stringData": {"token": "t0ps3cret"}}),
            )
            .expect("secret"),
        )
        .await
        .expect("secret");
    let spec = json!({
        "projectName": "demo",
        "plan": {"tasks": [{"name": "all", "files": ["README.md", "conf/app.cfg", "conf/token", "main.py", "greet.txt"]}], "metadata": {"owner": "me"}},
        "files": [
            {"path": "README.md", "content": "# Demo\n"},
            {"path": "conf/app.cfg", "contentFrom": {"configMapKeyRef": {"name": "src", "key": "app.cfg"}}},
            {"path": "conf/token", "contentFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"path": "main.py", "template": {
                "source": "{% for m in modules %}import {{ m }}\n{% endfor %}{% if debug %}DEBUG = True\n{% endif %}CONFIG = {{ cfg | tojson }}\nN = {{ modules | length }}\n",
                "context": {"modules": ["os", "sys"], "debug": true, "cfg": {"a": 1}}}},
            {"path": "greet.txt", "template": {"sourceFrom": {"configMapKeyRef": {"name": "src", "key": "tpl"}}, "context": {"who": "Kiln"}}},
        ],
    });
    w.create(&job("demo", spec)).await;
    let j = w
        .wait("demo", "files written", |j| {
            j.status.as_ref().and_then(|s| s.files_count) == Some(6)
        })
        .await;
    let dir = w.files_dir(&j);
    let read =
        |p: &str| std::fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("README.md"), "# Demo\n");
    assert_eq!(read("conf/app.cfg"), "debug = true\n");
    assert_eq!(read("conf/token"), "t0ps3cret");
    assert_eq!(
        read("main.py"),
        "import os\nimport sys\nDEBUG = True\nCONFIG = {\"a\":1}\nN = 2\n"
    );
    assert_eq!(read("greet.txt"), "Hi Kiln!");
    let plan: serde_json::Value = serde_json::from_str(&read("plan.json")).expect("plan.json");
    assert_eq!(plan["metadata"]["owner"], "me");
    assert_eq!(phase(&j), Some(JobPhase::Generating));
    assert!(j.status.as_ref().expect("s").missing_files.is_empty());
    assert!(j.finalizers().contains(&"kiln.dev/workspace".to_string()));
    // The file made from the Secret is recorded, beside the files and in the status.
    let sensitive: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.parent().expect("job dir").join("sensitive.json"))
            .expect("sensitive.json"),
    )
    .expect("json");
    assert_eq!(sensitive, json!({"files": {"conf/token": ["s"]}}));
    let recorded = &j.status.as_ref().expect("s").sensitive_files;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (recorded[0].path.as_str(), recorded[0].secrets.as_slice()),
        ("conf/token", ["s".to_string()].as_slice())
    );
}

#[tokio::test]
async fn template_errors_name_the_file_and_line() {
    let w = world("j-template").await;
    w.create(&job("bad", json!({"projectName": "p", "files": [{"path": "x.txt", "template": {"source": "ok\n{% for %}"}}]}))).await;
    let j = w
        .wait("bad", "TemplateError", |j| {
            reason(j, "Stalled").as_deref() == Some("TemplateError")
        })
        .await;
    let message = j
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .expect("message");
    assert!(message.contains("x.txt: line 2"), "{message}");
}

#[tokio::test]
async fn complete_checks_the_plan_then_builds_a_deterministic_archive() {
    let w = world("j-complete").await;
    let spec = json!({
        "projectName": "hello world",
        "plan": {"tasks": [{"name": "t", "files": ["a.txt", "b/c.txt"]}]},
        "files": [{"path": "a.txt", "content": "A"}],
        "complete": true,
    });
    w.create(&job("h", spec)).await;
    let j = w
        .wait("h", "PlanIncomplete", |j| {
            reason(j, "Complete").as_deref() == Some("PlanIncomplete")
        })
        .await;
    assert_eq!(
        j.status.as_ref().expect("s").missing_files,
        vec!["b/c.txt".to_string()]
    );
    assert!(
        j.status
            .as_ref()
            .and_then(|s| s.message.clone())
            .expect("m")
            .contains("b/c.txt")
    );

    w.patch("h", json!({"spec": {"files": [{"path": "a.txt", "content": "A"}, {"path": "b/c.txt", "content": "C"}]}})).await;
    let j = w
        .wait("h", "Complete", |j| phase(j) == Some(JobPhase::Complete))
        .await;
    let archive = j
        .status
        .as_ref()
        .and_then(|s| s.archive.clone())
        .expect("status.archive");
    assert_eq!(
        archive.download_path,
        format!("/api/v1/namespaces/{}/jobs/h/download", w.ns)
    );
    let path = w.archive(&j);
    let bytes = std::fs::read(&path).expect("archive on disk");
    assert_eq!(archive.size_bytes as usize, bytes.len());
    assert_eq!(archive.sha256, kiln::desired::sha256_hex(&bytes));
    let files = unzip(&path);
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        vec!["a.txt", "b/c.txt", "plan.json"]
    );
    assert_eq!(files["a.txt"], b"A");
    assert_eq!(files["b/c.txt"], b"C");

    // The same files give the same archive, byte for byte.
    w.create(&job("h2", j.spec.clone().into_value())).await;
    let j2 = w
        .wait("h2", "Complete", |j| phase(j) == Some(JobPhase::Complete))
        .await;
    assert_eq!(
        j2.status
            .as_ref()
            .and_then(|s| s.archive.as_ref())
            .map(|a| a.sha256.clone()),
        Some(archive.sha256)
    );
}

trait IntoValue {
    fn into_value(self) -> serde_json::Value;
}

impl IntoValue for kiln::api::KilnJobSpec {
    fn into_value(self) -> serde_json::Value {
        serde_json::to_value(self).expect("spec")
    }
}

#[tokio::test]
async fn failure_moves_the_job_to_failed() {
    let w = world("j-failed").await;
    w.create(&job(
        "f",
        json!({"projectName": "p", "failure": {"message": "model refused"}}),
    ))
    .await;
    let j = w
        .wait("f", "Failed", |j| phase(j) == Some(JobPhase::Failed))
        .await;
    assert!(
        j.status
            .as_ref()
            .and_then(|s| s.message.clone())
            .expect("m")
            .contains("model refused")
    );
}

#[tokio::test]
async fn a_lost_workspace_rebuilds_declared_files_and_reports_lost_uploads() {
    let mut w = world("j-lost").await;
    w.create(&job(
        "l",
        json!({"projectName": "p", "files": [{"path": "declared.txt", "content": "D"}]}),
    ))
    .await;
    let j = w
        .wait("l", "declared file", |j| {
            j.status.as_ref().and_then(|s| s.files_count) == Some(1)
        })
        .await;
    // An upload the controller cannot regenerate. Written behind the operator's back, so it
    // is restarted to count it (its accounting is built by scanning at start, then kept by
    // the file API's writes).
    std::fs::write(w.files_dir(&j).join("uploaded.txt"), "U").expect("upload");
    w.op.restart("info,kiln=debug").await;
    w.patch("l", json!({"metadata": {"annotations": {"touch": "1"}}}))
        .await;
    w.wait("l", "2 files counted", |j| {
        j.status.as_ref().and_then(|s| s.files_count) == Some(2)
    })
    .await;

    // The pod is replaced: the emptyDir is gone, the operator starts again.
    let jobs = w.op.workspace.join("jobs");
    w.op.restart_after("info,kiln=debug", || {
        std::fs::remove_dir_all(&jobs).expect("wipe workspace")
    })
    .await;
    let j = w
        .wait("l", "WorkspaceLost", |j| {
            reason(j, "Ready").as_deref() == Some("WorkspaceLost")
        })
        .await;
    assert_eq!(
        std::fs::read_to_string(w.files_dir(&j).join("declared.txt")).expect("rebuilt"),
        "D"
    );
    assert!(!w.files_dir(&j).join("uploaded.txt").exists());
    let message = j
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .expect("m");
    assert!(message.contains("1 uploaded file(s)"), "{message}");
    assert_ne!(phase(&j), Some(JobPhase::Complete));
}

#[tokio::test]
async fn ttl_deletes_the_job_its_files_and_archive() {
    let w = world("j-ttl").await;
    w.create(&job("t", json!({"projectName": "p", "ttl": "4s", "files": [{"path": "a", "content": "A"}], "complete": true}))).await;
    let j = w
        .wait("t", "Complete", |j| phase(j) == Some(JobPhase::Complete))
        .await;
    let dir = w.files_dir(&j);
    let archive = w.archive(&j);
    assert!(dir.join("a").is_file() && archive.is_file());
    eventually(Duration::from_secs(20), "the job deleted", || async {
        w.jobs.get_opt("t").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!dir.exists(), "files removed with the job");
    assert!(!archive.exists(), "archive removed with the job");
}

/// `ttlAfterFinished` counts from the finish; the earlier deadline wins. The operator's
/// `--default-job-ttl` is the TTL of a job that sets none, and status shows it.
#[tokio::test]
async fn ttl_after_finished_expires_a_finished_job_before_its_ttl() {
    let w = world_with("j-after", &["--default-job-ttl=2h"]).await;
    let spec = |complete: bool| json!({"projectName": "p", "ttlAfterFinished": "3s", "files": [{"path": "a", "content": "A"}], "complete": complete});
    w.create(&job("done", spec(false))).await;
    w.create(&job("busy", spec(false))).await;
    for name in ["done", "busy"] {
        let j = w
            .wait(name, "Generating", |j| {
                phase(j) == Some(JobPhase::Generating)
            })
            .await;
        let s = j.status.as_ref().expect("status");
        assert_eq!(s.ttl.as_deref(), Some("2h"), "the operator's default TTL");
        assert!(s.finished_time.is_none(), "not finished: {s:?}");
        let created = j.metadata.creation_timestamp.as_ref().expect("created").0;
        let expires = s.expires_at.as_ref().expect("expiresAt").0;
        assert_eq!(
            expires.duration_since(created).as_secs(),
            2 * 3600,
            "a job still generating lives its TTL"
        );
    }

    w.patch("done", json!({"spec": {"complete": true}})).await;
    let j = w
        .wait("done", "Complete, expiring 3s after its finish", |j| {
            let s = j.status.as_ref();
            let finished = s.and_then(|s| s.finished_time.as_ref());
            let expires = s.and_then(|s| s.expires_at.as_ref());
            phase(j) == Some(JobPhase::Complete)
                && matches!((finished, expires), (Some(f), Some(e)) if e.0.duration_since(f.0).as_secs() == 3)
        })
        .await;
    let dir = w.files_dir(&j);
    eventually(
        Duration::from_secs(20),
        "the finished job deleted",
        || async { w.jobs.get_opt("done").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(!dir.exists(), "files removed with the job");
    let busy = w.jobs.get("busy").await.expect("the unfinished job stays");
    assert_eq!(phase(&busy), Some(JobPhase::Generating));
}

#[tokio::test]
async fn deleting_a_job_removes_its_workspace() {
    let w = world("j-delete").await;
    w.create(&job(
        "d",
        json!({"projectName": "p", "files": [{"path": "a", "content": "A"}]}),
    ))
    .await;
    let j = w
        .wait("d", "file", |j| {
            j.status.as_ref().and_then(|s| s.files_count) == Some(1)
        })
        .await;
    let dir = w.files_dir(&j);
    assert!(dir.exists());
    w.jobs
        .delete("d", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "the job gone", || async {
        w.jobs.get_opt("d").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!dir.exists(), "the finalizer removed the files");
}
