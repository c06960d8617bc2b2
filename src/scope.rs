//! Where Kiln watches (every namespace, or a list of them) and how: shared by the controllers
//! and the HTTP API's caches.

use kube::runtime::watcher;
use kube::{Api, Client, Resource};

/// Where a watch runs: all namespaces, or one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    /// One scope per watched namespace, or `All` when none is given.
    pub fn from_namespaces(namespaces: &[String]) -> Vec<Scope> {
        if namespaces.is_empty() {
            vec![Scope::All]
        } else {
            namespaces
                .iter()
                .map(|ns| Scope::Namespace(ns.clone()))
                .collect()
        }
    }

    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

/// Default watcher configuration: Kiln's own kinds are few and small, so a full watch is fine;
/// lists are paged so that a large namespace does not arrive as one giant response.
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().page_size(500)
}
