//! JSON Schema validation of draft configs.
//!
//! A draft's `spec.config` is checked either against one of Kiln's two built-in schemas
//! ([`BuiltinSchema`], the files in `schemas/`, embedded at build time) or against a schema the
//! user keeps in a ConfigMap ([`CustomSchema`], referenced by `spec.schemaRef`).
//!
//! Both paths report problems the same way: a list of [`ValidationError`]s `{path, message}`,
//! ready to be copied into `status.validationErrors`. The list is
//! - complete: every violation, not only the first one;
//! - located: `path` is the RFC 6901 JSON pointer of the offending value (`""` for the config
//!   itself). A missing required property is reported at the pointer the property would have,
//!   so `/generation: "generation" is a required property` reads naturally, and an unexpected
//!   property (`additionalProperties`, `unevaluatedProperties`) at its own pointer, one entry
//!   per property;
//! - stable: sorted by path (array indices compared as numbers, so `/children/2` comes before
//!   `/children/10`), then by message, without duplicates, so an unchanged config always
//!   produces the same status and a reconcile writes nothing;
//! - bounded: at most [`MAX_ERRORS`] entries. When there are more, the first
//!   `MAX_ERRORS - 1` are kept and the last entry, with an empty path, says how many were left
//!   out. Each message is at most a few hundred characters: values from the config are quoted
//!   only when short, so a status never grows with the size of the config.
//!
//! This module knows nothing about Kubernetes: it takes JSON values and schema text.

mod builtin;
mod custom;
mod report;

#[cfg(test)]
mod tests;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use builtin::{BuiltinSchema, validate_builtin};
pub use custom::{CustomSchema, SchemaError};

/// The most entries a validation ever returns, the synthetic "more errors" entry included.
pub const MAX_ERRORS: usize = 50;

/// One violation of a schema by a config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct ValidationError {
    /// JSON pointer (RFC 6901) of the offending value in the config, e.g. `/generation` or
    /// `/generation/patterns/0/type`; empty for the config as a whole.
    pub path: String,
    /// What is wrong, e.g. `"generation" is a required property`.
    pub message: String,
}

impl fmt::Display for ValidationError {
    /// `path: message`, or only the message for the config as a whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}
