//! Kiln's one HTTP listener: health, readiness, metrics (and the Job file API).

pub mod health;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;

pub use health::Health;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub health: Health,
    pub metrics: Arc<Metrics>,
}

/// The router with every route Kiln serves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

/// TLS material for the listener.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serves `router` on `addr` (TLS when `tls` is given) until `shutdown` fires, then lets
/// in-flight requests finish.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<Tls>,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = axum_server::Handle::new();
    let drain = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        drain.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    let service = router.into_make_service();
    match tls {
        Some(tls) => {
            let config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key).await?;
            info!(%addr, "serving HTTPS");
            axum_server::bind_rustls(addr, config)
                .handle(handle)
                .serve(service)
                .await?;
        }
        None => {
            info!(%addr, "serving plain HTTP (no TLS certificate given)");
            axum_server::bind(addr)
                .handle(handle)
                .serve(service)
                .await?;
        }
    }
    Ok(())
}
