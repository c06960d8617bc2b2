//! The Draft controller against a real API server.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kiln::api::Draft;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{ControlPlane, Operator, OperatorOptions, control_plane, eventually, namespace};

const WAIT: Duration = Duration::from_secs(30);

struct World {
    cp: &'static ControlPlane,
    client: Client,
    ns: String,
    drafts: Api<Draft>,
    cms: Api<ConfigMap>,
    op: Operator,
}

async fn world(prefix: &str, extra_args: &[&str]) -> World {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(cp, OperatorOptions::namespace(&ns).with_args(extra_args)).await;
    World {
        cp,
        drafts: Api::namespaced(client.clone(), &ns),
        cms: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        op,
    }
}

fn content_config(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "type": "content",
        "metadata": {"title": "T", "tags": ["a"]},
        "instructions": "Write it.",
        "inputs": [{"name": "who", "type": "string"}],
        "generation": {"patterns": [{"type": "template", "template": "Hi {{who}}"}]},
    })
}

fn draft(
    name: &str,
    config_type: &str,
    config: serde_json::Value,
    extra: serde_json::Value,
) -> Draft {
    let mut spec = json!({"configType": config_type, "config": config});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "Draft",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("draft")
}

impl World {
    async fn create(&self, d: &Draft) -> Draft {
        self.drafts
            .create(&PostParams::default(), d)
            .await
            .expect("create draft")
    }

    /// Waits until the draft's status describes its current generation and `check` holds.
    async fn wait(&self, name: &str, what: &str, check: impl Fn(&Draft) -> bool) -> Draft {
        eventually(WAIT, what, || async {
            let d = self.drafts.get(name).await.ok()?;
            let s = d.status.as_ref()?;
            (s.observed_generation == d.metadata.generation && check(&d)).then_some(d)
        })
        .await
    }

    async fn configmap(&self, name: &str) -> Option<ConfigMap> {
        self.cms.get_opt(name).await.expect("read configmap")
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = events.list(&ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    async fn set_config(&self, name: &str, config: serde_json::Value) {
        // A JSON patch replaces the object; a merge patch would merge old and new keys.
        let patch: json_patch::Patch = serde_json::from_value(
            json!([{"op": "replace", "path": "/spec/config", "value": config}]),
        )
        .expect("patch");
        self.drafts
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .expect("set config");
    }
}

fn condition<'a>(
    d: &'a Draft,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    d.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn is(d: &Draft, type_: &str, status: &str) -> bool {
    condition(d, type_).is_some_and(|c| c.status == status)
}

fn data(cm: &ConfigMap, key: &str) -> serde_json::Value {
    serde_json::from_str(cm.data.as_ref().and_then(|d| d.get(key)).expect("key")).expect("json")
}

#[tokio::test]
async fn valid_content_and_artifact_drafts_become_ready() {
    let w = world("d-valid", &[]).await;
    w.create(&draft("content", "content", content_config("c"), json!({})))
        .await;
    let artifact = json!({
        "id": "bundle", "type": "artifact",
        "content": {"children": [{"id": "intro"}, {"id": "body", "ref": "x"}]},
        "metadata": {"owner": "me"},
    });
    w.create(&draft("artifact", "artifact", artifact, json!({})))
        .await;
    for name in ["content", "artifact"] {
        let d = w.wait(name, "Ready", |d| is(d, "Ready", "True")).await;
        let s = d.status.as_ref().expect("status");
        assert!(is(&d, "Validated", "True"));
        assert!(is(&d, "Stalled", "False") && is(&d, "Reconciling", "False"));
        assert!(s.expires_at.is_some(), "expiresAt is always shown");
        assert_eq!(
            s.retention.as_deref(),
            Some("720h"),
            "Kiln's default retention is reported"
        );
    }
}

#[tokio::test]
async fn missing_generation_is_reported_by_pointer() {
    let w = world("d-invalid", &[]).await;
    w.create(&draft(
        "bad",
        "content",
        json!({"id": "x", "type": "content"}),
        json!({}),
    ))
    .await;
    let d = w
        .wait("bad", "Validated=False", |d| is(d, "Validated", "False"))
        .await;
    let s = d.status.as_ref().expect("status");
    assert_eq!(
        condition(&d, "Validated").map(|c| c.reason.as_str()),
        Some("SchemaViolation")
    );
    assert!(is(&d, "Stalled", "True") && is(&d, "Ready", "False"));
    let errors: Vec<String> = s
        .validation_errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    assert!(
        errors.contains(&"/generation: \"generation\" is a required property".to_string()),
        "validationErrors: {errors:?}"
    );
    eventually(WAIT, "a ValidationFailed Event", || async {
        (!w.events("ValidationFailed").await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn custom_schema_is_used_and_a_broken_one_reported() {
    let w = world("d-schema", &[]).await;
    let schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object", "required": ["color"],
        "properties": {"color": {"enum": ["red", "blue"]}},
    });
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "my-schema"}, "data": {"schema.json": schema.to_string()},
    }))
    .expect("cm");
    w.cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("schema cm");
    // Valid against the custom schema, though the built-in content schema would refuse it.
    w.create(&draft(
        "custom",
        "content",
        json!({"color": "red"}),
        json!({"schemaRef": {"name": "my-schema", "key": "schema.json"}}),
    ))
    .await;
    w.wait("custom", "Ready with the custom schema", |d| {
        is(d, "Ready", "True")
    })
    .await;

    // Tightening the schema re-validates the draft without touching it.
    let tighter = json!({"type": "object", "required": ["color"], "properties": {"color": {"enum": ["blue"]}}});
    w.cms
        .patch(
            "my-schema",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"schema.json": tighter.to_string()}})),
        )
        .await
        .expect("edit schema");
    let d = w
        .wait("custom", "re-validated against the new schema", |d| {
            is(d, "Validated", "False")
        })
        .await;
    assert_eq!(
        d.status.as_ref().expect("status").validation_errors[0].path,
        "/color"
    );

    // A broken schema is a clear condition, not a crash.
    w.cms
        .patch(
            "my-schema",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"schema.json": "{\"type\": 12}"}})),
        )
        .await
        .expect("break schema");
    let d = w
        .wait("custom", "SchemaInvalid", |d| {
            condition(d, "Validated").is_some_and(|c| c.reason == "SchemaInvalid")
        })
        .await;
    assert!(
        condition(&d, "Validated")
            .expect("cond")
            .message
            .contains("schemaRef my-schema/schema.json")
    );
    w.create(&draft(
        "missing",
        "content",
        json!({}),
        json!({"schemaRef": {"name": "nope", "key": "k"}}),
    ))
    .await;
    w.wait("missing", "SchemaNotFound", |d| {
        condition(d, "Validated").is_some_and(|c| c.reason == "SchemaNotFound")
    })
    .await;
}

