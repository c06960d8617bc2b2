//! The Draft scenarios: convergence (vs the same writes sent directly), write economy of a
//! restart and of resyncs, expiry precision, and the operator's memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use kiln::api::draft::{ConfigType, Draft, DraftSpec, DraftStatus, Publish};
use kiln::apply::{self, managers};
use kiln::desired::draft::{Publication, Source};
use kiln::desired::labels;

use crate::Args;
use crate::cluster::{
    Bench, Memory, RequestKey, Requests, kiln_log, kiln_memory, kiln_metric, kiln_warnings,
    memory_of, restart_kiln, start_kiln, stop_kiln,
};
use crate::report::{Report, mib, quantile, round};
use crate::support::Operator;

/// The resync interval of the write-economy scenario.
const RESYNC: Duration = Duration::from_secs(5);

/// A namespace of converged drafts and the operator that converged them.
pub struct World {
    pub ns: String,
    pub n: usize,
    pub kiln: Operator,
}

impl World {
    pub fn stop(mut self) {
        if let Err(e) = stop_kiln(&mut self.kiln) {
            eprintln!("kiln_bench: {e}");
        }
    }
}

pub(crate) fn draft_name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// A valid content draft of about 600 bytes, in the shape of `examples/draft.yaml`.
pub(crate) fn bench_draft(name: &str, retention: Option<&str>, publish: bool) -> Draft {
    let config = json!({
        "id": name,
        "type": "content",
        "metadata": {"title": format!("Benchmark config {name}"), "owner": "kiln-bench"},
        "instructions": "Write a short, friendly message for the benchmark.",
        "inputs": [{"name": "firstName", "type": "string", "required": true}],
        "generation": {"patterns": [
            {"type": "template", "template": "Hello {{ firstName }}, this is {{ id }}."},
            {"type": "llm", "model": "default"}
        ]}
    });
    Draft::new(
        name,
        DraftSpec {
            config_type: ConfigType::Content,
            description: Some("kiln benchmark draft".into()),
            config,
            schema_ref: None,
            retention: retention.map(str::to_string),
            expiration: None,
            publish: publish.then(|| Publish {
                config_id: name.to_string(),
                keep_revisions: None,
            }),
        },
    )
}

/// Creates `drafts` with at most `in_flight` requests at once; returns how long it took.
pub(crate) async fn create_drafts(
    api: Api<Draft>,
    drafts: Vec<Draft>,
    in_flight: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    stream::iter(drafts)
        .map(|d| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &d)
                    .await
                    .with_context(|| format!("creating draft {}", d.name_any()))
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(start.elapsed())
}

