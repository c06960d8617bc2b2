//! Kiln: a Kubernetes operator that gives configuration a lifecycle inside the cluster.
//!
//! Data flow: watch (`controller`) → reconcile → compute what should exist (pure modules)
//! → apply (`apply`, server-side apply, only on change) → status.

pub mod api;
pub mod apply;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crdgen;
pub mod desired;
pub mod duration;
pub mod error;
pub mod expiry;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod key_usage;
pub mod leader;
pub mod metrics;
pub mod nudge;
pub mod objstore;
pub mod offline;
pub mod resolve;
pub mod rollback;
pub mod run;
pub mod scope;
pub mod telemetry;
pub mod validate;
pub mod workspace;
