//! Kiln: a Kubernetes operator that gives configuration a lifecycle inside the cluster.
//!
//! Data flow: watch (`controller`) → reconcile → compute desired objects (`desired`, pure)
//! → apply (`apply`, server-side apply, only on change) → status.

pub mod duration;
pub mod expiry;
pub mod validate;
pub mod workspace;
