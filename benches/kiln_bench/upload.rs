//! Scenario 6: uploads through the Job file API (`PUT .../files/{path}` with one client and
//! with several, `POST .../files/batch`, one large `PUT`) against writing the same files
//! straight to the same filesystem, in the same run: with `std::fs::write` (page cache only)
//! and durably, as Kiln writes (temporary file, fsync, rename, fsync of the directory). Kiln's
//! own view of each request comes from its `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use kiln::api::KilnJob;

use crate::Args;
use crate::cluster::{Bench, kiln_memory, kiln_warnings, start_kiln, stop_kiln, sum_metric};
use crate::report::{Report, median, mib, round};
use crate::support::{HttpBody, Operator, http_get, http_request, noise};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// The size of every small file.
const SMALL_BYTES: usize = 10 * KIB;
/// Clients uploading at once in the concurrent run.
const CLIENTS: usize = 8;
/// Files per `POST .../files/batch`.
const BATCH: usize = 100;
/// Kiln's route templates, as its `/metrics` labels them.
const PUT_ROUTE: &str = "/api/v1/namespaces/{ns}/jobs/{name}/files/{*path}";
const BATCH_ROUTE: &str = "/api/v1/namespaces/{ns}/jobs/{name}/files/batch";
/// How long RBAC and the Job controller get to catch up.
const WAIT: Duration = Duration::from_secs(60);

/// The relative path of small file `i`: ten directories, as a project would spread them.
fn small_path(i: usize) -> String {
    format!("d{}/f{i}.bin", i % 10)
}

/// What Kiln does for each file: temporary file in the target's directory, fsync, rename,
/// fsync of the directory.
pub(crate) fn durable_write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a file path has a parent")?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().context("a file path has a name")?;
    let temp = dir.join(format!(".tmp.{}", name.to_string_lossy()));
    let mut f = std::fs::File::create(&temp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes back everything dirty, untimed, so that no phase pays for an earlier one's
/// writeback (plain writes leave theirs in the page cache).
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Seconds taken by `f`.
fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    settle();
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The small files with `std::fs::write` under `dir`.
fn plain_small(dir: &Path, small: &[Vec<u8>]) -> anyhow::Result<f64> {
    timed(|| {
        for (i, data) in small.iter().enumerate() {
            let path = dir.join(small_path(i));
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            std::fs::write(&path, data)?;
        }
        Ok(())
    })
}

/// The small files with [`durable_write`] under `dir`.
fn durable_small(dir: &Path, small: &[Vec<u8>]) -> anyhow::Result<f64> {
    timed(|| {
        for (i, data) in small.iter().enumerate() {
            durable_write(&dir.join(small_path(i)), data)?;
        }
        Ok(())
    })
}

/// Runs kubectl against the benchmark's control plane; its stdout, or an error with its
/// output.
fn kubectl(b: &Bench, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let out = b.cp.kubectl_stdin(args, input);
    if !out.status.success() {
        bail!("kubectl {} failed: {}{}", out.args, out.stdout, out.stderr);
    }
    Ok(out.stdout)
}

/// Polls `check` every 100 ms until it holds, or fails after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A service account with a Role on `jobs/files` (every verb), as a real uploader would
/// have, and a token for it.
pub(crate) async fn account(b: &Bench, ns: &str, name: &str) -> anyhow::Result<String> {
    kubectl(b, &["create", "serviceaccount", name, "-n", ns], None)?;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": ns},
        "rules": [{"apiGroups": ["kiln.dev"], "resources": ["jobs/files"],
                   "verbs": ["get", "list", "create", "update", "delete"]}],
    });
    kubectl(b, &["apply", "-f", "-"], Some(&role.to_string()))?;
    let sa = format!("--serviceaccount={ns}:{name}");
    let role_flag = format!("--role={name}");
    kubectl(
        b,
        &["create", "rolebinding", name, "-n", ns, &role_flag, &sa],
        None,
    )?;
    // RBAC reaches the authorizer through an informer: wait until it sees the grant.
    let user = format!("--as=system:serviceaccount:{ns}:{name}");
    wait_until("RBAC to grant the new Role", || async {
        b.cp.kubectl(&[
            "auth",
            "can-i",
            "create",
            "jobs.kiln.dev",
            "--subresource=files",
            "-n",
            ns,
            &user,
        ])
        .status
        .success()
    })
    .await?;
    let token = kubectl(
        b,
        &["create", "token", name, "-n", ns, "--duration=1h"],
        None,
    )?;
    Ok(token.trim().to_string())
}

