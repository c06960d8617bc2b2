//! Versus the peers, expiry precision: M Drafts that Kiln deletes when their retention ends,
//! and M batch Jobs that Kubernetes' own TTL-after-finished controller (in
//! kube-controller-manager) deletes `ttlSecondsAfterFinished` after they finished, all due at
//! the same instant, on the same control plane at the same time. The lag of each deletion
//! past its due time, for both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::{SignedDuration, Timestamp, Unit};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::Args;
use crate::cluster::{Bench, start_kiln, stop_kiln};
use crate::drafts::{DraftWatch, Seen, create_expiring_together};
use crate::peers_math::{ratio, ratio_label};
use crate::report::{Report, quantile, round};

/// Retention of the Drafts and `ttlSecondsAfterFinished` of the Jobs.
const TTL: i64 = 30;

/// The controllers kube-controller-manager must run for this scenario.
pub const TTL_CONTROLLER: &str = "ttl-after-finished-controller";

/// A batch Job that never runs (no job controller, no node): it is only marked finished.
fn job(name: &str) -> anyhow::Result<Job> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "ttlSecondsAfterFinished": TTL,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "registry.invalid/none:1"}]}}
        }
    }))?)
}

/// What the watch on the Jobs saw of one Job.
enum JobSeen {
    /// Its `deletionTimestamp` was set (the TTL controller's DELETE, with foreground
    /// propagation, which the garbage collector then completes).
    Deleting(String),
    Gone(String),
}

/// The benchmark's own watch on the Jobs of a namespace.
struct JobWatch {
    rx: mpsc::UnboundedReceiver<(Timestamp, JobSeen)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JobWatch {
    async fn start(api: Api<Job>) -> anyhow::Result<JobWatch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let wall = Timestamp::now();
                let seen = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                        if j.metadata.deletion_timestamp.is_none() {
                            continue;
                        }
                        JobSeen::Deleting(j.name_any())
                    }
                    Ok(watcher::Event::Delete(j)) => JobSeen::Gone(j.name_any()),
                    Ok(watcher::Event::Init) => continue,
                    Err(e) => {
                        eprintln!("kiln_bench: job watch error (retrying): {e}");
                        continue;
                    }
                };
                if tx.send((wall, seen)).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .context("the job watch did not list within 60s")??;
        Ok(JobWatch { rx, task })
    }
}