#[tokio::test]
async fn publishing_revisions_and_pruning() {
    let w = world("d-publish", &[]).await;
    let publish = json!({"publish": {"configId": "greeting", "keepRevisions": 2}});
    w.create(&draft("g", "content", content_config("v1"), publish))
        .await;
    let d = w
        .wait("g", "published r1", |d| {
            d.status
                .as_ref()
                .and_then(|s| s.published.as_ref())
                .is_some()
        })
        .await;
    let cm = w
        .configmap("greeting-content")
        .await
        .expect("published ConfigMap");
    assert_eq!(data(&cm, "greeting-content.json")["id"], "v1");
    let labels = cm.labels();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("kiln")
    );
    assert_eq!(
        labels.get("kiln.dev/config-id").map(String::as_str),
        Some("greeting")
    );
    assert_eq!(
        labels.get("kiln.dev/config-type").map(String::as_str),
        Some("content")
    );
    let ann = cm.annotations();
    assert_eq!(
        ann.get("kiln.dev/source-draft").map(String::as_str),
        Some("g")
    );
    assert_eq!(ann.get("kiln.dev/revision").map(String::as_str), Some("1"));
    assert_eq!(
        ann.get("kiln.dev/sha256"),
        Some(
            &d.status
                .as_ref()
                .expect("s")
                .published
                .as_ref()
                .expect("p")
                .hash
        )
    );
    assert!(
        cm.owner_references().is_empty(),
        "the published ConfigMap is not owned by the draft"
    );
    let r1 = w
        .configmap("greeting-content-r1")
        .await
        .expect("revision 1");
    assert_eq!(r1.immutable, Some(true));

    for (n, id) in [(2, "v2"), (3, "v3")] {
        if n == 3 {
            // A pipeline says who it is and why: the history records both. Managed fields
            // carry whole seconds; a second apart, the last writer is unambiguous.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let change = json!({
                "metadata": {"annotations": {"kiln.dev/change-cause": "bump to v3"}},
                "spec": {"config": content_config(id)},
            });
            let pipeline = PatchParams {
                field_manager: Some("ci-pipeline".into()),
                ..PatchParams::default()
            };
            w.drafts
                .patch("g", &pipeline, &Patch::Merge(&change))
                .await
                .expect("set config as ci-pipeline");
        } else {
            w.set_config("g", content_config(id)).await;
        }
        w.wait("g", &format!("revision {n}"), |d| {
            d.status
                .as_ref()
                .and_then(|s| s.published.as_ref())
                .is_some_and(|p| p.revision == n)
        })
        .await;
        let cm = w.configmap("greeting-content").await.expect("published");
        assert_eq!(data(&cm, "greeting-content.json")["id"], id);
        assert!(
            w.configmap(&format!("greeting-content-r{n}"))
                .await
                .is_some()
        );
    }
    // keepRevisions: 2 → r1 pruned, r2 and r3 kept; history keeps every entry.
    eventually(WAIT, "r1 pruned", || async {
        w.configmap("greeting-content-r1")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(w.configmap("greeting-content-r2").await.is_some());
    let d = w.drafts.get("g").await.expect("draft");
    let history = &d.status.as_ref().expect("status").history;
    assert_eq!(
        history
            .iter()
            .map(|h| (h.revision, h.pruned))
            .collect::<Vec<_>>(),
        vec![(1, true), (2, false), (3, false)]
    );
    assert!(history[0].changed_by.is_some(), "{history:?}");
    assert_eq!(history[0].change_cause, None);
    assert_eq!(history[2].changed_by.as_deref(), Some("ci-pipeline"));
    assert_eq!(history[2].change_cause.as_deref(), Some("bump to v3"));
}

#[tokio::test]
async fn edited_and_deleted_published_configmaps_are_repaired() {
    let w = world("d-drift", &[]).await;
    w.create(&draft(
        "g",
        "content",
        content_config("v1"),
        json!({"publish": {"configId": "drift"}}),
    ))
    .await;
    w.wait("g", "published", |d| is(d, "Ready", "True")).await;
    let original = w.configmap("drift-content").await.expect("published").data;

    w.cms
        .patch(
            "drift-content",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"drift-content.json": "{\"hacked\": true}"}})),
        )
        .await
        .expect("edit");
    let start = Instant::now();
    eventually(Duration::from_secs(10), "edit repaired", || async {
        (w.configmap("drift-content").await?.data == original).then_some(())
    })
    .await;
    eprintln!("edit repaired in {:?}", start.elapsed());

    w.cms
        .delete("drift-content", &DeleteParams::default())
        .await
        .expect("delete");
    let start = Instant::now();
    eventually(Duration::from_secs(10), "deletion repaired", || async {
        (w.configmap("drift-content").await?.data == original).then_some(())
    })
    .await;
    eprintln!("deletion repaired in {:?}", start.elapsed());
    // Events are published in the background: wait for both repairs to be recorded.
    eventually(
        Duration::from_secs(10),
        "two DriftCorrected Events",
        || async {
            let corrections = w.events("DriftCorrected").await;
            (corrections.len() >= 2 || corrections.iter().any(|e| e.series.is_some())).then_some(())
        },
    )
    .await;
    let d = w.drafts.get("g").await.expect("draft");
    assert_eq!(
        d.status
            .as_ref()
            .and_then(|s| s.published.as_ref())
            .map(|p| p.revision),
        Some(1),
        "repair is not a new revision"
    );
}

