//! The floor under the file API on this machine: a bare HTTP server, in the benchmark's own
//! process, that answers a `PUT` by writing the body durably exactly as Kiln does (temporary
//! file, fsync, rename, fsync of the directory) and nothing else — no admission, no limits, no
//! accounting, no status. What Kiln costs above it is what Kiln itself adds; what it costs
//! above the bare durable write is partly HTTP on loopback, which no server avoids.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;

/// Starts the floor server writing under `root`; returns its address. It runs until the
/// benchmark's runtime stops.
pub async fn start(root: PathBuf) -> anyhow::Result<SocketAddr> {
    async fn put(
        State(root): State<PathBuf>,
        UrlPath(path): UrlPath<String>,
        body: Bytes,
    ) -> StatusCode {
        let target = root.join(path);
        let written =
            tokio::task::spawn_blocking(move || super::upload::durable_write(&target, &body)).await;
        match written {
            Ok(Ok(())) => StatusCode::CREATED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::put(put))
        .with_state(root);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// An HTTP client that keeps its connection, as an SDK or `curl` with several URLs does.
pub fn keep_alive_client() -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a crypto provider of its own (Kiln installs ring); plain HTTP
    // needs none, but building a client wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .context("building the keep-alive client")
}

/// One `PUT` over the client's kept connection; it must create the file (201).
pub async fn put(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut request = client.put(url).body(data.to_vec());
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.with_context(|| format!("PUT {url}"))?;
    let status = response.status().as_u16();
    ensure!(
        status == 201,
        "PUT {url}: {status} {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}
