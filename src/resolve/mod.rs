//! Dereferencing: what a Draft or a Job references (a schema ConfigMap, the ConfigMap and
//! Secret keys of declared files), and the results computed from it.
//!
//! The decisions here (which schema checks a draft, which bytes a declared file gets, when a
//! Secret may be used, which details an error may show) are written once, against the
//! [`Objects`] trait, and used by two callers:
//! - the controllers, with [`Cluster`]: the objects are read from the API server;
//! - the offline tools `kiln validate` and `kiln render` ([`crate::offline`]), with
//!   [`Offline`]: the objects come from files on disk.
//!
//! So a CI pipeline sees exactly the verdicts and the bytes the operator would produce.

pub mod declared;
pub mod schema;

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};

use crate::error::{KubeContext, Result};

/// Where the ConfigMaps and Secrets of one namespace are read from.
pub trait Objects: Sync {
    /// The ConfigMap `name`, or `None` when there is none.
    fn config_map(&self, name: &str) -> impl Future<Output = Result<Option<ConfigMap>>> + Send;
    /// The Secret `name`, or `None` when there is none.
    fn secret(&self, name: &str) -> impl Future<Output = Result<Option<Secret>>> + Send;
}

/// The objects of one namespace on the API server.
pub struct Cluster {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
}

impl Cluster {
    pub fn namespaced(client: &Client, namespace: &str) -> Self {
        Cluster {
            configmaps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
        }
    }
}

impl Objects for Cluster {
    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>> {
        self.configmaps
            .get_opt(name)
            .await
            .context(format!("reading ConfigMap {name}"))
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>> {
        self.secrets
            .get_opt(name)
            .await
            .context(format!("reading Secret {name}"))
    }
}

/// ConfigMaps and Secrets held in memory, keyed by name: what the offline tools read from
/// manifests and files. Namespaces are ignored: offline, everything given is "this namespace".
#[derive(Clone, Debug, Default)]
pub struct Offline {
    pub configmaps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

impl Offline {
    /// Adds a ConfigMap, replacing any earlier one of the same name.
    pub fn add_config_map(&mut self, cm: ConfigMap) {
        self.configmaps.insert(cm.name_any(), cm);
    }

    /// Adds a Secret, replacing any earlier one of the same name. `stringData` is folded into
    /// `data`, as the API server does when it stores a Secret.
    pub fn add_secret(&mut self, mut secret: Secret) {
        if let Some(strings) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(Default::default);
            for (key, value) in strings {
                data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
            }
        }
        self.secrets.insert(secret.name_any(), secret);
    }
}

impl Objects for Offline {
    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>> {
        Ok(self.configmaps.get(name).cloned())
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>> {
        Ok(self.secrets.get(name).cloned())
    }
}
