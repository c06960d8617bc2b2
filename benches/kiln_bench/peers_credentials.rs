//! Versus the peers, derived credentials: N source Secrets, each turned into a derived Secret
//! by Kiln (a ProviderConfig per Secret) and by External Secrets Operator (an ExternalSecret
//! per Secret through a `ClusterSecretStore` of its Kubernetes provider pointed at the same
//! control plane), one operator after the other on the same control plane, in the same run.
//!
//! For each: the time until all N derived Secrets exist, the latency from a source Secret's
//! change to its derived Secret's change, the operator's peak RSS, and the API requests per
//! object per hour at rest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use kiln::api::ProviderConfig;

use crate::Args;
use crate::cluster::{
    Bench, Memory, RequestKey, Requests, kiln_metric, memory_of, start_kiln, stop_kiln,
};
use crate::eso::{self, Eso};
use crate::peers_math::{
    AtRest, Quantile, censored_quantile, cpu_ticks, per_reconcile, ratio, ratio_label,
};
use crate::report::{Report, mib, round};
use crate::support::Operator;

/// Finished ProviderConfig reconciles.
const KILN_RECONCILES: (&str, &str) = (
    "kiln_reconcile_duration_seconds_count",
    "controller=\"providerconfig\"",
);
/// ESO counts every ExternalSecret reconcile here.
const ESO_RECONCILES: &str = "externalsecret_sync_calls_total";
/// The resync Kiln runs with while the cost of one periodic reconcile is measured.
const KILN_SHORT_RESYNC: Duration = Duration::from_secs(10);
/// Kiln's default resync (`kiln run --resync`).
const KILN_RESYNC: Duration = Duration::from_secs(600);

fn source_name(i: usize) -> String {
    format!("src-{i:05}")
}

/// The value of key `primary` of source Secret `i` before any rotation.
fn first_value(i: usize) -> String {
    format!("v0-{i:05}")
}

/// One operator configuration under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Kiln,
    /// ESO with `refreshInterval` of this many seconds.
    Eso(u64),
}

impl Who {
    fn label(&self) -> String {
        match self {
            Who::Kiln => "Kiln".into(),
            Who::Eso(s) => format!("ESO, refreshInterval {}", interval(*s)),
        }
    }

    fn key(&self) -> String {
        match self {
            Who::Kiln => "kiln".into(),
            Who::Eso(s) => format!("eso{}", interval(*s)),
        }
    }

    /// The derived Secret of source `i`.
    fn derived(&self, i: usize) -> String {
        match self {
            Who::Kiln => format!("pc-{i:05}-credentials"),
            Who::Eso(_) => format!("es-{i:05}-derived"),
        }
    }
}

