//! What makes a Job reconcile besides its own changes and the file API's nudges: a change to
//! a ConfigMap or Secret that one of its declared files reads (`contentFrom`,
//! `template.sourceFrom`), so that the files follow their sources within seconds.
//!
//! The sources are arbitrary objects of the user's, with no label Kiln could select them by,
//! so every ConfigMap and Secret of the scope is watched, as metadata only: the event carries
//! the name, and the data is read afresh by the reconcile, never cached. Each event is
//! matched against the Jobs in the controller's own store, by namespace and name.

use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::KilnJob;
use crate::resolve::declared::{self, SourceKind};

/// The Jobs a change to the ConfigMap or Secret `source` (of kind `kind`) concerns. Runs for
/// every such event in the scope, so it only looks at metadata and the in-memory store.
pub fn jobs_for_source<K: Resource>(
    store: &Store<KilnJob>,
    kind: SourceKind,
    source: &PartialObjectMeta<K>,
) -> Vec<ObjectRef<KilnJob>> {
    let Some(ns) = source.namespace() else {
        return Vec::new();
    };
    let name = source.name_any();
    store
        .state_filter(|job| reads_from(job, kind, &ns, &name))
        .iter()
        .map(|job| ObjectRef::from_obj(job.as_ref()))
        .collect()
}

/// Whether a declared file of `job` reads the `kind` object `namespace/name`. Declared
/// sources are always in the Job's own namespace.
pub fn reads_from(job: &KilnJob, kind: SourceKind, namespace: &str, name: &str) -> bool {
    job.metadata.namespace.as_deref() == Some(namespace)
        && job
            .spec
            .files
            .iter()
            .flat_map(declared::sources)
            .any(|source| source == (kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use serde_json::json;

    fn job(ns: &str, name: &str, files: serde_json::Value) -> KilnJob {
        serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": name, "namespace": ns, "uid": format!("u-{ns}-{name}")},
            "spec": {"projectName": "p", "files": files}
        }))
        .unwrap()
    }

    fn store_with(jobs: &[KilnJob]) -> Store<KilnJob> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for j in jobs {
            writer.apply_watcher_event(&watcher::Event::InitApply(j.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    fn meta<K: Resource<DynamicType = ()>>(ns: Option<&str>, name: &str) -> PartialObjectMeta<K> {
        serde_json::from_value(json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()),
            "metadata": {"name": name, "namespace": ns},
        }))
        .unwrap()
    }

    fn names(mut refs: Vec<ObjectRef<KilnJob>>) -> Vec<String> {
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    fn world() -> Store<KilnJob> {
        let cm = |name: &str| json!({"configMapKeyRef": {"name": name, "key": "k"}});
        let secret = |name: &str| json!({"secretKeyRef": {"name": name, "key": "k"}});
        store_with(&[
            job(
                "a",
                "content",
                json!([{"path": "x", "contentFrom": cm("shared")}]),
            ),
            job(
                "a",
                "template",
                json!([
                    {"path": "inline", "content": "shared"},
                    {"path": "t", "template": {"sourceFrom": cm("shared"), "context": {}}},
                    {"path": "s", "contentFrom": secret("db")},
                ]),
            ),
            job("a", "inline", json!([{"path": "shared", "content": "x"}])),
            job(
                "b",
                "other-ns",
                json!([{"path": "x", "contentFrom": cm("shared")}]),
            ),
            job(
                "a",
                "secret-template",
                json!([{"path": "t", "template": {"sourceFrom": secret("shared")}}]),
            ),
        ])
    }

    #[test]
    fn a_configmap_maps_to_the_jobs_of_its_namespace_that_read_it() {
        let store = world();
        let hit = jobs_for_source(
            &store,
            SourceKind::ConfigMap,
            &meta::<ConfigMap>(Some("a"), "shared"),
        );
        // Not the job whose inline content or path merely says "shared", not the job in
        // another namespace, not the one reading a Secret of that name.
        assert_eq!(names(hit), ["a/content", "a/template"]);
        let hit = jobs_for_source(
            &store,
            SourceKind::ConfigMap,
            &meta::<ConfigMap>(Some("b"), "shared"),
        );
        assert_eq!(names(hit), ["b/other-ns"]);
    }

    #[test]
    fn a_secret_maps_only_to_jobs_reading_a_secret_of_that_name() {
        let store = world();
        let hit = jobs_for_source(&store, SourceKind::Secret, &meta::<Secret>(Some("a"), "db"));
        assert_eq!(names(hit), ["a/template"]);
        let hit = jobs_for_source(
            &store,
            SourceKind::Secret,
            &meta::<Secret>(Some("a"), "shared"),
        );
        assert_eq!(names(hit), ["a/secret-template"]);
    }

    #[test]
    fn unrelated_or_namespaceless_objects_map_to_nothing() {
        let store = world();
        for (ns, name) in [
            (Some("a"), "unrelated"),
            (Some("c"), "shared"),
            (None, "shared"),
        ] {
            let hit = jobs_for_source(&store, SourceKind::ConfigMap, &meta::<ConfigMap>(ns, name));
            assert!(hit.is_empty(), "{ns:?}/{name}: {hit:?}");
        }
        let empty = store_with(&[]);
        let hit = jobs_for_source(
            &empty,
            SourceKind::ConfigMap,
            &meta::<ConfigMap>(Some("a"), "shared"),
        );
        assert!(hit.is_empty());
    }
}
