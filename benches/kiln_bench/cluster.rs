//! The control plane (the integration harness's, started with etcd fsync on), Kiln operators
//! as child processes whose memory can be read, and request counts from the API server's own
//! `/metrics`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context as _, bail};
use kube::Client;

use crate::report::field_kib;
use crate::support::{self, ControlPlane, Operator, OperatorOptions};

/// The shared control plane and an admin client.
pub struct Bench {
    pub cp: &'static ControlPlane,
    pub client: Client,
    /// How the operator binary was built.
    pub operator_build: String,
    pub kubernetes_version: String,
    /// `kiln run --concurrency` for every operator the benchmark starts (None: Kiln's default).
    pub kiln_concurrency: Option<u16>,
}

impl Bench {
    /// How many reconciles Kiln runs at once, for the reports.
    pub fn kiln_concurrency_label(&self) -> String {
        match self.kiln_concurrency {
            Some(c) => c.to_string(),
            None => "16 (default)".into(),
        }
    }

    pub async fn start(kiln_concurrency: Option<u16>) -> anyhow::Result<Bench> {
        let started = Instant::now();
        let cp = support::control_plane();
        eprintln!(
            "kiln_bench: control plane ready in {:.0}s (etcd fsync {})",
            started.elapsed().as_secs_f64(),
            std::env::var("KILN_ETCD_FSYNC").unwrap_or_default()
        );
        let client = cp.client().await;
        let version = client
            .apiserver_version()
            .await
            .context("reading /version")?;
        // Built by cargo with the bench's own profile: `cargo bench` uses `bench`, which
        // inherits `release`.
        let operator_build = format!(
            "`kiln` built by cargo with the {} profile, RUST_LOG={OPERATOR_LOG}",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release (bench)"
            }
        );
        Ok(Bench {
            cp,
            client,
            operator_build,
            kubernetes_version: version.git_version,
            kiln_concurrency,
        })
    }

    /// A fresh namespace.
    pub async fn namespace(&self, prefix: &str) -> String {
        support::namespace(&self.client, prefix).await
    }

    /// The API server's request counters, from its own `/metrics`.
    pub fn requests(&self) -> anyhow::Result<Requests> {
        let out = self.cp.kubectl(&["get", "--raw", "/metrics"]);
        if !out.status.success() {
            bail!("kubectl get --raw /metrics failed: {}", out.stderr);
        }
        Ok(Requests::parse(&out.stdout))
    }
}

/// Kiln logs at its default level during the benchmarks.
pub const OPERATOR_LOG: &str = "info";

/// Peak and current resident memory of a process, in KiB, and its open sockets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub hwm_kib: u64,
    pub rss_kib: u64,
    /// Open sockets (the operator's connections to the API server, plus its listener).
    pub sockets: usize,
}

/// `VmHWM` and `VmRSS` from `/proc/<pid>/status`, and the sockets among its open files.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0);
    Ok(Memory {
        hwm_kib: field_kib(&status, "VmHWM").unwrap_or(0),
        rss_kib: field_kib(&status, "VmRSS").unwrap_or(0),
        sockets,
    })
}

/// Starts Kiln (`kiln run`, the harness's operator: the `kiln` binary cargo built with the
/// bench's profile) watching `namespace`, with `extra` flags; returns once `/readyz` is 200.
pub async fn start_kiln(bench: &Bench, namespace: &str, extra: &[&str]) -> Operator {
    let mut options = OperatorOptions::namespace(namespace).with_args(extra);
    if let Some(c) = bench.kiln_concurrency {
        options.extra_args.push(format!("--concurrency={c}"));
    }
    options.log_level = OPERATOR_LOG.into();
    Operator::start(bench.cp, options).await
}

/// Stops `kiln` (SIGTERM) and starts a new one on the same namespace and Lease with `extra`
/// flags.
pub async fn restart_kiln(
    bench: &Bench,
    kiln: &mut Operator,
    namespace: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    stop_kiln(kiln)?;
    *kiln = start_kiln(bench, namespace, extra).await;
    Ok(())
}

/// SIGTERM, and wait for a clean exit.
pub fn stop_kiln(kiln: &mut Operator) -> anyhow::Result<()> {
    if kiln.pid().is_none() {
        return Ok(());
    }
    let status = kiln.terminate();
    if !status.success() {
        bail!("kiln exited with {status} on SIGTERM");
    }
    Ok(())
}

