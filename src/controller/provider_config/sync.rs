//! Making the derived objects exist: read, compare with what `crate::desired` says, and
//! server-side apply only the difference. An object of the same name that Kiln did not
//! derive for this role is never written or deleted.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::managers;
use crate::desired::labels::{SHA256, managed_by_kiln};
use crate::desired::provider_config::{
    Credentials, HashKey, PROVIDER_ROLE, Target, config_map_matches, secret_matches,
};
use crate::error::{Error, KubeContext, Result};

/// What happened to one derived object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Already as desired: nothing was sent.
    Unchanged,
    /// Created or updated.
    Applied,
    /// Left as it was: there were no good credentials to write (the last good ones stay).
    Kept,
    /// A foreign object holds the name: left untouched.
    Conflict,
}

/// The outcome for a credentials Secret, with what it holds afterwards (its last good
/// content when nothing could be written).
#[derive(Debug)]
pub struct SecretOutcome {
    pub written: Written,
    pub holds: Option<Credentials>,
    /// The hash of what it holds, as its annotation says (None: it holds nothing).
    pub hash: Option<String>,
    /// The key of its hash and of the keys' fingerprints, when the Secret carries one.
    pub key: Option<HashKey>,
}

pub struct Writer<'a> {
    pub configmaps: &'a Api<ConfigMap>,
    pub secrets: &'a Api<Secret>,
}

impl Writer<'_> {
    /// Makes `target`'s ConfigMap hold `json`.
    pub async fn config_map(&self, target: &Target<'_>, json: &str) -> Result<Written> {
        let name = target.name();
        let want = target.config_map(json);
        let existing = self
            .configmaps
            .get_opt(&name)
            .await
            .context(format!("reading ConfigMap {name}"))?;
        match existing {
            Some(cm) if !target.may_overwrite(&cm.metadata) => Ok(Written::Conflict),
            Some(cm) if config_map_matches(&cm, &want) => Ok(Written::Unchanged),
            _ => {
                apply(self.configmaps, &name, &want).await?;
                Ok(Written::Applied)
            }
        }
    }

    /// Makes `target`'s Secret hold `credentials`; with None, leaves it as it is. Its hashes
    /// use `key`, or else the key the Secret already carries, or else a new one.
    pub async fn secret(
        &self,
        target: &Target<'_>,
        credentials: Option<&Credentials>,
        key: Option<&HashKey>,
    ) -> Result<SecretOutcome> {
        let name = target.name();
        // Read in full: the comparison needs the data. The object never reaches a log.
        let existing = self
            .secrets
            .get_opt(&name)
            .await
            .context(format!("reading Secret {name}"))?;
        let kept_key = existing
            .as_ref()
            .and_then(|s| HashKey::from_meta(&s.metadata));
        if let Some(secret) = &existing
            && !target.may_overwrite(&secret.metadata)
        {
            return Ok(SecretOutcome {
                written: Written::Conflict,
                holds: None,
                hash: None,
                key: None,
            });
        }
        let Some(credentials) = credentials else {
            // Unchanged content: the hash it was annotated with still describes it.
            let hash = existing
                .as_ref()
                .and_then(|s| s.metadata.annotations.as_ref()?.get(SHA256).cloned());
            return Ok(SecretOutcome {
                written: Written::Kept,
                holds: existing.as_ref().map(Credentials::from_secret),
                hash,
                key: kept_key,
            });
        };
        let key = match (key, kept_key) {
            (Some(key), _) => key.clone(),
            (None, Some(kept)) => kept,
            (None, None) => HashKey::generate().map_err(Error::Random)?,
        };
        let want = target.secret(credentials, &key);
        let written = match &existing {
            Some(secret) if secret_matches(secret, &want) => Written::Unchanged,
            _ => {
                apply(self.secrets, &name, &want).await?;
                Written::Applied
            }
        };
        Ok(SecretOutcome {
            written,
            holds: Some(credentials.clone()),
            hash: Some(credentials.hash(&key)),
            key: Some(key),
        })
    }
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(
        name,
        &PatchParams::apply(managers::PROVIDER_CONFIG).force(),
        &Patch::Apply(object),
    )
    .await
    .context(format!("applying {} {name}", K::kind(&())))?;
    Ok(())
}

/// Deletes an alias object when it is one of Kiln's (role label set by Kiln). Reads metadata
/// only, and deletes with a precondition on uid and resourceVersion, so an object replaced
/// or taken over in the meantime is left alone. Returns whether something was deleted.
pub async fn remove_alias<K>(api: &Api<K>, name: &str, role: &str) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(meta) = api
        .get_metadata_opt(name)
        .await
        .context(format!("reading {} {name}", K::kind(&())))?
    else {
        return Ok(false);
    };
    let ours = managed_by_kiln(meta.metadata.labels.as_ref())
        && meta.labels().get(PROVIDER_ROLE).map(String::as_str) == Some(role);
    if !ours {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: meta.uid(),
            resource_version: meta.resource_version(),
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e).context(format!("deleting {} {name}", K::kind(&()))),
    }
}
