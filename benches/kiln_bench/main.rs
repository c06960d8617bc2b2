//! Kiln's benchmarks (the performance bars in `benches/README.md`): every number is measured against a
//! baseline in the same run, on a real control plane, and written to `benches/results/`.
//!
//! ```text
//! cargo bench --bench kiln_bench                       # quick version of every scenario
//! cargo bench --bench kiln_bench -- --full             # the full sizes
//! cargo bench --bench kiln_bench -- convergence --n 1000
//! cargo bench --bench kiln_bench -- upload --full
//! cargo bench --bench kiln_bench -- peers --full       # vs ESO and the TTL controller
//! ```
//!
//! "Every scenario" leaves out the peers (`peers`, `peers-credentials`, `peers-expiry`):
//! they run only when named, since their first run builds External Secrets Operator.
//!
//! See `benches/README.md` for what each scenario measures and how to read the results.
//!
//! The binary only runs when cargo passes `--bench` (as `cargo bench` does): `cargo test
//! --all-targets` builds it and runs it without that flag, and it must not start a control
//! plane there.

#[path = "../../tests/support/mod.rs"]
mod support;

mod archive;
mod cluster;
mod drafts;
mod eso;
mod faults;
mod floor;
mod followers;
mod object_store;
mod peers_credentials;
mod peers_expiry;
mod peers_math;
mod report;
mod upload;

use std::time::Instant;

use clap::{Parser, ValueEnum};

/// The scenarios, in the order a full run takes them (the 10,000-draft world after the other
/// draft scenarios, so that it does not slow them down; the archive needs no control plane).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// N drafts with `publish`, applied at once, until Ready and published; vs the same
    /// writes sent directly.
    Convergence,
    /// Writes sent by a restart and by resyncs of the converged world (expected: 0).
    Economy,
    /// Lag between `status.expiresAt` and the observed deletion.
    Expiry,
    /// Peak RSS of the operator with N drafts and their ConfigMaps, vs idle.
    Memory,
    /// `Workspace::build_archive` vs `zip -r -q` on the same files.
    Archive,
    /// Uploads through the Job file API vs `std::fs::write` and durable writes of the same
    /// files.
    Upload,
    /// Uploads through Kiln with an object store vs direct PUTs to the same S3 server; restore
    /// of a 100 MiB job after a pod replacement.
    ObjectStore,
    Followers,
    /// The operator killed (SIGKILL) at random moments of publishing and of expiry; losses
    /// checked (expected: 0). Not part of the default run: name it.
    Faults,
    /// Both peers scenarios (run only when named: the first run builds External Secrets
    /// Operator).
    Peers,
    /// N derived Secrets by Kiln and by External Secrets Operator: time to all, rotation
    /// latency, peak RSS, API requests at rest.
    PeersCredentials,
    /// N Drafts (Kiln) and N batch Jobs (Kubernetes' TTL-after-finished controller) due at
    /// the same instant: the lag of their deletions.
    PeersExpiry,
}

/// Kiln's benchmarks. Results go to `benches/results/`.
#[derive(Parser, Debug, Clone)]
#[command(name = "kiln_bench")]
pub struct Args {
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// Use the full sizes the bars are stated for (N = 1,000 drafts, 10,000 for memory, 50 expiring drafts,
    /// a 2,000-file / 100 MiB project, 1,000 × 10 KiB and 1 × 50 MiB uploads) instead of the
    /// quick ones.
    #[arg(long)]
    pub full: bool,

    /// Drafts for convergence, economy and memory (overrides the default of each).
    #[arg(long)]
    pub n: Option<usize>,

    /// Drafts for the memory scenario only (wins over `--n`).
    #[arg(long)]
    pub memory_n: Option<usize>,

    /// Expiring drafts for the expiry scenario.
    #[arg(long)]
    pub m: Option<usize>,

    /// Client concurrency: how many requests the benchmark keeps in flight when it creates
    /// drafts, and how many drafts the direct-write baseline handles at once. 0 = unbounded.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// `kiln run --concurrency`: reconciles Kiln runs at once (default: Kiln's own default).
    #[arg(long)]
    pub kiln_concurrency: Option<u16>,

