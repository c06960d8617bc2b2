//! Scenario 5: `Workspace::build_archive` (the library call the Job controller makes) against
//! `zip -r -q` on the same files, in the same run. Each build runs in its own process, so that
//! its peak resident memory is its own: Kiln's in a child of this benchmark (this binary with
//! `--archive-child`), zip as itself; both peaks come from `wait4`'s `ru_maxrss`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use kiln::workspace::{JobKey, JobPath, Limits, Workspace};

use crate::Args;
use crate::cluster::memory_of;
use crate::report::{Report, median, mib, round};

const MIB: u64 = 1024 * 1024;
const NAMESPACE: &str = "bench";
const UID: &str = "6d1c3a52-8c1e-4d8a-9b7e-000000000001";

/// Room for a project larger than the default 100 MiB job limit.
fn limits() -> Limits {
    Limits {
        max_file_bytes: 64 * MIB,
        max_job_bytes: 16 * 1024 * MIB,
        max_files_per_job: 1_000_000,
        max_workspace_bytes: 16 * 1024 * MIB,
    }
}

fn job() -> anyhow::Result<JobKey> {
    Ok(JobKey::new(NAMESPACE, UID)?)
}

/// xorshift64*: deterministic, fast, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Source-like text (compresses about 3-4×).
    Text,
    /// Random bytes (images, already-compressed assets: deflate gains nothing).
    Binary,
}

struct Planned {
    path: String,
    size: u64,
    kind: Kind,
}

/// `files` files of `total` bytes: 60% small text (0.5-8 KiB), 35% medium text (8-64 KiB),
/// 5% large (half text, half binary) taking the rest.
fn plan(files: usize, total: u64, rng: &mut Rng) -> Vec<Planned> {
    let large = (files / 20).max(1);
    let small = files * 60 / 100;
    let mut sizes: Vec<(u64, Kind)> = (0..files - large)
        .map(|i| {
            let size = if i < small {
                rng.range(512, 8 * 1024)
            } else {
                rng.range(8 * 1024, 64 * 1024)
            };
            (size, Kind::Text)
        })
        .collect();
    let fixed: u64 = sizes.iter().map(|(s, _)| s).sum();
    // Small totals: shrink the small and medium files so that the large ones keep ~70%.
    let fixed = if fixed * 10 > total * 3 {
        let scale = (total * 3) as f64 / (fixed * 10) as f64;
        for (s, _) in &mut sizes {
            *s = ((*s as f64 * scale) as u64).max(1);
        }
        sizes.iter().map(|(s, _)| s).sum()
    } else {
        fixed
    };
    let rest = total.saturating_sub(fixed);
    let weights: Vec<u64> = (0..large).map(|_| rng.range(1, 4)).collect();
    let sum: u64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let kind = if i % 2 == 0 { Kind::Binary } else { Kind::Text };
        sizes.push((rest * w / sum, kind));
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, (size, kind))| {
            let ext = match kind {
                Kind::Binary => "png",
                Kind::Text => ["rs", "ts", "md", "json", "yaml"][i % 5],
            };
            Planned {
                path: format!(
                    "src/module{:02}/part{}/file{i:05}.{ext}",
                    i % 20,
                    (i / 20) % 5
                ),
                size,
                kind,
            }
        })
        .collect()
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "self",
    "return",
    "if",
    "else",
    "match",
    "struct",
    "impl",
    "pub",
    "use",
    "async",
    "await",
    "config",
    "value",
    "result",
    "error",
    "request",
    "response",
    "name",
    "id",
    "data",
    "items",
    "index",
    "count",
    "string",
    "number",
    "true",
    "false",
    "None",
    "Some(x)",
    "Ok(())",
    "Err(e)",
    "=>",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "->",
    "::",
    ".",
    ",",
    "//",
    "0",
    "1",
    "42",
    "\"hello\"",
    "content",
    "artifact",
    "generation",
    "patterns",
    "template",
    "model",
    "kiln",
    "draft",
    "job",
    "workspace",
    "archive",
    "files",
    "path",
    "size",
];

