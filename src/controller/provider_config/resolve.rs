//! Reading the API keys a ProviderConfig references. Each referenced Secret is read once per
//! reconcile (a GET, not a cache: Kiln does not keep every Secret of the cluster in memory).
//!
//! Values stay inside [`SecretValue`]; what can be printed (`Missing`) names Secrets and keys
//! only.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::api::provider_config::ProviderConfigSpec;
use crate::desired::provider_config::{Credentials, SecretValue};
use crate::error::{KubeContext, Result};

/// Why a key could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    Secret { secret: String },
    Key { secret: String, key: String },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Secret { secret } => write!(f, "Secret {secret} not found"),
            Missing::Key { secret, key } => write!(f, "Secret {secret} has no key {key}"),
        }
    }
}

/// One `spec.apiKeys[]` entry after reading its Secret.
#[derive(Clone, Debug)]
pub struct ResolvedKey {
    pub name: String,
    pub active: bool,
    pub value: Result<SecretValue, Missing>,
}

/// Every key of a spec, in spec order.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    pub keys: Vec<ResolvedKey>,
}

impl Resolution {
    /// The derived Secret's content, or None when an active key is missing (then the last
    /// good derived Secret stays as it is).
    pub fn credentials(&self) -> Option<Credentials> {
        let mut active = Vec::new();
        for key in self.keys.iter().filter(|k| k.active) {
            active.push((key.name.as_str(), key.value.as_ref().ok()?));
        }
        Some(Credentials::from_active(active))
    }

    /// The active keys that could not be read, as `(key name, why)`.
    pub fn missing(&self) -> Vec<(&str, &Missing)> {
        self.keys
            .iter()
            .filter(|k| k.active)
            .filter_map(|k| k.value.as_ref().err().map(|m| (k.name.as_str(), m)))
            .collect()
    }

    pub fn active_count(&self) -> usize {
        self.keys.iter().filter(|k| k.active).count()
    }
}

/// Reads every referenced Secret (each once). A Secret or key that does not exist is a
/// `Missing`, not an error: the ProviderConfig reports it. Other failures (forbidden, the API
/// server down) are errors and are retried.
pub async fn resolve(secrets: &Api<Secret>, spec: &ProviderConfigSpec) -> Result<Resolution> {
    let mut fetched: BTreeMap<&str, Option<Secret>> = BTreeMap::new();
    for key in &spec.api_keys {
        let name = key.secret_ref.name.as_str();
        if !fetched.contains_key(name) {
            let secret = secrets
                .get_opt(name)
                .await
                .context(format!("reading Secret {name}"))?;
            fetched.insert(name, secret);
        }
    }
    let keys = spec
        .api_keys
        .iter()
        .map(|key| {
            let secret_name = &key.secret_ref.name;
            let value = match fetched.get(secret_name.as_str()).and_then(Option::as_ref) {
                None => Err(Missing::Secret {
                    secret: secret_name.clone(),
                }),
                Some(secret) => lookup(secret, &key.secret_ref.key).ok_or_else(|| Missing::Key {
                    secret: secret_name.clone(),
                    key: key.secret_ref.key.clone(),
                }),
            };
            ResolvedKey {
                name: key.name.clone(),
                active: key.active.unwrap_or(true),
                value,
            }
        })
        .collect();
    Ok(Resolution { keys })
}

fn lookup(secret: &Secret, key: &str) -> Option<SecretValue> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| SecretValue::new(v.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, active: bool, value: Result<&str, Missing>) -> ResolvedKey {
        ResolvedKey {
            name: name.into(),
            active,
            value: value.map(|v| SecretValue::new(v.as_bytes().to_vec())),
        }
    }

    #[test]
    fn credentials_need_every_active_key() {
        let gone = Missing::Secret { secret: "s".into() };
        let ok = Resolution {
            keys: vec![key("a", true, Ok("A")), key("b", false, Err(gone.clone()))],
        };
        assert_eq!(ok.credentials().map(|c| c.key_count()), Some(1));
        assert!(ok.missing().is_empty(), "an inactive key may be missing");
        let broken = Resolution {
            keys: vec![key("a", true, Ok("A")), key("b", true, Err(gone.clone()))],
        };
        assert!(broken.credentials().is_none());
        assert_eq!(broken.missing(), vec![("b", &gone)]);
        assert_eq!(broken.active_count(), 2);
    }

    #[test]
    fn missing_names_the_secret_and_key_only() {
        let m = Missing::Key {
            secret: "keys".into(),
            key: "primary".into(),
        };
        assert_eq!(m.to_string(), "Secret keys has no key primary");
        let dbg = format!("{:?}", key("a", true, Ok("sk-secret-value")));
        assert!(!dbg.contains("sk-secret"), "{dbg}");
    }
}
