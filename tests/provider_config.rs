//! The ProviderConfig controller on a real control plane: derived objects and their owner,
//! garbage collection, deletions of configs that workloads use (reported, or held until
//! unused), one default per type and its aliases, rotation, broken references,
//! debounced rollouts of followers, secrecy of key values in logs, and memory next to many
//! unrelated Secrets. Each test has its own namespace and its own operator.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{StreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kiln::api::ProviderConfig;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{
    Grant, HttpBody, Operator, OperatorOptions, control_plane, eventually, http_request, namespace,
};

const WAIT: Duration = Duration::from_secs(30);

struct World {
    client: Client,
    ns: String,
    op: Operator,
}

impl World {
    async fn new(prefix: &str) -> World {
        Self::with(prefix, |_| {}).await
    }

    async fn with(prefix: &str, tweak: impl FnOnce(&mut OperatorOptions)) -> World {
        let cp = control_plane();
        let client = cp.client().await;
        let ns = namespace(&client, prefix).await;
        let mut options = OperatorOptions::namespace(&ns);
        tweak(&mut options);
        let op = Operator::start(cp, options).await;
        World { client, ns, op }
    }

    fn pcs(&self) -> Api<ProviderConfig> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces a source Secret (the test's own field manager owns all of `data`).
    async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "type": "Opaque", "data": data});
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("apply Secret");
    }

    /// Applies a ProviderConfig spec (the test's field manager owns the whole spec).
    async fn put_pc(&self, name: &str, spec: Value) {
        let pc = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": name}, "spec": spec});
        self.pcs()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&pc),
            )
            .await
            .expect("apply ProviderConfig");
    }

    /// Waits until the config's status describes its current generation and `check` holds.
    async fn wait_pc(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&ProviderConfig) -> bool,
    ) -> ProviderConfig {
        let pcs = self.pcs();
        let check = &check;
        eventually(WAIT, &format!("{name}: {what}"), || {
            let pcs = pcs.clone();
            async move {
                let pc = pcs.get(name).await.ok()?;
                let observed = pc.status.as_ref()?.observed_generation;
                (observed == pc.metadata.generation && check(&pc)).then_some(pc)
            }
        })
        .await
    }

    async fn wait_ready(&self, name: &str) -> ProviderConfig {
        self.wait_pc(name, "Ready=True", |pc| {
            condition(pc, "Ready") == Some("True")
        })
        .await
    }

    async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self.secrets().get_opt(name).await.expect("get Secret")?;
        Some(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        )
    }

    async fn provider_json(&self, name: &str) -> Option<Value> {
        let cm = self
            .configmaps()
            .get_opt(name)
            .await
            .expect("get ConfigMap")?;
        serde_json::from_str(cm.data?.get("provider.json")?).ok()
    }

    /// Waits until `/metrics` has a line starting with `line`.
    async fn wait_metric(&self, line: &str) {
        let addr = self.op.http_addr;
        eventually(WAIT, line, || async move {
            let (_, body) = support::http_get(addr, "/metrics").await?;
            body.lines().any(|l| l.starts_with(line)).then_some(())
        })
        .await;
    }

    /// Reasons of the Events about `name`, oldest first.
    /// Waits for an Event with `reason` about `name`: Events are written in the background,
    /// so one may land just after the status that reports the same change.
    async fn wait_event(&self, name: &str, reason: &str) {
        eventually(WAIT, &format!("a {reason} Event about {name}"), || async {
            self.event_reasons(name)
                .await
                .iter()
                .any(|r| r == reason)
                .then_some(())
        })
        .await;
    }

    async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let mut list: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        list.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        list.into_iter().filter_map(|e| e.reason).collect()
    }
}

fn condition<'a>(pc: &'a ProviderConfig, type_: &str) -> Option<&'a str> {
    pc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

