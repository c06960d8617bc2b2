//! Kiln's one HTTP listener: health, readiness, metrics and the Job file API.

pub mod audit;
pub mod auth;
mod body;
pub mod cache;
pub mod error;
pub mod files;
#[cfg(test)]
mod fuzz;
mod headers;
pub mod health;
pub mod jobs;
pub mod listing;
pub mod redirect;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;

pub use files::FileApi;
pub use health::Health;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub files: Arc<FileApi>,
    pub usage: Arc<usage::UsageApi>,
}

/// The router with every route Kiln serves. The file routes are documented in
/// `docs/http-api.md`.
pub fn router(state: AppState) -> Router {
    const FILES: &str = "/api/v1/namespaces/{ns}/jobs/{name}/files";
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/stats", get(files::stats))
        .route(
            "/api/v1/namespaces/{ns}/providerconfigs/{name}/usage",
            post(usage::report),
        )
        .route(FILES, get(files::list).post(files::create))
        .route(
            &format!("{FILES}/batch"),
            post(files::batch)
                .get(files::read_batch_file)
                .put(files::put_batch_file)
                .delete(files::delete_batch_file),
        )
        .route(
            &format!("{FILES}/{{*path}}"),
            get(files::read).put(files::put).delete(files::delete),
        )
        .route(
            "/api/v1/namespaces/{ns}/jobs/{name}/download",
            get(files::download),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.metrics.clone(), track))
        .with_state(state)
}

async fn not_found() -> Response {
    error::ApiError::not_found("no such route; see docs/http-api.md").into_response()
}

/// Counts every request by route template (never the raw path: one series per route, not
/// per file) and measures its latency up to the response headers.
async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        // Clients choose methods freely; any other is one label, so they cannot add series.
        _ => "OTHER",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.http.observe(
        route,
        method,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
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
