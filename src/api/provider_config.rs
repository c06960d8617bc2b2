//! `ProviderConfig`: an external provider and its credentials (users' reference:
//! `docs/api.md`, `docs/provider-config.md`).

// kube-derive repeats `type_` across printcolumn attributes, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{FollowerStatus, KeyRef, free_form_object};
use super::conditions::conditions_schema;

/// Desired state of a ProviderConfig.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "ProviderConfig",
    namespaced,
    status = "ProviderConfigStatus",
    shortname = "pcfg",
    category = "kiln",
    doc = "The configuration of an external service provider, with API keys that stay in Secrets. Kiln derives a ConfigMap and a credentials Secret from it.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.providerType"),
    printcolumn(
        name = "Default",
        type_ = "boolean",
        json_path = ".status.effectiveDefault"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Behind",
        type_ = "integer",
        json_path = ".status.followersBehind"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.providerType",
    selectable = ".spec.default"
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfigSpec {
    /// The provider's type, a DNS label such as `openai`. Immutable.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("providerType is immutable"))]
    pub provider_type: String,

    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// This config is the default for its provider type in the namespace. When several
    /// claim it, the oldest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,

    /// Free-form settings: model names, endpoints, timeouts, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub settings: Option<serde_json::Value>,

    /// API keys, by name; their values stay in Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub api_keys: Vec<ApiKey>,

    /// What deleting this config waits for (see [`DeletionPolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// What deleting a ProviderConfig waits for. `Delete` (Kiln's default): nothing; running
/// workloads that use the config are reported, then it goes. `WhileUnused`: the deletion
/// waits until no running workload uses it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Proceed at once; a deletion while workloads use the config is reported.
    #[default]
    Delete,
    /// Hold the deletion (Kiln's finalizer stays) until no running workload uses the config.
    WhileUnused,
}

/// A named API key held in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// The key's name; also its entry in the derived Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    #[x_kube(validation = kube::core::Rule::new("self != 'API_KEY'").message("API_KEY is reserved for the first active key"))]
    pub name: String,
    /// The Secret key holding the value.
    pub secret_ref: KeyRef,
    /// Inactive keys are left out of the derived Secret. Kiln's default is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

/// Where a provider config stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProviderConfigPhase {
    /// Not yet reconciled.
    Pending,
    /// Derived objects are up to date.
    Ready,
    /// A referenced Secret or key is missing; the last good credentials stay in place.
    Degraded,
}

/// What Kiln knows of one API key (never its value).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// The key's name.
    pub name: String,
    /// Whether it is in the derived Secret.
    pub active: bool,
    /// Whether its Secret and key were found.
    pub resolved: bool,
    /// A short hash of the value, to tell rotations apart; never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When Kiln last saw the value change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_time: Option<Time>,
    /// The last use of the key that a client reported to Kiln's HTTP API
    /// (`POST .../providerconfigs/{name}/usage`); written at most once per flush interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_time: Option<Time>,
}

/// Observed state of a ProviderConfig.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfigStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `DefaultConflict`, and `InUse` while being deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `Pending`, `Ready` or `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProviderConfigPhase>,
    /// Whether this config is the effective default for its provider type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_default: Option<bool>,
    /// The derived ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// The derived Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Hash of the derived Secret's content (what followers' pod templates carry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_hash: Option<String>,
    /// Per-key state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// Hash of the derived ConfigMap's `provider.json` (what followers' pod templates carry
    /// beside the credentials hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_hash: Option<String>,
    /// Rollouts of the workloads that follow this config (`kiln.dev/follow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The workloads that follow this config, and the credentials hash each rolled out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<FollowerStatus>,
    /// How many followers still run with older credentials or settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followers_behind: Option<i32>,
}

/// Rollouts of the workloads annotated `kiln.dev/follow: <this config>`. Kept in status so
/// that a change waiting for its debounce window survives a restart or a change of leader.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Since when a credentials change waits to be rolled out (the debounce window runs from
    /// here). Absent when the followers are up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Time>,
    /// What changed while the rollout waits: `credentials`, `settings`, or both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_changes: Vec<String>,
    /// When followers were last annotated with a new credentials hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<Time>,
    /// The credentials hash of that rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hash: Option<String>,
    /// How many workloads that rollout annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_workloads: Option<i32>,
}
