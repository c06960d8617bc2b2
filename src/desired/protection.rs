//! Protection of what is in use, decided without touching the cluster: which workloads use
//! what a ProviderConfig derived, whether its deletion may proceed, what to tell people, and
//! the patches that put Kiln's finalizer on and take it off. The controller lists the
//! workloads and carries out the verdict.
//!
//! Kiln cannot report anything about a config the garbage collector has already emptied, so
//! every ProviderConfig carries the finalizer [`FINALIZER`]: a deletion then waits for Kiln to
//! look for users, report them, and either release it at once (`deletionPolicy: Delete`) or
//! only when nothing uses the config any more (`WhileUnused`).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use kube::ResourceExt;

use super::follow::{FOLLOW, targets};
use super::provider_config::Role;
use crate::api::provider_config::{DeletionPolicy, ProviderConfig};

/// Holds a ProviderConfig's deletion until Kiln has reported its users (and, with
/// `deletionPolicy: WhileUnused`, until there are none).
pub const FINALIZER: &str = "kiln.dev/in-use";

/// Reason of `InUse=True` (and of the Warning Event) when the deletion proceeds anyway.
pub const DELETED_WHILE_IN_USE: &str = "DeletedWhileInUse";
/// Reason of `InUse=True` while `WhileUnused` holds the deletion.
pub const DELETION_HELD: &str = "DeletionHeld";

/// Users named in a message; the rest are counted.
const NAMED_USERS: usize = 10;

/// What a deleted config takes away from its namespace, as workloads refer to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected {
    /// The config's name, as `kiln.dev/follow` lists it.
    pub config: String,
    /// `<name>-credentials`, and `default-<type>-credentials` when the aliases go too.
    pub secrets: Vec<String>,
    /// `<name>-provider`, and `default-<type>-provider` when the aliases go too.
    pub config_maps: Vec<String>,
}

impl Protected {
    /// The objects `config` derived. `aliases_go`: the aliases leave with it (see
    /// [`aliases_go`]), so their users are its users too.
    pub fn new(config: &str, provider_type: &str, aliases_go: bool) -> Self {
        let names = |own: Role, alias: Role| {
            let mut names = vec![own.object_name(config, provider_type)];
            if aliases_go {
                names.push(alias.object_name(config, provider_type));
            }
            names
        };
        Protected {
            config: config.to_string(),
            secrets: names(Role::Credentials, Role::DefaultCredentials),
            config_maps: names(Role::Provider, Role::DefaultProvider),
        }
    }

    /// "Secret a, ConfigMap b": what the garbage collector removes after the config.
    fn objects(&self) -> String {
        let secrets = self.secrets.iter().map(|n| format!("Secret {n}"));
        let config_maps = self.config_maps.iter().map(|n| format!("ConfigMap {n}"));
        secrets.chain(config_maps).collect::<Vec<_>>().join(", ")
    }
}

/// Whether the `default-<type>-*` aliases leave with `deleted`: it claimed the default, and
/// no live config of its type claims it any more. The aliases are owned by every claimant,
/// so while another one lives they move to it (its credentials, same names) and nobody loses
/// them; when none is left, the garbage collector removes them with the last owner.
pub fn aliases_go<'a>(
    deleted: &ProviderConfig,
    configs: impl IntoIterator<Item = &'a ProviderConfig>,
) -> bool {
    deleted.spec.default == Some(true)
        && !configs.into_iter().any(|p| {
            p.uid() != deleted.uid()
                && p.metadata.deletion_timestamp.is_none()
                && same_kind_of_provider(p, deleted)
                && p.spec.default == Some(true)
        })
}

