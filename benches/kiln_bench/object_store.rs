//! Scenario 7: Job files behind an S3-compatible object store (a real MinIO started by
//! `hack/object-store.sh`, on loopback).
//!
//! Uploads through Kiln with `--object-store` (each acknowledged only once stored) against the
//! same objects `PUT` directly to the same server by an S3 client, in the same run: 1,000 ×
//! 10 KiB from one client and from 8, and one 50 MiB file. Then the restore: a 100 MiB job,
//! completed, the operator killed and its workspace wiped (a pod replacement), a new operator
//! started: the time from its start to the first byte of the job's download, next to the same
//! download before the replacement and through the presigned redirect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kiln::api::KilnJob;
use kiln::api::job::JobPhase;

use crate::Args;
use crate::cluster::{Bench, OPERATOR_LOG};
use crate::report::{Report, median, round};
use crate::support::{HttpBody, ObjectStore, Operator, OperatorOptions, http_request, noise};
use crate::upload::account;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const SMALL_BYTES: usize = 10 * KIB;
const CLIENTS: usize = 8;
/// The restored job: this many files of 1 MiB.
const RESTORE_FILES: usize = 100;
const WAIT: Duration = Duration::from_secs(120);

fn small_path(i: usize) -> String {
    format!("d{}/f{i}.bin", i % 10)
}

struct World {
    kiln: Operator,
    ns: String,
    jobs: Api<KilnJob>,
    auth: String,
    s3: ObjectStore,
    direct: Arc<object_store::aws::AmazonS3>,
}

impl World {
    fn url(&self, job: &str, rest: &str) -> String {
        format!("/api/v1/namespaces/{}/jobs/{job}/{rest}", self.ns)
    }

