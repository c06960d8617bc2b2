//! Kiln's custom resources (`kiln.dev/v1alpha1`). Types only: no logic lives here.
//!
//! Everything the API server can check is declared in the schema (patterns, lengths, CEL
//! rules), so bad input is refused at `kubectl apply` time. What only Kiln can judge is
//! reported in `status`.

pub mod common;
pub mod conditions;
pub mod draft;
pub mod job;
pub mod provider_config;

pub use common::{Expiration, KeyRef, ValidationIssue};
pub use draft::{Draft, DraftSpec, DraftStatus};
pub use job::{KilnJob, KilnJobSpec, KilnJobStatus};
pub use provider_config::{ProviderConfig, ProviderConfigSpec, ProviderConfigStatus};

/// The API group of every Kiln kind.
pub const GROUP: &str = "kiln.dev";
/// The served (and stored) version.
pub const VERSION: &str = "v1alpha1";
/// The category that makes `kubectl get kiln` list every Kiln object.
pub const CATEGORY: &str = "kiln";

/// All of Kiln's CustomResourceDefinitions, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Draft::crd(), KilnJob::crd(), ProviderConfig::crd()]
}
