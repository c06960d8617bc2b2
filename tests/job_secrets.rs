//! A Secret's value never reaches someone who may not read that Secret: files a Job makes
//! from Secrets, read over the file API by users of the built-in `view` and `edit` roles (with
//! the chart's aggregated roles), on a real API server whose RBAC decides every review.
//!
//! Kiln reads Secrets with its own rights; these tests check it does not become a confused
//! deputy: the file, the archive, listings, status, Events and a trace-level log.

mod support;

use std::io::Read;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kiln::api::KilnJob;
use kiln::api::job::JobPhase;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::{
    ControlPlane, HttpBody, HttpResponse, Operator, OperatorOptions, control_plane, eventually,
    http_request, k8s_bin, namespace, repo,
};

const WAIT: Duration = Duration::from_secs(60);
/// The Secret's value, and how it looks base64-encoded (as the API server sends it).
const PASSWORD: &str = "hunter2-b7Qx";
const PASSWORD_B64: &str = "aHVudGVyMi1iN1F4";

struct World {
    cp: &'static ControlPlane,
    client: Client,
    ns: String,
    jobs: Api<KilnJob>,
    op: Operator,
}

async fn world(prefix: &str, options: impl FnOnce(OperatorOptions) -> OperatorOptions) -> World {
    let cp = control_plane();
    install_aggregated_roles(cp);
    let client = cp.client().await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(cp, options(OperatorOptions::namespace(&ns))).await;
    World {
        cp,
        jobs: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        op,
    }
}

/// The chart's `kiln-edit` and `kiln-view` ClusterRoles, which the clusterrole-aggregation
/// controller folds into the built-in `edit` and `view` roles: what a user of the chart has.
/// Once per test binary (the tests share the control plane; two applies would race).
fn install_aggregated_roles(cp: &ControlPlane) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| apply_aggregated_roles(cp));
}

fn apply_aggregated_roles(cp: &ControlPlane) {
    let chart = repo().join("charts/kiln");
    let rendered = std::process::Command::new(k8s_bin().join("helm"))
        .args(["template", "kiln"])
        .arg(&chart)
        .args(["--show-only", "templates/aggregate-roles.yaml"])
        .output()
        .expect("run helm (hack/k8s-binaries.sh builds it)");
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let yaml = String::from_utf8(rendered.stdout).expect("utf-8");
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(&yaml))
        .success();
}

impl World {
    /// A ServiceAccount bound to a built-in ClusterRole (`view`, `edit`) in the namespace,
    /// and its token, once RBAC answers `can-i` as expected for it.
    async fn account(&self, name: &str, cluster_role: &str, may_read_secrets: bool) -> String {
        let ns = self.ns.as_str();
        self.cp
            .kubectl(&["create", "serviceaccount", name, "-n", ns])
            .success();
        self.cp
            .kubectl(&[
                "create",
                "rolebinding",
                name,
                "-n",
                ns,
                &format!("--clusterrole={cluster_role}"),
                &format!("--serviceaccount={ns}:{name}"),
            ])
            .success();
        let user = format!("--as=system:serviceaccount:{ns}:{name}");
        let can = |args: &[&str]| {
            let mut all = vec!["auth", "can-i"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["-n", ns, &user]);
            self.cp.kubectl(&all).status.success()
        };
        eventually(
            WAIT,
            "the aggregated roles to reach the binding",
            || async {
                (can(&["get", "jobs.kiln.dev", "--subresource=files"])
                    && can(&["get", "secrets"]) == may_read_secrets)
                    .then_some(())
            },
        )
        .await;
        self.cp
            .kubectl(&["create", "token", name, "-n", ns, "--duration=1h"])
            .success()
            .trim()
            .to_string()
    }