/// Whether a claimant of `pc`'s type is being deleted and Kiln's finalizer still holds it:
/// its aliases must stay until it goes (its users may be waiting on them), even though no live
/// config claims the default. The garbage collector removes them once it is gone.
pub fn held_claimant<'a>(
    pc: &ProviderConfig,
    configs: impl IntoIterator<Item = &'a ProviderConfig>,
) -> bool {
    configs.into_iter().any(|p| {
        p.metadata.deletion_timestamp.is_some()
            && p.spec.default == Some(true)
            && same_kind_of_provider(p, pc)
            && p.finalizers().iter().any(|f| f == FINALIZER)
    })
}

fn same_kind_of_provider(a: &ProviderConfig, b: &ProviderConfig) -> bool {
    a.namespace() == b.namespace() && a.spec.provider_type == b.spec.provider_type
}

/// How many pods a workload asks for. Judged from its spec, not from its pods: what matters
/// is whether its controller will keep (re)creating pods that need the credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// A Deployment's or StatefulSet's `spec.replicas` (absent means 1).
    Replicas(Option<i32>),
    /// A DaemonSet: a pod on every eligible node.
    EveryNode,
}

/// A workload, as the decision sees it.
#[derive(Clone, Debug)]
pub struct Workload<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub scale: Scale,
    /// It is being deleted itself: it is going, not using.
    pub deleting: bool,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub pod: Option<&'a PodSpec>,
}

impl Workload<'_> {
    fn running(&self) -> bool {
        !self.deleting
            && match self.scale {
                Scale::Replicas(n) => n.unwrap_or(1) > 0,
                Scale::EveryNode => true,
            }
    }
}

/// A running workload that uses the config, and how (the first use found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// `Kind/name`.
    pub workload: String,
    /// `Secret x`, `ConfigMap y` or `kiln.dev/follow`.
    pub via: String,
}

/// The running workloads among `workloads` that use `protected`, sorted.
pub fn users(protected: &Protected, workloads: &[Workload<'_>]) -> Vec<User> {
    let mut out: Vec<User> = workloads
        .iter()
        .filter(|w| w.running())
        .filter_map(|w| {
            uses(protected, w).map(|via| User {
                workload: format!("{}/{}", w.kind, w.name),
                via,
            })
        })
        .collect();
    out.sort_by(|a, b| a.workload.cmp(&b.workload));
    out
}

/// How `w` uses `p`: its pod template mounts or reads one of the objects (`optional: true`
/// counts: the pods read the credentials whenever they exist), or it follows the config.
fn uses(p: &Protected, w: &Workload<'_>) -> Option<String> {
    let in_pod = w.pod.and_then(|pod| {
        let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
        let mut refs = pod
            .volumes
            .iter()
            .flatten()
            .flat_map(volume_refs)
            .chain(containers.flat_map(container_refs));
        refs.find_map(|r| p.named(r))
    });
    in_pod.or_else(|| {
        targets(w.annotations, FOLLOW)
            .contains(&p.config.as_str())
            .then(|| FOLLOW.to_string())
    })
}

/// An object a pod template refers to by name.
#[derive(Clone, Copy)]
enum Ref<'a> {
    Secret(&'a str),
    ConfigMap(&'a str),
}

impl Protected {
    /// "Secret x" or "ConfigMap y" when `r` is one of these objects.
    fn named(&self, r: Ref<'_>) -> Option<String> {
        let (kind, name, names) = match r {
            Ref::Secret(n) => ("Secret", n, &self.secrets),
            Ref::ConfigMap(n) => ("ConfigMap", n, &self.config_maps),
        };
        names
            .iter()
            .any(|x| x == name)
            .then(|| format!("{kind} {name}"))
    }
}

/// A volume's Secrets and ConfigMaps, projected ones included.
fn volume_refs(v: &Volume) -> Vec<Ref<'_>> {
    let mut refs = Vec::new();
    if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
        refs.push(Ref::Secret(name));
    }
    if let Some(c) = &v.config_map {
        refs.push(Ref::ConfigMap(&c.name));
    }
    for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        if let Some(s) = &source.secret {
            refs.push(Ref::Secret(&s.name));
        }
        if let Some(c) = &source.config_map {
            refs.push(Ref::ConfigMap(&c.name));
        }
    }
    refs
}