    async fn job(&self, name: &str) -> anyhow::Result<()> {
        let job: KilnJob = serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"projectName": name},
        }))?;
        self.jobs
            .create(&PostParams::default(), &job)
            .await
            .with_context(|| format!("creating job {name}"))?;
        // Untimed: the first PUT would wait for the workspace; do that wait here.
        self.put(name, "warm-up.txt", b"x").await
    }

    async fn put(&self, job: &str, path: &str, data: &[u8]) -> anyhow::Result<()> {
        kiln_put(
            self.kiln.http_addr,
            &self.auth,
            &self.url(job, &format!("files/{path}")),
            data,
        )
        .await
    }

    /// The small files through Kiln from `clients` clients, each taking every n-th file.
    async fn kiln_small(
        &self,
        job: &str,
        small: &Arc<Vec<Vec<u8>>>,
        clients: usize,
    ) -> anyhow::Result<f64> {
        // Kept connections, like the direct side's S3 client: the comparison is then about
        // what each server does, not about connection set-up.
        let client = crate::floor::keep_alive_client()?;
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (small, auth, client) = (small.clone(), self.auth.clone(), client.clone());
            let base = format!("http://{}{}", self.kiln.http_addr, self.url(job, "files"));
            set.spawn(async move {
                for i in (c..small.len()).step_by(clients) {
                    let url = format!("{base}/{}", small_path(i));
                    crate::floor::put(&client, &url, Some(&auth), &small[i]).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = set.join_next().await {
            done.context("an upload client panicked")??;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// The same objects `PUT` directly to the same server, from `clients` clients.
    async fn direct_small(
        &self,
        prefix: &str,
        small: &Arc<Vec<Vec<u8>>>,
        clients: usize,
    ) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (small, store, prefix) = (small.clone(), self.direct.clone(), prefix.to_string());
            set.spawn(async move {
                for i in (c..small.len()).step_by(clients) {
                    let key = Key::from(format!("{prefix}/{}", small_path(i)));
                    store
                        .put(&key, PutPayload::from(small[i].clone()))
                        .await
                        .with_context(|| format!("direct PUT {key}"))?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = set.join_next().await {
            done.context("a direct client panicked")??;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    async fn wait_complete(&self, name: &str) -> anyhow::Result<(String, i64)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let j = self.jobs.get(name).await?;
            if let Some(s) = j.status
                && s.phase == Some(JobPhase::Complete)
                && let Some(a) = s.archive
            {
                return Ok((a.sha256, a.size_bytes));
            }
            if Instant::now() > deadline {
                bail!("job {name} did not complete within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn kiln_put(addr: SocketAddr, auth: &str, target: &str, data: &[u8]) -> anyhow::Result<()> {
    let r = http_request(
        addr,
        "PUT",
        target,
        &[("Authorization", auth)],
        HttpBody::Bytes(data),
    )
    .await;
    if r.status != 201 && r.status != 200 {
        bail!("PUT {target}: {} {}", r.status, r.text());
    }
    Ok(())
}

/// A `GET` over a fresh connection: (status, seconds to the first byte of the response,
/// seconds to the last, sha256 of the body). Parses only what this benchmark needs: a
/// `Content-Length` body or one that runs to the end of the connection.
async fn timed_get(
    addr: SocketAddr,
    target: &str,
    auth: Option<&str>,
) -> anyhow::Result<(u16, f64, f64, String, Vec<u8>)> {
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 256 * KIB];
    let mut head = Vec::new();
    let mut first = None;
    let mut hasher = Sha256::new();
    let mut body_started = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| start.elapsed().as_secs_f64());
        if body_started {
            hasher.update(&buf[..n]);
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            hasher.update(&head[end + 4..]);
            head.truncate(end);
            body_started = true;
        }
    }
    let total = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((
        status,
        first.unwrap_or(total),
        total,
        hex::encode(hasher.finalize()),
        head,
    ))
}

fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

pub async fn run(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let n = args.small_uploads();
    let large_mib = args.large_upload_mib() as usize;
    let s3 = tokio::task::spawn_blocking(ObjectStore::start).await?;
    let ns = b.namespace("bench-s3").await;
    let max_file = format!("--max-file-bytes={}", (large_mib + 1) * MIB);
    let max_job = format!("--max-job-bytes={}", (large_mib + 120) * MIB);
    let mut options = OperatorOptions::namespace(&ns)
        .with_args(&[
            &max_file,
            &max_job,
            "--max-workspace-bytes=8589934592",
            "--max-files-per-job=100000",
        ])
        .with_env(&s3.env);
    options.log_level = OPERATOR_LOG.into();
    let kiln = Operator::start(b.cp, options).await;
    let auth = format!("Bearer {}", account(b, &ns, "uploader").await?);
    let w = World {
        kiln,
        jobs: Api::namespaced(b.client.clone(), &ns),
        ns,
        auth,
        direct: Arc::new(s3.client()),
        s3,
    };

    let small: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| noise(SMALL_BYTES, i as u64)).collect());
    let large = noise(large_mib * MIB, 4242);
    let reps = args.reps.max(1);
    let mut times: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for rep in 0..reps {
        eprintln!("kiln_bench: object-store rep {}/{reps}", rep + 1);
        // Alternate who goes first, so neither side always meets a colder server.
        let kiln_first = rep % 2 == 0;
        {
            let job = format!("up-{rep}");
            w.job(&job).await?;
            let direct_prefix = format!("bench-direct/{rep}");
            let mut phases: Vec<(&str, f64)> = Vec::new();
            for side in if kiln_first {
                [true, false]
            } else {
                [false, true]
            } {
                if side {
                    phases.push(("kilnPut", w.kiln_small(&job, &small, 1).await?));
                } else {
                    phases.push((
                        "directPut",
                        w.direct_small(&format!("{direct_prefix}/seq"), &small, 1)
                            .await?,
                    ));
                }
            }
            let job8 = format!("up8-{rep}");
            w.job(&job8).await?;
            phases.push((
                "kilnPutConcurrent",
                w.kiln_small(&job8, &small, CLIENTS).await?,
            ));
            phases.push((
                "directPutConcurrent",
                w.direct_small(&format!("{direct_prefix}/c8"), &small, CLIENTS)
                    .await?,
            ));
            let big = format!("big-{rep}");
            w.job(&big).await?;
            let start = Instant::now();
            w.put(&big, "large.bin", &large).await?;
            phases.push(("kilnLargePut", start.elapsed().as_secs_f64()));
            let start = Instant::now();
            w.direct
                .put(
                    &Key::from(format!("{direct_prefix}/large.bin")),
                    PutPayload::from(large.clone()),
                )
                .await
                .context("direct PUT of the large file")?;
            phases.push(("directLargePut", start.elapsed().as_secs_f64()));
            for (k, v) in phases {
                times.entry(k).or_default().push(v);
            }
        }
    }
    let med = |k: &str| median(times.get(k).map(Vec::as_slice).unwrap_or(&[]));

    // The restore: a 100 MiB job through a pod replacement.
    let restore_files: Vec<Vec<u8>> = (0..RESTORE_FILES)
        .map(|i| noise(MIB, 10_000 + i as u64))
        .collect();
    w.job("restore").await?;
    futures::stream::iter(restore_files.iter().enumerate())
        .map(|(i, data)| {
            let w = &w;
            async move { w.put("restore", &format!("part/{i:03}.bin"), data).await }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    w.jobs
        .patch(
            "restore",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"complete": true}})),
        )
        .await?;
    let (sha, archive_bytes) = w.wait_complete("restore").await?;
    let download = w.url("restore", "download");
    let (_, before_ttfb, before_total, before_sha, _) =
        timed_get(w.kiln.http_addr, &download, Some(&w.auth)).await?;
    if before_sha != sha {
        bail!("the archive downloaded before the replacement does not match its sha256");
    }
    let mut kiln = w.kiln;
    kiln.kill();
    std::fs::remove_dir_all(&kiln.workspace).context("wiping the workspace")?;
    let replaced = Instant::now();
    kiln.start_again().await;
    let ready = replaced.elapsed().as_secs_f64();
    let (after_ttfb_since_start, after_total_since_start) = loop {
        let asked = replaced.elapsed().as_secs_f64();
        let (status, ttfb, total, got, _) =
            timed_get(kiln.http_addr, &download, Some(&w.auth)).await?;
        if status == 200 {
            if got != sha {
                bail!("the restored archive does not match its sha256");
            }
            break (asked + ttfb, asked + total);
        }
        if replaced.elapsed() > WAIT {
            bail!("the restored job's download never answered 200 (last: {status})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let restore_log = kiln
        .logs()
        .lines()
        .filter(|l| l.contains("restored the job's workspace"))
        .count();
    // The presigned redirect: Kiln answers 307, the bytes come from the store.
    let (status, redirect_ttfb, _, _, head) = timed_get(
        kiln.http_addr,
        &format!("{download}?redirect=true"),
        Some(&w.auth),
    )
    .await?;
    if status != 307 {
        bail!("?redirect=true answered {status}");
    }
    let location = header(&head, "location").context("a 307 has a Location")?;
    let endpoint = w.s3.var("AWS_ENDPOINT_URL").to_string();
    let rest = location
        .strip_prefix(&endpoint)
        .context("the presigned URL is on the store's endpoint")?
        .to_string();
    let store_addr: SocketAddr = endpoint.trim_start_matches("http://").parse()?;
    let (status, store_ttfb, store_total, store_sha, _) =
        timed_get(store_addr, &rest, None).await?;
    if status != 200 || store_sha != sha {
        bail!("the presigned download failed ({status}) or differs");
    }
    drop(kiln);

    let ratio = |a: f64, b: f64| if b > 0.0 { round(a / b, 2) } else { 0.0 };
    let mut report = Report::new(
        format!("object-store-{n}x10kib-{large_mib}mib"),
        "Uploads through Kiln with an object store vs direct PUTs; restore after a pod replacement",
        true,
    );
    let rows = [
        ("kilnPut", "directPut", format!("{n} × 10 KiB, one client")),
        (
            "kilnPutConcurrent",
            "directPutConcurrent",
            format!("{n} × 10 KiB, {CLIENTS} clients"),
        ),
        (
            "kilnLargePut",
            "directLargePut",
            format!("1 × {large_mib} MiB"),
        ),
    ];
    report.line(format!(
        "MinIO on loopback (hack/object-store.sh), Kiln `--object-store`; median of {reps} runs. \
         Kiln: `PUT .../files/<path>` over kept connections (reqwest, one per client), \
         acknowledged once stored; direct: the `object_store` crate's S3 client (kept \
         connections too) `PUT` of the same bytes."
    ));
    report.line("");
    report.line("| upload | through Kiln (s) | direct PUT (s) | ratio (goal ≤ 1.3) |");
    report.line("|---|---|---|---|");
    let mut ratios = serde_json::Map::new();
    for (k, d, label) in &rows {
        let (kt, dt) = (med(k), med(d));
        report.line(format!(
            "| {label} | {:.3} | {:.3} | {:.2}× |",
            kt,
            dt,
            ratio(kt, dt)
        ));
        ratios.insert((*k).to_string(), json!({"kilnSeconds": round(kt, 4), "directSeconds": round(dt, 4), "ratio": ratio(kt, dt)}));
    }
    report.set("uploads", serde_json::Value::Object(ratios));
    report.set("raw", json!(times));
    report.line("");
    report.line(format!(
        "Restore of a {} MiB job ({RESTORE_FILES} files of 1 MiB, archive {:.1} MiB) after SIGKILL and a wiped workspace:",
        RESTORE_FILES,
        archive_bytes as f64 / MIB as f64
    ));
    report.line("");
    report.line("| measure | seconds |");
    report.line("|---|---|");
    report.line(format!(
        "| download before the replacement: first byte | {before_ttfb:.3} |"
    ));
    report.line(format!(
        "| download before the replacement: last byte | {before_total:.3} |"
    ));
    report.line(format!(
        "| new operator started → ready (`/readyz`) | {ready:.3} |"
    ));
    report.line(format!(
        "| new operator started → first byte of the download | {after_ttfb_since_start:.3} |"
    ));
    report.line(format!(
        "| new operator started → last byte of the download | {after_total_since_start:.3} |"
    ));
    report.line(format!(
        "| `?redirect=true`: Kiln's 307 | {redirect_ttfb:.3} |"
    ));
    report.line(format!("| presigned URL: first byte / last byte from the store | {store_ttfb:.3} / {store_total:.3} |"));
    report.set(
        "restore",
        json!({
            "mib": RESTORE_FILES,
            "beforeFirstByteSeconds": round(before_ttfb, 4),
            "beforeLastByteSeconds": round(before_total, 4),
            "readySeconds": round(ready, 4),
            "firstByteSinceStartSeconds": round(after_ttfb_since_start, 4),
            "lastByteSinceStartSeconds": round(after_total_since_start, 4),
            "redirectSeconds": round(redirect_ttfb, 4),
            "presignedFirstByteSeconds": round(store_ttfb, 4),
            "presignedLastByteSeconds": round(store_total, 4),
            "restoreLogLines": restore_log,
        }),
    );
    Ok(report)
}