#[tokio::test]
async fn a_leftover_revision_with_other_content_is_replaced() {
    let w = world("d-leftover", &[]).await;
    // An immutable revision an earlier holder of the configId left behind (its published
    // ConfigMap deleted by hand), with other content under the name Kiln writes next.
    let leftover: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "reused-content-r1",
            "labels": {
                "app.kubernetes.io/managed-by": "kiln",
                "kiln.dev/config-id": "reused",
                "kiln.dev/config-type": "content",
                "kiln.dev/role": "revision",
                "kiln.dev/revision": "1",
            },
        },
        "immutable": true,
        "data": {"reused-content.json": "{\"id\":\"old\"}"},
    }))
    .expect("cm");
    let leftover = w
        .cms
        .create(&PostParams::default(), &leftover)
        .await
        .expect("create leftover");
    w.create(&draft(
        "g",
        "content",
        content_config("new"),
        json!({"publish": {"configId": "reused"}}),
    ))
    .await;
    w.wait("g", "Ready", |d| is(d, "Ready", "True")).await;
    let r1 = w.configmap("reused-content-r1").await.expect("r1");
    assert_eq!(data(&r1, "reused-content.json")["id"], "new");
    assert_eq!(r1.immutable, Some(true));
    assert_ne!(r1.uid(), leftover.uid(), "replaced, not the leftover");
    let published = w.configmap("reused-content").await.expect("published");
    assert_eq!(data(&published, "reused-content.json")["id"], "new");
}