/// The operator, its namespace and an uploader's credentials.
struct Uploader<'a> {
    kiln: &'a Operator,
    ns: String,
    jobs: Api<KilnJob>,
    auth: String,
}

impl Uploader<'_> {
    /// Creates a Job and waits until the Job controller has set up its workspace directory
    /// (untimed: uploads to a Job that is not ready yet wait for it). Returns that directory.
    async fn job(&self, name: &str) -> anyhow::Result<PathBuf> {
        let job: KilnJob = serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"projectName": name},
        }))?;
        let job = self
            .jobs
            .create(&PostParams::default(), &job)
            .await
            .with_context(|| format!("creating job {name}"))?;
        let uid = job.metadata.uid.context("a created job has a uid")?;
        let dir = self
            .kiln
            .workspace
            .join("jobs")
            .join(&self.ns)
            .join(uid)
            .join("files");
        wait_until("the job's workspace directory", || async { dir.is_dir() }).await?;
        Ok(dir)
    }

    fn url(&self, job: &str, rest: &str) -> String {
        format!("/api/v1/namespaces/{}/jobs/{job}/{rest}", self.ns)
    }

    /// `PUT` of one file; it must be created (201).
    async fn put(&self, job: &str, path: &str, data: &[u8]) -> anyhow::Result<()> {
        put(
            self.kiln.http_addr,
            &self.auth,
            &self.url(job, &format!("files/{path}")),
            data,
        )
        .await
    }

    /// The small files, one `PUT` after the other.
    async fn put_sequential(&self, job: &str, small: &[Vec<u8>]) -> anyhow::Result<()> {
        for (i, data) in small.iter().enumerate() {
            self.put(job, &small_path(i), data).await?;
        }
        Ok(())
    }

    /// The small files, one `PUT` after the other over one kept connection.
    async fn put_kept(
        &self,
        client: &reqwest::Client,
        job: &str,
        small: &[Vec<u8>],
    ) -> anyhow::Result<()> {
        let base = format!("http://{}{}", self.kiln.http_addr, self.url(job, "files"));
        for (i, data) in small.iter().enumerate() {
            let url = format!("{base}/{}", small_path(i));
            crate::floor::put(client, &url, Some(&self.auth), data).await?;
        }
        Ok(())
    }

    /// The small files from [`CLIENTS`] clients at once, each taking every `CLIENTS`-th file
    /// one after the other.
    async fn put_concurrent(&self, job: &str, small: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<()> {
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            let (small, addr) = (small.clone(), self.kiln.http_addr);
            let (auth, url) = (self.auth.clone(), self.url(job, "files"));
            clients.spawn(async move {
                for i in (client..small.len()).step_by(CLIENTS) {
                    put(addr, &auth, &format!("{url}/{}", small_path(i)), &small[i]).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = clients.join_next().await {
            done.context("an upload client panicked")??;
        }
        Ok(())
    }

    /// The small files in `POST .../files/batch` requests of [`BATCH`], base64 in JSON (the
    /// encoding is part of the timed work: a client has to do it).
    async fn post_batches(&self, job: &str, small: &[Vec<u8>]) -> anyhow::Result<()> {
        let target = self.url(job, "files/batch");
        for (n, part) in small.chunks(BATCH).enumerate() {
            let files: Vec<Value> = part
                .iter()
                .enumerate()
                .map(|(j, data)| {
                    json!({
                        "path": small_path(n * BATCH + j),
                        "content": base64::engine::general_purpose::STANDARD.encode(data),
                        "encoding": "base64",
                    })
                })
                .collect();
            let body = serde_json::to_vec(&json!({ "files": files }))?;
            let r = http_request(
                self.kiln.http_addr,
                "POST",
                &target,
                &[
                    ("Authorization", &self.auth),
                    ("Content-Type", "application/json"),
                ],
                HttpBody::Bytes(&body),
            )
            .await;
            if r.status != 200 {
                bail!("POST {target}: {} {}", r.status, r.text());
            }
        }
        Ok(())
    }

    /// `kiln_http_request_duration_seconds` `(sum, count)` for a route and method so far
    /// (0 before the first request of that route and method).
    async fn server_time(&self, route: &str, method: &str) -> anyhow::Result<(f64, f64)> {
        let (code, metrics) = http_get(self.kiln.http_addr, "/metrics")
            .await
            .context("scraping kiln's /metrics")?;
        ensure!(code == 200, "kiln's /metrics answered {code}");
        let labels = format!("route=\"{route}\",method=\"{method}\"");
        let value = |suffix: &str| {
            sum_metric(
                &metrics,
                &format!("kiln_http_request_duration_seconds_{suffix}"),
                &labels,
            )
        };
        Ok((value("sum"), value("count")))
    }
}

/// One `PUT` over a fresh connection; it must create the file (201).
async fn put(
    addr: std::net::SocketAddr,
    auth: &str,
    target: &str,
    data: &[u8],
) -> anyhow::Result<()> {
    let r = http_request(
        addr,
        "PUT",
        target,
        &[("Authorization", auth)],
        HttpBody::Bytes(data),
    )
    .await;
    if r.status != 201 {
        bail!("PUT {target}: {} {}", r.status, r.text());
    }
    Ok(())
}

/// Files and bytes under `dir` (a check that every upload landed, taken untimed).
fn count_files(dir: &Path) -> anyhow::Result<(usize, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (f, b) = count_files(&entry.path())?;
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// The phases, in the order a table lists them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Write,
    Durable,
    Floor,
    Put,
    PutKeepAlive,
    PutConcurrent,
    Batch,
    LargeWrite,
    LargeDurable,
    LargePut,
}

impl Phase {
    const ALL: [Phase; 10] = [
        Phase::Write,
        Phase::Durable,
        Phase::Floor,
        Phase::Put,
        Phase::PutKeepAlive,
        Phase::PutConcurrent,
        Phase::Batch,
        Phase::LargeWrite,
        Phase::LargeDurable,
        Phase::LargePut,
    ];

    fn key(self) -> &'static str {
        match self {
            Phase::Write => "stdFsWrite",
            Phase::Durable => "durableWrite",
            Phase::Floor => "bareHttpDurablePut",
            Phase::Put => "apiPut",
            Phase::PutKeepAlive => "apiPutKeepAlive",
            Phase::PutConcurrent => "apiPutConcurrent",
            Phase::Batch => "apiBatch",
            Phase::LargeWrite => "largeStdFsWrite",
            Phase::LargeDurable => "largeDurableWrite",
            Phase::LargePut => "largeApiPut",
        }
    }

    fn label(self) -> String {
        match self {
            Phase::Write | Phase::LargeWrite => "`std::fs::write` (page cache only)".into(),
            Phase::Durable | Phase::LargeDurable => {
                "temp file + fsync + rename + fsync dir (what Kiln does)".into()
            }
            Phase::Floor => {
                "bare HTTP server doing only that durable write, one client, kept connection".into()
            }
            Phase::Put => "**Kiln** `PUT`, one client".into(),
            Phase::PutKeepAlive => "**Kiln** `PUT`, one client, kept connection".into(),
            Phase::PutConcurrent => format!("**Kiln** `PUT`, {CLIENTS} clients"),
            Phase::Batch => format!("**Kiln** `POST .../files/batch` of {BATCH}, base64"),
            Phase::LargePut => "**Kiln** `PUT`".into(),
        }
    }

    fn is_api(self) -> bool {
        matches!(
            self,
            Phase::Put
                | Phase::PutKeepAlive
                | Phase::PutConcurrent
                | Phase::Batch
                | Phase::LargePut
        )
    }

    fn is_large(self) -> bool {
        matches!(
            self,
            Phase::LargeWrite | Phase::LargeDurable | Phase::LargePut
        )
    }

    /// HTTP requests the phase sends for `n` small files.
    fn requests(self, n: usize) -> usize {
        match self {
            Phase::Put | Phase::PutKeepAlive | Phase::PutConcurrent | Phase::Floor => n,
            Phase::Batch => n.div_ceil(BATCH),
            Phase::LargePut => 1,
            _ => 0,
        }
    }

    /// The route and method Kiln's `/metrics` files the phase's requests under.
    fn route(self) -> Option<(&'static str, &'static str)> {
        match self {
            Phase::Put | Phase::PutKeepAlive | Phase::PutConcurrent | Phase::LargePut => {
                Some((PUT_ROUTE, "PUT"))
            }
            Phase::Batch => Some((BATCH_ROUTE, "POST")),
            _ => None,
        }
    }
}

/// Every run of every phase, and Kiln's server-side time over them.
#[derive(Default)]
struct Measured {
    runs: std::collections::BTreeMap<Phase, Vec<f64>>,
    /// `(sum, count)` of `kiln_http_request_duration_seconds` over the phase's requests.
    server: std::collections::BTreeMap<Phase, (f64, f64)>,
}

impl Measured {
    fn median(&self, phase: Phase) -> f64 {
        median(self.runs.get(&phase).map_or(&[][..], Vec::as_slice))
    }

    /// Kiln's mean time to the response headers per request of `phase`, in ms.
    fn server_ms(&self, phase: Phase) -> Option<f64> {
        let (sum, count) = self.server.get(&phase).copied()?;
        (count > 0.0).then(|| sum / count * 1000.0)
    }
}

/// Runs one API phase: the time it took, and the server-side time Kiln recorded for it.
async fn api_phase(
    u: &Uploader<'_>,
    m: &mut Measured,
    phase: Phase,
    upload: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (route, method) = phase.route().context("an API phase has a route")?;
    settle();
    let before = u.server_time(route, method).await?;
    let start = Instant::now();
    upload.await?;
    let seconds = start.elapsed().as_secs_f64();
    let after = u.server_time(route, method).await?;
    m.runs.entry(phase).or_default().push(seconds);
    let server = m.server.entry(phase).or_default();
    server.0 += after.0 - before.0;
    server.1 += after.1 - before.1;
    Ok(())
}

pub async fn run(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let (n, large_mib, reps) = (
        args.small_uploads(),
        args.large_upload_mib(),
        args.reps.max(1),
    );
    ensure!(n > 0, "--uploads must be at least 1");
    let large_bytes = large_mib as usize * MIB;
    let small_total = n * SMALL_BYTES;
    // Room for the large file, and for every rep's jobs in the workspace.
    let max_file = large_bytes.max(64 * MIB);
    let max_job = (small_total + large_bytes).max(200 * MIB);
    let max_files = (n + 1).max(10_000);
    let max_workspace = (reps * (4 * small_total + large_bytes) + 64 * MIB).max(1024 * MIB);
    let flags = [
        format!("--max-file-bytes={max_file}"),
        format!("--max-job-bytes={max_job}"),
        format!("--max-files-per-job={max_files}"),
        format!("--max-workspace-bytes={max_workspace}"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ns = b.namespace("bench-upload").await;
    let mut kiln = start_kiln(b, &ns, &flags).await;
    let token = account(b, &ns, "uploader").await?;
    let u = Uploader {
        kiln: &kiln,
        ns: ns.clone(),
        jobs: Api::namespaced(b.client.clone(), &ns),
        auth: format!("Bearer {token}"),
    };
    let small: Arc<Vec<Vec<u8>>> =
        Arc::new((0..n).map(|i| noise(SMALL_BYTES, i as u64 + 11)).collect());
    let large = noise(large_bytes, 5);
    // The baselines write next to Kiln's workspace: the same filesystem.
    let direct = kiln.state_dir().join("direct");
    let floor = crate::floor::start(direct.join("floor")).await?;
    let client = crate::floor::keep_alive_client()?;

    // Untimed: the first request of a token pays for its TokenReview, and the operator's
    // first requests to the API server open its connections.
    u.job("warm-up").await?;
    u.put("warm-up", "warm-up.bin", &small[0]).await?;
    let idle = kiln_memory(&kiln)?;

    let mut m = Measured::default();
    for rep in 0..reps {
        let jobs = [
            u.job(&format!("put-{rep}")).await?,
            u.job(&format!("kept-{rep}")).await?,
            u.job(&format!("put{CLIENTS}-{rep}")).await?,
            u.job(&format!("batch-{rep}")).await?,
            u.job(&format!("large-{rep}")).await?,
        ];
        let dir = direct.join(format!("rep{rep}"));
        // Alternate who goes first, so that neither always meets a busier machine.
        let order = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for api_turn in order {
            if api_turn {
                api_phase(
                    &u,
                    &mut m,
                    Phase::Put,
                    u.put_sequential(&format!("put-{rep}"), &small),
                )
                .await?;
                api_phase(
                    &u,
                    &mut m,
                    Phase::PutKeepAlive,
                    u.put_kept(&client, &format!("kept-{rep}"), &small),
                )
                .await?;
                let job = format!("put{CLIENTS}-{rep}");
                api_phase(
                    &u,
                    &mut m,
                    Phase::PutConcurrent,
                    u.put_concurrent(&job, &small),
                )
                .await?;
                let job = format!("batch-{rep}");
                api_phase(&u, &mut m, Phase::Batch, u.post_batches(&job, &small)).await?;
            } else {
                let t = plain_small(&dir.join("write"), &small)?;
                m.runs.entry(Phase::Write).or_default().push(t);
                let t = durable_small(&dir.join("durable"), &small)?;
                m.runs.entry(Phase::Durable).or_default().push(t);
                settle();
                let start = Instant::now();
                for (i, data) in small.iter().enumerate() {
                    let url = format!("http://{floor}/rep{rep}/{}", small_path(i));
                    crate::floor::put(&client, &url, None, data).await?;
                }
                let t = start.elapsed().as_secs_f64();
                m.runs.entry(Phase::Floor).or_default().push(t);
            }
        }
        for api_turn in order {
            if api_turn {
                let job = format!("large-{rep}");
                api_phase(
                    &u,
                    &mut m,
                    Phase::LargePut,
                    u.put(&job, "large.bin", &large),
                )
                .await?;
            } else {
                let t = timed(|| Ok(std::fs::write(dir.join("large.bin"), &large)?))?;
                m.runs.entry(Phase::LargeWrite).or_default().push(t);
                let t = timed(|| durable_write(&dir.join("large-durable.bin"), &large))?;
                m.runs.entry(Phase::LargeDurable).or_default().push(t);
            }
        }
        // Every upload landed, whole, in its job's directory.
        for (dir, (files, bytes)) in jobs.iter().zip([
            (n, small_total),
            (n, small_total),
            (n, small_total),
            (n, small_total),
            (1, large_bytes),
        ]) {
            let found = count_files(dir)?;
            ensure!(
                found == (files, bytes as u64),
                "{} holds {found:?}, expected ({files}, {bytes})",
                dir.display()
            );
        }
        // Each rep's baseline files go, so that the disk fills no faster than Kiln's.
        std::fs::remove_dir_all(&dir)?;
        std::fs::remove_dir_all(direct.join("floor").join(format!("rep{rep}")))?;
        eprintln!("kiln_bench: upload rep {} of {reps} done", rep + 1);
    }
    let end = kiln_memory(&kiln)?;
    let warnings = kiln_warnings(&kiln);
    drop(u);
    stop_kiln(&mut kiln)?;

    Ok(report(
        &m,
        n,
        large_mib,
        reps,
        idle.hwm_kib,
        end.hwm_kib,
        warnings,
    ))
}

fn report(
    m: &Measured,
    n: usize,
    large_mib: u64,
    reps: usize,
    idle_hwm_kib: u64,
    end_hwm_kib: u64,
    warnings: usize,
) -> Report {
    let small_mib = (n * SMALL_BYTES) as f64 / MIB as f64;
    let small_kib = SMALL_BYTES / KIB;
    let mut r = Report::new(
        format!("upload-{n}x{small_kib}kib-{large_mib}mib"),
        &format!("File API uploads: {n} × {small_kib} KiB and 1 × {large_mib} MiB"),
        true,
    );
    r.line(format!(
        "{n} files of {small_kib} KiB (random bytes, in 10 directories) are uploaded to a fresh \
         Job through Kiln's file API three ways — one `PUT` after another from one client; \
         `PUT`s from {CLIENTS} clients at once; `POST .../files/batch` of {BATCH} files, base64 \
         in JSON (encoding included in the time) — and one file of {large_mib} MiB with one \
         `PUT`. The uploader is a service account with a Role on `jobs/files`, its token from \
         `kubectl create token`: every request goes through Kiln's admission (TokenReview, cached 30 s, and \
         SubjectAccessReview, cached 10 s per Job and verb). HTTP/1.1 over loopback, plain \
         HTTP: one connection per request (the harness's minimal client), and, for the \
         \"kept connection\" rows, one connection kept for every request (reqwest, as an SDK \
         uploads). Baselines in the same run, on the same \
         filesystem (next to Kiln's workspace): `std::fs::write` of the same files, which only \
         reaches the page cache; a durable write as Kiln does it (temporary file, fsync, \
         rename, fsync of the directory); and the floor of any file API here: a bare HTTP \
         server in the benchmark's process that does only that durable write for each `PUT`, \
         with the same kept-connection client. Everything dirty is written back (`sync`) before \
         each timed phase. Median of {reps} runs each, API and baselines alternating who goes \
         first, each run into new Jobs and directories; one untimed warm-up upload first. \
         \"Inside Kiln\" is the mean of Kiln's `kiln_http_request_duration_seconds` (time to \
         the response headers) over the phase's requests.\n"
    ));

    let write = m.median(Phase::Write);
    let durable = m.median(Phase::Durable);
    let large_write = m.median(Phase::LargeWrite);
    let large_durable = m.median(Phase::LargeDurable);
    let ms = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.2}"));

    r.line(format!("### {n} × {small_kib} KiB ({small_mib:.1} MiB)\n"));
    r.line(
        "| writer | time (s) | files/s | MiB/s | ms per request (client) | ms per request inside Kiln | ÷ `std::fs::write` | ÷ durable write |",
    );
    r.line("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut phases = serde_json::Map::new();
    for phase in Phase::ALL.into_iter().filter(|p| !p.is_large()) {
        let t = m.median(phase);
        let requests = phase.requests(n);
        // A client of the concurrent run sends its share one request after another.
        let per_client = if phase == Phase::PutConcurrent {
            CLIENTS
        } else {
            1
        };
        let client_ms = (requests > 0).then(|| t * 1000.0 * per_client as f64 / requests as f64);
        let bold = |s: String| {
            if phase.is_api() {
                format!("**{s}**")
            } else {
                s
            }
        };
        r.line(format!(
            "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} |",
            phase.label(),
            bold(format!("{t:.3}")),
            n as f64 / t,
            small_mib / t,
            ms(client_ms),
            ms(m.server_ms(phase)),
            bold(format!("{:.1}×", t / write)),
            bold(format!("{:.2}×", t / durable)),
        ));
        phases.insert(
            phase.key().into(),
            json!({
                "seconds": round(t, 4),
                "runs": m.runs.get(&phase).map(|v| v.iter().map(|x| round(*x, 4)).collect::<Vec<_>>()),
                "filesPerSecond": round(n as f64 / t, 1),
                "mibPerSecond": round(small_mib / t, 2),
                "requests": requests,
                "clientMsPerRequest": client_ms.map(|v| round(v, 3)),
                "kilnMsPerRequest": m.server_ms(phase).map(|v| round(v, 3)),
                "ratioToStdFsWrite": round(t / write, 2),
                "ratioToDurableWrite": round(t / durable, 3),
            }),
        );
    }

    r.line(format!("\n### 1 × {large_mib} MiB\n"));
    r.line("| writer | time (s) | MiB/s | ms inside Kiln | ÷ `std::fs::write` | ÷ durable write |");
    r.line("|---|---:|---:|---:|---:|---:|");
    for phase in Phase::ALL.into_iter().filter(|p| p.is_large()) {
        let t = m.median(phase);
        let bold = |s: String| {
            if phase.is_api() {
                format!("**{s}**")
            } else {
                s
            }
        };
        r.line(format!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            phase.label(),
            bold(format!("{t:.3}")),
            large_mib as f64 / t,
            ms(m.server_ms(phase)),
            bold(format!("{:.1}×", t / large_write)),
            bold(format!("{:.2}×", t / large_durable)),
        ));
        phases.insert(
            phase.key().into(),
            json!({
                "seconds": round(t, 4),
                "runs": m.runs.get(&phase).map(|v| v.iter().map(|x| round(*x, 4)).collect::<Vec<_>>()),
                "mibPerSecond": round(large_mib as f64 / t, 1),
                "kilnMsPerRequest": m.server_ms(phase).map(|v| round(v, 2)),
                "ratioToStdFsWrite": round(t / large_write, 2),
                "ratioToDurableWrite": round(t / large_durable, 3),
            }),
        );
    }

    let kept = m.median(Phase::PutKeepAlive);
    let floor = m.median(Phase::Floor);
    r.line(format!(
        "\nOver a kept connection a sequential `PUT` through Kiln takes {:.2} ms: {:.2}× the \
         durable write it wraps and **{:.2}× the bare HTTP server doing the same write** \
         ({:.2} ms per file, the floor on this machine: HTTP on loopback plus the durable \
         write).",
        kept * 1000.0 / n as f64,
        kept / durable,
        kept / floor,
        floor * 1000.0 / n as f64,
    ));
    r.set("ratioKeptPutToFloor", round(kept / floor, 3));
    r.set("ratioKeptPutToDurable", round(kept / durable, 3));
    let put = m.median(Phase::Put);
    r.line(format!(
        "\nA durable write alone costs {:.2} ms per small file here, against {:.3} ms for \
         `std::fs::write`; a sequential `PUT` takes {:.2} ms at the client and {} ms inside \
         Kiln (admission, write, fsync, rename, fsync of the directory). Kiln's peak RSS \
         (`VmHWM`): {:.1} MiB after the warm-up upload, {:.1} MiB after every upload (the \
         large ones stream to disk). WARN/ERROR lines in Kiln's log: {warnings}.",
        durable * 1000.0 / n as f64,
        write * 1000.0 / n as f64,
        put * 1000.0 / n as f64,
        ms(m.server_ms(Phase::Put)),
        mib(idle_hwm_kib),
        mib(end_hwm_kib),
    ));

    r.set("smallFiles", n);
    r.set("smallFileBytes", SMALL_BYTES);
    r.set("largeFileBytes", large_mib as usize * MIB);
    r.set("clients", CLIENTS);
    r.set("batchSize", BATCH);
    r.set("reps", reps);
    r.set("phases", Value::Object(phases));
    r.set(
        "kilnPeakRssKiB",
        json!({"afterWarmUp": idle_hwm_kib, "end": end_hwm_kib}),
    );
    r.set("kilnWarnings", warnings);
    r
}