fn condition_reason(pc: &ProviderConfig, type_: &str) -> Option<String> {
    pc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

fn spec_with_keys(keys: Value) -> Value {
    json!({"providerType": "openai", "apiKeys": keys})
}

fn key(name: &str, secret: &str, secret_key: &str) -> Value {
    json!({"name": name, "secretRef": {"name": secret, "key": secret_key}})
}

fn controller_owner(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.name.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn derived_objects_have_the_right_content_and_owner() {
    let w = World::new("pcfg-derive").await;
    w.put_secret("keys", &[("primary", "sk-one"), ("backup", "sk-two")])
        .await;
    w.put_pc(
        "main",
        json!({"providerType": "openai", "displayName": "OpenAI (main)",
               "settings": {"model": "gpt-4o-mini", "timeoutSeconds": 30},
               "apiKeys": [key("primary", "keys", "primary"), key("backup", "keys", "backup")]}),
    )
    .await;
    let pc = w.wait_ready("main").await;
    let status = pc.status.clone().expect("status");
    assert_eq!(status.config_map.as_deref(), Some("main-provider"));
    assert_eq!(status.secret.as_deref(), Some("main-credentials"));
    assert_eq!(status.effective_default, Some(false));
    assert_eq!(status.keys.len(), 2);
    for k in &status.keys {
        assert!(k.resolved && k.active, "{k:?}");
        let fp = k.fingerprint.as_deref().expect("fingerprint");
        assert!(
            fp.starts_with("hmac-sha256:") && !fp.contains("sk-"),
            "{fp}"
        );
    }
    // Keyed: a plain sha256 of the value (guessable for a weak key) appears nowhere.
    let plain = hex::encode(Sha256::digest(b"sk-one"));
    let status_json = serde_json::to_string(&status).expect("json");
    assert!(!status_json.contains(&plain[..12]), "{status_json}");

    let doc = w.provider_json("main-provider").await.expect("ConfigMap");
    assert_eq!(
        doc,
        json!({"type": "openai", "name": "main", "displayName": "OpenAI (main)",
               "settings": {"model": "gpt-4o-mini", "timeoutSeconds": 30}, "default": false})
    );
    let data = w.secret_data("main-credentials").await.expect("Secret");
    assert_eq!(data["primary"], "sk-one");
    assert_eq!(data["backup"], "sk-two");
    assert_eq!(data["API_KEY"], "sk-one", "API_KEY is the first active key");
    assert_eq!(data.len(), 3);

    let cm = w.configmaps().get("main-provider").await.expect("cm");
    let secret = w.secrets().get("main-credentials").await.expect("secret");
    for meta in [&cm.metadata, &secret.metadata] {
        let owners = meta.owner_references.clone().expect("ownerReferences");
        assert_eq!(owners.len(), 1);
        let o = &owners[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("ProviderConfig", "main", pc.uid().unwrap().as_str())
        );
        assert_eq!(
            (o.controller, o.block_owner_deletion),
            (Some(true), Some(true))
        );
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "kiln");
        assert!(
            labels
                .keys()
                .all(|k| !k.starts_with("argocd.argoproj.io") && k != "app.kubernetes.io/instance"),
            "{labels:?}"
        );
    }
    assert_eq!(
        secret.annotations().get("kiln.dev/sha256"),
        status.credentials_hash.as_ref(),
        "the Secret's hash annotation is the status hash"
    );
    let hash_key = secret
        .annotations()
        .get("kiln.dev/hash-key")
        .expect("the Secret carries the key of its hashes");
    assert_eq!(hash_key.len(), 64, "{hash_key}");

    // Write economy: a reconcile that changes nothing sends nothing. Poke the config (a
    // metadata change starts a reconcile) and check nothing else moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (
        w.configmaps()
            .get("main-provider")
            .await
            .unwrap()
            .resource_version(),
        w.secrets()
            .get("main-credentials")
            .await
            .unwrap()
            .resource_version(),
    );
    let poked = w
        .pcs()
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .expect("poke");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (
        w.configmaps()
            .get("main-provider")
            .await
            .unwrap()
            .resource_version(),
        w.secrets()
            .get("main-credentials")
            .await
            .unwrap()
            .resource_version(),
    );
    assert_eq!(
        before, after,
        "derived objects were rewritten without a change"
    );
    assert_eq!(
        w.pcs().get("main").await.unwrap().resource_version(),
        poked.resource_version(),
        "the status was rewritten without a change"
    );
    w.wait_event("main", "Synced").await;
}

#[tokio::test]
async fn deleting_the_config_garbage_collects_derived_objects() {
    let w = World::new("pcfg-gc").await;
    w.put_secret("keys", &[("k", "sk-gc")]).await;
    w.put_pc("gone", spec_with_keys(json!([key("k", "keys", "k")])))
        .await;
    w.wait_ready("gone").await;
    assert!(w.secret_data("gone-credentials").await.is_some());
    w.pcs()
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete");
    // The garbage collector discovers a new CRD's resources periodically: allow for it.
    eventually(
        Duration::from_secs(90),
        "derived objects collected",
        || async {
            let cm = w.configmaps().get_opt("gone-provider").await.ok()?;
            let secret = w.secrets().get_opt("gone-credentials").await.ok()?;
            (cm.is_none() && secret.is_none()).then_some(())
        },
    )
    .await;
    // The source Secret is not Kiln's: it stays.
    assert!(w.secret_data("keys").await.is_some());
}

/// A Deployment with `replicas` whose pod template has `pod` (containers default to one),
/// annotated `kiln.dev/follow: <follow>` if given.
fn workload(name: &str, replicas: i32, follow: Option<&str>, pod: Value) -> Value {
    let mut pod = pod;
    pod.as_object_mut()
        .expect("pod spec object")
        .entry("containers")
        .or_insert(json!([{"name": "app", "image": "registry.invalid/app:1"}]));
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod}}});
    if let Some(f) = follow {
        d["metadata"]["annotations"] = json!({"kiln.dev/follow": f});
    }
    d
}

fn mounting(secret: &str) -> Value {
    json!({"volumes": [{"name": "creds", "secret": {"secretName": secret}}]})
}