#[tokio::test]
async fn unmanaged_configmap_is_never_touched() {
    let w = world("d-conflict", &[]).await;
    let theirs: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "taken-content"}, "data": {"owner": "someone else"}}),
    )
    .expect("cm");
    w.cms
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create");
    w.create(&draft(
        "g",
        "content",
        content_config("x"),
        json!({"publish": {"configId": "taken"}}),
    ))
    .await;
    let d = w
        .wait("g", "NameConflict", |d| {
            condition(d, "Published").is_some_and(|c| c.reason == "NameConflict")
        })
        .await;
    assert!(is(&d, "Published", "False") && is(&d, "Ready", "False"));
    let cm = w.configmap("taken-content").await.expect("still there");
    assert_eq!(
        cm.data,
        Some(BTreeMap::from([(
            "owner".to_string(),
            "someone else".to_string()
        )]))
    );
    assert!(
        cm.labels().is_empty() && cm.annotations().is_empty(),
        "not even labelled"
    );
}

#[tokio::test]
async fn two_drafts_claiming_one_config_id() {
    let w = world("d-inuse", &[]).await;
    w.create(&draft(
        "first",
        "content",
        content_config("one"),
        json!({"publish": {"configId": "shared"}}),
    ))
    .await;
    w.wait("first", "published", |d| is(d, "Ready", "True"))
        .await;
    w.create(&draft(
        "second",
        "content",
        content_config("two"),
        json!({"publish": {"configId": "shared"}}),
    ))
    .await;
    let d = w
        .wait("second", "ConfigIdInUse", |d| {
            condition(d, "Published").is_some_and(|c| c.reason == "ConfigIdInUse")
        })
        .await;
    assert!(
        condition(&d, "Published")
            .expect("c")
            .message
            .contains("first")
    );
    let cm = w.configmap("shared-content").await.expect("cm");
    assert_eq!(
        data(&cm, "shared-content.json")["id"],
        "one",
        "the recorded draft keeps the ConfigMap"
    );
    // Once the holder is gone, the other draft takes over and continues the numbering.
    w.drafts
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete first");
    let d = w
        .wait("second", "takes over", |d| is(d, "Ready", "True"))
        .await;
    assert_eq!(
        d.status
            .as_ref()
            .and_then(|s| s.published.as_ref())
            .map(|p| p.revision),
        Some(2)
    );
    assert_eq!(
        data(
            &w.configmap("shared-content").await.expect("cm"),
            "shared-content.json"
        )["id"],
        "two"
    );
}