fn content(size: u64, kind: Kind, rng: &mut Rng) -> Vec<u8> {
    let size = size as usize;
    let mut out = Vec::with_capacity(size + 128);
    match kind {
        Kind::Binary => {
            while out.len() < size {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
        Kind::Text => {
            while out.len() < size {
                let indent = rng.range(0, 4) as usize * 4;
                out.extend(std::iter::repeat_n(b' ', indent));
                for w in 0..rng.range(3, 12) {
                    if w > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(
                        WORDS[rng.range(0, WORDS.len() as u64) as usize].as_bytes(),
                    );
                }
                out.push(b'\n');
            }
        }
    }
    out.truncate(size);
    out
}

/// One build: how long, how big, its sha256, and the process's peak RSS.
struct Build {
    seconds: f64,
    size_bytes: u64,
    sha256: String,
    peak_kib: u64,
    /// Kiln only: the child's peak before `build_archive` (after opening the workspace).
    peak_before_kib: u64,
}

/// Runs a command to completion; returns how long it took, its peak RSS (KiB) and its
/// stdout. The peak is the child's own `VmHWM`, polled until it exits (monotonic, so the last
/// reading is the peak up to then). Not `ru_maxrss` from `wait4`: Linux carries the parent's
/// high-water mark over a vfork + exec, so every child would report at least ours.
fn run_measured(cmd: &mut Command) -> anyhow::Result<(Duration, u64, String)> {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("spawning")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(m) = memory_of(child.id()) {
            peak = peak.max(m.hwm_kib);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {out}");
    }
    Ok((elapsed, peak, out))
}

fn kiln_build(root: &Path) -> anyhow::Result<Build> {
    let exe = std::env::current_exe()?;
    let (_, polled_kib, out) = run_measured(Command::new(exe).arg("--archive-child").arg(root))?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("archive child printed {out:?}"))?;
    let hwm = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Build {
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        size_bytes: v["sizeBytes"].as_u64().unwrap_or(0),
        sha256: v["sha256"].as_str().unwrap_or_default().to_string(),
        // The child reads its own VmHWM after the build: exact, where polling may miss the end.
        peak_kib: polled_kib.max(hwm("hwmAfterKiB")),
        peak_before_kib: hwm("hwmBeforeKiB"),
    })
}