    async fn secret(&self, name: &str, key: &str, value: &str, opt_in: bool) {
        let mut secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {key: value},
        });
        if opt_in {
            secret["metadata"]["annotations"] = json!({"kiln.dev/allow-job-source": "true"});
        }
        let secret: Secret = serde_json::from_value(secret).expect("secret");
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create secret");
    }

    async fn create_job(&self, name: &str, spec: Value) {
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
            .expect("create job");
    }

    async fn wait_job(&self, name: &str, what: &str, check: impl Fn(&KilnJob) -> bool) -> KilnJob {
        eventually(WAIT, what, || async {
            let j = self.jobs.get(name).await.ok()?;
            check(&j).then_some(j)
        })
        .await
    }

    async fn get(&self, token: &str, job: &str, rest: &str) -> HttpResponse {
        let target = format!("/api/v1/namespaces/{}/jobs/{job}/{rest}", self.ns);
        let auth = format!("Bearer {token}");
        http_request(
            self.op.http_addr,
            "GET",
            &target,
            &[("Authorization", &auth)],
            HttpBody::None,
        )
        .await
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

fn phase(j: &KilnJob) -> Option<JobPhase> {
    j.status.as_ref().and_then(|s| s.phase)
}

fn ready_reason(j: &KilnJob) -> Option<String> {
    let status = j.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

#[track_caller]
fn assert_forbidden_for_secret(r: &HttpResponse, secret: &str) {
    assert_eq!(
        r.status,
        403,
        "expected 403, got {}: {}",
        r.status,
        r.text()
    );
    let body = r.json();
    let error = &body["error"];
    assert_eq!(error["code"], "forbidden", "{body}");
    assert_eq!(error["details"]["secrets"], json!([secret]), "{body}");
    assert_eq!(error["details"]["resource"], "secrets", "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("may not get secret"), "{message}");
    assert!(!r.text().contains(PASSWORD), "the 403 carries the value");
}

fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_made_from_a_secret_are_served_only_to_readers_of_that_secret() {
    let w = world("secret-files", |o| OperatorOptions {
        log_level: "trace".into(),
        ..o
    })
    .await;
    let viewer = w.account("viewer", "view", false).await;
    let editor = w.account("editor", "edit", true).await;
    w.secret("db", "password", PASSWORD, true).await;
    w.create_job(
        "leak",
        json!({
            "projectName": "leak",
            "files": [
                {"path": "p.txt", "contentFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"path": "public.txt", "content": "hello\n"},
            ],
            "complete": true,
        }),
    )
    .await;
    let job = w
        .wait_job("leak", "job leak Complete", |j| {
            phase(j) == Some(JobPhase::Complete)
        })
        .await;
    let status = job.status.clone().expect("status");
    assert_eq!(
        serde_json::to_value(&status.sensitive_files).expect("json"),
        json!([{"path": "p.txt", "secrets": ["db"]}]),
        "status.sensitiveFiles"
    );

    // The view user: 403 for the file and the archive, 200 for the file without a Secret.
    let r = w.get(&viewer, "leak", "files/p.txt").await;
    assert_forbidden_for_secret(&r, "db");
    let r = w.get(&viewer, "leak", "download").await;
    assert_forbidden_for_secret(&r, "db");
    let r = w.get(&viewer, "leak", "files/public.txt").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"hello\n");
    // Listings show the sensitive file's name and size, never its bytes.
    let r = w.get(&viewer, "leak", "files").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    let p = listed["files"]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["path"] == "p.txt"))
        .unwrap_or_else(|| panic!("p.txt listed: {listed}"));
    assert_eq!(p["sizeBytes"], PASSWORD.len());
    assert!(!r.text().contains(PASSWORD));

    // The edit user may read Secrets: it gets the bytes and the archive.
    let r = w.get(&editor, "leak", "files/p.txt").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, PASSWORD.as_bytes());
    let r = w.get(&editor, "leak", "download").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = unzip(&r.body);
    assert!(
        entries
            .iter()
            .any(|(name, data)| name == "p.txt" && data == PASSWORD.as_bytes()),
        "archive entries: {:?}",
        entries.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );

    // Kiln says who can read what.
    let note = eventually(WAIT, "a SensitiveFiles Event", || async {
        w.events("SensitiveFiles").await.first()?.note.clone()
    })
    .await;
    assert!(note.contains("p.txt") && note.contains("db"), "{note}");

    // Dropping the file from the spec leaves its bytes in the workspace: they stay guarded.
    let patch = json!({"spec": {"complete": false, "files": [
        {"path": "public.txt", "content": "hello\n"},
    ]}});
    w.jobs
        .patch("leak", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    w.wait_job("leak", "job leak Generating again", |j| {
        phase(j) == Some(JobPhase::Generating)
            && j.status.as_ref().and_then(|s| s.observed_generation) == j.metadata.generation
    })
    .await;
    let r = w.get(&viewer, "leak", "files/p.txt").await;
    assert_forbidden_for_secret(&r, "db");

    // Nothing Kiln wrote or said carries the value: the Job, its Events, a trace-level log.
    let job = serde_json::to_string(&w.jobs.get("leak").await.expect("job")).expect("json");
    let events = serde_json::to_string(
        &Api::<Event>::namespaced(w.client.clone(), &w.ns)
            .list(&ListParams::default())
            .await
            .expect("events")
            .items,
    )
    .expect("json");
    let logs = w.op.logs();
    assert!(logs.lines().count() > 100, "a trace-level log: {logs}");
    for (what, text) in [
        ("the Job", &job),
        ("the Events", &events),
        ("the log", &logs),
    ] {
        for needle in [PASSWORD, PASSWORD_B64] {
            assert!(!text.contains(needle), "{what} contains {needle:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_a_source_only_when_it_opts_in() {
    let w = world("secret-optin", |o| o).await;
    let editor = w.account("editor", "edit", true).await;
    w.secret("plain", "password", PASSWORD, false).await;
    w.create_job(
        "refused",
        json!({
            "projectName": "refused",
            "files": [
                {"path": "p.txt", "contentFrom": {"secretKeyRef": {"name": "plain", "key": "password"}}},
            ],
        }),
    )
    .await;
    let job = w
        .wait_job("refused", "job refused reports SourceNotAllowed", |j| {
            ready_reason(j).as_deref() == Some("SourceNotAllowed")
        })
        .await;
    let message = job.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("kiln.dev/allow-job-source") && message.contains("plain"),
        "{message}"
    );
    let r = w.get(&editor, "refused", "files/p.txt").await;
    assert_eq!(r.status, 404, "nothing was written: {}", r.text());
    eventually(WAIT, "a SourceNotAllowed Event", || async {
        (!w.events("SourceNotAllowed").await.is_empty()).then_some(())
    })
    .await;

    // The Secret's owner opts in: the file appears without anyone touching the Job.
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns);
    let patch = json!({"metadata": {"annotations": {"kiln.dev/allow-job-source": "true"}}});
    secrets
        .patch("plain", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let body = eventually(WAIT, "p.txt written after the opt-in", || async {
        let r = w.get(&editor, "refused", "files/p.txt").await;
        (r.status == 200).then_some(r.body)
    })
    .await;
    assert_eq!(body, PASSWORD.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_from_a_secret_is_reported_without_its_text() {
    let w = world("secret-template", |o| o).await;
    // The filter name is the "secret" here: minijinja's own message would quote it.
    w.secret("tpl", "t", "{{ user | leakyfilterxq }}\n", true)
        .await;
    w.create_job(
        "broken",
        json!({
            "projectName": "broken",
            "files": [{"path": "t.txt", "template": {
                "sourceFrom": {"secretKeyRef": {"name": "tpl", "key": "t"}},
                "context": {"user": "u"},
            }}],
        }),
    )
    .await;
    let job = w
        .wait_job("broken", "job broken reports TemplateError", |j| {
            ready_reason(j).as_deref() == Some("TemplateError")
        })
        .await;
    let text = serde_json::to_string(&job).expect("json");
    assert!(!text.contains("leakyfilterxq"), "{text}");
    assert!(text.contains("details withheld"), "{text}");
    let events = eventually(WAIT, "a TemplateError Event", || async {
        let events = w.events("TemplateError").await;
        (!events.is_empty()).then(|| serde_json::to_string(&events).expect("json"))
    })
    .await;
    assert!(!events.contains("leakyfilterxq"), "{events}");
}