/// `1s`, `1h`: the Go duration ESO is given.
fn interval(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The benchmark's own watch on the Secrets of a namespace: for each sighting, when it came
/// and the derived `API_KEY` it carries.
struct SecretWatch {
    rx: mpsc::UnboundedReceiver<(Instant, String, Option<String>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SecretWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SecretWatch {
    async fn start(api: Api<Secret>) -> anyhow::Result<SecretWatch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let at = Instant::now();
                let secret = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                    Ok(watcher::Event::Delete(_) | watcher::Event::Init) => continue,
                    Err(e) => {
                        eprintln!("kiln_bench: secret watch error (retrying): {e}");
                        continue;
                    }
                };
                let value = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get("API_KEY"))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                let name = secret.metadata.name.unwrap_or_default();
                if tx.send((at, name, value)).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .context("the secret watch did not list within 60s")??;
        Ok(SecretWatch { rx, task })
    }

    async fn next(&mut self, deadline: Instant) -> Option<(Instant, String, Option<String>)> {
        tokio::time::timeout_at(deadline.into(), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits until every derived Secret named in `expected` carries its expected `API_KEY`,
    /// or `deadline`. Returns when each was first seen so; `None` for those never seen.
    async fn wait_for(
        &mut self,
        expected: &HashMap<String, String>,
        deadline: Instant,
    ) -> HashMap<String, Instant> {
        let mut seen = HashMap::new();
        while seen.len() < expected.len() {
            let Some((at, name, value)) = self.next(deadline).await else {
                break;
            };
            if let (Some(want), Some(value)) = (expected.get(&name), value)
                && *want == value
            {
                seen.entry(name).or_insert(at);
            }
        }
        seen
    }
}

/// Creates the N source Secrets of a namespace.
async fn create_sources(b: &Bench, ns: &str, n: usize, in_flight: usize) -> anyhow::Result<()> {
    let api = Api::<Secret>::namespaced(b.client.clone(), ns);
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let s: Secret = serde_json::from_value(json!({
                    "metadata": {"name": source_name(i)},
                    "stringData": {"primary": first_value(i)}
                }))?;
                api.create(&PostParams::default(), &s)
                    .await
                    .with_context(|| format!("creating Secret {}", source_name(i)))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Creates the N derivations (ProviderConfigs or ExternalSecrets) with at most `in_flight`
/// requests at once, and waits until the watch has seen all N derived Secrets with their
/// values. Returns the time from the first create to the last derived Secret.
async fn derive_all(
    b: &Bench,
    who: Who,
    ns: &str,
    store: &str,
    n: usize,
    in_flight: usize,
    watch: &mut SecretWatch,
) -> anyhow::Result<Duration> {
    let expected: HashMap<String, String> =
        (0..n).map(|i| (who.derived(i), first_value(i))).collect();
    let start = Instant::now();
    let create = {
        let (client, ns, store) = (b.client.clone(), ns.to_string(), store.to_string());
        tokio::spawn(async move {
            stream::iter(0..n)
                .map(|i| {
                    let (client, ns, store) = (client.clone(), ns.clone(), store.clone());
                    async move { create_derivation(client, who, &ns, &store, i).await }
                })
                .buffer_unordered(in_flight)
                .try_for_each(|()| async { Ok(()) })
                .await
        })
    };
    let deadline = start + Duration::from_secs(180) + Duration::from_millis(300) * n as u32;
    let seen = watch.wait_for(&expected, deadline).await;
    create.await??;
    if seen.len() < n {
        bail!(
            "{}: only {} of {n} derived Secrets appeared within {:.0}s",
            who.label(),
            seen.len(),
            (deadline - start).as_secs_f64()
        );
    }
    let last = seen.values().max().copied().unwrap_or(start);
    Ok(last - start)
}

async fn create_derivation(
    client: kube::Client,
    who: Who,
    ns: &str,
    store: &str,
    i: usize,
) -> anyhow::Result<()> {
    match who {
        Who::Kiln => {
            let pc: ProviderConfig = serde_json::from_value(json!({
                "apiVersion": "kiln.dev/v1alpha1", "kind": "ProviderConfig",
                "metadata": {"name": format!("pc-{i:05}")},
                "spec": {"providerType": "openai", "settings": {"model": "bench"},
                         "apiKeys": [{"name": "primary",
                                      "secretRef": {"name": source_name(i), "key": "primary"}}]}
            }))?;
            Api::<ProviderConfig>::namespaced(client, ns)
                .create(&PostParams::default(), &pc)
                .await
                .with_context(|| format!("creating ProviderConfig pc-{i:05}"))?;
        }
        Who::Eso(refresh) => {
            let es = eso::external_secret(
                &format!("es-{i:05}"),
                store,
                &source_name(i),
                "primary",
                &who.derived(i),
                &interval(refresh),
            )?;
            eso::external_secrets_api(&client, ns)
                .create(&PostParams::default(), &es)
                .await
                .with_context(|| format!("creating ExternalSecret es-{i:05}"))?;
        }
    }
    Ok(())
}

/// Rotations: `plan.rotations` distinct source Secrets get a new value, one every
/// `plan.spacing`; each is timed from just before its write to the watch seeing the derived
/// Secret carry the new value. Rotations not seen within `plan.grace` after the last write
/// are `None`.
async fn rotate(
    b: &Bench,
    who: Who,
    ns: &str,
    plan: &Plan,
    watch: &mut SecretWatch,
) -> anyhow::Result<Vec<Option<f64>>> {
    let (n, spacing, grace) = (plan.n, plan.spacing, plan.grace);
    let count = plan.rotations.min(n);
    // Spread over the objects: every (n / count)-th source.
    let picks: Vec<usize> = (0..count).map(|k| k * n / count).collect();
    let expected: HashMap<String, String> = picks
        .iter()
        .enumerate()
        .map(|(k, &i)| (who.derived(i), format!("rot-{k:03}-{i:05}")))
        .collect();
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let writer = {
        let api = Api::<Secret>::namespaced(b.client.clone(), ns);
        let picks = picks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(spacing);
            for (k, i) in picks.into_iter().enumerate() {
                tick.tick().await;
                let value = format!("rot-{k:03}-{i:05}");
                let at = Instant::now();
                api.patch(
                    &source_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"stringData": {"primary": value}})),
                )
                .await
                .with_context(|| format!("rotating Secret {}", source_name(i)))?;
                let _ = sent_tx.send((who.derived(i), at));
            }
            anyhow::Ok(())
        })
    };
    let last_write = Instant::now() + spacing * count as u32;
    let deadline = last_write + grace;
    let seen = watch.wait_for(&expected, deadline).await;
    writer.await??;
    let mut sent = HashMap::new();
    while let Ok((name, at)) = sent_rx.try_recv() {
        sent.insert(name, at);
    }
    Ok(picks
        .iter()
        .map(|&i| {
            let name = who.derived(i);
            let (at, written) = (seen.get(&name)?, sent.get(&name)?);
            Some(at.saturating_duration_since(*written).as_secs_f64())
        })
        .collect())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// What a quiet window saw.