#[tokio::test]
async fn rollback_restores_a_revision_as_a_new_one() {
    let w = world("d-rollback", &[]).await;
    w.create(&draft(
        "g",
        "content",
        content_config("v1"),
        json!({"publish": {"configId": "rb"}}),
    ))
    .await;
    w.wait("g", "r1", |d| {
        d.status
            .as_ref()
            .and_then(|s| s.published.as_ref())
            .is_some_and(|p| p.revision == 1)
    })
    .await;
    w.set_config("g", content_config("v2")).await;
    w.wait("g", "r2", |d| {
        d.status
            .as_ref()
            .and_then(|s| s.published.as_ref())
            .is_some_and(|p| p.revision == 2)
    })
    .await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["rollback", "draft", "g", "--to-revision", "1", "-n", &w.ns])
        .env("KUBECONFIG", &w.cp.kubeconfig)
        .output()
        .expect("run kiln rollback");
    assert!(
        out.status.success(),
        "kiln rollback failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = w
        .wait("g", "r3", |d| {
            d.status
                .as_ref()
                .and_then(|s| s.published.as_ref())
                .is_some_and(|p| p.revision == 3)
        })
        .await;
    assert_eq!(d.spec.config["id"], "v1");
    assert_eq!(
        data(
            &w.configmap("rb-content").await.expect("cm"),
            "rb-content.json"
        )["id"],
        "v1"
    );
    let history: Vec<i64> = d
        .status
        .as_ref()
        .expect("s")
        .history
        .iter()
        .map(|h| h.revision)
        .collect();
    assert_eq!(history, vec![1, 2, 3], "history is never rewritten");
    let h = &d.status.as_ref().expect("s").history;
    assert_eq!(
        h[2].hash, h[0].hash,
        "revision 3 holds revision 1's content"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["rollback", "draft", "g", "--to-revision", "9", "-n", &w.ns])
        .env("KUBECONFIG", &w.cp.kubeconfig)
        .output()
        .expect("run kiln rollback");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revision 9"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn expired_draft_is_deleted_on_time_and_its_configmap_stays() {
    let w = world("d-expiry", &[]).await;
    w.create(&draft(
        "short",
        "content",
        content_config("x"),
        json!({"retention": "5s", "publish": {"configId": "short"}}),
    ))
    .await;
    let d = w
        .wait("short", "published", |d| is(d, "Ready", "True"))
        .await;
    let expires_at = d
        .status
        .as_ref()
        .and_then(|s| s.expires_at.clone())
        .expect("expiresAt")
        .0;
    eventually(Duration::from_secs(20), "the draft deleted", || async {
        w.drafts
            .get_opt("short")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let lag = k8s_openapi::jiff::Timestamp::now()
        .duration_since(expires_at)
        .as_secs_f64();
    eprintln!("expiry observed {lag:.3}s after expiresAt");
    assert!(
        lag < 2.0,
        "deleted {lag:.3}s after expiresAt (polling adds up to 0.1s)"
    );
    assert!(
        w.configmap("short-content").await.is_some(),
        "the published ConfigMap outlives the draft"
    );
    assert!(w.op.logs().contains("expired draft deleted"));
}

#[tokio::test]
async fn an_edit_racing_the_expiry_wins() {
    let w = world("d-race", &[]).await;
    w.create(&draft(
        "racy",
        "content",
        content_config("x"),
        json!({"retention": "4s"}),
    ))
    .await;
    let d = w.wait("racy", "ready", |d| is(d, "Ready", "True")).await;
    let expires_at = d
        .status
        .as_ref()
        .and_then(|s| s.expires_at.clone())
        .expect("expiresAt")
        .0;
    // Edit just before the expiry: the edit restarts the clock, so the draft must survive.
    let until = expires_at
        .duration_since(k8s_openapi::jiff::Timestamp::now())
        .as_secs_f64()
        - 0.3;
    tokio::time::sleep(Duration::from_secs_f64(until.max(0.0))).await;
    w.set_config("racy", content_config("edited")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = w
        .drafts
        .get_opt("racy")
        .await
        .expect("get")
        .expect("the edited draft survived its old expiry");
    assert_eq!(d.spec.config["id"], "edited", "the edit is not lost");
    let new_expiry = w
        .wait("racy", "new clock", |d| {
            d.status
                .as_ref()
                .and_then(|s| s.expires_at.as_ref())
                .is_some_and(|e| e.0 > expires_at)
        })
        .await;
    assert!(new_expiry.status.is_some());
}

#[tokio::test]
async fn gitops_tracked_draft_is_marked_expired_and_kept() {
    let w = world("d-argo", &[]).await;
    let mut d = draft(
        "tracked",
        "content",
        content_config("x"),
        json!({"retention": "3s"}),
    );
    d.metadata.annotations = Some(BTreeMap::from([(
        "argocd.argoproj.io/tracking-id".into(),
        "app:kiln.dev/Draft:ns/tracked".into(),
    )]));
    w.create(&d).await;
    let d = w
        .wait("tracked", "Expired", |d| is(d, "Expired", "True"))
        .await;
    let s = d.status.as_ref().expect("status");
    assert_eq!(s.phase, Some(kiln::api::draft::DraftPhase::Expired));
    assert_eq!(s.expiration, Some(kiln::api::Expiration::MarkExpired));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.drafts.get_opt("tracked").await.expect("get").is_some(),
        "kept, not deleted"
    );
}

#[tokio::test]
async fn renew_pushes_expires_at() {
    let w = world("d-renew", &[]).await;
    w.create(&draft(
        "r",
        "content",
        content_config("x"),
        json!({"retention": "1h"}),
    ))
    .await;
    let before = w
        .wait("r", "ready", |d| is(d, "Ready", "True"))
        .await
        .status
        .and_then(|s| s.expires_at)
        .expect("expiresAt")
        .0;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.drafts
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kiln.dev/renew": "1"}}})),
        )
        .await
        .expect("renew");
    let after = eventually(WAIT, "expiresAt pushed", || async {
        let e = w.drafts.get("r").await.ok()?.status?.expires_at?.0;
        (e > before).then_some(e)
    })
    .await;
    assert!(after > before);
}

#[tokio::test]
async fn a_resync_of_settled_drafts_writes_nothing() {
    let w = world("d-economy", &["--resync=1s"]).await;
    for i in 0..3 {
        w.create(&draft(
            &format!("e{i}"),
            "content",
            content_config("x"),
            json!({"publish": {"configId": format!("econ-{i}")}}),
        ))
        .await;
    }
    for i in 0..3 {
        w.wait(&format!("e{i}"), "ready", |d| is(d, "Ready", "True"))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let versions = |drafts: Vec<Draft>, cms: Vec<ConfigMap>| {
        let mut v: Vec<(String, String)> = drafts
            .iter()
            .map(|d| (d.name_any(), d.resource_version().unwrap_or_default()))
            .collect();
        v.extend(
            cms.iter()
                .map(|c| (c.name_any(), c.resource_version().unwrap_or_default())),
        );
        v.sort();
        v
    };
    let before = versions(
        w.drafts
            .list(&ListParams::default())
            .await
            .expect("l")
            .items,
        w.cms.list(&ListParams::default()).await.expect("l").items,
    );
    // Several resync periods pass over the settled drafts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = versions(
        w.drafts
            .list(&ListParams::default())
            .await
            .expect("l")
            .items,
        w.cms.list(&ListParams::default()).await.expect("l").items,
    );
    assert_eq!(before, after, "a resync changed resourceVersions");
    let reconciles = support::http_get(w.op.http_addr, "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(
        reconciles.contains("kiln_reconciles_total{controller=\"draft\"}"),
        "{reconciles}"
    );
}

/// A write the API server refuses (here a ValidatingAdmissionPolicy against published
/// ConfigMaps in the test's namespace) is retried with a growing delay and reported on the
/// Draft as a Warning Event naming what Kiln was doing and the server's reason, without the
/// server's message; when the cause goes, the draft publishes.
#[tokio::test]
async fn refused_writes_are_reported_on_the_object_and_retried() {
    let w = world("d-refused", &[]).await;
    let name = format!("kiln-test-deny-{}", w.ns);
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('kiln.dev/config-id' in object.metadata.labels)",
                "message": "the server's own words: no published ConfigMaps here",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": w.ns}}}},
    });
    for object in [&policy, &binding] {
        w.cp.kubectl_stdin(&["apply", "-f", "-"], Some(&object.to_string()))
            .success();
    }
    // The API server enforces a policy once its informer has it: probe with a dry run.
    let probe = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "probe", "namespace": w.ns, "labels": {"kiln.dev/config-id": "x"}}});
    eventually(WAIT, "the policy to be enforced", || async {
        let out = w.cp.kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&probe.to_string()),
        );
        (!out.status.success()).then_some(())
    })
    .await;

    w.create(&draft(
        "q",
        "content",
        content_config("quota"),
        json!({"publish": {"configId": "quota"}}),
    ))
    .await;
    let events = eventually(WAIT, "a ReconcileFailed Event on the draft", || async {
        let events = w.events("ReconcileFailed").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let event = &events[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("q")
    );
    let note = event.note.clone().unwrap_or_default();
    assert!(note.contains("Invalid (422)"), "{note}");
    assert!(note.contains("retrying in"), "{note}");
    assert!(
        !note.contains("own words"),
        "the server's message stays in the log: {note}"
    );
    assert!(
        w.op.logs().contains("own words"),
        "the log has the whole error"
    );

    w.cp.kubectl(&["delete", "validatingadmissionpolicybinding", &name])
        .success();
    w.cp.kubectl(&["delete", "validatingadmissionpolicy", &name])
        .success();
    // The next retry (at most 20 s after the third failure) publishes.
    w.wait("q", "published once the policy is gone", |d| {
        d.status.as_ref().is_some_and(|s| s.published.is_some())
    })
    .await;
}

fn follower(name: &str, follow_config: Option<&str>) -> serde_json::Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}});
    if let Some(f) = follow_config {
        d["metadata"]["annotations"] = json!({"kiln.dev/follow-config": f});
    }
    d
}

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

