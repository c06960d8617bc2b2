//! The fault scenario: the operator killed with SIGKILL at random moments, then started
//! again, and what it left checked for losses. Each part prints the faults it injected and
//! the losses it found, and the scenario fails when there is any.
//!
//! - Publishing: N publishing drafts are created, and one in five is later given new content,
//!   while Kiln is killed at random moments of both waves. Afterwards every draft must have
//!   converged with one revision ConfigMap per content it published: revisions numbered 1, 2,
//!   … without a gap (none skipped), no two with the same data (none duplicated), the last
//!   one the draft's current content, named by its status and held by the published
//!   ConfigMap.
//! - Expiry: M drafts expire over a few seconds, and Kiln is killed while they do. No draft
//!   may be deleted before its `status.expiresAt` (nothing early), and every one must be
//!   deleted within a bound after the restart (nothing kept).
//!
//! The restart goes through the leader Lease: a killed leader does not release it, so the
//! new process becomes ready only once the Lease has expired. That takeover time is reported.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use kiln::api::draft::Draft;
use kiln::desired::labels;

use crate::Args;
use crate::cluster::{Bench, start_kiln, stop_kiln};
use crate::drafts::{
    DraftWatch, Seen, Sighting, bench_draft, converged, create_drafts, draft_name,
};
use crate::report::{Report, quantile, round};
use crate::support::Operator;

/// A small deterministic generator (xorshift64*), seeded per run and reported, so that the
/// moments of a run can be replayed with `KILN_FAULTS_SEED`.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("KILN_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        (Rng(seed.max(1)), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// One SIGKILL and the restart after it.
struct Kill {
    /// Since the start of the part.
    at: Duration,
    /// What was going on.
    during: &'static str,
    /// SIGKILL → the new process ready (it waits for the dead leader's Lease to expire).
    takeover: Duration,
}

async fn kill_and_restart(kiln: &mut Operator, start: Instant, during: &'static str) -> Kill {
    let at = start.elapsed();
    let t = Instant::now();
    kiln.kill();
    kiln.start_again().await;
    Kill {
        at,
        during,
        takeover: t.elapsed(),
    }
}

pub async fn run(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let (mut rng, seed) = Rng::seeded();
    let n = args.drafts();
    let m = args.expiring();
    let mut r = Report::new(
        format!("faults-n{n}-m{m}"),
        "Faults: the operator killed (SIGKILL) at random moments",
        true,
    );
    r.line(format!(
        "Each part kills Kiln with SIGKILL at random moments (seed {seed}; replay with \
         `KILN_FAULTS_SEED={seed}`) and starts it again on the same workspace and Lease. A \
         killed leader does not release its Lease, so the new process becomes ready when the \
         Lease (15 s) has expired: the takeover time below.\n"
    ));
    let publishing = publishing(b, args, &mut rng, n).await?;
    let expiry = expiry(b, &mut rng, m).await?;

    let mut losses = 0;
    let mut kills = Vec::new();
    r.line("| part | size | SIGKILLs | losses |\n|---|---:|---:|---:|");
    for part in [&publishing, &expiry] {
        r.line(format!(
            "| {} | {} | {} | **{}** |",
            part.name,
            part.size,
            part.kills.len(),
            part.losses.len()
        ));
        losses += part.losses.len();
        kills.extend(part.kills.iter().map(|k| k.takeover.as_secs_f64()));
    }
    r.line(format!(
        "\nTakeover after SIGKILL (kill → new process ready), {} kills: p50 {:.1} s, max {:.1} s.\n",
        kills.len(),
        quantile(&kills, 0.5),
        kills.iter().copied().fold(0.0, f64::max)
    ));
    for part in [&publishing, &expiry] {
        r.line(format!("### {}\n", part.name));
        for line in &part.notes {
            r.line(line);
        }
        r.line("\n| kill | at (s) | during | takeover (s) |\n|---:|---:|---|---:|");
        for (i, k) in part.kills.iter().enumerate() {
            r.line(format!(
                "| {} | {:.1} | {} | {:.1} |",
                i + 1,
                k.at.as_secs_f64(),
                k.during,
                k.takeover.as_secs_f64()
            ));
        }
        if part.losses.is_empty() {
            r.line("\nLosses: **0**.\n");
        } else {
            r.line(format!("\nLosses: **{}**:\n", part.losses.len()));
            for l in part.losses.iter().take(50) {
                r.line(format!("- {l}"));
            }
        }
        eprintln!(
            "kiln_bench: faults {}: {} SIGKILLs injected, {} losses",
            part.name,
            part.kills.len(),
            part.losses.len()
        );
    }
    r.set("seed", seed);
    r.set("drafts", n);
    r.set("expiring", m);
    r.set("losses", losses);
    r.set(
        "takeoverSeconds",
        kills.iter().map(|x| round(*x, 2)).collect::<Vec<_>>(),
    );
    r.set("publishingLosses", publishing.losses.clone());
    r.set("expiryLosses", expiry.losses.clone());
    r.set("expiryLagP50Seconds", round(expiry.lag_p50, 3));
    r.set("expiryLagMaxSeconds", round(expiry.lag_max, 3));
    if losses > 0 {
        // Written first, so that the losses can be read; then the run fails.
        let out = args.out.clone();
        let machine = crate::report::Machine::describe();
        r.write(&out, &machine, Some(b))?;
        bail!(
            "{losses} losses under fault injection; see {}",
            out.display()
        );
    }
    Ok(r)
}