struct Window {
    secs: f64,
    requests: Requests,
    reconciles: f64,
    cpu_secs: f64,
}

/// Counts requests, the operator's reconciles and its CPU time over `len`.
async fn window<F, Fut>(b: &Bench, pid: u32, len: Duration, reconciles: F) -> anyhow::Result<Window>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let (r0, c0, cpu0, t0) = (
        b.requests()?,
        reconciles().await?,
        cpu_seconds(pid),
        Instant::now(),
    );
    tokio::time::sleep(len).await;
    let (r1, c1, cpu1) = (b.requests()?, reconciles().await?, cpu_seconds(pid));
    Ok(Window {
        secs: t0.elapsed().as_secs_f64(),
        requests: r1.since(&r0),
        reconciles: c1 - c0,
        cpu_secs: cpu1 - cpu0,
    })
}

/// Everything measured for one operator configuration.
struct Measured {
    who: Who,
    all_derived: Duration,
    rotations: Vec<Option<f64>>,
    rotation_grace: f64,
    idle: Memory,
    end: Memory,
    quiet: Window,
    /// Requests per periodic reconcile, and the window it was measured in.
    per_reconcile: f64,
    per_reconcile_from: String,
    reconciles_per_object_hour: f64,
    at_rest: f64,
    errors: f64,
}

impl Measured {
    fn p(&self, q: f64) -> Quantile {
        censored_quantile(&self.rotations, q, self.rotation_grace)
    }
    fn propagated(&self) -> usize {
        self.rotations.iter().flatten().count()
    }
}

/// The control plane's own request rate, with no operator running.
async fn idle_rate(b: &Bench, len: Duration) -> anyhow::Result<(f64, Requests)> {
    let r0 = b.requests()?;
    let t0 = Instant::now();
    tokio::time::sleep(len).await;
    let req = b.requests()?.since(&r0);
    Ok((req.total(|_| true) / t0.elapsed().as_secs_f64(), req))
}

/// The sizes and timings of one run.
struct Plan {
    n: usize,
    in_flight: usize,
    rotations: usize,
    spacing: Duration,
    grace: Duration,
    window: Duration,
    idle_per_sec: f64,
}

