//! `Draft`: a configuration being written (users' reference: `docs/api.md`).

// kube-derive repeats `type_` across printcolumn attributes, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Expiration, FollowerStatus, KeyRef, ValidationIssue, free_form_object};
use super::conditions::conditions_schema;

/// The two config kinds of a content generation system.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConfigType {
    /// Produces one output.
    Content,
    /// Composes several outputs.
    Artifact,
}

impl ConfigType {
    /// The lowercase name used in object names, labels and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigType::Content => "content",
            ConfigType::Artifact => "artifact",
        }
    }
}

impl std::fmt::Display for ConfigType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Desired state of a Draft.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "Draft",
    namespaced,
    status = "DraftStatus",
    shortname = "kdraft",
    category = "kiln",
    doc = "A configuration being written: validated against a JSON Schema, published to a ConfigMap with revisions, and deleted when its retention runs out.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.configType"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.published.revision"
    ),
    printcolumn(
        name = "Behind",
        type_ = "integer",
        json_path = ".status.followersBehind"
    ),
    // `string`, not `date`: kubectl renders a `date` column as an age, and an age in the
    // future as `<invalid>`. As a string the column shows the RFC 3339 time itself.
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.configType",
    selectable = ".spec.publish.configId"
)]
#[serde(rename_all = "camelCase")]
pub struct DraftSpec {
    /// `content` or `artifact`. Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("configType is immutable"))]
    pub config_type: ConfigType,

    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The configuration itself: a JSON object, checked against the built-in schema of its
    /// `configType` or against `schemaRef`.
    #[schemars(schema_with = "free_form_object")]
    pub config: serde_json::Value,

    /// A ConfigMap key in this namespace holding a JSON Schema (draft 7 or 2020-12) that
    /// replaces the built-in schema for this draft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_ref: Option<KeyRef>,

    /// How long the draft lives after the last change of its spec (or a renewal), as a
    /// duration such as `720h`. Kiln's default is `720h` (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    pub retention: Option<String>,

    /// What happens when the retention runs out: `Delete` (default) or `MarkExpired` (the
    /// default when a GitOps tool tracks the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,

    /// Publish the config, when valid, to the ConfigMap `<configId>-<configType>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Publish>,
}

/// Where and how a valid draft is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    /// Kebab-case id; the ConfigMap is `<configId>-<configType>` and each revision
    /// `<configId>-<configType>-r<N>`. At most 63 characters, since it is also a label value.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$")
    )]
    pub config_id: String,

    /// How many revision ConfigMaps to keep (1–100). Kiln's default is 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub keep_revisions: Option<i32>,
}

/// Where a draft stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DraftPhase {
    /// Not yet reconciled, or being published.
    Pending,
    /// Valid, and published when `publish` is set.
    Ready,
    /// The config violates its schema (or the schema is broken).
    Invalid,
    /// The retention ran out and the draft was kept (`MarkExpired`).
    Expired,
}

/// The published ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedRevision {
    /// The ConfigMap holding the current revision (`<configId>-<configType>`).
    pub config_map: String,
    /// The revision number, counting from 1.
    pub revision: i64,
    /// sha256 of the published JSON.
    pub hash: String,
    /// When this revision was published.
    pub time: Time,
}

/// One entry of the publishing audit trail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// The revision number.
    pub revision: i64,
    /// The immutable ConfigMap of this revision (`<configId>-<configType>-r<N>`).
    pub config_map: String,
    /// sha256 of the published JSON.
    pub hash: String,
    /// When it was published.
    pub time: Time,
    /// Whether the revision ConfigMap still exists (older ones are pruned by `keepRevisions`).
    #[serde(default)]
    pub pruned: bool,
    /// The field manager that last changed the spec before this revision
    /// (`kubectl-client-side-apply`, `argocd-controller`, `helm`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    /// The `kiln.dev/change-cause` annotation at the time, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
}

/// Observed state of a Draft.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraftStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `Validated`, `Published`, `ExpiringSoon`, `Expired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `Pending`, `Ready`, `Invalid` or `Expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DraftPhase>,
    /// Schema violations, sorted by path, at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<ValidationIssue>,
    /// The retention in effect (the spec's, or Kiln's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// The expiration policy in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
    /// When the retention clock started: the last change of the spec, or the last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_start_time: Option<Time>,
    /// The last value of the `kiln.dev/renew` annotation Kiln acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_renew: Option<String>,
    /// When the draft expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The current published revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<PublishedRevision>,
    /// Every revision this draft published, oldest first. Never rewritten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
    /// Rollouts of the workloads annotated `kiln.dev/follow-config: <configId>-<configType>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ConfigRolloutStatus>,
    /// The workloads that follow the published config, and the revision each rolled out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<FollowerStatus>,
    /// How many followers still run an older revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followers_behind: Option<i32>,
}

/// Rollouts of the workloads that follow a published config. Kept in status so that a new
/// revision waiting for its debounce window survives a restart or a change of leader.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRolloutStatus {
    /// Since when a new revision waits to be rolled out (the debounce window runs from here).
    /// Absent when the followers are up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Time>,
    /// When followers were last rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<Time>,
    /// The revision of that rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revision: Option<i64>,
    /// How many workloads that rollout annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_workloads: Option<i32>,
}
