//! Which JSON Schema a draft is checked against, and the check itself.

use super::Objects;
use crate::api::ValidationIssue;
use crate::api::draft::{ConfigType, DraftSpec};
use crate::error::Result;
use crate::validate;

/// The verdict on a draft's config.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Valid,
    /// The config violates its schema: sorted, capped issues.
    Violations(Vec<ValidationIssue>),
    /// The referenced schema cannot be used (missing ConfigMap or key, not a schema).
    BrokenSchema {
        reason: &'static str,
        message: String,
    },
}

/// Checks `config` against `schemaRef` if set, else the built-in schema. `config` is the
/// draft's `spec.config`, passed apart because the Draft controller's cache keeps it as
/// compact text (see `controller::draft::cache`).
pub async fn check(
    objects: &impl Objects,
    spec: &DraftSpec,
    config: &serde_json::Value,
) -> Result<Verdict> {
    let Some(reference) = &spec.schema_ref else {
        let kind = match spec.config_type {
            ConfigType::Content => validate::BuiltinSchema::Content,
            ConfigType::Artifact => validate::BuiltinSchema::Artifact,
        };
        return Ok(to_verdict(validate::validate_builtin(kind, config)));
    };
    let Some(cm) = objects.config_map(&reference.name).await? else {
        return Ok(Verdict::BrokenSchema {
            reason: "SchemaNotFound",
            message: format!(
                "schemaRef: ConfigMap {:?} not found in this namespace",
                reference.name
            ),
        });
    };
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(&reference.key)) else {
        return Ok(Verdict::BrokenSchema {
            reason: "SchemaNotFound",
            message: format!(
                "schemaRef: ConfigMap {:?} has no key {:?}",
                reference.name, reference.key
            ),
        });
    };
    match validate::CustomSchema::compile(text) {
        Ok(schema) => Ok(to_verdict(schema.validate(config))),
        Err(error) => Ok(Verdict::BrokenSchema {
            reason: "SchemaInvalid",
            message: format!("schemaRef {}/{}: {error}", reference.name, reference.key),
        }),
    }
}

fn to_verdict(errors: Vec<validate::ValidationError>) -> Verdict {
    if errors.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Violations(
            errors
                .into_iter()
                .map(|e| ValidationIssue {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        )
    }
}