/// The Secrets and ConfigMaps a container reads into its environment.
fn container_refs(c: &Container) -> Vec<Ref<'_>> {
    let mut refs = Vec::new();
    for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
        if let Some(s) = &from.secret_key_ref {
            refs.push(Ref::Secret(&s.name));
        }
        if let Some(c) = &from.config_map_key_ref {
            refs.push(Ref::ConfigMap(&c.name));
        }
    }
    for from in c.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            refs.push(Ref::Secret(&s.name));
        }
        if let Some(c) = &from.config_map_ref {
            refs.push(Ref::ConfigMap(&c.name));
        }
    }
    refs
}

/// What Kiln does about a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Kiln's finalizer may go: the deletion proceeds.
    pub release: bool,
    /// The `InUse=True` condition (reason, message) to report first; None when nothing uses
    /// the config.
    pub in_use: Option<(&'static str, String)>,
}

/// The verdict on deleting `protected` while `users` run, under `policy`.
pub fn decide(policy: DeletionPolicy, protected: &Protected, users: &[User]) -> Verdict {
    if users.is_empty() {
        return Verdict {
            release: true,
            in_use: None,
        };
    }
    let named = name_users(users);
    match policy {
        DeletionPolicy::Delete => Verdict {
            release: true,
            in_use: Some((
                DELETED_WHILE_IN_USE,
                format!(
                    "deleted while in use by {named}; {} go with it (deletionPolicy: Delete)",
                    protected.objects()
                ),
            )),
        },
        DeletionPolicy::WhileUnused => Verdict {
            release: false,
            in_use: Some((
                DELETION_HELD,
                format!(
                    "deletion waits until no running workload uses this config \
                     (deletionPolicy: WhileUnused); in use by {named}. Scale them to 0, \
                     delete them, or set deletionPolicy: Delete to proceed"
                ),
            )),
        },
    }
}