/// The operator's memory.
pub fn kiln_memory(kiln: &Operator) -> anyhow::Result<Memory> {
    memory_of(kiln.pid().context("kiln is not running")?)
}

/// The operator's log without terminal colours (Kiln's text format writes them even to a
/// file).
pub fn kiln_log(kiln: &Operator) -> String {
    let log = kiln.logs();
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Lines of the operator's log at WARN or ERROR level.
pub fn kiln_warnings(kiln: &Operator) -> usize {
    kiln_log(kiln)
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count()
}

/// One of Kiln's own counters (`kiln_reconciles_total`), summed over the series whose
/// labels contain `labels` (`controller="draft"`; empty = all).
pub async fn kiln_metric(kiln: &Operator, name: &str, labels: &str) -> anyhow::Result<f64> {
    let (code, body) = support::http_get(kiln.http_addr, "/metrics")
        .await
        .context("scraping kiln's /metrics")?;
    if code != 200 {
        bail!("kiln's /metrics answered {code}");
    }
    Ok(sum_metric(&body, name, labels))
}

/// Sums the samples of metric `name` whose label set contains `labels` (`a="b"`; empty =
/// every series). Works on Prometheus and OpenMetrics text.
pub fn sum_metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // The last brace closes the label set: label values (route templates) may
            // hold braces of their own.
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => r.rsplit_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if !labels.is_empty() && !labelset.contains(labels) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// Which requests: verb, API group (`""` for core), resource, subresource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl RequestKey {
    /// Verbs that change something. Server-side apply is counted as `APPLY`.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        )
    }

    /// The resources the write-economy goal is about: Kiln's kinds and ConfigMaps.
    pub fn is_kiln_or_configmap(&self) -> bool {
        self.group == "kiln.dev" || (self.group.is_empty() && self.resource == "configmaps")
    }

    pub fn label(&self) -> String {
        let mut r = self.resource.clone();
        if !self.group.is_empty() {
            r = format!("{r}.{}", self.group);
        }
        if !self.subresource.is_empty() {
            r = format!("{r}/{}", self.subresource);
        }
        format!("{} {r}", self.verb)
    }
}

/// `apiserver_request_total`, summed over codes, scopes and versions.
#[derive(Clone, Debug, Default)]
pub struct Requests(pub BTreeMap<RequestKey, f64>);

impl Requests {
    pub fn parse(text: &str) -> Requests {
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labelset, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let labels = parse_labels(labelset);
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let key = RequestKey {
                verb: get("verb"),
                group: get("group"),
                resource: get("resource"),
                subresource: get("subresource"),
            };
            *counts.entry(key).or_insert(0.0) += value;
        }
        Requests(counts)
    }

    /// `self - before`, keeping only what changed.
    pub fn since(&self, before: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .filter_map(|(k, v)| {
                    let d = v - before.0.get(k).copied().unwrap_or(0.0);
                    (d > 0.0).then(|| (k.clone(), d))
                })
                .collect(),
        )
    }

    pub fn total(&self, filter: impl Fn(&RequestKey) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }

    /// The writes to Kiln's kinds and ConfigMaps.
    pub fn kiln_writes(&self) -> f64 {
        self.total(|k| k.is_write() && k.is_kiln_or_configmap())
    }

    /// `{"APPLY configmaps": 12, ...}` for the requests `filter` keeps.
    pub fn table(&self, filter: impl Fn(&RequestKey) -> bool) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .filter(|(k, _)| filter(k))
                .map(|(k, v)| (k.label(), serde_json::json!(v)))
                .collect(),
        )
    }

    /// Markdown rows `| request | count | per draft |` for the requests `filter` keeps.
    pub fn markdown(&self, filter: impl Fn(&RequestKey) -> bool, per: usize) -> String {
        let mut md = String::from("| request | count | per draft |\n|---|---:|---:|\n");
        for (k, v) in self.0.iter().filter(|(k, _)| filter(k)) {
            md.push_str(&format!(
                "| `{}` | {v} | {:.2} |\n",
                k.label(),
                v / per.max(1) as f64
            ));
        }
        md
    }
}

/// `a="b",c="d"` (values may contain escaped quotes and commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}