async fn measure_kiln(b: &Bench, plan: &Plan) -> anyhow::Result<Measured> {
    let who = Who::Kiln;
    let ns = b.namespace("peers-kiln").await;
    create_sources(b, &ns, plan.n, plan.in_flight).await?;
    let mut kiln = start_kiln(b, &ns, &[]).await;
    let pid = kiln.pid().context("kiln is not running")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = memory_of(pid)?;
    let mut watch = SecretWatch::start(Api::namespaced(b.client.clone(), &ns)).await?;
    let all_derived = derive_all(b, who, &ns, "", plan.n, plan.in_flight, &mut watch).await?;
    eprintln!(
        "kiln_bench: Kiln derived {} Secrets in {:.1}s",
        plan.n,
        all_derived.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rotations = rotate(b, who, &ns, plan, &mut watch).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (metric, labels) = KILN_RECONCILES;
    let quiet = window(b, pid, plan.window, || kiln_metric(&kiln, metric, labels)).await?;
    let end = memory_of(pid)?;
    let errors = kiln_metric(&kiln, "kiln_reconcile_errors_total", "").await?;
    stop_kiln(&mut kiln)?;

    // The cost of one periodic reconcile: the same world, resynced every 10 s. A window at
    // the default resync (10 min) seldom holds one.
    let short = format!("--resync={}s", KILN_SHORT_RESYNC.as_secs());
    let mut kiln = start_kiln(b, &ns, &[short.as_str()]).await;
    let pid = kiln.pid().context("kiln is not running")?;
    wait_for(|| kiln_metric(&kiln, metric, labels), plan.n as f64, plan.n).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_len = plan.window.max(KILN_SHORT_RESYNC * 3);
    let busy = window(b, pid, busy_len, || kiln_metric(&kiln, metric, labels)).await?;
    stop_kiln_quietly(&mut kiln);
    let per = per_reconcile(
        busy.requests.total(|_| true),
        plan.idle_per_sec,
        busy.secs,
        busy.reconciles,
    );
    let reconciles_per_object_hour = 3600.0 / KILN_RESYNC.as_secs_f64();
    let at_rest = AtRest {
        objects: plan.n,
        window_secs: quiet.secs,
        requests: quiet.requests.total(|_| true),
        idle_per_sec: plan.idle_per_sec,
        reconciles: quiet.reconciles,
        per_reconcile: per,
        reconciles_per_object_hour,
    }
    .per_object_hour();
    Ok(Measured {
        who,
        all_derived,
        rotations,
        rotation_grace: plan.grace.as_secs_f64(),
        idle,
        end,
        quiet,
        per_reconcile: per,
        per_reconcile_from: format!(
            "{:.0} resync reconciles in {:.0} s with `--resync={}s`",
            busy.reconciles,
            busy.secs,
            KILN_SHORT_RESYNC.as_secs()
        ),
        reconciles_per_object_hour,
        at_rest,
        errors,
    })
}

fn stop_kiln_quietly(kiln: &mut Operator) {
    if let Err(e) = stop_kiln(kiln) {
        eprintln!("kiln_bench: {e}");
    }
}

/// Polls `metric` until it reaches `at_least` (a pass over `n` objects).
async fn wait_for<F, Fut>(metric: F, at_least: f64, n: usize) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * n as u32;
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric().await?;
        if v >= at_least {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{v} reconciles after {timeout:?}, expected ≥ {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ESO with `refreshInterval` `refresh` seconds. `per_refresh`: the cost of one refresh when
/// already measured (with a short interval); else it is measured here.
async fn measure_eso(
    b: &Bench,
    build: &eso::Build,
    plan: &Plan,
    refresh: u64,
    concurrent: u16,
    per_refresh: Option<(f64, String)>,
) -> anyhow::Result<Measured> {
    let who = Who::Eso(refresh);
    let ns = b
        .namespace(&format!("peers-eso{}", interval(refresh)))
        .await;
    create_sources(b, &ns, plan.n, plan.in_flight).await?;
    let store = format!("bench-{ns}");
    eso::create_store(b, &store, &ns).await?;
    let mut eso = Eso::start(build, b, &ns, concurrent).await?;
    eso::wait_store_ready(b, &store, &mut eso).await?;
    let pid = eso.pid().context("ESO is not running")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = memory_of(pid)?;
    let mut watch = SecretWatch::start(Api::namespaced(b.client.clone(), &ns)).await?;
    let all_derived = derive_all(b, who, &ns, &store, plan.n, plan.in_flight, &mut watch).await;
    let all_derived = match all_derived {
        Ok(d) => d,
        Err(e) => bail!("{e:#}; ESO's log ends with:\n{}", eso.log_tail(20)),
    };
    eprintln!(
        "kiln_bench: {} derived {} Secrets in {:.1}s",
        who.label(),
        plan.n,
        all_derived.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rotations = rotate(b, who, &ns, plan, &mut watch).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet = window(b, pid, plan.window, || eso.metric(ESO_RECONCILES, "")).await?;
    let end = memory_of(pid)?;
    let errors = eso.metric("externalsecret_sync_calls_error", "").await?;
    eso.check_alive()?;
    eso.stop()?;
    let (per, from, reconciles_per_object_hour) = match per_refresh {
        // Too long an interval to catch in a window: its cost measured elsewhere, at its
        // nominal rate.
        Some((per, from)) => (per, from, 3600.0 / refresh as f64),
        // This window is full of refreshes: their cost and their actual rate (which may fall
        // short of the nominal one when ESO cannot keep up).
        None => (
            per_reconcile(
                quiet.requests.total(|_| true),
                plan.idle_per_sec,
                quiet.secs,
                quiet.reconciles,
            ),
            format!(
                "{:.0} ExternalSecret reconciles in {:.0} s with refreshInterval {}",
                quiet.reconciles,
                quiet.secs,
                interval(refresh)
            ),
            quiet.reconciles / plan.n as f64 * 3600.0 / quiet.secs,
        ),
    };
    let at_rest = AtRest {
        objects: plan.n,
        window_secs: quiet.secs,
        requests: quiet.requests.total(|_| true),
        idle_per_sec: plan.idle_per_sec,
        reconciles: quiet.reconciles,
        per_reconcile: per,
        reconciles_per_object_hour,
    }
    .per_object_hour();
    Ok(Measured {
        who,
        all_derived,
        rotations,
        rotation_grace: plan.grace.as_secs_f64(),
        idle,
        end,
        quiet,
        per_reconcile: per,
        per_reconcile_from: from,
        reconciles_per_object_hour,
        at_rest,
        errors,
    })
}

/// The requests a table of the quiet window shows: those to Secrets, ConfigMaps, Events,
/// Leases and the operators' own kinds.
fn relevant(k: &RequestKey) -> bool {
    k.group == "kiln.dev"
        || k.group == "external-secrets.io"
        || k.group == "coordination.k8s.io"
        || (k.group.is_empty()
            && ["secrets", "configmaps", "events"].contains(&k.resource.as_str()))
        || k.group == "events.k8s.io"
}

pub async fn run(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let n = args.peer_objects();
    let build = eso::Build::find()?;
    build.install_crds(b)?;
    let window_len = Duration::from_secs(if args.full { 60 } else { 20 });
    let (idle_per_sec, idle_requests) = idle_rate(b, window_len).await?;
    let plan = Plan {
        n,
        in_flight: args.in_flight(n),
        rotations: args.rotations(),
        spacing: Duration::from_millis(500),
        grace: Duration::from_secs(if args.full { 120 } else { 60 }),
        window: window_len,
        idle_per_sec,
    };
    let concurrent = args
        .eso_concurrent
        .unwrap_or(args.kiln_concurrency.unwrap_or(16));

    let kiln = measure_kiln(b, &plan).await?;
    // The shortest interval first: the recommended one's refreshes are too rare to catch in
    // a window, so their cost is this one's.
    let short = measure_eso(b, &build, &plan, 1, concurrent, None).await?;
    let recommended = measure_eso(
        b,
        &build,
        &plan,
        3600,
        concurrent,
        Some((short.per_reconcile, short.per_reconcile_from.clone())),
    )
    .await?;
    let peers = [&short, &recommended];
    Ok(report(
        b,
        &plan,
        &build,
        concurrent,
        &kiln,
        &peers,
        idle_requests,
    ))
}

#[allow(clippy::too_many_arguments)]
fn report(
    b: &Bench,
    plan: &Plan,
    build: &eso::Build,
    concurrent: u16,
    kiln: &Measured,
    peers: &[&Measured],
    idle_requests: Requests,
) -> Report {
    let n = plan.n;
    let mut r = Report::new(
        format!("peers-credentials-n{n}"),
        &format!("Versus the peers: {n} derived Secrets, Kiln and External Secrets Operator"),
        true,
    );
    r.line(format!(
        "{n} source Secrets (one key, `primary`) per operator, each turned into a derived \
         Secret: by **Kiln** through a ProviderConfig per Secret (derived `<pc>-credentials` \
         with `primary` and `API_KEY`, plus a `<pc>-provider` ConfigMap, status and Events), \
         and by **{}** through an ExternalSecret per Secret (`API_KEY` from property \
         `primary`) and one `ClusterSecretStore` of ESO's Kubernetes provider pointed at this \
         same API server (its URL and CA, and the token of a ServiceAccount that may read the \
         namespace's Secrets). ESO runs as its controller alone (no webhook, no cert \
         controller), watching one namespace like Kiln, with `--concurrent={concurrent}` \
         (Kiln: {} reconciles at once; ESO's own default is 1) and its other flags at their \
         defaults (client QPS 50, burst 100). ESO is measured twice: with \
         `refreshInterval: 1s`, the shortest that means what it says (ESO accepts any \
         positive duration, but keeps `refreshTime` to the second, so anything shorter \
         refreshes on every reconcile), and with `1h`, its default and the value its \
         documentation's examples use. The operators run one after the other on the same \
         control plane, each with a namespace of its own; {} objects created in flight.\n",
        eso::describe(build),
        b.kiln_concurrency_label(),
        plan.in_flight,
    ));
    r.line(format!(
        "- **all derived**: from the first create to the benchmark's watch seeing the last of \
         the {n} derived Secrets with its value.\n\
         - **rotation**: {} source Secrets, spread over the {n}, get a new value one every \
         {:.1} s; each is timed from just before its write to the watch seeing the derived \
         Secret carry it; rotations not seen {:.0} s after the last write count as longer than \
         that.\n\
         - **peak RSS**: VmHWM of the operator process at the end of its run (creation, \
         rotations, quiet window); idle: VmRSS once ready, before any derivation.\n\
         - **API requests per object per hour at rest**: from `apiserver_request_total`, \
         less the control plane's own rate measured with no operator running ({:.2} req/s), \
         over a quiet window of {:.0} s after the rotations, plus the periodic reconciles \
         (Kiln's resync every 10 min, ESO's refresh) at their period, each at the cost \
         measured where they are frequent (Kiln with `--resync={}s`; ESO with 1s) since a \
         window that short seldom holds one.\n",
        plan.rotations.min(n),
        plan.spacing.as_secs_f64(),
        plan.grace.as_secs_f64(),
        plan.idle_per_sec,
        plan.window.as_secs_f64(),
        KILN_SHORT_RESYNC.as_secs(),
    ));

    let mut header = String::from("| | Kiln |");
    let mut rule = String::from("|---|---:|");
    for p in peers {
        header.push_str(&format!(" {} |", p.who.label()));
        rule.push_str("---:|");
    }
    for p in peers {
        header.push_str(&format!(" Kiln ÷ {} |", p.who.label()));
        rule.push_str("---:|");
    }
    r.line(header);
    r.line(rule);
    type Cell = (String, Option<f64>);
    let row = |r: &mut Report, label: &str, f: &dyn Fn(&Measured) -> Cell| {
        let (k_text, k_val) = f(kiln);
        let mut line = format!("| {label} | {k_text} |");
        let mut ratios = String::new();
        for p in peers {
            let (text, val) = f(p);
            line.push_str(&format!(" {text} |"));
            let q = match (k_val, val) {
                (Some(k), Some(v)) => ratio(k, v),
                _ => None,
            };
            ratios.push_str(&format!(" {} |", ratio_label(q)));
        }
        r.line(format!("{line}{ratios}"));
    };
    let secs_cell = |d: f64| (format!("{d:.2}"), Some(d));
    let q_cell = |q: Quantile| (q.label(), q.seconds());
    row(&mut r, &format!("all {n} derived (s)"), &|m| {
        secs_cell(m.all_derived.as_secs_f64())
    });
    row(&mut r, "rotation → derived, p50 (s)", &|m| {
        q_cell(m.p(0.5))
    });
    row(&mut r, "rotation → derived, p99 (s)", &|m| {
        q_cell(m.p(0.99))
    });
    row(&mut r, "rotations seen", &|m| {
        (format!("{}/{}", m.propagated(), m.rotations.len()), None)
    });
    row(&mut r, "peak RSS, VmHWM (MiB)", &|m| {
        (
            format!("{:.1}", mib(m.end.hwm_kib)),
            Some(m.end.hwm_kib as f64),
        )
    });
    row(&mut r, "RSS when idle (MiB)", &|m| {
        (
            format!("{:.1}", mib(m.idle.rss_kib)),
            Some(m.idle.rss_kib as f64),
        )
    });
    row(&mut r, "API requests / object / hour at rest", &|m| {
        (format!("{:.2}", m.at_rest), Some(m.at_rest))
    });
    row(&mut r, "CPU in the quiet window (s)", &|m| {
        (format!("{:.2}", m.quiet.cpu_secs), Some(m.quiet.cpu_secs))
    });
    row(&mut r, "periodic reconciles / object / hour", &|m| {
        (
            format!("{:.1}", m.reconciles_per_object_hour),
            Some(m.reconciles_per_object_hour),
        )
    });
    row(&mut r, "requests / periodic reconcile", &|m| {
        (format!("{:.2}", m.per_reconcile), Some(m.per_reconcile))
    });
    r.line("");
    for m in std::iter::once(kiln).chain(peers.iter().copied()) {
        r.line(format!(
            "**{}** — periodic reconcile cost from {}; quiet window: {:.0} reconciles, \
             requests:\n",
            m.who.label(),
            m.per_reconcile_from,
            m.quiet.reconciles
        ));
        r.line(m.quiet.requests.markdown(relevant, n));
    }
    r.line(format!(
        "The control plane alone, no operator ({:.0} s):\n",
        plan.window.as_secs_f64()
    ));
    r.line(idle_requests.markdown(|_| true, n));
    if let Some(eso1h) = peers.iter().find(|p| p.who == Who::Eso(3600)) {
        r.line(format!(
            "With `refreshInterval: 1h` ESO reads a source Secret again only when the hour is \
             up: a rotation reaches the derived Secret somewhere within that hour (uniformly, \
             for rotations at random times: p50 ≈ 30 min, p99 ≈ 59.4 min). The window above \
             saw {}/{} of them.",
            eso1h.propagated(),
            eso1h.rotations.len()
        ));
    }

    let m_json = |m: &Measured| {
        json!({
            "allDerivedSeconds": round(m.all_derived.as_secs_f64(), 3),
            "rotation": {"p50": m.p(0.5).json(), "p99": m.p(0.99).json(),
                         "seen": m.propagated(), "count": m.rotations.len(),
                         "graceSeconds": m.rotation_grace,
                         "all": m.rotations.iter().map(|l| l.map(|s| round(s, 3))).collect::<Vec<_>>()},
            "memory": {"idleVmRssKiB": m.idle.rss_kib, "peakVmHwmKiB": m.end.hwm_kib,
                       "endVmRssKiB": m.end.rss_kib},
            "atRest": {"requestsPerObjectHour": round(m.at_rest, 3),
                       "quietWindowSeconds": round(m.quiet.secs, 1),
                       "quietWindowRequests": m.quiet.requests.total(|_| true),
                       "quietWindowReconciles": m.quiet.reconciles,
                       "quietWindowCpuSeconds": round(m.quiet.cpu_secs, 2),
                       "requestsPerPeriodicReconcile": round(m.per_reconcile, 3),
                       "periodicReconcileCostFrom": m.per_reconcile_from,
                       "periodicReconcilesPerObjectHour": round(m.reconciles_per_object_hour, 2),
                       "requests": m.quiet.requests.table(relevant)},
            "reconcileErrors": m.errors,
        })
    };
    r.set("n", n);
    r.set("inFlight", plan.in_flight);
    r.set("esoVersion", build.version.clone());
    r.set("esoConcurrent", concurrent);
    r.set(
        "controlPlaneIdleRequestsPerSecond",
        round(plan.idle_per_sec, 3),
    );
    r.set("kiln", m_json(kiln));
    for p in peers {
        let mut v = m_json(p);
        let ratios = json!({
            "allDerived": ratio(kiln.all_derived.as_secs_f64(), p.all_derived.as_secs_f64()).map(|x| round(x, 4)),
            "rotationP50": kiln.p(0.5).seconds().zip(p.p(0.5).seconds()).and_then(|(k, e)| ratio(k, e)).map(|x| round(x, 4)),
            "rotationP99": kiln.p(0.99).seconds().zip(p.p(0.99).seconds()).and_then(|(k, e)| ratio(k, e)).map(|x| round(x, 4)),
            "peakRss": ratio(kiln.end.hwm_kib as f64, p.end.hwm_kib as f64).map(|x| round(x, 4)),
            "requestsPerObjectHourAtRest": ratio(kiln.at_rest, p.at_rest).map(|x| round(x, 4)),
        });
        v["kilnOverThis"] = ratios;
        r.set(&p.who.key(), v);
    }
    r
}
