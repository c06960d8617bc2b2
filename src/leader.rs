//! Leader election on a `coordination.k8s.io` Lease, so that two replicas never reconcile
//! at once. kube-lease-manager applies the Lease with server-side apply, which detects
//! conflicting holders instead of overwriting them.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lease timing: a new leader takes over at most `DURATION` seconds after the old one
/// vanished without releasing; a clean shutdown releases at once.
const DURATION_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

/// A running election. Dropping it (or calling [`Election::release`]) gives up the Lease.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    pub async fn start(
        client: Client,
        name: &str,
        namespace: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(DURATION_SECONDS)
            .with_grace(GRACE_SECONDS)
            .with_field_manager("kiln/leader-election")
            .build()
            .await?;
        let (is_leader, task) = manager.watch().await;
        Ok(Self { is_leader, task })
    }

    /// Waits until this replica leads. Returns false if the election stopped first.
    pub async fn acquired(&mut self) -> bool {
        self.is_leader.wait_for(|leader| *leader).await.is_ok()
    }

    /// Waits until leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.is_leader.wait_for(|leader| !*leader).await;
    }

    /// Gives the Lease up so that another replica takes over without waiting for it to expire.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
        }
    }
}

/// This replica's identity: the pod name when running in a pod, else host name and pid.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kiln".into());
    format!("{host}-{}", std::process::id())
}