/// Ready, published, and up to date with its spec.
pub(crate) fn converged(d: &Draft) -> bool {
    let Some(s) = d.status.as_ref() else {
        return false;
    };
    s.observed_generation == d.metadata.generation
        && s.published.is_some()
        && s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub(crate) enum Seen {
    Applied(Box<Draft>),
    Deleted(Box<Draft>),
}

/// What a watch saw, with when it saw it.
pub(crate) struct Sighting {
    pub at: Instant,
    pub wall: Timestamp,
    pub seen: Seen,
}

/// The benchmark's own watch on the drafts of a namespace: how it observes convergence and
/// deletions, as a user's tooling would.
pub(crate) struct DraftWatch {
    rx: mpsc::UnboundedReceiver<Sighting>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DraftWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DraftWatch {
    /// Starts watching and returns once the initial list is in.
    pub async fn start(api: Api<Draft>) -> anyhow::Result<DraftWatch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let (at, wall) = (Instant::now(), Timestamp::now());
                let seen = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => {
                        Seen::Applied(Box::new(d))
                    }
                    Ok(watcher::Event::Delete(d)) => Seen::Deleted(Box::new(d)),
                    Ok(watcher::Event::Init) => continue,
                    Err(e) => {
                        eprintln!("kiln_bench: watch error (retrying): {e}");
                        continue;
                    }
                };
                if tx.send(Sighting { at, wall, seen }).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .context("the draft watch did not list within 60s")??;
        Ok(DraftWatch { rx, task })
    }

    pub async fn next(&mut self, deadline: Instant) -> Option<Sighting> {
        tokio::time::timeout_at(deadline.into(), self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// One convergence of N drafts, timed.
struct Converged {
    /// First draft create → last draft converged (as the benchmark's watch saw it).
    total: Duration,
    /// How long creating the N drafts took.
    create: Duration,
    /// First draft create → first draft converged.
    first: Duration,
    /// Requests the API server counted meanwhile (everyone's, the benchmark's included).
    requests: Requests,
    /// A converged status, the template of the baseline's status writes.
    sample: DraftStatus,
}

/// Creates N publishing drafts in `ns` (watched by a running Kiln) and waits until all of
/// them are converged and their ConfigMaps exist.
async fn converge(b: &Bench, ns: &str, n: usize, in_flight: usize) -> anyhow::Result<Converged> {
    let api = Api::<Draft>::namespaced(b.client.clone(), ns);
    let mut watch = DraftWatch::start(api.clone()).await?;
    let drafts: Vec<Draft> = (0..n)
        .map(|i| bench_draft(&draft_name(i), None, true))
        .collect();
    let before = b.requests()?;
    let start = Instant::now();
    let create = tokio::spawn(create_drafts(api, drafts, in_flight));
    let deadline = start + Duration::from_secs(120) + Duration::from_millis(200) * n as u32;
    let mut done: HashSet<String> = HashSet::new();
    let mut first = None;
    let mut sample = None;
    let mut last = start;
    while done.len() < n {
        let Some(s) = watch.next(deadline).await else {
            bail!(
                "only {} of {n} drafts converged within {:.0}s",
                done.len(),
                (deadline - start).as_secs_f64()
            );
        };
        if let Seen::Applied(d) = s.seen
            && converged(&d)
            && done.insert(d.name_any())
        {
            first.get_or_insert(s.at - start);
            last = s.at;
            if sample.is_none() {
                sample = d.status.clone();
            }
        }
    }
    let create = create.await??;
    // Let the no-op reconciles that Kiln's own status writes trigger land in the counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = b.requests()?.since(&before);
    verify_published(b, ns, n).await?;
    Ok(Converged {
        total: last - start,
        create,
        first: first.unwrap_or_default(),
        requests,
        sample: sample.unwrap_or_default(),
    })
}

/// Every draft has its published ConfigMap and one revision ConfigMap.
async fn verify_published(b: &Bench, ns: &str, n: usize) -> anyhow::Result<()> {
    let cms = Api::<ConfigMap>::namespaced(b.client.clone(), ns);
    for (role, want) in [(labels::ROLE_PUBLISHED, n), (labels::ROLE_REVISION, n)] {
        let selector = format!("{}={role}", labels::ROLE);
        let list = cms
            .list_metadata(&ListParams::default().labels(&selector))
            .await?;
        let with_hash = list
            .items
            .iter()
            .filter(|cm| cm.annotations().contains_key(labels::SHA256))
            .count();
        if list.items.len() != want || with_hash != want {
            bail!(
                "{ns}: {} ConfigMaps with role {role} ({with_hash} with a hash), expected {want}",
                list.items.len()
            );
        }
    }
    Ok(())
}

/// The status the baseline writes for one draft: Kiln's own converged status, with this
/// draft's ConfigMap names and hash.
fn status_like(template: &DraftStatus, p: &Publication) -> DraftStatus {
    let mut s = template.clone();
    if let Some(published) = s.published.as_mut() {
        published.config_map = p.name();
        published.hash = p.hash.clone();
    }
    for h in &mut s.history {
        h.config_map = p.revision_name(h.revision);
        h.hash = p.hash.clone();
    }
    s
}

/// A baseline run: how many drafts at once, and whether Kiln's Events are sent too.
#[derive(Clone, Copy)]
struct Baseline {
    in_flight: usize,
    events: bool,
}

impl Baseline {
    fn label(&self) -> String {
        if self.events {
            "the same writes + Kiln's 2 Events per draft (kube-runtime `Recorder`)".into()
        } else {
            "the same writes sent directly".into()
        }
    }
}

/// The baseline: the writes of a converged draft, sent directly, for N drafts with at most
/// `in_flight` drafts at once: create the draft, create the revision ConfigMap, apply the
/// published ConfigMap, apply the status. The same requests Kiln sends, without the reads;
/// with `events`, also the two Events Kiln records for a first publish (`Validated`,
/// `Published`), through the same kube-runtime `Recorder` Kiln uses.
async fn baseline(
    b: &Bench,
    n: usize,
    how: Baseline,
    template: &DraftStatus,
) -> anyhow::Result<(Duration, Requests)> {
    let ns = b.namespace("bench-base").await;
    let drafts = Api::<Draft>::namespaced(b.client.clone(), &ns);
    let cms = Api::<ConfigMap>::namespaced(b.client.clone(), &ns);
    let recorder = Recorder::new(
        b.client.clone(),
        Reporter {
            controller: "kiln-bench".into(),
            instance: None,
        },
    );
    let before = b.requests()?;
    let start = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let (drafts, cms, ns, recorder) =
                (drafts.clone(), cms.clone(), ns.clone(), recorder.clone());
            async move {
                let name = draft_name(i);
                let draft = bench_draft(&name, None, true);
                let created = drafts.create(&PostParams::default(), &draft).await?;
                let source = Source {
                    name: name.clone(),
                    uid: created.uid().unwrap_or_default(),
                };
                let p = Publication::new(&name, ConfigType::Content, &draft.spec.config);
                let post = PostParams {
                    field_manager: Some(managers::DRAFT.into()),
                    ..Default::default()
                };
                cms.create(&post, &p.revision(&ns, &source, 1)).await?;
                cms.patch(
                    &p.name(),
                    &PatchParams::apply(managers::DRAFT).force(),
                    &Patch::Apply(&p.published(&ns, &source, 1)),
                )
                .await?;
                if how.events {
                    let reference = created.object_ref(&());
                    for (reason, action, note) in [
                        ("Validated", "Validate", "config is valid"),
                        ("Published", "Publish", "published revision 1"),
                    ] {
                        let event = Event {
                            type_: EventType::Normal,
                            reason: reason.into(),
                            note: Some(note.into()),
                            action: action.into(),
                            secondary: None,
                        };
                        recorder.publish(&event, &reference).await?;
                    }
                }
                apply::status(
                    &drafts,
                    &name,
                    managers::DRAFT,
                    None,
                    &status_like(template, &p),
                )
                .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(how.in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let elapsed = start.elapsed();
    let requests = b.requests()?.since(&before);
    Ok((elapsed, requests))
}

/// Sends a round of baseline writes that nothing measures: the API server compiles the CRD's
/// validation rules and warms its caches, and the benchmark's client opens its connections,
/// before the first timed run (which would otherwise pay for all of that alone).
pub async fn warm_up(b: &Bench, args: &Args) -> anyhow::Result<()> {
    let k = args.in_flight(args.drafts()).min(100);
    let how = Baseline {
        in_flight: k,
        events: true,
    };
    let (t, _) = baseline(b, k, how, &DraftStatus::default()).await?;
    eprintln!(
        "kiln_bench: warm-up: {k} drafts written directly in {:.2}s",
        t.as_secs_f64()
    );
    Ok(())
}

/// The requests a report shows: Kiln's kinds, ConfigMaps and Events.
fn interesting(k: &RequestKey) -> bool {
    k.is_kiln_or_configmap() || k.resource == "events"
}

fn secs(d: Duration) -> f64 {
    round(d.as_secs_f64(), 2)
}

/// The WARN/ERROR lines of Kiln's log grouped by message (span context and `key=value`
/// fields dropped, so that one kind of warning is one row), most frequent first.
fn warning_summary(kiln: &Operator) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in kiln_log(kiln).lines() {
        let Some(rest) = line
            .split_once(" WARN ")
            .or_else(|| line.split_once(" ERROR "))
        else {
            continue;
        };
        // Span context (`reconcile{namespace=.. name=..}: `) comes before the message.
        let text = rest.1.trim_start();
        let in_span = text
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('{'));
        let text = match text.split_once("}: ") {
            Some((_, m)) if in_span => m,
            _ => text,
        };
        // The message is what comes before the first `key=value` field.
        let message: Vec<&str> = text
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect();
        *counts.entry(message.join(" ")).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The most sockets a process had open, sampled every 200 ms while this lives: each request
/// in flight holds its own connection (HTTP/1.1), and idle ones stay pooled.
struct SocketSampler {
    most: std::sync::Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SocketSampler {
    fn start(kiln: &Operator) -> anyhow::Result<SocketSampler> {
        let pid = kiln.pid().context("kiln is not running")?;
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let most = most.clone();
            async move {
                while let Ok(m) = memory_of(pid) {
                    most.fetch_max(m.sockets, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Ok(SocketSampler { most, task })
    }

    fn most(self) -> usize {
        self.task.abort();
        self.most.load(Ordering::Relaxed)
    }
}

/// Scenario 1: N drafts applied at once until Ready and published, vs the same writes sent
/// directly. Returns the converged world for the write-economy scenario.
pub async fn convergence(b: &Bench, args: &Args) -> anyhow::Result<(Report, World)> {
    let n = args.drafts();
    let in_flight = args.in_flight(n);
    let ns = b.namespace("bench-conv").await;
    let kiln = start_kiln(b, &ns, &[]).await;
    let sockets = SocketSampler::start(&kiln)?;
    let run = converge(b, &ns, n, in_flight).await?;
    let peak_sockets = sockets.most();
    let warnings = kiln_warnings(&kiln);
    let warning_kinds = warning_summary(&kiln);
    let errors = kiln_metric(&kiln, "kiln_reconcile_errors_total", "").await?;
    eprintln!(
        "kiln_bench: kiln converged {n} drafts in {:.2}s",
        run.total.as_secs_f64()
    );

    // Baselines, at the benchmark's concurrency and with every draft in flight at once.
    let mut plans = vec![Baseline {
        in_flight,
        events: false,
    }];
    if in_flight < n {
        plans.push(Baseline {
            in_flight: n,
            events: false,
        });
    }
    plans.push(Baseline {
        in_flight,
        events: true,
    });
    let mut baselines = Vec::new();
    for how in plans {
        let (t, req) = baseline(b, n, how, &run.sample).await?;
        eprintln!(
            "kiln_bench: baseline ({}, concurrency {}) {:.2}s",
            how.label(),
            how.in_flight,
            t.as_secs_f64()
        );
        baselines.push((how, (t, req)));
    }
    let fastest = |events: bool| {
        baselines
            .iter()
            .filter(|(h, _)| h.events == events)
            .map(|(_, (t, _))| *t)
            .min()
            .unwrap_or_default()
    };
    let best = fastest(false);
    let ratio = run.total.as_secs_f64() / best.as_secs_f64();
    let ratio_events = run.total.as_secs_f64() / fastest(true).as_secs_f64();

    let mut r = Report::new(
        format!("convergence-n{n}"),
        &format!("Convergence: {n} drafts applied at once"),
        true,
    );
    let kiln_writes = run.requests.total(|k| k.is_write() && interesting(k));
    let base_writes = baselines[0].1.1.total(|k| k.is_write() && interesting(k));
    r.line(format!(
        "{n} valid drafts with `publish` set are created through the API ({in_flight} requests in \
         flight) while Kiln watches their namespace. Kiln's time runs from the first create to \
         the moment the benchmark's own watch sees the last draft `Ready` with \
         `status.published` (both ConfigMaps of every draft are then checked to exist). The \
         baseline sends the same writes directly, N drafts at a time as noted: create the \
         draft, create the revision ConfigMap, server-side apply the published ConfigMap, apply \
         the status (Kiln's own converged status, adapted), i.e. {} writes.\n",
        4 * n
    ));
    r.line("| run | concurrency | time (s) | drafts/s | vs fastest plain baseline |");
    r.line("|---|---:|---:|---:|---:|");
    r.line(format!(
        "| **Kiln** (create → all Ready) | {in_flight} (creates); Kiln: {} | **{:.2}** | {:.0} | **{:.2}×** |",
        b.kiln_concurrency_label(),
        run.total.as_secs_f64(),
        n as f64 / run.total.as_secs_f64(),
        ratio
    ));
    for (how, (t, _)) in &baselines {
        r.line(format!(
            "| baseline: {} | {} | {:.2} | {:.0} | {:.2}× |",
            how.label(),
            how.in_flight,
            t.as_secs_f64(),
            n as f64 / t.as_secs_f64(),
            t.as_secs_f64() / best.as_secs_f64()
        ));
    }
    r.line(format!(
        "\nKiln took **{ratio:.2}×** the time of the fastest plain baseline, and {ratio_events:.2}× \
         that of the baseline that also writes Kiln's Events.\n"
    ));
    r.line(format!(
        "Within Kiln's run: creating the {n} drafts took {:.2}s; the first draft was Ready \
         after {:.2}s. Reconcile errors: {errors}; WARN/ERROR log lines: {warnings}. Most \
         sockets the operator had open (sampled every 200 ms): {peak_sockets}.\n",
        run.create.as_secs_f64(),
        run.first.as_secs_f64()
    ));
    if !warning_kinds.is_empty() {
        r.line("WARN/ERROR lines in Kiln's log, by message:\n");
        r.line("| count | message (fields dropped) |\n|---:|---|");
        for (message, count) in &warning_kinds {
            r.line(format!("| {count} | `{message}` |"));
        }
        r.line("");
    }
    r.line(format!(
        "Requests the API server counted during Kiln's run (drafts, ConfigMaps, Events; the \
         `POST drafts`, `LIST`/`WATCH drafts` are the benchmark's own): {kiln_writes} writes in \
         all, vs {base_writes} for the baseline.\n"
    ));
    r.line(run.requests.markdown(interesting, n));
    r.line("Baseline requests (first baseline run):\n");
    r.line(baselines[0].1.1.markdown(interesting, n));

    r.set("n", n);
    r.set("concurrency", in_flight);
    r.set(
        "kiln",
        json!({
            "seconds": secs(run.total),
            "createSeconds": secs(run.create),
            "firstReadySeconds": secs(run.first),
            "reconcileErrors": errors,
            "warnLogLines": warnings,
            "warnings": warning_kinds.iter().map(|(m, c)| json!({"message": m, "count": c})).collect::<Vec<_>>(),
            "peakSockets": peak_sockets,
            "writes": kiln_writes,
            "requests": run.requests.table(interesting),
        }),
    );
    r.set(
        "baselines",
        baselines
            .iter()
            .map(|(how, (t, req))| {
                json!({"concurrency": how.in_flight, "events": how.events, "seconds": secs(*t),
                       "writes": req.total(|k| k.is_write() && interesting(k))})
            })
            .collect::<Vec<_>>(),
    );
    r.set("ratioKilnToFastestBaseline", round(ratio, 2));
    r.set(
        "ratioKilnToFastestBaselineWithEvents",
        round(ratio_events, 2),
    );
    Ok((r, World { ns, n, kiln }))
}

/// A converged world, for running the economy scenario on its own.
pub async fn converged_world(b: &Bench, args: &Args) -> anyhow::Result<World> {
    let n = args.drafts();
    let ns = b.namespace("bench-conv").await;
    let kiln = start_kiln(b, &ns, &[]).await;
    converge(b, &ns, n, args.in_flight(n)).await?;
    Ok(World { ns, n, kiln })
}

/// Polls one of Kiln's counters until it reaches `at_least`.
async fn wait_metric(
    kiln: &Operator,
    name: &str,
    labels: &str,
    at_least: f64,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = kiln_metric(kiln, name, labels).await?;
        if v >= at_least {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{name}{{{labels}}} is {v} after {timeout:?}, expected ≥ {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finished draft reconciles (`kiln_reconciles_total` counts them when they start).
const DRAFT_RECONCILES: (&str, &str) = (
    "kiln_reconcile_duration_seconds_count",
    "controller=\"draft\"",
);

/// Scenario 2: the writes a restart and two resyncs of a converged, unchanged world send.
pub async fn economy(b: &Bench, _args: &Args, mut world: World) -> anyhow::Result<Report> {
    let n = world.n;
    let (metric, labels) = DRAFT_RECONCILES;
    let slow = Duration::from_secs(120) + Duration::from_millis(50) * n as u32;

    stop_kiln(&mut world.kiln)?;
    let before = b.requests()?;
    let resync_flag = format!("--resync={}s", RESYNC.as_secs());
    let restarted = Instant::now();
    restart_kiln(b, &mut world.kiln, &world.ns, &[resync_flag.as_str()]).await?;
    wait_metric(&world.kiln, metric, labels, n as f64, slow).await?;
    let first_pass = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_restart = b.requests()?;
    let pass1 = kiln_metric(&world.kiln, metric, labels).await?;

    let resync_start = Instant::now();
    wait_metric(&world.kiln, metric, labels, pass1 + 2.0 * n as f64, slow).await?;
    let min_window = 2 * RESYNC + Duration::from_secs(1);
    if let Some(rest) = min_window.checked_sub(resync_start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let after_resync = b.requests()?;
    let window = resync_start.elapsed();
    let pass2 = kiln_metric(&world.kiln, metric, labels).await?;
    let errors = kiln_metric(&world.kiln, "kiln_reconcile_errors_total", "").await?;

    let restart = after_restart.since(&before);
    let resync = after_resync.since(&after_restart);
    let restart_writes = restart.kiln_writes();
    let resync_writes = resync.kiln_writes();
    let event_writes = |r: &Requests| r.total(|k| k.is_write() && k.resource == "events");
    let reads =
        |r: &Requests| r.total(|k| !k.is_write() && k.verb != "WATCH" && k.is_kiln_or_configmap());

    let mut r = Report::new(
        format!("economy-n{n}"),
        &format!("Write economy: restart and resyncs of {n} converged drafts"),
        true,
    );
    r.line(format!(
        "The operator that converged {n} drafts (namespace `{}`) is stopped and started again \
         with `--resync={}s`. Two windows are counted from the API server's own \
         `apiserver_request_total`: the restart (until Kiln's \
         `kiln_reconcile_duration_seconds_count` for drafts shows all {n} reconciles finished), then at least two resync periods (until it shows \
         another 2×{n}). Writes are POST/PUT/PATCH/APPLY/DELETE on `kiln.dev` resources and \
         ConfigMaps, from every client (nothing else writes them here). Goal: 0.\n",
        world.ns,
        RESYNC.as_secs()
    ));
    r.line("| window | draft reconciles | writes (kiln.dev + ConfigMaps) | Event writes | reads (GET/LIST kiln.dev + ConfigMaps) |");
    r.line("|---|---:|---:|---:|---:|");
    r.line(format!(
        "| restart (start → all reconciled: {:.1}s) | {pass1} | **{restart_writes}** | {} | {} |",
        first_pass.as_secs_f64(),
        event_writes(&restart),
        reads(&restart)
    ));
    r.line(format!(
        "| resyncs ({:.1}s at `--resync={}s`) | {} | **{resync_writes}** | {} | {} |",
        window.as_secs_f64(),
        RESYNC.as_secs(),
        pass2 - pass1,
        event_writes(&resync),
        reads(&resync)
    ));
    r.line(format!("\nReconcile errors: {errors}.\n"));
    r.line("All requests of the resync window (Kiln's kinds, ConfigMaps, Events; \"per draft\" is per draft per window):\n");
    r.line(resync.markdown(interesting, n));
    r.line("All requests of the restart window:\n");
    r.line(restart.markdown(interesting, n));

    r.set("n", n);
    r.set("resyncSeconds", RESYNC.as_secs());
    r.set(
        "restart",
        json!({"reconciles": pass1, "writes": restart_writes, "eventWrites": event_writes(&restart),
               "firstPassSeconds": secs(first_pass), "requests": restart.table(interesting)}),
    );
    r.set(
        "resync",
        json!({"reconciles": pass2 - pass1, "seconds": secs(window), "writes": resync_writes,
               "eventWrites": event_writes(&resync), "requests": resync.table(interesting)}),
    );
    r.set("reconcileErrors", errors);
    r.set("zeroWrites", restart_writes == 0.0 && resync_writes == 0.0);
    world.stop();
    Ok(r)
}

/// Creates `m` drafts whose retentions all end in the same whole second, `target`: each
/// draft's retention is chosen when it is sent (its `creationTimestamp` is that second,
/// truncated), so the time creating them takes does not spread their expiries.
pub(crate) async fn create_expiring_together(
    api: Api<Draft>,
    m: usize,
    target: Timestamp,
    in_flight: usize,
) -> anyhow::Result<()> {
    stream::iter(0..m)
        .map(|i| {
            let api = api.clone();
            async move {
                let left = target.duration_since(Timestamp::now()).as_secs_f64();
                anyhow::ensure!(left > 2.0, "creating the drafts took too long");
                let retention = format!("{}s", left.ceil() as u64);
                let d = bench_draft(&format!("expire-{i:04}"), Some(&retention), false);
                api.create(&PostParams::default(), &d)
                    .await
                    .with_context(|| format!("creating draft {}", d.name_any()))
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// Seconds from a common start to each deletion seen by a watch, for `m` drafts deleted
/// directly (the physical floor of a mass expiry).
struct DirectDeletes {
    in_flight: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

async fn direct_deletes(b: &Bench, m: usize, in_flight: usize) -> anyhow::Result<DirectDeletes> {
    let ns = b.namespace("bench-expiry-direct").await;
    let api = Api::<Draft>::namespaced(b.client.clone(), &ns);
    let drafts = (0..m)
        .map(|i| bench_draft(&format!("direct-{i:04}"), None, false))
        .collect();
    create_drafts(api.clone(), drafts, in_flight).await?;
    let mut watch = DraftWatch::start(api.clone()).await?;
    let in_flight = in_flight.min(16);
    let start = Instant::now();
    let deleting = {
        let api = api.clone();
        tokio::spawn(async move {
            stream::iter(0..m)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        api.delete(&format!("direct-{i:04}"), &Default::default())
                            .await
                            .map(|_| ())
                    }
                })
                .buffer_unordered(in_flight)
                .try_for_each(|()| async { Ok(()) })
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while seen.len() < m {
        let Some(s) = watch.next(deadline).await else {
            bail!(
                "direct deletes: only {} of {m} seen within 120s",
                seen.len()
            );
        };
        if let Seen::Deleted(_) = s.seen {
            seen.push(start.elapsed().as_secs_f64());
        }
    }
    deleting.await??;
    Ok(DirectDeletes {
        in_flight,
        p50: quantile(&seen, 0.5),
        p99: quantile(&seen, 0.99),
        max: seen.iter().copied().fold(0.0, f64::max),
    })
}

/// Scenario 3: M drafts whose retentions end in the same second; the lag from
/// `status.expiresAt` to the deletion the benchmark's watch observes.
pub async fn expiry(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let m = args.expiring();
    let ns = b.namespace("bench-expiry").await;
    let mut kiln = start_kiln(b, &ns, &[]).await;
    let api = Api::<Draft>::namespaced(b.client.clone(), &ns);
    let mut watch = DraftWatch::start(api.clone()).await?;
    // Time to create and converge them all first (~25 ms per draft on 2 cores, at least 20 s).
    let lead = (20.0f64).max(m as f64 * 0.025).ceil() as i64;
    let target = Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(lead + 1))?
        .round(k8s_openapi::jiff::Unit::Second)?;
    let retention = format!("chosen per draft so that all expire at {target}");
    create_expiring_together(api, m, target, args.in_flight(m)).await?;
    let deadline = Instant::now() + Duration::from_secs(90 + lead as u64);
    let mut expires_at: HashMap<String, Timestamp> = HashMap::new();
    let mut lags: Vec<f64> = Vec::new();
    let mut missing_expiry = 0;
    while lags.len() + missing_expiry < m {
        let Some(s) = watch.next(deadline).await else {
            bail!(
                "only {} of {m} drafts were deleted within {}s",
                lags.len(),
                90 + lead
            );
        };
        let (Seen::Applied(d) | Seen::Deleted(d)) = &s.seen;
        let at = d
            .status
            .as_ref()
            .and_then(|st| st.expires_at.as_ref())
            .map(|t| t.0);
        if let Some(at) = at {
            expires_at.insert(d.name_any(), at);
        }
        if let Seen::Deleted(d) = s.seen {
            match expires_at.get(&d.name_any()) {
                Some(at) => lags.push(s.wall.duration_since(*at).as_secs_f64()),
                None => missing_expiry += 1,
            }
        }
    }
    let draft = "controller=\"draft\"";
    let kiln_sum = kiln_metric(&kiln, "kiln_expiry_lag_seconds_sum", draft).await?;
    let kiln_count = kiln_metric(&kiln, "kiln_expiry_lag_seconds_count", draft).await?;
    // Kiln logs `expired draft deleted lag=<s>` (lag at the start of the reconcile) once its
    // DELETE and the Event that follows it have returned: the log time splits the lag.
    let mut started = Vec::new();
    let mut logged = Vec::new();
    for line in kiln_log(&kiln)
        .lines()
        .filter(|l| l.contains("expired draft deleted"))
    {
        let field = |key: &str| line.split(key).nth(1)?.split(['"', ' ']).next();
        let name = line
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let at = line
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<Timestamp>().ok());
        if let Some(lag) = field("lag=").and_then(|l| l.parse::<f64>().ok()) {
            started.push(lag);
        }
        if let (Some(name), Some(at)) = (name, at)
            && let Some(expires) = expires_at.get(name)
        {
            logged.push(at.duration_since(*expires).as_secs_f64());
        }
    }
    stop_kiln(&mut kiln)?;

    let (p50, p95, max) = (
        quantile(&lags, 0.5),
        quantile(&lags, 0.95),
        lags.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let min = lags.iter().copied().fold(f64::INFINITY, f64::min);
    let p99 = quantile(&lags, 0.99);
    let direct = direct_deletes(b, m, args.in_flight(m)).await?;
    let mut r = Report::new(
        format!("expiry-m{m}"),
        &format!("Expiry precision: {m} drafts expiring in the same second"),
        true,
    );
    r.line(format!(
        "{m} valid drafts are created, each with a retention chosen as it is sent so that all \
         of them expire in the same whole second ({target}, {lead} s after the start: time to \
         create and converge them first). The operator runs with its default resync (10m), \
         so only the requeue scheduled for `expiresAt` can delete them in time. For each \
         draft the lag is the wall-clock time at which the benchmark's watch receives the \
         deletion minus the draft's `status.expiresAt` (a whole-second timestamp: creation + \
         retention). The watch adds its own small delivery delay. Goals: every draft < 2 s, \
         p99 ≤ 1 s.\n"
    ));
    r.line(
        "| drafts | p50 lag (s) | p95 lag (s) | p99 lag (s) | max lag (s) | min lag (s) | goal |",
    );
    r.line("|---:|---:|---:|---:|---:|---:|---|");
    r.line(format!(
        "| {} | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** | {:.3} | {} |",
        lags.len(),
        p50,
        p95,
        p99,
        max,
        min,
        match (max < 2.0, p99 <= 1.0) {
            (true, true) => "met (all < 2 s, p99 ≤ 1 s)",
            (true, false) => "all < 2 s met; p99 ≤ 1 s MISSED",
            (false, _) => "MISSED (≥ 2 s)",
        }
    ));
    if missing_expiry > 0 {
        r.line(format!(
            "\n{missing_expiry} draft(s) were deleted before the watch saw an `expiresAt`."
        ));
    }
    r.line(format!(
        "\nWhere the lag goes, from Kiln's log (`expired draft deleted lag=…`) for {} drafts: \
         the expiring reconcile started p50 {:.3}s / max {:.3}s after `expiresAt`; the log line \
         (written once the DELETE and the `Expired` Event have returned) came p50 {:.3}s / max \
         {:.3}s after it. Kiln's `kiln_expiry_lag_seconds` histogram: {kiln_count} expiries, \
         mean {:.3}s.",
        logged.len(),
        quantile(&started, 0.5),
        started.iter().copied().fold(f64::NAN, f64::max),
        quantile(&logged, 0.5),
        logged.iter().copied().fold(f64::NAN, f64::max),
        kiln_sum / kiln_count.max(1.0)
    ));
    r.line(format!(
        "\nBaseline in the same run: the same {m} drafts (in a namespace no Kiln watches) deleted \
         directly, all due at the same instant, {} DELETEs in flight (Kiln: {} reconciles at \
         once): the last deletion was seen {:.3} s after the start (p50 {:.3} s, p99 {:.3} s). \
         That is the floor this machine and control plane set for {m} simultaneous expiries; \
         Kiln's p99 is {:.2}× the direct p99.",
        direct.in_flight,
        16,
        direct.max,
        direct.p50,
        direct.p99,
        p99 / direct.p99.max(1e-9),
    ));
    r.set("m", m);
    r.set("retention", retention);
    r.set(
        "directDeletes",
        json!({"inFlight": direct.in_flight, "p50": round(direct.p50, 3), "p99": round(direct.p99, 3), "max": round(direct.max, 3)}),
    );
    r.set(
        "lagSeconds",
        json!({"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": round(max, 3), "min": round(min, 3),
               "all": lags.iter().map(|l| round(*l, 3)).collect::<Vec<_>>()}),
    );
    r.set(
        "kilnMeanLagSeconds",
        round(kiln_sum / kiln_count.max(1.0), 3),
    );
    r.set(
        "kilnLogLagSeconds",
        json!({"reconcileStartP50": round(quantile(&started, 0.5), 3),
               "deletedAndLoggedP50": round(quantile(&logged, 0.5), 3),
               "deletedAndLoggedMax": round(logged.iter().copied().fold(f64::NAN, f64::max), 3)}),
    );
    r.set("goalMet", max < 2.0);
    r.set("p99GoalMet", p99 <= 1.0);
    Ok(r)
}

/// Scenario 4: the operator's memory idle, while converging N drafts, and after a restart
/// with N drafts and their 2N ConfigMaps in its namespace.
pub async fn memory(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let n = args.memory_drafts();
    let ns = b.namespace("bench-memory").await;
    let mut kiln = start_kiln(b, &ns, &[]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = kiln_memory(&kiln)?;

    let sockets = SocketSampler::start(&kiln)?;
    let run = converge(b, &ns, n, args.in_flight(n)).await?;
    eprintln!(
        "kiln_bench: kiln converged {n} drafts in {:.1}s",
        run.total.as_secs_f64()
    );
    let converging = kiln_memory(&kiln)?;
    let peak_sockets = sockets.most();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled = kiln_memory(&kiln)?;

    // A fresh process with the world already there: caches filled by the initial lists, then
    // one reconcile of every draft.
    let (metric, labels) = DRAFT_RECONCILES;
    let restarted = Instant::now();
    restart_kiln(b, &mut kiln, &ns, &[]).await?;
    wait_metric(
        &kiln,
        metric,
        labels,
        n as f64,
        Duration::from_secs(120) + Duration::from_millis(50) * n as u32,
    )
    .await?;
    let first_pass = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart = kiln_memory(&kiln)?;
    let errors = kiln_metric(&kiln, "kiln_reconcile_errors_total", "").await?;
    stop_kiln(&mut kiln)?;

    let per_draft =
        |m: &Memory| (m.rss_kib.saturating_sub(idle.rss_kib)) as f64 * 1024.0 / n as f64;
    let mut r = Report::new(
        format!("memory-n{n}"),
        &format!(
            "Operator memory: idle vs {n} drafts and their {} ConfigMaps",
            2 * n
        ),
        true,
    );
    r.line(format!(
        "One Kiln process watches a namespace. Idle: ready, 0 drafts, after 5 s. Then {n} \
         publishing drafts are created ({} in flight) and converge (in {:.1}s), giving {n} \
         drafts and {} ConfigMaps (published + revision). Then the operator is restarted and \
         reads the same world from scratch ({:.1}s from the restart to all drafts reconciled). \
         VmHWM is the peak resident set so far (`/proc/<pid>/status`), VmRSS the current one.\n",
        args.in_flight(n),
        run.total.as_secs_f64(),
        2 * n,
        first_pass.as_secs_f64()
    ));
    r.line("| state | VmHWM (MiB) | VmHWM vs idle | VmRSS (MiB) | RSS above idle per draft | open sockets |");
    r.line("|---|---:|---:|---:|---:|---:|");
    let row = |label: &str, m: &Memory| {
        format!(
            "| {label} | {:.1} | {:.1}× | {:.1} | {:.0} B | {} |",
            mib(m.hwm_kib),
            m.hwm_kib as f64 / idle.hwm_kib.max(1) as f64,
            mib(m.rss_kib),
            per_draft(m),
            m.sockets
        )
    };
    r.line(row("idle, 0 drafts", &idle));
    r.line(row(
        &format!("right after converging {n} drafts"),
        &converging,
    ));
    r.line(row("10 s later", &settled));
    r.line(row(
        &format!("restarted with {n} drafts, after its first pass"),
        &restart,
    ));
    r.line(format!(
        "\nMost sockets seen open while converging (sampled every 200 ms): {peak_sockets}. \
         Reconcile errors after the restart: {errors}."
    ));

    let mem =
        |m: &Memory| json!({"vmHwmKiB": m.hwm_kib, "vmRssKiB": m.rss_kib, "sockets": m.sockets});
    r.set("n", n);
    r.set("idle", mem(&idle));
    r.set("converging", mem(&converging));
    r.set("settled", mem(&settled));
    r.set("restarted", mem(&restart));
    r.set("convergeSeconds", secs(run.total));
    r.set("peakSocketsWhileConverging", peak_sockets);
    r.set("restartFirstPassSeconds", secs(first_pass));
    r.set(
        "peakRatioToIdle",
        round(converging.hwm_kib as f64 / idle.hwm_kib.max(1) as f64, 2),
    );
    r.set(
        "restartPeakRatioToIdle",
        round(restart.hwm_kib as f64 / idle.hwm_kib.max(1) as f64, 2),
    );
    Ok(r)
}