    /// Files in the generated project (archive scenario).
    #[arg(long)]
    pub files: Option<usize>,

    /// Total size of the generated project in MiB (archive scenario).
    #[arg(long)]
    pub mib: Option<u64>,

    /// Small files of 10 KiB uploaded each way (upload scenario).
    #[arg(long)]
    pub uploads: Option<usize>,

    /// Size of the one large upload in MiB (upload scenario).
    #[arg(long)]
    pub upload_mib: Option<u64>,

    /// Objects per operator in the peers scenarios (default 100; 1,000 with `--full`).
    #[arg(long)]
    pub peers_n: Option<usize>,

    /// Source Secrets rotated per operator in the credentials peers scenario (default 20;
    /// 100 with `--full`).
    #[arg(long)]
    pub rotations: Option<usize>,

    /// External Secrets Operator's `--concurrent` (default: Kiln's concurrency).
    #[arg(long)]
    pub eso_concurrent: Option<u16>,

    /// Repetitions of each archive build and of each upload run (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,

    /// Where results are written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results"))]
    pub out: std::path::PathBuf,

    /// Passed by `cargo bench`; without it the binary does nothing (see the module docs).
    #[arg(long, hide = true)]
    pub bench: bool,

    /// Internal: build the archive of the one job in this workspace and print the numbers
    /// (run in a child process so that its peak memory can be read on its own).
    #[arg(long, hide = true, value_name = "WORKSPACE")]
    pub archive_child: Option<std::path::PathBuf>,
}

impl Args {
    pub fn drafts(&self) -> usize {
        self.n.unwrap_or(if self.full { 1000 } else { 100 })
    }
    pub fn memory_drafts(&self) -> usize {
        self.memory_n
            .or(self.n)
            .unwrap_or(if self.full { 10_000 } else { 300 })
    }
    pub fn expiring(&self) -> usize {
        self.m.unwrap_or(if self.full { 50 } else { 20 })
    }
    pub fn project_files(&self) -> usize {
        self.files.unwrap_or(if self.full { 2000 } else { 400 })
    }
    pub fn project_mib(&self) -> u64 {
        self.mib.unwrap_or(if self.full { 100 } else { 20 })
    }
    pub fn small_uploads(&self) -> usize {
        self.uploads.unwrap_or(if self.full { 1000 } else { 200 })
    }
    pub fn large_upload_mib(&self) -> u64 {
        self.upload_mib.unwrap_or(if self.full { 50 } else { 10 })
    }
    /// The concurrency as a `buffer_unordered` limit.
    /// Workloads following one published config.
    pub fn followers(&self) -> usize {
        self.n.unwrap_or(if self.full { 50 } else { 10 })
    }
    /// Objects per operator in the peers scenarios.
    pub fn peer_objects(&self) -> usize {
        self.peers_n.unwrap_or(if self.full { 1000 } else { 100 })
    }
    pub fn rotations(&self) -> usize {
        self.rotations.unwrap_or(if self.full { 100 } else { 20 })
    }
    pub fn in_flight(&self, n: usize) -> usize {
        if self.concurrency == 0 {
            n.max(1)
        } else {
            self.concurrency
        }
    }
}

