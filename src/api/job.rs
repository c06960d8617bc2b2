//! `Job` (`jobs.kiln.dev`): files generated for a project (users' reference: `docs/api.md`).
//!
//! The Rust type is `KilnJob` so that it is never confused with the batch Job.

// kube-derive repeats `type_` across printcolumn attributes, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Expiration, KeyRef, free_form_object};
use super::conditions::conditions_schema;

/// Desired state of a Job.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "Job",
    root = "KilnJob",
    namespaced,
    status = "KilnJobStatus",
    shortname = "kjob",
    category = "kiln",
    doc = "A file-generation job: files written to Kiln's workspace (declared here or uploaded over Kiln's HTTP API), checked against a plan and packed into a ZIP.",
    printcolumn(name = "Project", type_ = "string", json_path = ".spec.projectName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Files", type_ = "integer", json_path = ".status.filesCount"),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        json_path = ".status.totalSizeBytes"
    ),
    // `string`, not `date`: kubectl renders a `date` column as an age, and an age in the
    // future as `<invalid>`. As a string the column shows the RFC 3339 time itself.
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.projectName"
)]
#[serde(rename_all = "camelCase")]
pub struct KilnJobSpec {
    /// Names the archive (`<projectName>.zip`, sanitised).
    #[schemars(length(min = 1, max = 100))]
    pub project_name: String,

    /// The files the project should contain, grouped in tasks; written to `plan.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,

    /// Files declared in the resource itself. Kiln can always regenerate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["path".into()]))]
    pub files: Vec<DeclaredFile>,

    /// Set when every file is written: Kiln checks the plan and builds the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,

    /// Set to give up: the job moves to `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,

    /// How long the job lives after its creation (or a renewal), such as `48h` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    pub ttl: Option<String>,

    /// How long the job lives after it finished (`Complete` or `Failed`), such as `1h`. The job
    /// expires at whichever comes first: `ttl` after creation (or renewal), or this after its
    /// finish. Unset: only `ttl` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    pub ttl_after_finished: Option<String>,

    /// What happens when the TTL runs out: `Delete` (default) or `MarkExpired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
}

/// The project's plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Tasks, each naming the files it produces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub tasks: Vec<PlanTask>,
    /// Anything else the client wants in `plan.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub metadata: Option<serde_json::Value>,
}

/// A task of the plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanTask {
    /// The task's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Relative paths of the files this task produces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1000),
        inner(
            length(min = 1, max = 1024),
            regex(
                pattern = r"^([^./\\\x00-\x1f\x7f-\x9f\p{Cf}:]|\.[^./\\\x00-\x1f\x7f-\x9f\p{Cf}]|\.\.[^/\\\x00-\x1f\x7f-\x9f\p{Cf}])[^/\\\x00-\x1f\x7f-\x9f\p{Cf}]*(/([^./\\\x00-\x1f\x7f-\x9f\p{Cf}]|\.[^./\\\x00-\x1f\x7f-\x9f\p{Cf}]|\.\.[^/\\\x00-\x1f\x7f-\x9f\p{Cf}])[^/\\\x00-\x1f\x7f-\x9f\p{Cf}]*)*$"
            )
        )
    )]
    pub files: Vec<String>,
}

/// A file declared in the Job. Exactly one of `content`, `contentFrom` and `template`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.content), has(self.contentFrom), has(self.template)].filter(x, x).size() == 1").message("exactly one of content, contentFrom and template must be set"))]
pub struct DeclaredFile {
    /// Relative path inside the project: no leading `/`, no `..`, `.` or empty segments,
    /// no backslash, no control characters, no invisible format characters (Unicode Cf).
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = kube::core::Rule::new("!self.startsWith('/')").message("path must be relative (no leading '/')"),
        validation = kube::core::Rule::new("!self.contains('\\\\')").message("path must not contain a backslash"),
        validation = kube::core::Rule::new("!self.matches('(^|/)[.][.]?(/|$)')").message("path must not contain '.' or '..' segments"),
        validation = kube::core::Rule::new("!self.contains('//') && !self.endsWith('/')").message("path must not contain empty segments"),
        validation = kube::core::Rule::new("!self.matches('[\\\\x00-\\\\x1f\\\\x7f-\\\\x9f]')").message("path must not contain control characters"),
        validation = kube::core::Rule::new("!self.matches('\\\\p{Cf}')").message("path must not contain invisible format characters (Unicode category Cf, such as the bidirectional control U+202E or the zero-width space U+200B)"),
        validation = kube::core::Rule::new("!self.matches('^[A-Za-z]:')").message("path must not start with a drive letter"),
    )]
    pub path: String,

    /// The file's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub content: Option<String>,

    /// The file's bytes from a ConfigMap or Secret key in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_from: Option<ContentSource>,

    /// A Jinja2 template rendered by Kiln with a JSON context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSource>,
}

/// A ConfigMap or Secret key. Exactly one of the two.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.configMapKeyRef) != has(self.secretKeyRef)").message("exactly one of configMapKeyRef and secretKeyRef must be set"))]
pub struct ContentSource {
    /// A key of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// A template and the context it is rendered with.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.source) != has(self.sourceFrom)").message("exactly one of source and sourceFrom must be set"))]
pub struct TemplateSource {
    /// The template text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub source: Option<String>,
    /// The template text from a ConfigMap or Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_from: Option<ContentSource>,
    /// The variables the template sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub context: Option<serde_json::Value>,
}

/// Why a job failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Failure {
    /// What went wrong, for people.
    #[schemars(length(max = 4096))]
    pub message: String,
}

/// Where a job stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JobPhase {
    /// Files are being written.
    Generating,
    /// The archive is built and can be downloaded.
    Complete,
    /// The client gave up (`spec.failure`).
    Failed,
    /// The TTL ran out and the job was kept (`MarkExpired`); its files are gone.
    Expired,
}

/// The built archive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    /// Size of the ZIP in bytes.
    pub size_bytes: i64,
    /// sha256 of the ZIP (also its HTTP `ETag`).
    pub sha256: String,
    /// Path of the download on Kiln's HTTP API.
    pub download_path: String,
    /// Where the object store holds the archive (`s3://bucket/key`), when Kiln runs with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A file whose bytes come from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SensitiveFile {
    /// The file's path in the job.
    pub path: String,
    /// The Secrets (in the job's namespace) it was made from.
    pub secrets: Vec<String>,
}

/// Observed state of a Job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KilnJobStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `Complete`, `ExpiringSoon`, `Expired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `Generating`, `Complete`, `Failed` or `Expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Files in the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_count: Option<i64>,
    /// Their total size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_bytes: Option<i64>,
    /// Planned files not written yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_files: Vec<String>,
    /// The archive, once built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,
    /// Files made from Secrets. Reading one over the file API, or downloading the archive,
    /// takes `get` on each Secret named here besides `jobs/files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive_files: Vec<SensitiveFile>,
    /// The TTL in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The expiration policy in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
    /// When the job first finished (`Complete` or `Failed`); cleared when it goes back to
    /// `Generating`. `spec.ttlAfterFinished` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_time: Option<Time>,
    /// When the TTL clock started: creation, or the last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_start_time: Option<Time>,
    /// The last value of the `kiln.dev/renew` annotation Kiln acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_renew: Option<String>,
    /// When the job expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// A human summary of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
