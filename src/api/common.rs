//! Field types shared by several kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens when an object's TTL runs out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Expiration {
    /// Delete the object (and, through ownership or finalizers, what Kiln made for it).
    Delete,
    /// Keep the object, mark it `Expired` and free its payload (a job's files).
    MarkExpired,
}

/// A key of a ConfigMap or Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct KeyRef {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within its data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// One problem found in user input that only Kiln can judge (for example a JSON Schema
/// violation in a draft's config).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ValidationIssue {
    /// JSON pointer to the offending value (`/generation/patterns/0`).
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

/// Schema of a free-form JSON object whose fields the API server keeps as they are.
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A workload that follows what an object publishes (`kiln.dev/follow`,
/// `kiln.dev/follow-config`), as its owner's status reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FollowerStatus {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Its name, in the same namespace.
    pub name: String,
    /// What its pod template was last rolled out to: a revision, or the first 12 hex digits
    /// of a credentials hash. Absent when Kiln never rolled it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_out: Option<String>,
    /// Whether its pods still run with content older than what is published.
    pub behind: bool,
}
