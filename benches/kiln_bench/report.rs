//! Results: one markdown and one JSON file per scenario and size, each stating the machine,
//! the build, the etcd fsync setting and the Kubernetes version, since the numbers mean
//! nothing without them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};

use crate::cluster::Bench;

/// What the numbers were measured on.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub commit: String,
    pub started: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| field_kib(&m, "MemTotal"))
            .unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory_gib: memory_kib as f64 / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            commit: git_commit(),
            started: k8s_openapi::jiff::Timestamp::now().to_string(),
        }
    }
}

/// `HEAD`, plus `-dirty` and the changed paths when the tree differs from it.
fn git_commit() -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
    };
    let head = out(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match out(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => {
            let paths: Vec<&str> = s.lines().map(|l| l.get(3..).unwrap_or(l)).collect();
            format!("{head}-dirty ({})", paths.join(", "))
        }
        _ => head,
    }
}

/// A `Key:   123 kB` line of `/proc/meminfo` or `/proc/<pid>/status`, in KiB.
pub fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The 1-minute load average: how busy the shared machine was.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One scenario's result.
pub struct Report {
    /// File stem: scenario and size (`convergence-n1000`).
    pub name: String,
    title: String,
    md: String,
    json: Map<String, Value>,
    load_start: f64,
    uses_cluster: bool,
}

impl Report {
    pub fn new(name: impl Into<String>, title: &str, uses_cluster: bool) -> Report {
        Report {
            name: name.into(),
            title: title.into(),
            md: String::new(),
            json: Map::new(),
            load_start: load_average(),
            uses_cluster,
        }
    }

    /// A markdown line (or block).
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.md.push_str(text.as_ref());
        self.md.push('\n');
    }

    /// A number or structure for the JSON file.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.into(), value.into());
    }

    /// Writes `<out>/<name>.md` and `<out>/<name>.json`.
    pub fn write(
        mut self,
        out: &Path,
        machine: &Machine,
        bench: Option<&Bench>,
    ) -> std::io::Result<Vec<PathBuf>> {
        let load_end = load_average();
        let operator = if self.uses_cluster {
            bench.map(|b| b.operator_build.clone())
        } else {
            None
        };
        let fsync = std::env::var("KILN_ETCD_FSYNC").unwrap_or_default() == "1";
        let mut env = json!({
            "cores": machine.cores,
            "cpu": machine.cpu,
            "memoryGiB": round(machine.memory_gib, 1),
            "kernel": machine.kernel,
            "commit": machine.commit,
            "runStarted": machine.started,
            "benchBuild": if cfg!(debug_assertions) { "debug" } else { "release" },
            "loadAverage1m": {"start": self.load_start, "end": load_end},
        });
        if let (true, Some(b)) = (self.uses_cluster, bench) {
            env["etcdFsync"] = fsync.into();
            env["kubernetes"] = b.kubernetes_version.clone().into();
            env["operator"] = operator.clone().into();
        }
        self.json.insert("environment".into(), env);

        let mut md = format!("# {}\n\n", self.title);
        md.push_str(&format!(
            "Machine: {} cores ({}), {:.0} GiB RAM, Linux {}; shared with other work (1-min load \
             average {:.1} at the start, {:.1} at the end), so read ratios rather than seconds.  \n",
            machine.cores, machine.cpu, machine.memory_gib, machine.kernel, self.load_start, load_end
        ));
        if let (true, Some(b)) = (self.uses_cluster, bench) {
            md.push_str(&format!(
                "Control plane: Kubernetes {} (local etcd + kube-apiserver + kube-controller-manager), \
                 etcd fsync **{}**. Operator: {}.  \n",
                b.kubernetes_version,
                if fsync { "on" } else { "off" },
                operator.unwrap_or_default()
            ));
        }
        md.push_str(&format!(
            "Commit {}; run started {}.\n\n",
            machine.commit, machine.started
        ));
        md.push_str(&self.md);

        let md_path = out.join(format!("{}.md", self.name));
        let json_path = out.join(format!("{}.json", self.name));
        std::fs::write(&md_path, md)?;
        let mut text = serde_json::to_string_pretty(&Value::Object(self.json))?;
        text.push('\n');
        std::fs::write(&json_path, text)?;
        Ok(vec![md_path, json_path])
    }
}

/// Rounds for display and JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Median of `values`.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// KiB as MiB, for display.
pub fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}