/// Creates `m` Jobs, not yet finished.
async fn create_jobs(api: Api<Job>, m: usize, in_flight: usize) -> anyhow::Result<()> {
    stream::iter(0..m)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("ttl-{i:04}");
                api.create(&PostParams::default(), &job(&name)?)
                    .await
                    .with_context(|| format!("creating Job {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Marks the `m` Jobs finished at `at` through their status subresource, as the job
/// controller would have: started, one pod succeeded, `SuccessCriteriaMet` and `Complete`
/// with `at` as their transition time (the time the TTL controller counts from).
async fn finish_jobs(
    api: Api<Job>,
    m: usize,
    at: Timestamp,
    in_flight: usize,
) -> anyhow::Result<()> {
    let t = at.to_string();
    let start = at
        .checked_sub(SignedDuration::from_secs(1))
        .context("start time")?
        .to_string();
    let status = json!({"status": {
        "startTime": start,
        "completionTime": t,
        "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods",
             "lastProbeTime": t, "lastTransitionTime": t},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods",
             "lastProbeTime": t, "lastTransitionTime": t}
        ]
    }});
    stream::iter(0..m)
        .map(|i| {
            let (api, status) = (api.clone(), status.clone());
            async move {
                let name = format!("ttl-{i:04}");
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .with_context(|| format!("marking Job {name} finished"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// p50, p95, p99, max and min of lags, in seconds.
struct Lags {
    count: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    min: f64,
}

impl Lags {
    fn of(lags: &[f64]) -> Lags {
        Lags {
            count: lags.len(),
            p50: quantile(lags, 0.5),
            p95: quantile(lags, 0.95),
            p99: quantile(lags, 0.99),
            max: lags.iter().copied().fold(f64::NAN, f64::max),
            min: lags.iter().copied().fold(f64::NAN, f64::min),
        }
    }

    fn row(&self, label: &str) -> String {
        format!(
            "| {label} | {} | **{:.3}** | {:.3} | **{:.3}** | **{:.3}** | {:.3} |",
            self.count, self.p50, self.p95, self.p99, self.max, self.min
        )
    }

    fn json(&self, all: &[f64]) -> serde_json::Value {
        json!({"count": self.count, "p50": round(self.p50, 3), "p95": round(self.p95, 3),
               "p99": round(self.p99, 3), "max": round(self.max, 3), "min": round(self.min, 3),
               "all": all.iter().map(|l| round(*l, 3)).collect::<Vec<_>>()})
    }
}

pub async fn run(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let m = args.peer_objects();
    let in_flight = args.in_flight(m);
    let ns_drafts = b.namespace("peers-expiry-drafts").await;
    let ns_jobs = b.namespace("peers-expiry-jobs").await;
    let drafts = Api::namespaced(b.client.clone(), &ns_drafts);
    let jobs = Api::<Job>::namespaced(b.client.clone(), &ns_jobs);
    let mut kiln = start_kiln(b, &ns_drafts, &[]).await;
    let mut draft_watch = DraftWatch::start(drafts.clone()).await?;
    let mut job_watch = JobWatch::start(jobs.clone()).await?;

    // Time to create both sets first (~50 ms per Draft and Job on a busy 2-core machine, at
    // least 20 s); then every Job is marked finished at `finished`, and everything is due at
    // `due`.
    let lead = (20.0f64).max(m as f64 * 0.05).ceil() as i64;
    let due = Timestamp::now()
        .checked_add(SignedDuration::from_secs(lead + TTL + 1))?
        .round(Unit::Second)?;
    let finished = due.checked_sub(SignedDuration::from_secs(TTL))?;
    let created = Instant::now();
    tokio::try_join!(
        create_expiring_together(drafts, m, due, in_flight),
        create_jobs(jobs.clone(), m, in_flight),
    )?;
    let create_secs = created.elapsed().as_secs_f64();
    // The Jobs finish at `finished`: wait for it, so that no status claims a future time.
    let wait = finished.duration_since(Timestamp::now());
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    let marking = Instant::now();
    finish_jobs(jobs, m, finished, in_flight).await?;
    let mark_secs = marking.elapsed().as_secs_f64();
    let margin = due.duration_since(Timestamp::now()).as_secs_f64();
    if margin < 5.0 {
        bail!(
            "marking {m} Jobs finished took {mark_secs:.1}s and left only {margin:.1}s before \
             they were due: the machine is too slow for this size"
        );
    }

    let after_due = Duration::from_secs(120) + Duration::from_millis(100) * m as u32;
    let deadline = Instant::now() + Duration::from_secs_f64(margin) + after_due;
    let mut expires_at: HashMap<String, Timestamp> = HashMap::new();
    let mut draft_lags = Vec::new();
    let mut missing_expiry = 0;
    let mut deleting: HashMap<String, f64> = HashMap::new();
    let mut gone = Vec::new();
    let lag = |wall: Timestamp| wall.duration_since(due).as_secs_f64();
    while draft_lags.len() + missing_expiry < m || gone.len() < m {
        tokio::select! {
            s = draft_watch.next(deadline) => {
                let Some(s) = s else { break };
                let (Seen::Applied(d) | Seen::Deleted(d)) = &s.seen;
                if let Some(at) = d.status.as_ref().and_then(|st| st.expires_at.as_ref()) {
                    expires_at.insert(d.name_any(), at.0);
                }
                if let Seen::Deleted(d) = s.seen {
                    match expires_at.get(&d.name_any()) {
                        Some(at) => draft_lags.push(s.wall.duration_since(*at).as_secs_f64()),
                        None => missing_expiry += 1,
                    }
                }
            }
            j = tokio::time::timeout_at(deadline.into(), job_watch.rx.recv()) => {
                let Ok(Some((wall, seen))) = j else { break };
                match seen {
                    JobSeen::Deleting(name) => { deleting.entry(name).or_insert(lag(wall)); }
                    JobSeen::Gone(name) => {
                        deleting.entry(name).or_insert(lag(wall));
                        gone.push(lag(wall));
                    }
                }
            }
        }
    }
    stop_kiln(&mut kiln)?;
    if draft_lags.len() + missing_expiry < m || gone.len() < m {
        bail!(
            "within {:.0}s of the due time, {} of {m} Drafts and {} of {m} Jobs were deleted \
             (is kube-controller-manager running {TTL_CONTROLLER}? KILN_CP_EXTRA_CONTROLLERS)",
            after_due.as_secs_f64(),
            draft_lags.len() + missing_expiry,
            gone.len()
        );
    }
    let requested: Vec<f64> = deleting.values().copied().collect();
    let (kiln_lags, ttl_requested, ttl_gone) =
        (Lags::of(&draft_lags), Lags::of(&requested), Lags::of(&gone));

    let mut r = Report::new(
        format!("peers-expiry-m{m}"),
        &format!(
            "Versus the peers: expiry precision, {m} Drafts (Kiln) and {m} Jobs (TTL-after-finished controller) due at the same instant"
        ),
        true,
    );
    r.line(format!(
        "{m} Drafts are created in one namespace that Kiln watches, each with a retention \
         chosen as it is sent (≥ {TTL} s) so that all of them expire at the same whole second, \
         {due}. At the same time {m} batch Jobs with `ttlSecondsAfterFinished: {TTL}` are \
         created in another namespace; they never run (kube-controller-manager runs no job \
         controller here, and there is no node): at {finished} the benchmark marks all of them \
         finished through their status subresource (`Complete` since {finished}, as the job \
         controller would write it), so that Kubernetes' own TTL-after-finished controller \
         (`{TTL_CONTROLLER}` in kube-controller-manager, its defaults: 5 workers, client QPS \
         100 / burst 200 as this control plane sets them) deletes them at the same instant \
         {due}. Creating both sets took {create_secs:.1} s; marking the Jobs finished took \
         {mark_secs:.1} s and ended {margin:.1} s before they were due.\n"
    ));
    r.line(
        "The lag of each is the wall-clock time at which the benchmark's own watch saw the \
         object go, minus the time it was due (for Drafts, `status.expiresAt`; for Jobs, the \
         finish time + TTL). The TTL controller deletes with foreground propagation, so a Job \
         first gets a `deletionTimestamp` and goes once the garbage collector has seen it has \
         no dependents: both moments are shown. Kiln deletes a Draft at once.\n",
    );
    r.line("| deletions | count | p50 lag (s) | p95 lag (s) | p99 lag (s) | max lag (s) | min lag (s) |");
    r.line("|---|---:|---:|---:|---:|---:|---:|");
    r.line(kiln_lags.row("Kiln: Draft gone"));
    r.line(ttl_requested.row("TTL controller: Job deletion requested"));
    r.line(ttl_gone.row("TTL controller: Job gone"));
    if missing_expiry > 0 {
        r.line(format!(
            "\n{missing_expiry} Draft(s) were deleted before the watch saw an `expiresAt`."
        ));
    }
    let ratios = |peer: &Lags| {
        json!({"p50": round(kiln_lags.p50 / peer.p50, 4), "p99": round(kiln_lags.p99 / peer.p99, 4),
               "max": round(kiln_lags.max / peer.max, 4)})
    };
    r.line(format!(
        "\nKiln ÷ TTL controller (Job gone): p50 {}, p99 {}, max {}. Kiln ÷ TTL controller \
         (deletion requested): p50 {}, p99 {}, max {}.",
        ratio_label(ratio(kiln_lags.p50, ttl_gone.p50)),
        ratio_label(ratio(kiln_lags.p99, ttl_gone.p99)),
        ratio_label(ratio(kiln_lags.max, ttl_gone.max)),
        ratio_label(ratio(kiln_lags.p50, ttl_requested.p50)),
        ratio_label(ratio(kiln_lags.p99, ttl_requested.p99)),
        ratio_label(ratio(kiln_lags.max, ttl_requested.max)),
    ));
    r.set("m", m);
    r.set("ttlSeconds", TTL);
    r.set("due", due.to_string());
    r.set("createSeconds", round(create_secs, 2));
    r.set("markFinishedSeconds", round(mark_secs, 2));
    r.set("kilnDraftGone", kiln_lags.json(&draft_lags));
    r.set("ttlJobDeletionRequested", ttl_requested.json(&requested));
    r.set("ttlJobGone", ttl_gone.json(&gone));
    r.set("kilnOverTtlGone", ratios(&ttl_gone));
    r.set("kilnOverTtlRequested", ratios(&ttl_requested));
    Ok(r)
}
