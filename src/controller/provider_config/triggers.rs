//! What makes a ProviderConfig reconcile, besides its own changes:
//!
//! - A Secret changed: the configs that reference it (found in the controller's store) and
//!   the config that owns it (a derived Secret edited or deleted by hand).
//! - The set of configs claiming the default of a provider type changed: every config of that
//!   type in the namespace, since the election and the aliases' owners depend on all of them.
//!   This is a tap on the controller's own watch stream, placed after the reflector so the
//!   store already holds the change when the siblings' reconciles read it.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc::UnboundedSender;

use crate::api::provider_config::ProviderConfig;

/// The configs a Secret change concerns. Runs for every Secret event in the scope, so it only
/// looks at metadata and the in-memory store.
pub fn configs_for_secret(
    store: &Store<ProviderConfig>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ProviderConfig>> {
    let Some(ns) = secret.namespace() else {
        return Vec::new();
    };
    let name = secret.name_any();
    let mut refs: Vec<ObjectRef<ProviderConfig>> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "ProviderConfig" && o.api_version.starts_with("kiln.dev/"))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect();
    refs.extend(
        store
            .state()
            .iter()
            .filter(|pc| pc.namespace().as_deref() == Some(ns.as_str()))
            .filter(|pc| pc.spec.api_keys.iter().any(|k| k.secret_ref.name == name))
            .map(|pc| ObjectRef::from_obj(pc.as_ref())),
    );
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    refs.dedup();
    refs
}

/// Whether `pc` takes part in the default election of its type.
pub fn claims_default(pc: &ProviderConfig) -> bool {
    pc.spec.default == Some(true) && pc.metadata.deletion_timestamp.is_none()
}

/// Watches the claimant sets go by and asks for the siblings' reconciles when one changes.
pub struct Siblings {
    store: Store<ProviderConfig>,
    tx: UnboundedSender<ObjectRef<ProviderConfig>>,
    /// Last seen (namespace, providerType, claims the default) per config.
    seen: HashMap<ObjectRef<ProviderConfig>, (String, String, bool)>,
}

impl Siblings {
    pub fn new(
        store: Store<ProviderConfig>,
        tx: UnboundedSender<ObjectRef<ProviderConfig>>,
    ) -> Self {
        Self {
            store,
            tx,
            seen: HashMap::new(),
        }
    }

    /// Called for each event of the primary watch, after the reflector applied it.
    pub fn observe(&mut self, event: &watcher::Event<ProviderConfig>) {
        match event {
            // A (re)list reconciles every config anyway: just remember what it says.
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(pc) => {
                self.seen.insert(ObjectRef::from_obj(pc), key(pc));
            }
            watcher::Event::InitDone => {}
            watcher::Event::Apply(pc) => {
                let now = key(pc);
                let before = self.seen.insert(ObjectRef::from_obj(pc), now.clone());
                if before.as_ref().map(|b| b.2) != Some(now.2) && (now.2 || before.is_some()) {
                    self.fan_out(pc, &now);
                }
            }
            watcher::Event::Delete(pc) => {
                let before = self.seen.remove(&ObjectRef::from_obj(pc));
                // A claimant stops claiming when its deletion starts; Kiln's finalizer may
                // then hold it, and with it the aliases (see `protect.rs`). Its final
                // disappearance is a change of the claimant set too: the siblings settle
                // the aliases again.
                if before.is_some_and(|b| b.2) || pc.spec.default == Some(true) {
                    self.fan_out(pc, &key(pc));
                }
            }
        }
    }

    fn fan_out(&self, changed: &ProviderConfig, (ns, provider_type, _): &(String, String, bool)) {
        let changed = ObjectRef::from_obj(changed);
        for pc in self.store.state() {
            if pc.namespace().as_deref() == Some(ns.as_str())
                && pc.spec.provider_type == *provider_type
            {
                let r = ObjectRef::from_obj(pc.as_ref());
                if r != changed {
                    // The receiver lives as long as the controller; a send can only fail
                    // during shutdown, when nothing needs reconciling any more.
                    let _ = self.tx.send(r);
                }
            }
        }
    }
}

fn key(pc: &ProviderConfig) -> (String, String, bool) {
    (
        pc.namespace().unwrap_or_default(),
        pc.spec.provider_type.clone(),
        claims_default(pc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use tokio::sync::mpsc::unbounded_channel;

    fn pc(name: &str, t: &str, default: bool) -> ProviderConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}")},
            "spec": {"providerType": t, "default": default, "apiKeys": [
                {"name": "k", "secretRef": {"name": format!("{name}-keys"), "key": "k"}}]}
        }))
        .unwrap()
    }

    fn store_with(pcs: &[ProviderConfig]) -> Store<ProviderConfig> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for p in pcs {
            writer.apply_watcher_event(&watcher::Event::InitApply(p.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    #[test]
    fn claimant_changes_reach_the_same_type_only() {
        let (a, b, c) = (
            pc("a", "openai", true),
            pc("b", "openai", false),
            pc("c", "other", true),
        );
        let store = store_with(&[a.clone(), b.clone(), c.clone()]);
        let (tx, mut rx) = unbounded_channel();
        let mut s = Siblings::new(store, tx);
        for p in [&a, &b, &c] {
            s.observe(&watcher::Event::InitApply(p.clone()));
        }
        // A status-only update of a claimant: nothing to tell the siblings.
        s.observe(&watcher::Event::Apply(a.clone()));
        assert!(rx.try_recv().is_err());
        // b starts claiming: a (same type) must re-elect; c (other type) need not.
        let b2 = pc("b", "openai", true);
        s.observe(&watcher::Event::Apply(b2));
        assert_eq!(rx.try_recv().unwrap().name, "a");
        assert!(rx.try_recv().is_err());
        // a is deleted: b must take over the aliases.
        s.observe(&watcher::Event::Delete(a));
        assert_eq!(rx.try_recv().unwrap().name, "b");
        // A new config that does not claim: nothing.
        s.observe(&watcher::Event::Apply(pc("d", "openai", false)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_claimant_held_in_deletion_reaches_the_siblings_twice() {
        let (a, b) = (pc("a", "openai", true), pc("b", "openai", false));
        let store = store_with(&[a.clone(), b.clone()]);
        let (tx, mut rx) = unbounded_channel();
        let mut s = Siblings::new(store, tx);
        for p in [&a, &b] {
            s.observe(&watcher::Event::InitApply(p.clone()));
        }
        // Its deletion starts (a finalizer holds it): it stops claiming.
        let mut deleting = a.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        s.observe(&watcher::Event::Apply(deleting.clone()));
        assert_eq!(rx.try_recv().unwrap().name, "b");
        assert!(rx.try_recv().is_err());
        // It is gone at last: the aliases it held are settled again.
        s.observe(&watcher::Event::Delete(deleting));
        assert_eq!(rx.try_recv().unwrap().name, "b");
        // A config that never claimed goes quietly.
        s.observe(&watcher::Event::Delete(b));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn secrets_map_to_referencing_and_owning_configs() {
        let store = store_with(&[pc("a", "openai", true), pc("b", "openai", false)]);
        let secret: PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "a-keys", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "kiln.dev/v1alpha1", "kind": "ProviderConfig", "name": "b",
                 "uid": "u-b", "controller": true}]}
        }))
        .unwrap();
        let names: Vec<_> = configs_for_secret(&store, &secret)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let other: PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "unrelated", "namespace": "ns"}
        }))
        .unwrap();
        assert!(configs_for_secret(&store, &other).is_empty());
    }
}