/// "Deployment/a (Secret x), StatefulSet/b (kiln.dev/follow), and 3 more".
fn name_users(users: &[User]) -> String {
    let mut named = users
        .iter()
        .take(NAMED_USERS)
        .map(|u| format!("{} ({})", u.workload, u.via))
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > NAMED_USERS {
        named.push_str(&format!(", and {} more", users.len() - NAMED_USERS));
    }
    named
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// The JSON patch that adds [`FINALIZER`] to an object with `finalizers`, or None when it is
/// there. It tests the whole list first, as kube-runtime's finalizer helper does: the API
/// server does not deduplicate finalizers, so a concurrent change must fail the patch rather
/// than add the name twice.
pub fn add_finalizer(finalizers: &[String]) -> Option<Patch> {
    if finalizers.iter().any(|f| f == FINALIZER) {
        return None;
    }
    let path = pointer(&["metadata", "finalizers"]);
    Some(Patch(if finalizers.is_empty() {
        vec![
            PatchOperation::Test(TestOperation {
                path: path.clone(),
                value: serde_json::Value::Null,
            }),
            PatchOperation::Add(AddOperation {
                path,
                value: serde_json::json!([FINALIZER]),
            }),
        ]
    } else {
        vec![
            PatchOperation::Test(TestOperation {
                path,
                value: serde_json::json!(finalizers),
            }),
            PatchOperation::Add(AddOperation {
                path: pointer(&["metadata", "finalizers", "-"]),
                value: FINALIZER.into(),
            }),
        ]
    }))
}

/// The JSON patch that removes [`FINALIZER`], or None when it is not there. It removes by
/// index and tests that index first, so it never removes another controller's finalizer.
pub fn remove_finalizer(finalizers: &[String]) -> Option<Patch> {
    let index = finalizers.iter().position(|f| f == FINALIZER)?.to_string();
    let path = pointer(&["metadata", "finalizers", &index]);
    Some(Patch(vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: FINALIZER.into(),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> PodSpec {
        let mut spec = spec;
        spec.as_object_mut()
            .unwrap()
            .entry("containers")
            .or_insert(json!([{"name": "app"}]));
        serde_json::from_value(spec).unwrap()
    }

    fn workload<'a>(
        kind: &'a str,
        name: &'a str,
        scale: Scale,
        pod: &'a PodSpec,
        annotations: Option<&'a BTreeMap<String, String>>,
    ) -> Workload<'a> {
        Workload {
            kind,
            name,
            scale,
            deleting: false,
            annotations,
            pod: Some(pod),
        }
    }

    fn via(protected: &Protected, w: &Workload<'_>) -> Option<String> {
        users(protected, std::slice::from_ref(w))
            .pop()
            .map(|u| u.via)
    }

    #[test]
    fn every_way_of_reading_the_objects_is_a_use() {
        let own = Protected::new("llm", "openai", false);
        let cases = [
            (
                "secret volume",
                json!({"volumes": [{"name": "v", "secret": {"secretName": "llm-credentials"}}]}),
                Some("Secret llm-credentials"),
            ),
            (
                "optional secret volume",
                json!({"volumes": [{"name": "v", "secret": {"secretName": "llm-credentials", "optional": true}}]}),
                Some("Secret llm-credentials"),
            ),
            (
                "configMap volume",
                json!({"volumes": [{"name": "v", "configMap": {"name": "llm-provider"}}]}),
                Some("ConfigMap llm-provider"),
            ),
            (
                "projected secret",
                json!({"volumes": [{"name": "v", "projected": {"sources": [
                    {"configMap": {"name": "other"}}, {"secret": {"name": "llm-credentials"}}]}}]}),
                Some("Secret llm-credentials"),
            ),
            (
                "projected configMap",
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"configMap": {"name": "llm-provider"}}]}}]}),
                Some("ConfigMap llm-provider"),
            ),
            (
                "env secretKeyRef",
                json!({"containers": [{"name": "app", "env": [{"name": "K",
                    "valueFrom": {"secretKeyRef": {"name": "llm-credentials", "key": "API_KEY"}}}]}]}),
                Some("Secret llm-credentials"),
            ),
            (
                "env configMapKeyRef in an init container",
                json!({"initContainers": [{"name": "init", "env": [{"name": "P",
                    "valueFrom": {"configMapKeyRef": {"name": "llm-provider", "key": "provider.json"}}}]}]}),
                Some("ConfigMap llm-provider"),
            ),
            (
                "envFrom secretRef",
                json!({"containers": [{"name": "app", "envFrom": [{"secretRef": {"name": "llm-credentials"}}]}]}),
                Some("Secret llm-credentials"),
            ),
            (
                "envFrom configMapRef",
                json!({"containers": [{"name": "app", "envFrom": [{"configMapRef": {"name": "llm-provider"}}]}]}),
                Some("ConfigMap llm-provider"),
            ),
            (
                "another config's objects",
                json!({"volumes": [{"name": "v", "secret": {"secretName": "other-credentials"}}],
                       "containers": [{"name": "app", "envFrom": [{"secretRef": {"name": "llm-credentialsx"}}]}]}),
                None,
            ),
            (
                "the aliases, which do not leave with it",
                json!({"volumes": [{"name": "v", "secret": {"secretName": "default-openai-credentials"}}]}),
                None,
            ),
            ("nothing", json!({}), None),
        ];
        for (what, spec, want) in cases {
            let p = pod(spec);
            let w = workload("Deployment", "app", Scale::Replicas(Some(1)), &p, None);
            assert_eq!(via(&own, &w).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn alias_users_count_when_the_aliases_leave_too() {
        let last = Protected::new("llm", "openai", true);
        assert_eq!(
            last.secrets,
            ["llm-credentials", "default-openai-credentials"]
        );
        assert_eq!(
            last.config_maps,
            ["llm-provider", "default-openai-provider"]
        );
        let p = pod(
            json!({"volumes": [{"name": "v", "secret": {"secretName": "default-openai-credentials"}}]}),
        );
        let w = workload("Deployment", "app", Scale::Replicas(None), &p, None);
        assert_eq!(
            via(&last, &w).as_deref(),
            Some("Secret default-openai-credentials")
        );
    }

    #[test]
    fn followers_count_without_mounting_anything() {
        let own = Protected::new("llm", "openai", false);
        let p = pod(json!({}));
        let follows = BTreeMap::from([(FOLLOW.to_string(), "other, llm".to_string())]);
        let w = workload(
            "StatefulSet",
            "db",
            Scale::Replicas(Some(2)),
            &p,
            Some(&follows),
        );
        assert_eq!(via(&own, &w).as_deref(), Some("kiln.dev/follow"));
        let others = BTreeMap::from([(FOLLOW.to_string(), "llm-2".to_string())]);
        let w = workload(
            "StatefulSet",
            "db",
            Scale::Replicas(Some(2)),
            &p,
            Some(&others),
        );
        assert_eq!(via(&own, &w), None);
    }

    #[test]
    fn only_running_workloads_use_anything() {
        let own = Protected::new("llm", "openai", false);
        let p =
            pod(json!({"volumes": [{"name": "v", "secret": {"secretName": "llm-credentials"}}]}));
        let cases = [
            ("replicas 1", Scale::Replicas(Some(1)), false, true),
            ("replicas absent (1)", Scale::Replicas(None), false, true),
            ("scaled to 0", Scale::Replicas(Some(0)), false, false),
            ("a DaemonSet", Scale::EveryNode, false, true),
            ("being deleted", Scale::Replicas(Some(3)), true, false),
            ("a DaemonSet being deleted", Scale::EveryNode, true, false),
        ];
        for (what, scale, deleting, used) in cases {
            let w = Workload {
                deleting,
                ..workload("Deployment", "app", scale, &p, None)
            };
            assert_eq!(via(&own, &w).is_some(), used, "{what}");
        }
    }

    #[test]
    fn users_are_sorted_and_named_by_kind() {
        let own = Protected::new("llm", "openai", false);
        let p =
            pod(json!({"volumes": [{"name": "v", "secret": {"secretName": "llm-credentials"}}]}));
        let ws = [
            workload("StatefulSet", "b", Scale::Replicas(Some(1)), &p, None),
            workload("DaemonSet", "c", Scale::EveryNode, &p, None),
            workload("Deployment", "a", Scale::Replicas(Some(1)), &p, None),
        ];
        let names: Vec<_> = users(&own, &ws).into_iter().map(|u| u.workload).collect();
        assert_eq!(names, ["DaemonSet/c", "Deployment/a", "StatefulSet/b"]);
    }

    #[test]
    fn verdicts() {
        use DeletionPolicy::{Delete, WhileUnused};
        let own = Protected::new("llm", "openai", false);
        let user = |n: &str| User {
            workload: format!("Deployment/{n}"),
            via: "Secret llm-credentials".into(),
        };
        let one = [user("web")];
        // (policy, users, release, reason)
        let cases: [(DeletionPolicy, &[User], bool, Option<&str>); 4] = [
            (Delete, &[], true, None),
            (WhileUnused, &[], true, None),
            (Delete, &one, true, Some(DELETED_WHILE_IN_USE)),
            (WhileUnused, &one, false, Some(DELETION_HELD)),
        ];
        for (policy, users, release, reason) in cases {
            let v = decide(policy, &own, users);
            assert_eq!(v.release, release, "{policy:?} {users:?}");
            assert_eq!(
                v.in_use.as_ref().map(|r| r.0),
                reason,
                "{policy:?} {users:?}"
            );
            if let Some((_, message)) = &v.in_use {
                assert!(
                    message.contains("Deployment/web (Secret llm-credentials)"),
                    "{message}"
                );
            }
        }
        let (_, message) = decide(Delete, &own, &one).in_use.unwrap();
        assert_eq!(
            message,
            "deleted while in use by Deployment/web (Secret llm-credentials); Secret \
             llm-credentials, ConfigMap llm-provider go with it (deletionPolicy: Delete)"
        );
        let (_, message) = decide(WhileUnused, &own, &one).in_use.unwrap();
        assert!(
            message.contains("deletionPolicy: Delete to proceed"),
            "{message}"
        );
    }

    #[test]
    fn long_user_lists_are_cut() {
        let users: Vec<User> = (0..13)
            .map(|i| User {
                workload: format!("Deployment/w{i:02}"),
                via: "kiln.dev/follow".into(),
            })
            .collect();
        let named = name_users(&users);
        assert!(named.contains("Deployment/w09") && !named.contains("Deployment/w10"));
        assert!(named.ends_with(", and 3 more"), "{named}");
    }

    fn pc(name: &str, provider_type: &str, default: bool, deleting: bool) -> ProviderConfig {
        let mut meta = json!({"name": name, "namespace": "ns", "uid": format!("u-{name}"),
            "finalizers": [FINALIZER]});
        if deleting {
            meta["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ProviderConfig", "metadata": meta,
            "spec": {"providerType": provider_type, "default": default}
        }))
        .unwrap()
    }

    #[test]
    fn aliases_leave_with_the_last_claimant_only() {
        let gone = pc("a", "openai", true, true);
        let cases = [
            ("alone", vec![], true),
            (
                "a live claimant remains",
                vec![pc("b", "openai", true, false)],
                false,
            ),
            (
                "the other claimant is being deleted too",
                vec![pc("b", "openai", true, true)],
                true,
            ),
            (
                "others do not claim",
                vec![pc("b", "openai", false, false)],
                true,
            ),
            (
                "a claimant of another type",
                vec![pc("b", "other", true, false)],
                true,
            ),
        ];
        for (what, mut others, want) in cases {
            others.push(gone.clone());
            assert_eq!(aliases_go(&gone, &others), want, "{what}");
        }
        let not_claiming = pc("a", "openai", false, true);
        assert!(!aliases_go(&not_claiming, [&not_claiming]));
    }

    #[test]
    fn a_held_claimant_keeps_the_aliases() {
        let sibling = pc("b", "openai", false, false);
        let held = pc("a", "openai", true, true);
        assert!(held_claimant(&sibling, [&sibling, &held]));
        let mut released = held.clone();
        released.metadata.finalizers = None;
        assert!(!held_claimant(&sibling, [&sibling, &released]));
        assert!(!held_claimant(
            &sibling,
            [&sibling, &pc("a", "openai", true, false)]
        ));
        assert!(!held_claimant(
            &sibling,
            [&sibling, &pc("a", "other", true, true)]
        ));
        assert!(!held_claimant(
            &sibling,
            [&sibling, &pc("a", "openai", false, true)]
        ));
    }

    #[test]
    fn finalizer_patches_test_before_they_change() {
        let patch = |p: Option<Patch>| p.map(|p| serde_json::to_value(p).unwrap());
        assert_eq!(
            patch(add_finalizer(&[])),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ]))
        );
        let other = vec!["other.io/x".to_string()];
        assert_eq!(
            patch(add_finalizer(&other)),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["other.io/x"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ]))
        );
        let both = vec!["other.io/x".to_string(), FINALIZER.to_string()];
        assert_eq!(add_finalizer(&both), None, "never added twice");
        assert_eq!(
            patch(remove_finalizer(&both)),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ]))
        );
        assert_eq!(remove_finalizer(&other), None);
    }
}
