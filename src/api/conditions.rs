//! The one condition type every Kiln status uses, with the kstatus types and Kiln's stable
//! reasons. Reasons are an API: never rename one.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Condition types.
pub mod types {
    /// The object is fully reconciled and usable.
    pub const READY: &str = "Ready";
    /// Abnormal-true: Kiln is working on the object.
    pub const RECONCILING: &str = "Reconciling";
    /// Abnormal-true: Kiln cannot make progress without a change to the object.
    pub const STALLED: &str = "Stalled";
    /// Draft: the config passed its JSON Schema.
    pub const VALIDATED: &str = "Validated";
    /// Draft: the config is published to its ConfigMap.
    pub const PUBLISHED: &str = "Published";
    /// Draft and Job: the TTL runs out soon.
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    /// Draft and Job: the TTL ran out and the object was kept (`expiration: MarkExpired`).
    pub const EXPIRED: &str = "Expired";
    /// Job: the archive is built.
    pub const COMPLETE: &str = "Complete";
    /// ProviderConfig: another config is the effective default for this provider type.
    pub const DEFAULT_CONFLICT: &str = "DefaultConflict";
    /// ProviderConfig, while it is being deleted: running workloads use what it derived.
    pub const IN_USE: &str = "InUse";
}

/// JSON Schema of a `conditions` list: a list-map keyed by `type`, so that server-side apply
/// merges conditions one by one.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