fn main() -> anyhow::Result<()> {
    // libtest-style flags cargo may pass in test mode (`--test-threads=4`, filters) are not
    // ours: ignore the command line entirely unless cargo said `--bench`.
    let raw: Vec<String> = std::env::args().collect();
    if !raw
        .iter()
        .any(|a| a == "--bench" || a.starts_with("--archive-child"))
    {
        println!(
            "kiln_bench: run it with `cargo bench --bench kiln_bench` (see benches/README.md)"
        );
        return Ok(());
    }
    let args = Args::parse();
    if let Some(root) = &args.archive_child {
        return archive::child(root);
    }
    // Benchmarks that quote write rates run etcd with fsync on, unless told otherwise.
    if std::env::var_os("KILN_ETCD_FSYNC").is_none() {
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var("KILN_ETCD_FSYNC", "1") };
    }
    let mut scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Convergence,
            Scenario::Economy,
            Scenario::Expiry,
            Scenario::Memory,
            Scenario::Archive,
            Scenario::Upload,
            Scenario::ObjectStore,
            Scenario::Followers,
        ]
    } else {
        args.scenarios.clone()
    };
    if let Some(i) = scenarios.iter().position(|s| *s == Scenario::Peers) {
        scenarios.splice(i..=i, [Scenario::PeersCredentials, Scenario::PeersExpiry]);
    }
    scenarios.sort();
    scenarios.dedup();
    if scenarios.contains(&Scenario::PeersExpiry) {
        // The TTL-after-finished controller is the expiry scenario's peer.
        let mut extra = std::env::var("KILN_CP_EXTRA_CONTROLLERS").unwrap_or_default();
        if !extra.split(',').any(|c| c == peers_expiry::TTL_CONTROLLER) {
            if !extra.is_empty() {
                extra.push(',');
            }
            extra.push_str(peers_expiry::TTL_CONTROLLER);
            // SAFETY: no other thread exists yet (the runtime is built below).
            unsafe { std::env::set_var("KILN_CP_EXTRA_CONTROLLERS", extra) };
        }
    }
    std::fs::create_dir_all(&args.out)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(run(&args, &scenarios))?;
    eprintln!(
        "kiln_bench: done in {:.0}s; results in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

async fn run(args: &Args, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let machine = report::Machine::describe();
    let needs_cluster = scenarios.iter().any(|s| *s != Scenario::Archive);
    // The warm-up writes drafts: only the draft scenarios gain from it.
    let needs_warm_up = scenarios.iter().any(|s| *s < Scenario::Archive);
    let mut converged: Option<drafts::World> = None;
    let bench = if needs_cluster {
        let b = cluster::Bench::start(args.kiln_concurrency).await?;
        if needs_warm_up {
            drafts::warm_up(&b, args).await?;
        }
        Some(b)
    } else {
        None
    };
    for scenario in scenarios {
        eprintln!("kiln_bench: {scenario:?}");
        let report = match (scenario, &bench) {
            (Scenario::Archive, _) => {
                // On a blocking thread, not a runtime worker: operators are children of the
                // worker threads and die with the thread that started them (PDEATHSIG).
                let args = args.clone();
                tokio::task::spawn_blocking(move || archive::run(&args)).await??
            }
            (_, None) => unreachable!("the control plane starts for every cluster scenario"),
            (Scenario::Convergence, Some(b)) => {
                let (report, world) = drafts::convergence(b, args).await?;
                converged = Some(world);
                report
            }
            (Scenario::Economy, Some(b)) => {
                let world = match converged.take() {
                    Some(w) => w,
                    None => drafts::converged_world(b, args).await?,
                };
                drafts::economy(b, args, world).await?
            }
            (Scenario::Expiry, Some(b)) => drafts::expiry(b, args).await?,
            (Scenario::Memory, Some(b)) => drafts::memory(b, args).await?,
            (Scenario::Upload, Some(b)) => upload::run(b, args).await?,
            (Scenario::ObjectStore, Some(b)) => object_store::run(b, args).await?,
            (Scenario::Followers, Some(b)) => followers::run(b, args).await?,
            (Scenario::Faults, Some(b)) => faults::run(b, args).await?,
            (Scenario::PeersCredentials, Some(b)) => peers_credentials::run(b, args).await?,
            (Scenario::PeersExpiry, Some(b)) => peers_expiry::run(b, args).await?,
            (Scenario::Peers, Some(_)) => unreachable!("expanded into its two scenarios"),
        };
        // The converged world's operator is only kept for the economy scenario.
        if *scenario != Scenario::Convergence
            && let Some(world) = converged.take()
        {
            world.stop();
        }
        let paths = report.write(&args.out, &machine, bench.as_ref())?;
        for p in paths {
            eprintln!("kiln_bench: wrote {}", p.display());
        }
    }
    if let Some(world) = converged.take() {
        world.stop();
    }
    Ok(())
}
