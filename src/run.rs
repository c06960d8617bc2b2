//! `kiln run`: start the HTTP server, win the election, run the controllers, drain on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::api::{Draft, KilnJob, ProviderConfig};
use crate::cli::RunArgs;
use crate::controller::{self, Context, Settings};
use crate::http::{self, AppState, Health, Tls};
use crate::key_usage::KeyUsage;
use crate::leader::{self, Election};
use crate::metrics::Metrics;
use crate::nudge::Nudge;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::cli::GIT_COMMIT,
        "starting kiln"
    );
    // TLS for the listener uses the same ring provider that kube's client already links.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;
    ensure_crds(&client, &args.namespaces).await?;

    let settings = Arc::new(Settings {
        namespaces: args.namespaces.clone(),
        resync: parse_duration("--resync", &args.resync)?,
        expiry_warning: match &args.expiry_warning {
            Some(text) => crate::expiry::WarningPolicy::fixed(
                crate::duration::parse(text)
                    .with_context(|| format!("--expiry-warning {text:?}"))?,
            ),
            None => crate::expiry::WarningPolicy::default(),
        },
        default_draft_retention: args.default_draft_retention.clone(),
        default_job_ttl: args.default_job_ttl.clone(),
        rollout_debounce: parse_duration("--rollout-debounce", &args.rollout_debounce)?,
        workspace_dir: args.workspace_dir.clone(),
        concurrency: args.concurrency,
        secret_sources_require_opt_in: args.secret_sources_require_opt_in,
    });
    let limits = crate::workspace::Limits {
        max_file_bytes: args.max_file_bytes,
        max_job_bytes: args.max_job_bytes,
        max_files_per_job: args.max_files_per_job,
        max_workspace_bytes: args.max_workspace_bytes,
    };
    let mut workspace = crate::workspace::Workspace::open(&args.workspace_dir, limits)
        .with_context(|| format!("opening the workspace {}", args.workspace_dir.display()))?;
    let remote = match &args.object_store {
        Some(url) => {
            let remote = Arc::new(crate::objstore::Remote::from_env(url)?);
            info!(store = %remote.url(), "job files are stored in the object store");
            workspace = workspace.with_remote(remote.clone());
            Some(remote)
        }
        None => None,
    };
    let workspace = Arc::new(workspace);
    let job_nudge = Nudge::default();
    let metrics = Arc::new(Metrics::new());
    metrics.watch_workspace(workspace.clone());
    let health = Health::default();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(leader::default_identity);
    let auth = Arc::new(http::auth::Auth::new(client.clone()));
    let audit = http::audit::FileAudit::new(client.clone(), Some(identity.clone()));
    let key_usage = Arc::new(KeyUsage::new(Nudge::default()));
    let usage_flush = parse_duration("--usage-flush", &args.usage_flush)?;
    {
        let (key_usage, shutdown) = (key_usage.clone(), shutdown.clone());
        tokio::spawn(async move { key_usage.run(usage_flush, shutdown).await });
    }
    let state = AppState {
        health: health.clone(),
        metrics: metrics.clone(),
        files: Arc::new(http::FileApi::new(
            client.clone(),
            auth.clone(),
            workspace.clone(),
            job_nudge.clone(),
            audit.clone(),
            &args.namespaces,
        )),
        usage: Arc::new(http::usage::UsageApi::new(
            client.clone(),
            auth,
            key_usage.clone(),
            metrics.clone(),
            &args.namespaces,
        )),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let server = tokio::spawn(http::serve(
        args.http_addr,
        tls,
        http::router(state),
        shutdown.clone(),
    ));

    let mut election = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
            })
            .unwrap_or_else(|| "default".into());
        let mut election = Election::start(
            client.clone(),
            &args.lease_name,
            namespace.trim(),
            &identity,
        )
        .await
        .context("starting leader election")?;
        info!(%identity, lease = %args.lease_name, "waiting to become leader");
        tokio::select! {
            acquired = election.acquired() => if !acquired { anyhow::bail!("leader election stopped") },
            _ = shutdown.cancelled() => { election.release().await; return drain(server, &audit).await; }
        }
        info!(%identity, "became leader");
        Some(election)
    } else {
        None
    };
    health.set_leader(true);

    // Only the leader sweeps: it alone deletes, like it alone reconciles.
    if let Some(remote) = remote {
        tokio::spawn(crate::objstore::sweep::run(
            remote,
            client.clone(),
            args.namespaces.clone(),
            settings.resync,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let ctx = Arc::new(Context::new(
        client,
        metrics,
        settings,
        Some(identity),
        workspace,
        job_nudge,
        key_usage,
    ));
    let (probes, tasks) = controller::start(ctx.clone(), shutdown.clone());
    let synced = health.clone();
    tokio::spawn(async move {
        join_all(probes).await;
        synced.set_caches_synced(true);
        info!("caches synced; ready");
    });

    let lost_leadership = async {
        match election.as_mut() {
            Some(e) => e.lost().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = lost_leadership => {
            error!("lost leadership; stopping so that the new leader reconciles alone");
            Err(anyhow::anyhow!("lost leadership"))
        }
    };
    health.set_leader(false);
    shutdown.cancel();
    join_all(tasks).await;
    ctx.flush_events(Duration::from_secs(5)).await;
    if let Some(election) = election {
        election.release().await;
    }
    drain(server, &audit).await?;
    outcome
}

/// Waits for the HTTP server to finish its requests, then publishes the file audit Events
/// they left open.
async fn drain(
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    audit: &http::audit::FileAudit,
) -> anyhow::Result<()> {
    let served = server.await.context("HTTP server task");
    audit.flush().await;
    served??;
    info!("shut down cleanly");
    Ok(())
}

/// Fails fast, with the fix in the message, when the CRDs are not installed.
async fn ensure_crds(client: &Client, namespaces: &[String]) -> anyhow::Result<()> {
    let probe = ListParams::default().limit(1);
    let ns = namespaces.first();
    macro_rules! check {
        ($kind:ty, $plural:literal) => {{
            let api: Api<$kind> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            api.list_metadata(&probe).await.with_context(|| {
                format!("listing {}.kiln.dev failed: are Kiln's CRDs installed? (kubectl apply -f crds/)", $plural)
            })?;
        }};
    }
    check!(Draft, "drafts");
    check!(KilnJob, "jobs");
    check!(ProviderConfig, "providerconfigs");
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; draining"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; draining"),
        }
        shutdown.cancel();
    });
}

fn parse_duration(flag: &str, value: &str) -> anyhow::Result<std::time::Duration> {
    let d: kube::core::Duration = value
        .parse()
        .with_context(|| format!("{flag}: {value:?} is not a duration"))?;
    if d.is_negative() {
        anyhow::bail!("{flag}: {value:?} must not be negative");
    }
    Ok(d.into())
}