#[tokio::test]
async fn followers_of_a_published_config_roll_out_once_per_new_revision() {
    let mut w = world("d-follow", &["--rollout-debounce=3s"]).await;
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), &w.ns);
    for (name, follow) in [
        ("web", Some("other-artifact, greet-content")),
        ("bystander", None),
    ] {
        deployments
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(follower(name, follow)),
            )
            .await
            .expect("apply Deployment");
    }
    let publish = json!({"publish": {"configId": "greet"}});
    w.create(&draft("g", "content", content_config("v1"), publish))
        .await;
    let d = w
        .wait("g", "published with its follower listed", |d| {
            let s = d.status.as_ref().expect("status");
            is(d, "Ready", "True") && s.followers.len() == 1
        })
        .await;
    let s = d.status.expect("status");
    assert_eq!(s.followers[0].kind, "Deployment");
    assert_eq!(s.followers[0].name, "web");
    assert_eq!(s.followers[0].rolled_out, None);
    assert!(
        !s.followers[0].behind,
        "a follower is not behind a first publication"
    );
    assert_eq!(s.followers_behind, Some(0));

    let key = "kiln.dev/config-revision-greet-content";
    let generation = |name: &'static str| {
        let deployments = deployments.clone();
        async move {
            deployments
                .get(name)
                .await
                .expect("Deployment")
                .metadata
                .generation
        }
    };
    // Neither creation, nor a restart, nor drift repair rolls anything out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(generation("web").await, Some(1), "rolled out on creation");
    w.op.restart("info,kiln=debug").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        generation("web").await,
        Some(1),
        "rolled out after a restart"
    );
    let original = w.configmap("greet-content").await.expect("published").data;
    w.cms
        .patch(
            "greet-content",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greet-content.json": "{\"hacked\": true}"}})),
        )
        .await
        .expect("edit");
    eventually(Duration::from_secs(10), "edit repaired", || async {
        (w.configmap("greet-content").await?.data == original).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        generation("web").await,
        Some(1),
        "rolled out on drift repair"
    );

    // A new revision: one rollout, after the debounce window.
    let changed = Instant::now();
    w.set_config("g", content_config("v2")).await;
    let rolled = eventually(Duration::from_secs(20), "the rollout", || async {
        let d = deployments.get("web").await.ok()?;
        (template_annotation(&d, key)?.as_str() == "2").then_some(d)
    })
    .await;
    let waited = changed.elapsed();
    eprintln!(
        "new revision rolled out in {:.1}s (debounce 3s)",
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_secs(3),
        "rolled out before the debounce window closed"
    );
    assert!(rolled.annotations().contains_key("kiln.dev/rolled-out-at"));
    let d = w
        .wait("g", "the follower reported at revision 2", |d| {
            let s = d.status.as_ref().expect("status");
            s.followers.first().and_then(|f| f.rolled_out.as_deref()) == Some("2")
        })
        .await;
    let s = d.status.expect("status");
    assert_eq!(s.followers_behind, Some(0));
    let rollout = s.rollout.expect("rollout status");
    assert_eq!(rollout.pending_since, None);
    assert_eq!(rollout.last_revision, Some(2));
    assert_eq!(rollout.last_workloads, Some(1));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        generation("web").await,
        Some(2),
        "exactly one pod-template change"
    );
    assert_eq!(
        generation("bystander").await,
        Some(1),
        "a non-follower was touched"
    );
    eventually(WAIT, "the RolloutTriggered Event", || async {
        let events = w.events("RolloutTriggered").await;
        let on = |kind: &str| {
            events
                .iter()
                .any(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind))
        };
        (on("Draft") && on("Deployment")).then_some(())
    })
    .await;

    // A follower that stops following leaves the status.
    deployments
        .patch(
            "web",
            &PatchParams::apply("test").force(),
            &Patch::Apply(follower("web", None)),
        )
        .await
        .expect("unfollow");
    w.wait("g", "no followers", |d| {
        d.status
            .as_ref()
            .is_some_and(|s| s.followers.is_empty() && s.followers_behind.is_none())
    })
    .await;
    w.op.restart("info,kiln=debug").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(generation("web").await, Some(3), "only the test's own edit");
}
