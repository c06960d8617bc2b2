//! Caches of Kiln's objects for the HTTP API, each kept by a watch of its own (one per
//! watched namespace, or one for all), so that a request costs the API server no read: an
//! upload of a thousand files, or a thousand key-usage reports, would otherwise be a thousand
//! GETs of the same object. What the API never reads is dropped before caching. An object the
//! cache does not have yet (created a moment ago, or before the first list completes) is read
//! from the API server directly, so a client may create an object and use it at once.
//!
//! The controllers have caches of their own; these are separate because they live as long
//! as the HTTP server (on every replica, leader or not) and hold only what the API reads.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::debug;

use super::error::ApiError;
use crate::scope::{Scope, watcher_config};

/// The objects of one kind the API can serve.
pub struct Cached<K: Resource<DynamicType = ()> + 'static> {
    client: Client,
    stores: Vec<(Scope, Store<K>)>,
    /// The kind, for messages (`Job`, `ProviderConfig`).
    kind: &'static str,
}

impl<K> Cached<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    /// Starts the watches (`namespaces` empty means all), slimming every object with `slim`.
    /// Must be called from within the Tokio runtime; the watches run until the process exits.
    pub fn start(
        client: Client,
        namespaces: &[String],
        kind: &'static str,
        slim: fn(&mut K),
    ) -> Self {
        let mut stores = Vec::new();
        for scope in Scope::from_namespaces(namespaces) {
            let (store, writer) = reflector::store();
            let watch = watcher(scope.api::<K>(&client), watcher_config())
                .default_backoff()
                .modify(slim)
                .reflect(writer)
                .for_each(move |event| async move {
                    if let Err(error) = event {
                        debug!(%error, kind, "HTTP API watch");
                    }
                });
            tokio::spawn(watch);
            stores.push((scope, store));
        }
        Cached {
            client,
            stores,
            kind,
        }
    }

    /// The object `namespace/name`, or 404 (also for a namespace Kiln does not watch). Check
    /// the names first ([`check_names`]).
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Arc<K>, ApiError> {
        let kind = self.kind;
        let store = self
            .stores
            .iter()
            .find(|(scope, _)| match scope {
                Scope::All => true,
                Scope::Namespace(ns) => ns == namespace,
            })
            .map(|(_, store)| store)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "Kiln does not manage {kind}s in namespace {namespace} (see its --namespaces)"
                ))
            })?;
        if let Some(object) = store.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(object);
        }
        Api::<K>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| ApiError::internal(&format!("reading the {kind} failed"), &e))?
            .map(Arc::new)
            .ok_or_else(|| ApiError::not_found(format!("{kind} {namespace}/{name} does not exist")))
    }
}

/// 400 unless `namespace` is a DNS label and `name` a DNS subdomain, as Kubernetes requires.
/// Checked before any review or read, so that nothing built from a URL that no object could
/// have ever reaches the API server. `kind` names the object in the message.
pub fn check_names(namespace: &str, name: &str, kind: &str) -> Result<(), ApiError> {
    let dns = |s: &str, max: usize, dots: bool| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !dns(namespace, 63, false) {
        return Err(ApiError::validation(format!(
            "{:?} is not a valid namespace name",
            crate::workspace::key::truncate_for_message(namespace)
        )));
    }
    if !dns(name, 253, true) {
        return Err(ApiError::validation(format!(
            "{:?} is not a valid {kind} name",
            crate::workspace::key::truncate_for_message(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_kubernetes_names() {
        assert!(check_names("team-a", "job.v1-2", "Job").is_ok());
        for (ns, name) in [
            ("", "j"),
            ("Team", "j"),
            ("a.b", "j"),
            ("-a", "j"),
            ("..", "j"),
            (&"a".repeat(64), "j"),
            ("ns", ""),
            ("ns", ".."),
            ("ns", "a/b"),
            ("ns", "A"),
            ("ns", "a\0"),
            ("ns", &"a".repeat(254)),
        ] {
            let e = check_names(ns, name, "Job").unwrap_err();
            assert_eq!(e.code, "validation_error", "{ns:?} {name:?}");
        }
        let e = check_names("ns", "A", "ProviderConfig").unwrap_err();
        assert!(e.message.contains("ProviderConfig name"), "{}", e.message);
    }
}
