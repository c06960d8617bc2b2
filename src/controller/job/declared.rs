//! Declared files: the bytes each `spec.files` entry should have, resolved from the spec and
//! the ConfigMaps and Secrets it references.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use crate::api::KeyRef;
use crate::api::job::{ContentSource, DeclaredFile};
use crate::desired::job::render_template;
use crate::error::{KubeContext, Result};

/// Why a declared file cannot be produced. Each is the user's to fix (or to create the
/// referenced object); Kiln retries on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// `contentFrom` or `template.sourceFrom` names a ConfigMap/Secret or key that does not exist.
    SourceNotFound(String),
    /// The template does not parse or render (message names file and line).
    TemplateError(String),
}

/// Reads ConfigMap and Secret keys in the job's namespace.
pub struct Sources {
    pub configmaps: Api<ConfigMap>,
    pub secrets: Api<Secret>,
}

impl Sources {
    async fn read(
        &self,
        source: &ContentSource,
        path: &str,
    ) -> Result<std::result::Result<Vec<u8>, Problem>> {
        if let Some(r) = &source.config_map_key_ref {
            let cm = self
                .configmaps
                .get_opt(&r.name)
                .await
                .context(format!("reading ConfigMap {}", r.name))?;
            let bytes = cm.and_then(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| {
                        cm.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(|b| b.0.clone())
                    })
            });
            return Ok(bytes.ok_or_else(|| missing("ConfigMap", r, path)));
        }
        if let Some(r) = &source.secret_key_ref {
            let secret = self
                .secrets
                .get_opt(&r.name)
                .await
                .context(format!("reading Secret {}", r.name))?;
            let bytes = secret
                .and_then(|s| s.data.and_then(|mut d| d.remove(&r.key)))
                .map(|ByteString(b)| b);
            return Ok(bytes.ok_or_else(|| missing("Secret", r, path)));
        }
        Ok(Err(Problem::SourceNotFound(format!(
            "{path}: no source given"
        ))))
    }

    /// The bytes `file` should hold.
    pub async fn resolve(
        &self,
        file: &DeclaredFile,
    ) -> Result<std::result::Result<Vec<u8>, Problem>> {
        if let Some(content) = &file.content {
            return Ok(Ok(content.clone().into_bytes()));
        }
        if let Some(source) = &file.content_from {
            return self.read(source, &file.path).await;
        }
        let Some(template) = &file.template else {
            return Ok(Err(Problem::SourceNotFound(format!(
                "{}: no content, contentFrom or template",
                file.path
            ))));
        };
        let text = match (&template.source, &template.source_from) {
            (Some(text), _) => text.clone(),
            (None, Some(source)) => match self.read(source, &file.path).await? {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(_) => {
                        return Ok(Err(Problem::TemplateError(format!(
                            "{}: template source is not UTF-8",
                            file.path
                        ))));
                    }
                },
                Err(problem) => return Ok(Err(problem)),
            },
            (None, None) => {
                return Ok(Err(Problem::TemplateError(format!(
                    "{}: template has no source",
                    file.path
                ))));
            }
        };
        let context = template
            .context
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        Ok(render_template(&file.path, &text, &context)
            .map(String::into_bytes)
            .map_err(|e| Problem::TemplateError(e.to_string())))
    }
}

fn missing(kind: &str, r: &KeyRef, path: &str) -> Problem {
    Problem::SourceNotFound(format!(
        "{path}: {kind} {:?} or its key {:?} not found",
        r.name, r.key
    ))
}