impl World {
    async fn put_deployment(&self, d: Value) {
        let name = d["metadata"]["name"].as_str().expect("name").to_string();
        self.deployments()
            .patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&d),
            )
            .await
            .expect("apply Deployment");
    }

    /// Notes of the Events with `reason` about `name`.
    async fn event_notes(&self, name: &str, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }

    /// Waits for a `reason` Event about `name` whose note contains `text`; returns the note.
    async fn wait_event_note(&self, name: &str, reason: &str, text: &str) -> String {
        eventually(
            WAIT,
            &format!("a {reason} Event about {name} naming {text}"),
            || async {
                self.event_notes(name, reason)
                    .await
                    .into_iter()
                    .find(|n| n.contains(text))
            },
        )
        .await
    }

    /// Waits until the config is gone from the API server.
    async fn wait_gone(&self, name: &str, within: Duration) -> Duration {
        let start = Instant::now();
        eventually(within, &format!("ProviderConfig {name} gone"), || async {
            self.pcs().get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        start.elapsed()
    }

    /// Waits until the derived Secret `name` is garbage-collected. The garbage collector
    /// discovers a new CRD's resources periodically: allow for it.
    async fn wait_secret_collected(&self, name: &str) {
        eventually(
            Duration::from_secs(90),
            &format!("Secret {name} collected"),
            || async {
                self.secrets()
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }

    /// Waits until `name` is being deleted and reports `InUse=True` with `reason`.
    async fn wait_in_use(&self, name: &str, reason: &str) -> ProviderConfig {
        let pcs = self.pcs();
        eventually(WAIT, &format!("{name}: InUse={reason}"), || {
            let pcs = pcs.clone();
            async move {
                let pc = pcs.get(name).await.ok()?;
                (pc.metadata.deletion_timestamp.is_some()
                    && condition(&pc, "InUse") == Some("True")
                    && condition_reason(&pc, "InUse").as_deref() == Some(reason))
                .then_some(pc)
            }
        })
        .await
    }
}

fn in_use_message(pc: &ProviderConfig) -> String {
    pc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "InUse"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

const IN_USE_FINALIZER: &str = "kiln.dev/in-use";

#[tokio::test]
async fn deleting_a_config_in_use_warns_then_proceeds() {
    let w = World::new("pcfg-inuse").await;
    w.put_secret("keys", &[("k", "sk-used")]).await;
    w.put_deployment(workload("app", 1, None, mounting("used-credentials")))
        .await;
    w.put_pc("used", spec_with_keys(json!([key("k", "keys", "k")])))
        .await;
    let pc = w.wait_ready("used").await;
    assert_eq!(pc.finalizers(), [IN_USE_FINALIZER]);
    w.pcs()
        .delete("used", &DeleteParams::default())
        .await
        .expect("delete");
    // The default policy: reported, not held.
    let took = w.wait_gone("used", WAIT).await;
    eprintln!("a config in use was deleted {took:?} after the request");
    let note = w
        .wait_event_note("used", "DeletedWhileInUse", "Deployment/app")
        .await;
    assert!(
        note.contains("(Secret used-credentials)") && note.contains("deletionPolicy: Delete"),
        "{note}"
    );
    w.wait_secret_collected("used-credentials").await;
}

#[tokio::test]
async fn while_unused_holds_the_deletion_until_the_last_user_stops() {
    let w = World::new("pcfg-hold").await;
    w.put_secret("keys", &[("k", "sk-held")]).await;
    let env = json!({"containers": [{"name": "app", "image": "registry.invalid/app:1",
        "env": [{"name": "API_KEY", "valueFrom":
            {"secretKeyRef": {"name": "held-credentials", "key": "API_KEY"}}}]}]});
    w.put_deployment(workload("app", 1, None, env)).await;
    w.put_deployment(workload("idle", 0, None, mounting("held-credentials")))
        .await;
    let mut spec = spec_with_keys(json!([key("k", "keys", "k")]));
    spec["deletionPolicy"] = json!("WhileUnused");
    w.put_pc("held", spec).await;
    w.wait_ready("held").await;
    w.pcs()
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let pc = w.wait_in_use("held", "DeletionHeld").await;
    let message = in_use_message(&pc);
    assert!(
        message.contains("Deployment/app (Secret held-credentials)"),
        "{message}"
    );
    assert!(
        !message.contains("Deployment/idle"),
        "a workload scaled to 0 is not a user: {message}"
    );
    w.wait_event_note("held", "DeletedWhileInUse", "Deployment/app")
        .await;
    // Held for longer than a few rechecks, with the credentials in place.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let pc = w.pcs().get("held").await.expect("still there");
    assert_eq!(pc.finalizers(), [IN_USE_FINALIZER]);
    assert_eq!(
        w.secret_data("held-credentials")
            .await
            .expect("Secret kept")["API_KEY"],
        "sk-held"
    );
    assert_eq!(
        w.event_notes("held", "DeletedWhileInUse").await.len(),
        1,
        "one Warning per verdict, not per recheck"
    );

    w.deployments()
        .patch(
            "app",
            &PatchParams::apply("test").force(),
            &Patch::Apply(workload("app", 0, None, json!({}))),
        )
        .await
        .expect("scale to 0");
    let took = w.wait_gone("held", WAIT).await;
    eprintln!("a held config went {took:?} after its last user was scaled to 0");
    w.wait_event("held", "DeletionReleased").await;
    w.wait_secret_collected("held-credentials").await;
}

#[tokio::test]
async fn an_unused_config_is_deleted_at_once_without_a_warning() {
    let w = World::new("pcfg-unused").await;
    w.put_secret("keys", &[("k", "sk-idle")]).await;
    w.put_deployment(workload(
        "bystander",
        2,
        None,
        mounting("other-credentials"),
    ))
    .await;
    let mut spec = spec_with_keys(json!([key("k", "keys", "k")]));
    spec["deletionPolicy"] = json!("WhileUnused");
    w.put_pc("idle", spec).await;
    let pc = w.wait_ready("idle").await;
    assert_eq!(pc.finalizers(), [IN_USE_FINALIZER]);
    w.pcs()
        .delete("idle", &DeleteParams::default())
        .await
        .expect("delete");
    let took = w.wait_gone("idle", Duration::from_secs(10)).await;
    eprintln!("an unused config was deleted {took:?} after the request");
    w.wait_secret_collected("idle-credentials").await;
    let reasons = w.event_reasons("idle").await;
    assert!(
        !reasons
            .iter()
            .any(|r| r == "DeletedWhileInUse" || r == "DeletionReleased"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_follower_is_a_user_until_it_is_deleted() {
    let w = World::new("pcfg-follow").await;
    w.put_secret("keys", &[("k", "sk-fol")]).await;
    w.put_deployment(workload("follower", 1, Some("other, fol"), json!({})))
        .await;
    let mut spec = spec_with_keys(json!([key("k", "keys", "k")]));
    spec["deletionPolicy"] = json!("WhileUnused");
    w.put_pc("fol", spec).await;
    w.wait_ready("fol").await;
    w.pcs()
        .delete("fol", &DeleteParams::default())
        .await
        .expect("delete");
    let pc = w.wait_in_use("fol", "DeletionHeld").await;
    let message = in_use_message(&pc);
    assert!(
        message.contains("Deployment/follower (kiln.dev/follow)"),
        "{message}"
    );
    assert!(w.secret_data("fol-credentials").await.is_some());
    w.deployments()
        .delete("follower", &DeleteParams::default())
        .await
        .expect("delete the follower");
    let took = w.wait_gone("fol", WAIT).await;
    eprintln!("a held config went {took:?} after its follower was deleted");
    assert!(
        took < Duration::from_secs(5),
        "the followers index wakes a held config when a follower goes ({took:?}, the periodic check is every 10s)"
    );
    w.wait_secret_collected("fol-credentials").await;
}

#[tokio::test]
async fn a_held_default_keeps_its_aliases_for_their_users() {
    let w = World::new("pcfg-alias-hold").await;
    w.put_secret("keys", &[("d", "sk-default"), ("o", "sk-other")])
        .await;
    w.put_deployment(workload(
        "app",
        1,
        None,
        mounting("default-openai-credentials"),
    ))
    .await;
    let mut spec = json!({"providerType": "openai", "default": true,
        "deletionPolicy": "WhileUnused", "apiKeys": [key("d", "keys", "d")]});
    w.put_pc("dflt", spec.clone()).await;
    // A config of the same type that does not claim the default: its reconciles remove the
    // aliases once no config claims the default, but not while a claimant is held.
    w.put_pc("plain", spec_with_keys(json!([key("o", "keys", "o")])))
        .await;
    w.wait_pc("dflt", "effective default", |pc| {
        pc.status.as_ref().and_then(|s| s.effective_default) == Some(true)
    })
    .await;
    w.wait_ready("plain").await;
    assert!(w.secret_data("default-openai-credentials").await.is_some());

    w.pcs()
        .delete("dflt", &DeleteParams::default())
        .await
        .expect("delete");
    let pc = w.wait_in_use("dflt", "DeletionHeld").await;
    let message = in_use_message(&pc);
    assert!(
        message.contains("Deployment/app (Secret default-openai-credentials)"),
        "{message}"
    );
    // Touch the sibling: its reconcile must leave the aliases alone.
    w.pcs()
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .expect("poke");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.secret_data("default-openai-credentials")
            .await
            .expect("the alias stays while its user holds the default")["API_KEY"],
        "sk-default"
    );

    // Another config claims the default: the aliases move to it, so the app keeps working
    // and no longer holds the deleted one.
    spec["apiKeys"] = json!([key("o", "keys", "o")]);
    spec.as_object_mut().expect("spec").remove("deletionPolicy");
    w.put_pc("plain", spec).await;
    w.wait_gone("dflt", WAIT).await;
    eventually(WAIT, "the aliases follow the new default", || async {
        let d = w.secret_data("default-openai-credentials").await?;
        (d.get("API_KEY").map(String::as_str) == Some("sk-other")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn oldest_default_wins_and_the_other_reports_a_conflict() {
    let w = World::new("pcfg-default").await;
    w.put_secret("keys", &[("old", "sk-old"), ("new", "sk-new")])
        .await;
    let spec = |k: &str| json!({"providerType": "openai", "default": true, "apiKeys": [key(k, "keys", k)]});
    // The younger one sorts first by name: creation time must decide, not the name.
    w.put_pc("z-older", spec("old")).await;
    w.wait_ready("z-older").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation times have 1s resolution
    w.put_pc("a-younger", spec("new")).await;

    let loser = w
        .wait_pc("a-younger", "DefaultConflict=True", |pc| {
            condition(pc, "DefaultConflict") == Some("True")
        })
        .await;
    assert_eq!(
        condition(&loser, "Ready"),
        Some("True"),
        "a conflict is not a failure"
    );
    assert_eq!(
        loser.status.as_ref().unwrap().effective_default,
        Some(false)
    );
    let message = loser
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "DefaultConflict")
        .unwrap()
        .message
        .clone();
    assert!(message.contains("z-older"), "{message}");
    let winner = w
        .wait_pc("z-older", "effective default", |pc| {
            pc.status.as_ref().and_then(|s| s.effective_default) == Some(true)
        })
        .await;
    assert_eq!(condition(&winner, "DefaultConflict"), Some("False"));

    // Aliases follow the winner, owned by it (the loser is a non-controlling owner).
    let alias = w
        .configmaps()
        .get("default-openai-provider")
        .await
        .expect("alias ConfigMap");
    assert_eq!(controller_owner(&alias.metadata), "z-older");
    assert_eq!(
        w.provider_json("default-openai-provider").await.unwrap()["name"],
        "z-older"
    );
    assert_eq!(
        w.provider_json("default-openai-provider").await.unwrap()["default"],
        true
    );
    let creds = w
        .secret_data("default-openai-credentials")
        .await
        .expect("alias Secret");
    assert_eq!(creds["API_KEY"], "sk-old");
    // Each config still has its own objects.
    assert_eq!(
        w.secret_data("a-younger-credentials").await.unwrap()["API_KEY"],
        "sk-new"
    );
    assert_eq!(
        w.provider_json("a-younger-provider").await.unwrap()["default"],
        false
    );
    w.wait_event("a-younger", "DefaultConflict").await;
    w.wait_metric("kiln_provider_default_conflicts 1").await;
    w.wait_metric(r#"kiln_objects{kind="ProviderConfig",phase="Ready"} 2"#)
        .await;
    w.wait_event("z-older", "DefaultElected").await;
}

#[tokio::test]
async fn deleting_the_default_moves_the_aliases_without_a_gap() {
    let w = World::new("pcfg-move").await;
    w.put_secret("keys", &[("one", "sk-first"), ("two", "sk-second")])
        .await;
    let spec = |k: &str| json!({"providerType": "openai", "default": true, "apiKeys": [key(k, "keys", k)]});
    w.put_pc("first", spec("one")).await;
    w.wait_ready("first").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.put_pc("second", spec("two")).await;
    w.wait_pc("second", "DefaultConflict=True", |pc| {
        condition(pc, "DefaultConflict") == Some("True")
    })
    .await;
    // The winner adds the loser as an owner of the aliases once it sees it.
    let uids = eventually(WAIT, "aliases owned by both claimants", || async {
        let cm = w.configmaps().get("default-openai-provider").await.ok()?;
        let s = w.secrets().get("default-openai-credentials").await.ok()?;
        let owners = cm.metadata.owner_references.clone().unwrap_or_default();
        (owners.len() == 2 && controller_owner(&cm.metadata) == "first")
            .then(|| (cm.uid().unwrap(), s.uid().unwrap()))
    })
    .await;

    // Watch the aliases closely while the default is deleted: they must never be missing.
    let watcher = {
        let (cms, secrets) = (w.configmaps(), w.secrets());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut polls = 0;
            while Instant::now() < deadline {
                let cm = cms.get_opt("default-openai-provider").await.expect("get");
                let s = secrets
                    .get_opt("default-openai-credentials")
                    .await
                    .expect("get");
                polls += 1;
                let (Some(cm), Some(s)) = (cm, s) else {
                    return Err(format!("an alias was missing after {polls} polls"));
                };
                let moved = controller_owner(&cm.metadata) == "second"
                    && s.data
                        .as_ref()
                        .and_then(|d| d.get("API_KEY"))
                        .map(|v| v.0.clone())
                        == Some(b"sk-second".to_vec());
                if moved {
                    return Ok((cm.uid().unwrap(), s.uid().unwrap(), polls));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err("the aliases did not move within 60s".to_string())
        })
    };
    w.pcs()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete the default");
    let (cm_uid, secret_uid, polls) = watcher.await.expect("watcher").expect("aliases moved");
    eprintln!("aliases moved after {polls} polls, never missing");
    assert_eq!(
        (cm_uid, secret_uid),
        uids,
        "the aliases were recreated, not moved"
    );
    assert_eq!(
        w.provider_json("default-openai-provider").await.unwrap()["name"],
        "second"
    );
    w.wait_pc("second", "effective default", |pc| {
        pc.status.as_ref().and_then(|s| s.effective_default) == Some(true)
            && condition(pc, "DefaultConflict") == Some("False")
    })
    .await;

    // No claimant left: the aliases go.
    w.put_pc(
        "second",
        json!({"providerType": "openai", "default": false, "apiKeys": [key("two", "keys", "two")]}),
    )
    .await;
    eventually(WAIT, "aliases removed", || async {
        let cm = w
            .configmaps()
            .get_opt("default-openai-provider")
            .await
            .ok()?;
        let s = w
            .secrets()
            .get_opt("default-openai-credentials")
            .await
            .ok()?;
        (cm.is_none() && s.is_none()).then_some(())
    })
    .await;
    assert!(
        w.secret_data("second-credentials").await.is_some(),
        "own objects stay"
    );
}

/// Changes `primary` and returns the time until the derived Secret holds the new value.
async fn rotate_and_time(w: &World, value: &str) -> Duration {
    let start = Instant::now();
    w.put_secret("keys", &[("primary", value)]).await;
    let deadline = start + WAIT;
    loop {
        if w.secret_data("rot-credentials")
            .await
            .and_then(|d| d.get("primary").cloned())
            == Some(value.to_string())
        {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "derived Secret did not follow within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn rotating_a_key_updates_the_secret_fingerprint_and_rotation_time() {
    let w = World::new("pcfg-rotate").await;
    w.put_secret("keys", &[("primary", "sk-v0")]).await;
    w.put_pc(
        "rot",
        spec_with_keys(json!([key("primary", "keys", "primary")])),
    )
    .await;
    let first = w.wait_ready("rot").await;
    let before = first.status.clone().unwrap();
    assert_eq!(
        before.keys[0].last_rotated_time, None,
        "first sighting is no rotation"
    );

    let latency = rotate_and_time(&w, "sk-v1").await;
    let after = w
        .wait_pc("rot", "a new fingerprint", |pc| {
            pc.status.as_ref().unwrap().keys[0].fingerprint != before.keys[0].fingerprint
        })
        .await
        .status
        .unwrap();
    assert!(after.keys[0].last_rotated_time.is_some());
    assert_ne!(after.credentials_hash, before.credentials_hash);
    assert_eq!(
        w.secret_data("rot-credentials").await.unwrap()["API_KEY"],
        "sk-v1"
    );
    let rotated_at = after.keys[0].last_rotated_time.clone();
    eventually(WAIT, "KeyRotated Event", || async {
        w.event_reasons("rot")
            .await
            .contains(&"KeyRotated".to_string())
            .then_some(())
    })
    .await;
    w.wait_metric("kiln_provider_key_rotations_total 1").await;

    // More rotations, to measure the Secret → derived Secret latency.
    let mut samples = vec![latency];
    for i in 2..=8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        samples.push(rotate_and_time(&w, &format!("sk-v{i}")).await);
    }
    samples.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "Secret change -> derived Secret change: min {:.0} ms, median {:.0} ms, max {:.0} ms ({} samples; 5 ms polling)",
        ms(&samples[0]),
        ms(&samples[samples.len() / 2]),
        ms(&samples[samples.len() - 1]),
        samples.len()
    );
    let last = w
        .wait_pc("rot", "the last rotation recorded", |pc| {
            pc.status.as_ref().unwrap().keys[0].last_rotated_time != rotated_at
        })
        .await;
    assert!(last.status.unwrap().keys[0].last_rotated_time > rotated_at);
}

#[tokio::test]
async fn deactivating_a_key_removes_it_from_the_derived_secret() {
    let w = World::new("pcfg-deact").await;
    w.put_secret("keys", &[("a", "sk-a"), ("b", "sk-b")]).await;
    let keys = |a_active: bool| {
        spec_with_keys(json!([
            {"name": "a", "secretRef": {"name": "keys", "key": "a"}, "active": a_active},
            key("b", "keys", "b")
        ]))
    };
    w.put_pc("dk", keys(true)).await;
    w.wait_ready("dk").await;
    assert_eq!(
        w.secret_data("dk-credentials").await.unwrap()["API_KEY"],
        "sk-a"
    );

    w.put_pc("dk", keys(false)).await;
    let pc = w
        .wait_pc("dk", "key a inactive", |pc| {
            pc.status
                .as_ref()
                .unwrap()
                .keys
                .iter()
                .any(|k| k.name == "a" && !k.active)
        })
        .await;
    assert_eq!(condition(&pc, "Ready"), Some("True"));
    let data = w.secret_data("dk-credentials").await.unwrap();
    assert!(
        !data.contains_key("a"),
        "inactive key still present: {:?}",
        data.keys()
    );
    assert_eq!(data["b"], "sk-b");
    assert_eq!(
        data["API_KEY"], "sk-b",
        "API_KEY moves to the first active key"
    );
    w.wait_event("dk", "KeyDeactivated").await;
}

#[tokio::test]
async fn a_missing_secret_or_key_keeps_the_last_good_credentials() {
    let w = World::new("pcfg-missing").await;
    w.put_secret("keys", &[("primary", "sk-good")]).await;
    w.put_pc(
        "mk",
        spec_with_keys(json!([key("primary", "keys", "primary")])),
    )
    .await;
    w.wait_ready("mk").await;
    let good = w.secrets().get("mk-credentials").await.unwrap();

    w.secrets()
        .delete("keys", &DeleteParams::default())
        .await
        .expect("delete the source Secret");
    let pc = w
        .wait_pc("mk", "SecretNotFound", |pc| {
            condition_reason(pc, "Ready").as_deref() == Some("SecretNotFound")
        })
        .await;
    let status = pc.status.clone().unwrap();
    assert_eq!(condition(&pc, "Ready"), Some("False"));
    assert_eq!(
        status.phase,
        Some(kiln::api::provider_config::ProviderConfigPhase::Degraded)
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains("Secret keys not found"),
        "{}",
        ready.message
    );
    assert!(
        ready
            .message
            .contains("last good Secret mk-credentials is kept"),
        "{}",
        ready.message
    );
    assert!(!status.keys[0].resolved);
    let kept = w
        .secrets()
        .get("mk-credentials")
        .await
        .expect("derived Secret kept");
    assert_eq!(
        kept.resource_version(),
        good.resource_version(),
        "untouched"
    );
    assert_eq!(kept.data, good.data);

    // The Secret comes back without the key: the message names the key.
    w.put_secret("keys", &[("other", "x")]).await;
    let pc = w
        .wait_pc("mk", "missing key", |pc| {
            pc.status
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.message.contains("has no key primary"))
        })
        .await;
    assert_eq!(
        condition_reason(&pc, "Ready").as_deref(),
        Some("SecretNotFound")
    );
    assert_eq!(
        w.secrets().get("mk-credentials").await.unwrap().data,
        good.data
    );

    // Fixed: Ready again.
    w.put_secret("keys", &[("primary", "sk-good")]).await;
    w.wait_ready("mk").await;
    w.wait_event("mk", "SecretNotFound").await;
}

fn deployment(name: &str, follow: Option<&str>) -> Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}});
    if let Some(f) = follow {
        d["metadata"]["annotations"] = json!({"kiln.dev/follow": f});
    }
    d
}

fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn followers_roll_out_once_per_burst_and_never_on_create_or_restart() {
    let mut w = World::with("pcfg-rollout", |o| {
        o.extra_args.push("--rollout-debounce=5s".into())
    })
    .await;
    let deployments = w.deployments();
    for (name, follow) in [("web", Some("other, llm")), ("bystander", None)] {
        deployments
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(deployment(name, follow)),
            )
            .await
            .expect("apply Deployment");
    }
    w.put_secret("keys", &[("primary", "sk-r0")]).await;
    w.put_pc(
        "llm",
        spec_with_keys(json!([key("primary", "keys", "primary")])),
    )
    .await;
    w.wait_ready("llm").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.metadata.generation, Some(1), "touched at creation");
    assert!(template_annotations(&web).is_empty());

    w.op.restart("info,kiln=debug").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.metadata.generation, Some(1), "touched after a restart");

    // A burst of three rotations inside one debounce window.
    let burst = Instant::now();
    for v in ["sk-r1", "sk-r2", "sk-r3"] {
        w.put_secret("keys", &[("primary", v)]).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let pc = w
        .wait_pc("llm", "the final credentials", |pc| {
            pc.status.as_ref().unwrap().keys[0].fingerprint.is_some()
                && condition(pc, "Ready") == Some("True")
        })
        .await;
    let _ = pc;
    let key = "kiln.dev/credentials-hash-llm";
    let rolled = eventually(Duration::from_secs(20), "the rollout", || async {
        let d = deployments.get("web").await.ok()?;
        template_annotations(&d).contains_key(key).then_some(d)
    })
    .await;
    let waited = burst.elapsed();
    eprintln!(
        "rollout {:.1}s after the first rotation of the burst (debounce 5s)",
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_secs(5),
        "rolled out before the debounce window closed"
    );
    // Let any further (wrong) rollout happen before counting.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let web = deployments.get("web").await.unwrap();
    assert_eq!(
        web.metadata.generation,
        Some(2),
        "exactly one pod-template change"
    );
    let final_hash = w
        .pcs()
        .get("llm")
        .await
        .unwrap()
        .status
        .unwrap()
        .credentials_hash
        .unwrap();
    assert_eq!(
        template_annotations(&web)[key],
        final_hash,
        "rolled to the final hash"
    );
    assert_eq!(template_annotations(&rolled)[key], final_hash);
    assert!(web.annotations().contains_key("kiln.dev/rolled-out-at"));
    assert_eq!(
        w.secret_data("llm-credentials").await.unwrap()["primary"],
        "sk-r3"
    );
    let status = w.pcs().get("llm").await.unwrap().status.unwrap();
    let rollout = status.rollout.expect("rollout status");
    assert_eq!(rollout.pending_since, None);
    assert_eq!(rollout.last_hash.as_deref(), Some(final_hash.as_str()));
    assert_eq!(rollout.last_workloads, Some(1));
    let bystander = deployments.get("bystander").await.unwrap();
    assert_eq!(
        bystander.metadata.generation,
        Some(1),
        "a non-follower was touched"
    );
    w.wait_event("llm", "RolloutTriggered").await;
    w.wait_event("web", "RolloutTriggered").await;
    w.wait_metric(r#"kiln_provider_rollouts_total{kind="Deployment"} 1"#)
        .await;

    // A restart after the rollout changes nothing either.
    w.op.restart("info,kiln=debug").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        deployments.get("web").await.unwrap().metadata.generation,
        Some(2)
    );
}

#[tokio::test]
async fn a_settings_change_alone_rolls_followers_out_and_says_so() {
    let w = World::with("pcfg-settings", |o| {
        o.extra_args.push("--rollout-debounce=2s".into())
    })
    .await;
    let deployments = w.deployments();
    deployments
        .patch(
            "api",
            &PatchParams::apply("test").force(),
            &Patch::Apply(deployment("api", Some("llm"))),
        )
        .await
        .expect("apply Deployment");
    w.put_secret("keys", &[("primary", "sk-s0")]).await;
    let spec = |model: &str| {
        json!({"providerType": "openai", "settings": {"model": model},
            "apiKeys": [key("primary", "keys", "primary")]})
    };
    w.put_pc("llm", spec("small")).await;
    let pc = w
        .wait_pc("llm", "its follower listed", |pc| {
            let s = pc.status.as_ref().expect("status");
            condition(pc, "Ready") == Some("True") && s.followers.len() == 1
        })
        .await;
    let status = pc.status.expect("status");
    assert_eq!(status.followers[0].name, "api");
    assert!(!status.followers[0].behind);
    assert_eq!(status.followers_behind, Some(0));
    let before = status.settings_hash.expect("settings hash");
    let credentials = status.credentials_hash.expect("credentials hash");

    w.put_pc("llm", spec("large")).await;
    let settings_key = "kiln.dev/settings-hash-llm";
    let rolled = eventually(Duration::from_secs(20), "the rollout", || async {
        let d = deployments.get("api").await.ok()?;
        template_annotations(&d)
            .contains_key(settings_key)
            .then_some(d)
    })
    .await;
    let status = w
        .wait_pc("llm", "the follower up to date", |pc| {
            let s = pc.status.as_ref().expect("status");
            s.followers_behind == Some(0)
                && s.followers
                    .first()
                    .and_then(|f| f.rolled_out.as_deref())
                    .is_some()
        })
        .await
        .status
        .expect("status");
    let after = status.settings_hash.expect("settings hash");
    assert_ne!(before, after);
    assert_eq!(template_annotations(&rolled)[settings_key], after);
    assert_eq!(
        template_annotations(&rolled)["kiln.dev/credentials-hash-llm"],
        credentials,
        "the credentials did not change"
    );
    assert_eq!(
        status.credentials_hash.as_deref(),
        Some(credentials.as_str())
    );
    w.wait_event("llm", "SettingsUpdated").await;
    w.wait_event("api", "RolloutTriggered").await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(w.client.clone(), &w.ns);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutTriggered"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("settings of ProviderConfig llm changed")),
        "the Event names what changed: {notes:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        deployments.get("api").await.unwrap().metadata.generation,
        Some(2),
        "exactly one rollout"
    );
}

#[tokio::test]
async fn key_values_never_appear_in_logs_status_or_events() {
    let w = World::with("pcfg-secret", |o| o.log_level = "trace".into()).await;
    let (v1, v2) = ("sk-LEAKCHECK-first-4f1c9a", "sk-LEAKCHECK-second-8b2e7d");
    w.put_secret("keys", &[("primary", v1)]).await;
    w.put_pc(
        "quiet",
        json!({"providerType": "openai", "default": true,
        "apiKeys": [key("primary", "keys", "primary")]}),
    )
    .await;
    w.wait_ready("quiet").await;
    w.put_secret("keys", &[("primary", v2)]).await;
    eventually(WAIT, "rotation", || async {
        let d = w.secret_data("quiet-credentials").await?;
        (d.get("primary").map(String::as_str) == Some(v2)).then_some(())
    })
    .await;
    w.secrets()
        .delete("keys", &DeleteParams::default())
        .await
        .expect("delete");
    w.wait_pc("quiet", "SecretNotFound", |pc| {
        condition_reason(pc, "Ready").as_deref() == Some("SecretNotFound")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let logs = w.op.logs();
    assert!(
        logs.lines().count() > 100,
        "trace logging was not on:\n{logs}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let needles: Vec<String> = [v1, v2]
        .iter()
        .flat_map(|v| [v.to_string(), b64.encode(v), format!("{:?}", v.as_bytes())])
        .chain(["LEAKCHECK".to_string()])
        .collect();
    let pc = serde_json::to_string(&w.pcs().get("quiet").await.unwrap()).unwrap();
    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    for needle in &needles {
        assert!(
            !logs.contains(needle.as_str()),
            "a key value appears in the operator's log ({needle})"
        );
        assert!(
            !pc.contains(needle.as_str()),
            "a key value appears in the ProviderConfig"
        );
        assert!(
            !events.contains(needle.as_str()),
            "a key value appears in an Event"
        );
    }
    eprintln!("{} trace log lines checked", logs.lines().count());
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn memory_stays_flat_next_to_many_unrelated_secrets() {
    const N: usize = 2000;
    let mut w = World::new("pcfg-memory").await;
    w.put_secret("keys", &[("primary", "sk-m0")]).await;
    w.put_pc(
        "mem",
        spec_with_keys(json!([key("primary", "keys", "primary")])),
    )
    .await;
    w.wait_ready("mem").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (rss0, hwm0) = memory(w.op.pid().expect("pid"));

    // 2,000 Secrets of 1 KiB each that no ProviderConfig references.
    let filler = "x".repeat(1024);
    let secrets = w.secrets();
    stream::iter(0..N)
        .map(|i| {
            let (secrets, filler) = (secrets.clone(), filler.clone());
            async move {
                let s = json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("unrelated-{i}")},
                    "stringData": {"blob": filler}});
                secrets
                    .patch(
                        &format!("unrelated-{i}"),
                        &PatchParams::apply("test"),
                        &Patch::Apply(&s),
                    )
                    .await
                    .expect("create Secret");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, hwm1) = memory(w.op.pid().expect("pid"));

    // A fresh start lists them all (metadata only).
    w.op.restart("info,kiln=debug").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = w.op.pid().expect("pid");
    let (rss2, hwm2) = memory(pid);
    // Still working: a rotation goes through.
    w.put_secret("keys", &[("primary", "sk-m1")]).await;
    eventually(WAIT, "rotation next to many Secrets", || async {
        let d = w.secret_data("mem-credentials").await?;
        (d.get("primary").map(String::as_str) == Some("sk-m1")).then_some(())
    })
    .await;
    eprintln!(
        "operator memory (MiB): fresh, no other Secrets: RSS {:.1} / HWM {:.1}; \
         after {N} unrelated 1 KiB Secrets were created: RSS {:.1} / HWM {:.1}; \
         fresh start with them in the namespace: RSS {:.1} / HWM {:.1}",
        mib(rss0),
        mib(hwm0),
        mib(rss1),
        mib(hwm1),
        mib(rss2),
        mib(hwm2)
    );
    // Loose guard against caching every Secret (2,000 x 1 KiB of data alone is 2 MiB,
    // decoded objects several times that).
    assert!(
        hwm2 < hwm0 + 40 * 1024,
        "peak RSS grew from {:.1} to {:.1} MiB with {N} unrelated Secrets",
        mib(hwm0),
        mib(hwm2)
    );
}

/// `POST .../providerconfigs/{name}/usage` from a service account with `create` on
/// `providerconfigs/usage`: refusals first, then a thousand reports of one key, which reach
/// `status.keys[].lastUsedTime` in at most one status write per flush interval.
#[tokio::test]
async fn key_usage_reports_are_coalesced_into_few_status_writes() {
    const FLUSH_SECS: u64 = 3;
    let w = World::with("pc-usage", |o| {
        o.extra_args.push(format!("--usage-flush={FLUSH_SECS}s"));
    })
    .await;
    let cp = control_plane();
    w.put_secret("keys", &[("primary", "value-a"), ("backup", "value-b")])
        .await;
    w.put_pc(
        "llm",
        spec_with_keys(json!([
            key("primary", "keys", "primary"),
            key("backup", "keys", "backup")
        ])),
    )
    .await;
    let ready = w
        .wait_pc("llm", "Ready", |pc| condition(pc, "Ready") == Some("True"))
        .await;
    let reporter = cp
        .service_account(
            &w.ns,
            "reporter",
            Some(Grant {
                rules: json!([{"apiGroups": ["kiln.dev"], "resources": ["providerconfigs/usage"],
                               "verbs": ["create"]}]),
                can_i: &["create", "providerconfigs.kiln.dev", "--subresource=usage"],
            }),
        )
        .await;
    let stranger = cp.service_account(&w.ns, "stranger", None).await;
    let addr = w.op.http_addr;
    let url = |name: &str| format!("/api/v1/namespaces/{}/providerconfigs/{name}/usage", w.ns);
    let report = |token: String, target: String, body: &'static str| async move {
        let auth = format!("Bearer {token}");
        http_request(
            addr,
            "POST",
            &target,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            HttpBody::Bytes(body.as_bytes()),
        )
        .await
    };
    let primary = r#"{"key": "primary"}"#;

    // Refusals, each with the code a client can act on.
    let r = http_request(
        addr,
        "POST",
        &url("llm"),
        &[],
        HttpBody::Bytes(primary.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = report(stranger.clone(), url("llm"), primary).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("providerconfigs/usage"), "{}", r.text());
    let r = report(reporter.clone(), url("missing"), primary).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = report(reporter.clone(), url("llm"), r#"{"key": "nope"}"#).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["details"]["reason"], "KeyNotFound");
    for bad in [
        r#"{"key": 1}"#,
        "not json",
        r#"{"key": "primary", "extra": true}"#,
        "{}",
    ] {
        let r = report(reporter.clone(), url("llm"), bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = report(reporter.clone(), url("Bad_Name"), primary).await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Count the ProviderConfig's writes from here on.
    let rv = ready.resource_version().expect("resourceVersion");
    let params = kube::api::WatchParams::default().fields("metadata.name=llm");
    let mut events = w.pcs().watch(&params, &rv).await.expect("watch").boxed();
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = writes.clone();
    let counter = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            if matches!(event, kube::api::WatchEvent::Modified(_)) {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });

    let start = Instant::now();
    let codes: Vec<u16> = stream::iter(0..1000)
        .map(|_| {
            let r = report(reporter.clone(), url("llm"), primary);
            async move { r.await.status }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let sending = start.elapsed();
    assert!(
        codes.iter().all(|c| *c == 202),
        "{:?}",
        codes.iter().find(|c| **c != 202)
    );

    let pc = w
        .wait_pc("llm", "the reported use in status", |pc| {
            pc.status.as_ref().is_some_and(|s| {
                s.keys
                    .iter()
                    .any(|k| k.name == "primary" && k.last_used_time.is_some())
            })
        })
        .await;
    let status = pc.status.expect("status");
    let backup = status
        .keys
        .iter()
        .find(|k| k.name == "backup")
        .expect("backup");
    assert_eq!(backup.last_used_time, None, "only the reported key is used");
    // One more interval: a flush of the last reports may still be due.
    tokio::time::sleep(Duration::from_secs(FLUSH_SECS + 1)).await;
    counter.abort();
    let writes = writes.load(std::sync::atomic::Ordering::SeqCst);
    let intervals = sending.as_secs() / FLUSH_SECS + 2;
    assert!(
        (1..=intervals as usize).contains(&writes),
        "1,000 reports in {sending:?} made {writes} writes (at most {intervals} expected)"
    );
    eprintln!("1,000 usage reports in {sending:?}: {writes} ProviderConfig write(s)");

    let (code, metrics) = support::http_get(addr, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    let series = format!(
        "kiln_provider_key_uses_total{{namespace=\"{}\",provider_config=\"llm\",key=\"primary\"}} 1000",
        w.ns
    );
    assert!(metrics.contains(&series), "{series} not in /metrics");
}
