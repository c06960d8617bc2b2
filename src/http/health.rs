//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

/// What `/readyz` reports: Kiln is ready when its caches are synced and it leads.
#[derive(Clone, Default)]
pub struct Health {
    caches_synced: Arc<AtomicBool>,
    leader: Arc<AtomicBool>,
}

impl Health {
    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::SeqCst);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.caches_synced.load(Ordering::SeqCst) && self.leader.load(Ordering::SeqCst)
    }
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let leader = state.health.leader.load(Ordering::SeqCst);
    let synced = state.health.caches_synced.load(Ordering::SeqCst);
    if leader && synced {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: leader={leader} caches_synced={synced}"),
        )
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
