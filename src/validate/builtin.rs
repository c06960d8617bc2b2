//! The two built-in schemas, embedded from `schemas/` and compiled once per process.

use std::sync::LazyLock;

use jsonschema::{Draft, Validator};
use serde_json::Value;

use super::{ValidationError, report};

const CONTENT_SCHEMA: &str = include_str!("../../schemas/content.schema.json");
const ARTIFACT_SCHEMA: &str = include_str!("../../schemas/artifact.schema.json");

// Compiled on first use rather than at startup: a process that never validates (`kiln crds`,
// `kiln rollback`) pays nothing.
static CONTENT: LazyLock<Validator> = LazyLock::new(|| compile(CONTENT_SCHEMA, "content"));
static ARTIFACT: LazyLock<Validator> = LazyLock::new(|| compile(ARTIFACT_SCHEMA, "artifact"));

/// One of Kiln's built-in schemas, chosen by the draft's `configType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuiltinSchema {
    /// `schemas/content.schema.json`: requires `id` and a non-empty `generation.patterns`
    /// whose items each have a `type`; `type`, when present, is `"content"`.
    Content,
    /// `schemas/artifact.schema.json`: requires `id`; `type`, when present, is `"artifact"`;
    /// `content.children`, when present, is an array of objects that each have an `id`.
    Artifact,
}

impl BuiltinSchema {
    /// Both schemas, for iteration (tests, docs generation).
    pub const ALL: [BuiltinSchema; 2] = [BuiltinSchema::Content, BuiltinSchema::Artifact];

    /// The config type this schema checks: `"content"` or `"artifact"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinSchema::Content => "content",
            BuiltinSchema::Artifact => "artifact",
        }
    }

    /// The schema for a config type name (`"content"`, `"artifact"`), if there is one.
    pub fn from_config_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|schema| schema.as_str() == name)
    }

    /// The schema's JSON text exactly as shipped in `schemas/`.
    pub fn schema_text(self) -> &'static str {
        match self {
            BuiltinSchema::Content => CONTENT_SCHEMA,
            BuiltinSchema::Artifact => ARTIFACT_SCHEMA,
        }
    }

    /// Checks `config`; see [`validate_builtin`].
    pub fn validate(self, config: &Value) -> Vec<ValidationError> {
        let validator: &Validator = match self {
            BuiltinSchema::Content => &CONTENT,
            BuiltinSchema::Artifact => &ARTIFACT,
        };
        report::collect(validator.iter_errors(config))
    }
}

/// Checks `config` against a built-in schema and returns every violation, sorted by path and
/// capped at [`MAX_ERRORS`](super::MAX_ERRORS); an empty list means the config is valid.
pub fn validate_builtin(schema: BuiltinSchema, config: &Value) -> Vec<ValidationError> {
    schema.validate(config)
}

/// Compiles a built-in schema. The schemas are part of the binary and a unit test compiles
/// both, so a failure here is a bug in Kiln, not a user error: panicking is the honest answer.
fn compile(text: &str, name: &str) -> Validator {
    let schema: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("built-in {name} schema is not JSON: {e}"));
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .offline()
        .build(&schema)
        .unwrap_or_else(|e| panic!("built-in {name} schema does not compile: {e}"))
}