struct Part {
    name: &'static str,
    size: String,
    kills: Vec<Kill>,
    losses: Vec<String>,
    notes: Vec<String>,
    lag_p50: f64,
    lag_max: f64,
}

/// Edits a draft's content (a new title): a new content to publish.
async fn edit(api: &Api<Draft>, name: &str) -> anyhow::Result<()> {
    let patch = json!({"spec": {"config": {"metadata": {"title": format!("Edited {name}")}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("editing draft {name}"))?;
    Ok(())
}

async fn publishing(b: &Bench, args: &Args, rng: &mut Rng, n: usize) -> anyhow::Result<Part> {
    let ns = b.namespace("faults-publish").await;
    let mut kiln = start_kiln(b, &ns, &[]).await;
    let api = Api::<Draft>::namespaced(b.client.clone(), &ns);
    let start = Instant::now();
    let mut kills = Vec::new();

    // Wave 1: create N publishing drafts; two kills while they converge.
    let drafts: Vec<Draft> = (0..n)
        .map(|i| bench_draft(&draft_name(i), None, true))
        .collect();
    let creating = tokio::spawn(create_drafts(api.clone(), drafts, args.in_flight(n)));
    for _ in 0..2 {
        tokio::time::sleep(rng.millis(300, 4000)).await;
        kills.push(kill_and_restart(&mut kiln, start, "convergence of new drafts").await);
    }
    creating.await??;

    // Wave 2: new content for one draft in five, and two more kills while it is published.
    let edited: Vec<String> = (0..n).step_by(5).map(draft_name).collect();
    let editing = {
        let (api, edited) = (api.clone(), edited.clone());
        tokio::spawn(async move {
            for name in &edited {
                edit(&api, name).await?;
            }
            anyhow::Ok(())
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(rng.millis(100, 3000)).await;
        kills.push(kill_and_restart(&mut kiln, start, "publishing new content").await);
    }
    editing.await??;

    // Then let it finish: every draft converged on its current spec.
    let deadline =
        Instant::now() + Duration::from_secs(300) + Duration::from_millis(300) * n as u32;
    let all = loop {
        let list = api
            .list(&ListParams::default())
            .await
            .context("listing drafts")?;
        let done = list.items.iter().filter(|d| converged(d)).count();
        if done == n {
            break list.items;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} drafts converged after the kills");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let converged_after = start.elapsed();
    let mut notes = Vec::new();
    let mut losses = Vec::new();
    for pause in [Duration::from_secs(8), Duration::from_secs(25)] {
        let outage = api_server_stop(b, &mut kiln, &api, pause, n).await?;
        notes.push(outage.note);
        losses.extend(outage.losses);
    }
    stop_kiln(&mut kiln)?;

    // The check: what the cluster holds.
    let cms = Api::<ConfigMap>::namespaced(b.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_KILN
        )))
        .await
        .context("listing ConfigMaps")?;
    let mut revisions: HashMap<String, BTreeMap<i64, BTreeMap<String, String>>> = HashMap::new();
    let mut published: HashMap<String, (i64, BTreeMap<String, String>)> = HashMap::new();
    for cm in cms.items {
        let l = cm.labels();
        // Both roles carry the revision as an annotation (revisions as a label too).
        let (Some(id), Some(role), Some(rev)) = (
            l.get(labels::CONFIG_ID).cloned(),
            l.get(labels::ROLE).cloned(),
            cm.annotations()
                .get(labels::REVISION)
                .and_then(|r| r.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let data = cm.data.clone().unwrap_or_default();
        if role == labels::ROLE_REVISION {
            revisions.entry(id).or_default().insert(rev, data);
        } else if role == labels::ROLE_PUBLISHED {
            published.insert(id, (rev, data));
        }
    }
    let mut total_revisions = 0;
    for d in &all {
        let name = d.name_any();
        let was_edited = edited.contains(&name);
        let revs = revisions.remove(&name).unwrap_or_default();
        total_revisions += revs.len();
        let numbers: Vec<i64> = revs.keys().copied().collect();
        let expected: Vec<i64> = (1..=numbers.len() as i64).collect();
        if numbers != expected {
            losses.push(format!(
                "{name}: revisions {numbers:?}, not 1..={} (skipped)",
                numbers.len()
            ));
        }
        let max = if was_edited { 2 } else { 1 };
        if revs.is_empty() || revs.len() > max {
            losses.push(format!(
                "{name}: {} revisions for {max} content(s) (duplicate or missing)",
                revs.len()
            ));
        }
        let datas: Vec<&BTreeMap<String, String>> = revs.values().collect();
        for (i, a) in datas.iter().enumerate() {
            if datas[i + 1..].contains(a) {
                losses.push(format!(
                    "{name}: two revisions with the same data (duplicate)"
                ));
            }
        }
        let status_rev = d
            .status
            .as_ref()
            .and_then(|s| s.published.as_ref())
            .map(|p| p.revision);
        let last = revs.iter().next_back();
        if status_rev != last.map(|(r, _)| *r) {
            losses.push(format!(
                "{name}: status names revision {status_rev:?}, the last is {:?}",
                last.map(|(r, _)| *r)
            ));
        }
        match (published.get(&name), last) {
            (Some((rev, data)), Some((last_rev, last_data))) => {
                if rev != last_rev || data != last_data {
                    losses.push(format!(
                        "{name}: the published ConfigMap holds revision {rev}, the last is {last_rev}"
                    ));
                }
            }
            _ => losses.push(format!("{name}: no published ConfigMap")),
        }
        // The last revision holds the current content.
        if let Some((_, data)) = last {
            let title = if was_edited {
                format!("Edited {name}")
            } else {
                format!("Benchmark config {name}")
            };
            if !data.values().any(|v| v.contains(&title)) {
                losses.push(format!(
                    "{name}: the last revision does not hold the current content"
                ));
            }
        }
    }
    for (id, _) in revisions {
        losses.push(format!("revisions of {id}, which is no draft"));
    }
    notes.insert(
        0,
        format!(
            "{n} publishing drafts created at once, then one in five ({}) given new content; \
             Kiln killed twice during each wave. All {n} converged {:.1} s after the first \
             create. Revision ConfigMaps: {total_revisions} for {} contents at most (content \
             edited before its first version was published is published once).\n",
            edited.len(),
            converged_after.as_secs_f64(),
            n + edited.len()
        ),
    );
    Ok(Part {
        name: "publishing",
        size: format!("{n} drafts"),
        kills,
        losses,
        notes,
        lag_p50: 0.0,
        lag_max: 0.0,
    })
}

async fn expiry(b: &Bench, rng: &mut Rng, m: usize) -> anyhow::Result<Part> {
    let ns = b.namespace("faults-expiry").await;
    let mut kiln = start_kiln(b, &ns, &[]).await;
    let api = Api::<Draft>::namespaced(b.client.clone(), &ns);
    let mut watch = DraftWatch::start(api.clone()).await?;
    // One retention for all, created one after the other: they expire over the seconds the
    // creates took, and the kill lands among them.
    let retention = "30s";
    let start = Instant::now();
    for i in 0..m {
        let d = bench_draft(&format!("expiring-{i:05}"), Some(retention), false);
        api.create(&PostParams::default(), &d)
            .await
            .with_context(|| format!("creating draft {i}"))?;
    }
    let created = start.elapsed();
    // Until the first expiresAt is known; then kill at a random moment among the expiries.
    let mut expires_at: HashMap<String, Timestamp> = HashMap::new();
    let mut deleted: HashMap<String, Timestamp> = HashMap::new();
    fn observe(
        s: Sighting,
        expires_at: &mut HashMap<String, Timestamp>,
        deleted: &mut HashMap<String, Timestamp>,
    ) {
        let (Seen::Applied(d) | Seen::Deleted(d)) = &s.seen;
        if let Some(at) = d.status.as_ref().and_then(|st| st.expires_at.as_ref()) {
            expires_at.insert(d.name_any(), at.0);
        }
        if let Seen::Deleted(d) = &s.seen {
            deleted.insert(d.name_any(), s.wall);
        }
    }
    let wait_deadline = Instant::now() + Duration::from_secs(120);
    while expires_at.len() < m {
        let Some(s) = watch.next(wait_deadline).await else {
            bail!(
                "only {} of {m} drafts got status.expiresAt",
                expires_at.len()
            );
        };
        observe(s, &mut expires_at, &mut deleted);
    }
    let first = *expires_at.values().min().context("no expiry")?;
    let last = *expires_at.values().max().context("no expiry")?;
    let spread = last.duration_since(first).as_secs_f64().max(1.0);
    let until_first = first
        .duration_since(Timestamp::now())
        .as_secs_f64()
        .max(0.0);
    let kill_after = Duration::from_secs_f64(until_first) + rng.millis(0, (spread * 1000.0) as u64);
    let kill_deadline = Instant::now() + kill_after;
    while let Some(s) = watch.next(kill_deadline).await {
        observe(s, &mut expires_at, &mut deleted);
    }
    let before_kill = deleted.len();
    let kill = kill_and_restart(&mut kiln, start, "expiry of many drafts").await;
    let ready_at = Timestamp::now();
    let bound = Duration::from_secs(60);
    let deadline = Instant::now() + bound;
    while deleted.len() < m {
        let Some(s) = watch.next(deadline).await else {
            break;
        };
        observe(s, &mut expires_at, &mut deleted);
    }
    stop_kiln(&mut kiln)?;

    let mut losses = Vec::new();
    let mut lags = Vec::new();
    for (name, at) in &expires_at {
        match deleted.get(name) {
            Some(when) => {
                let lag = when.duration_since(*at).as_secs_f64();
                if lag < 0.0 {
                    losses.push(format!(
                        "{name}: deleted {:.3} s before its expiresAt (early)",
                        -lag
                    ));
                }
                lags.push(lag);
            }
            None => losses.push(format!(
                "{name}: still there {} s after the restart (kept late)",
                bound.as_secs()
            )),
        }
    }
    let lag_p50 = quantile(&lags, 0.5);
    let lag_max = lags.iter().copied().fold(0.0, f64::max);
    let notes = vec![format!(
        "{m} drafts with `retention: {retention}` created one after the other in {:.1} s, so \
         they expire over {spread:.1} s; Kiln killed {:.1} s after the first expiresAt, when \
         {before_kill} had been deleted, and ready again at {ready_at}. Lag from expiresAt to \
         the deletion the benchmark's watch saw: p50 {lag_p50:.1} s, max {lag_max:.1} s (the \
         kill's takeover is in it). Bound for \"kept late\": deleted within {} s of the restart.",
        created.as_secs_f64(),
        kill_after.as_secs_f64() - until_first,
        bound.as_secs()
    )];
    Ok(Part {
        name: "expiry",
        size: format!("{m} drafts"),
        kills: vec![kill],
        losses,
        notes,
        lag_p50,
        lag_max,
    })
}

struct Outage {
    note: String,
    losses: Vec<String>,
}

/// The kube-apiserver's pid, from the control plane's `pids` file (`name pid` lines).
fn api_server_pid(b: &Bench) -> anyhow::Result<i32> {
    let pids = std::fs::read_to_string(b.cp.dir.join("pids"))
        .context("reading the control plane's pids")?;
    pids.lines()
        .filter_map(|l| l.strip_prefix("kube-apiserver "))
        .filter_map(|p| p.trim().parse().ok())
        .next_back()
        .context("no kube-apiserver in the control plane's pids")
}

/// Whether the operator's process still runs (a zombie does not).
fn running(kiln: &Operator) -> bool {
    kiln.pid().is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            == Some(false)
    })
}

/// The API server stopped (SIGSTOP) for `pause`, then resumed: does Kiln come back without a
/// write storm, and does it publish an edit made afterwards?
async fn api_server_stop(
    b: &Bench,
    kiln: &mut Operator,
    api: &Api<Draft>,
    pause: Duration,
    n: usize,
) -> anyhow::Result<Outage> {
    let pid = api_server_pid(b)?;
    let before = b.requests()?;
    // SAFETY: plain signals to a process of our own control plane.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(pause).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Time for watches to reconnect (or relist) and for anything they cause to be written.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let exited = !running(kiln);
    let mut restart = String::new();
    if exited {
        // As designed when the Lease could not be renewed: the process exits, and in a pod
        // the kubelet starts it again. Here the benchmark does.
        let t = Instant::now();
        kiln.kill();
        kiln.start_again().await;
        restart = format!(
            " Kiln exited (it could not renew its 15 s Lease) and was started again: ready in \
             {:.1} s.",
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let after_outage = b.requests()?.since(&before).kiln_writes();
    // Then an edit of 10 drafts must be published as usual.
    let edits: Vec<String> = (1..n)
        .step_by((n / 10).max(1))
        .take(10)
        .map(draft_name)
        .collect();
    let before_edits = b.requests()?;
    for name in &edits {
        let patch =
            json!({"spec": {"description": format!("after a {}s outage", pause.as_secs())}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("editing draft {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let t = Instant::now();
    let mut losses = Vec::new();
    loop {
        let mut pending = 0;
        for name in &edits {
            if !converged(
                &api.get(name)
                    .await
                    .with_context(|| format!("reading {name}"))?,
            ) {
                pending += 1;
            }
        }
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            losses.push(format!(
                "{pending} of {} drafts edited after a {} s API server stop not converged in 120 s",
                edits.len(),
                pause.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let edit_s = t.elapsed().as_secs_f64();
    // Settle, then count: the edits' own writes, and Kiln's for them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let edit_writes = b.requests()?.since(&before_edits).kiln_writes();
    // A description is not published content: one status write per draft is what it needs
    // (plus the benchmark's own patch). Anything near N would be a storm.
    let bound = 4.0 * edits.len() as f64;
    if after_outage > 0.0 {
        losses.push(format!(
            "{after_outage} writes to Kiln's kinds and ConfigMaps after a {} s API server stop, \
             with nothing changed (expected 0)",
            pause.as_secs()
        ));
    }
    if edit_writes > bound {
        losses.push(format!(
            "{edit_writes} writes for {} edits after a {} s API server stop (bound {bound})",
            edits.len(),
            pause.as_secs()
        ));
    }
    Ok(Outage {
        note: format!(
            "- kube-apiserver stopped (SIGSTOP) for {} s and resumed.{restart} Writes to Kiln's \
             kinds and ConfigMaps in the 20 s after (nothing had changed): **{after_outage}**. \
             Then {} drafts edited: converged in {edit_s:.1} s, {edit_writes} writes in all \
             (the {} edits included).",
            pause.as_secs(),
            edits.len(),
            edits.len()
        ),
        losses,
    })
}