/// `zip -r -q` (deflate level 6, zip's default, as Kiln's archives use).
fn zip_build(files_dir: &Path, out: &Path) -> anyhow::Result<Build> {
    match std::fs::remove_file(out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let (elapsed, peak_kib, _) = run_measured(
        Command::new("zip")
            .args(["-r", "-q"])
            .arg(out)
            .arg(".")
            .current_dir(files_dir),
    )
    .context("running zip (Debian package `zip`)")?;
    Ok(Build {
        seconds: elapsed.as_secs_f64(),
        size_bytes: std::fs::metadata(out)?.len(),
        sha256: String::new(),
        peak_kib,
        peak_before_kib: 0,
    })
}

/// The extra work Kiln's build does that `zip` does not: fsync the archive, hash it.
fn sync_and_hash(path: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut f = std::fs::File::open(path)?;
    f.sync_all()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    let _ = hasher.finalize();
    Ok(start.elapsed().as_secs_f64())
}

/// Internal `--archive-child <workspace>`: build the one job's archive and print the numbers
/// as one JSON line.
pub fn child(root: &Path) -> anyhow::Result<()> {
    let ws = Workspace::open(root, limits())?;
    let job = job()?;
    let before = memory_of(std::process::id())?;
    let start = Instant::now();
    let info = ws.build_archive(&job)?;
    let seconds = start.elapsed().as_secs_f64();
    let after = memory_of(std::process::id())?;
    println!(
        "{}",
        json!({"seconds": seconds, "sizeBytes": info.size_bytes, "sha256": info.sha256,
               "hwmBeforeKiB": before.hwm_kib, "hwmAfterKiB": after.hwm_kib})
    );
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    let (files, total_mib, reps) = (args.project_files(), args.project_mib(), args.reps.max(1));
    let total = total_mib * MIB;
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-archive-")
        .tempdir()?;
    let root: PathBuf = dir.path().join("workspace");
    let zip_out = dir.path().join("zip-r.zip");

    // The project, written through the workspace (atomic, fsynced writes) as uploads would be.
    let generated = Instant::now();
    let (files_dir, text_bytes, binary_bytes) = {
        let ws = Workspace::open(&root, limits())?;
        let job = job()?;
        ws.ensure_job(&job)?;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut text, mut binary) = (0, 0);
        for f in plan(files, total, &mut rng) {
            let data = content(f.size, f.kind, &mut rng);
            match f.kind {
                Kind::Text => text += data.len() as u64,
                Kind::Binary => binary += data.len() as u64,
            }
            ws.write(&job, &JobPath::parse(&f.path)?, &data)?;
        }
        (ws.job_dir(&job).join("files"), text, binary)
    };
    let input = text_bytes + binary_bytes;
    eprintln!(
        "kiln_bench: generated {files} files, {:.1} MiB, in {:.1}s",
        input as f64 / MIB as f64,
        generated.elapsed().as_secs_f64()
    );

    // Warm the page cache for both (the files were just written, but evenly is fairer).
    kiln_build(&root)?;
    let mut kiln = Vec::new();
    let mut zip = Vec::new();
    let mut extra = Vec::new();
    for rep in 0..reps {
        // Alternate who goes first, so that neither always meets a busier machine.
        if rep % 2 == 0 {
            kiln.push(kiln_build(&root)?);
            zip.push(zip_build(&files_dir, &zip_out)?);
        } else {
            zip.push(zip_build(&files_dir, &zip_out)?);
            kiln.push(kiln_build(&root)?);
        }
        extra.push(sync_and_hash(&zip_out)?);
    }
    let deterministic = kiln.windows(2).all(|w| w[0].sha256 == w[1].sha256);

    let k = median(&kiln.iter().map(|b| b.seconds).collect::<Vec<_>>());
    let z = median(&zip.iter().map(|b| b.seconds).collect::<Vec<_>>());
    let zx = median(&extra);
    let mb = input as f64 / 1e6;
    let k_peak = kiln.iter().map(|b| b.peak_kib).max().unwrap_or(0);
    let k_before = kiln.iter().map(|b| b.peak_before_kib).max().unwrap_or(0);
    let z_peak = zip.iter().map(|b| b.peak_kib).max().unwrap_or(0);
    let (k_size, z_size) = (kiln[0].size_bytes, zip[0].size_bytes);

    let mut r = Report::new(
        format!("archive-{files}files-{total_mib}mib"),
        &format!(
            "Archives: {files} files, {:.0} MiB",
            input as f64 / MIB as f64
        ),
        false,
    );
    r.line(format!(
        "A generated project of {files} files ({:.1} MiB of source-like text, {:.1} MiB of \
         random binary; 60% small, 35% medium, 5% large files in 100 directories), written \
         through `Workspace::write`. Kiln: `Workspace::build_archive` (release build, deflate \
         level 6 via zlib-rs, timed around the call in a child process: includes its fsync of \
         the archive and the sha256 pass over it). Baseline: `zip -r -q` (Info-ZIP 3.0, level \
         6, process start to exit) on the same directory. Median of {reps} runs each, \
         alternating, after one untimed warm-up build; files are in the page cache for both.\n",
        text_bytes as f64 / MIB as f64,
        binary_bytes as f64 / MIB as f64,
    ));
    r.line("| build | time (s) | throughput (MB/s of input) | archive (MiB) | peak RSS (MiB) |");
    r.line("|---|---:|---:|---:|---:|");
    r.line(format!(
        "| **Kiln** `build_archive` | **{k:.2}** | **{:.1}** | {:.1} | {:.1} |",
        mb / k,
        k_size as f64 / MIB as f64,
        mib(k_peak)
    ));
    r.line(format!(
        "| `zip -r -q` | {z:.2} | {:.1} | {:.1} | {:.1} |",
        mb / z,
        z_size as f64 / MIB as f64,
        mib(z_peak)
    ));
    r.line(format!(
        "| `zip -r -q`, then fsync + sha256 of its output (what Kiln also does) | {:.2} | {:.1} | | |",
        z + zx,
        mb / (z + zx)
    ));
    r.line(format!(
        "\nKiln's throughput is **{:.2}×** zip's ({:.2}× counting the fsync and hash zip does \
         not do); Kiln's archive is {:.3}× the size of zip's. Peak RSS is each process's `VmHWM`; \
         Kiln's process peaked at {:.1} MiB before the build (benchmark binary + opening the \
         workspace), so the build itself added {:.1} MiB. Same sha256 on every build: \
         {deterministic}.",
        z / k,
        (z + zx) / k,
        k_size as f64 / z_size as f64,
        mib(k_before),
        mib(k_peak.saturating_sub(k_before))
    ));

    r.set("files", files);
    r.set("inputBytes", input);
    r.set("textBytes", text_bytes);
    r.set("binaryBytes", binary_bytes);
    r.set("reps", reps);
    r.set(
        "kiln",
        json!({"seconds": round(k, 3), "mbPerSecond": round(mb / k, 1), "archiveBytes": k_size,
               "peakRssKiB": k_peak, "peakRssBeforeBuildKiB": k_before, "runs": kiln.iter().map(|b| round(b.seconds, 3)).collect::<Vec<_>>(),
               "deterministic": deterministic}),
    );
    r.set(
        "zip",
        json!({"seconds": round(z, 3), "mbPerSecond": round(mb / z, 1), "archiveBytes": z_size,
               "peakRssKiB": z_peak, "runs": zip.iter().map(|b| round(b.seconds, 3)).collect::<Vec<_>>(),
               "fsyncAndSha256Seconds": round(zx, 3)}),
    );
    r.set("throughputRatioKilnToZip", round(z / k, 2));
    r.set(
        "throughputRatioKilnToZipWithSyncAndHash",
        round((z + zx) / k, 2),
    );
    Ok(r)
}
