//! External Secrets Operator (ESO) as a peer: its build (from `hack/peers.sh`), its CRDs, a
//! `ClusterSecretStore` of its Kubernetes provider pointed at the benchmark's own control
//! plane, and its controller as a child process whose memory and metrics can be read.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;

use crate::cluster::{Bench, sum_metric};
use crate::support::{self, Grant};

/// What `hack/peers.sh build` made: the controller binary, its CRDs, its version.
pub struct Build {
    pub binary: PathBuf,
    pub crds: PathBuf,
    pub version: String,
}

impl Build {
    /// `$KILN_PEERS_DIR` if set, or else `hack/peers.sh build` (which builds ESO once, then
    /// finds it in the cache). Its progress goes to our stderr.
    pub fn find() -> anyhow::Result<Build> {
        let dir = match std::env::var_os("KILN_PEERS_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let script = support::repo().join("hack/peers.sh");
                eprintln!(
                    "kiln_bench: {} build (a cold build takes a while)",
                    script.display()
                );
                let out = Command::new(&script)
                    .arg("build")
                    .stderr(Stdio::inherit())
                    .output()
                    .with_context(|| format!("running {}", script.display()))?;
                if !out.status.success() {
                    bail!(
                        "{} build failed ({}); its messages are above. The peers benchmarks \
                         need Go and the module proxy for the first build",
                        script.display(),
                        out.status
                    );
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let build = Build {
            binary: dir.join("external-secrets"),
            crds: dir.join("crds/bundle.yaml"),
            version: std::fs::read_to_string(dir.join("VERSION"))
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        if !build.binary.is_file() || !build.crds.is_file() {
            bail!(
                "{} has no external-secrets or crds/bundle.yaml: rebuild with `hack/peers.sh build`",
                dir.display()
            );
        }
        Ok(build)
    }

    /// Applies ESO's CRDs (server-side: they are too large for a client-side apply's
    /// annotation) and waits until the two the benchmark uses are served.
    pub fn install_crds(&self, b: &Bench) -> anyhow::Result<()> {
        let crds = self.crds.to_string_lossy();
        let out =
            b.cp.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crds]);
        if !out.status.success() {
            bail!("applying ESO's CRDs failed: {}", out.stderr);
        }
        let out = b.cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "externalsecrets.external-secrets.io",
            "clustersecretstores.external-secrets.io",
        ]);
        if !out.status.success() {
            bail!("ESO's CRDs were not established: {}", out.stderr);
        }
        Ok(())
    }
}

/// `external-secrets.io/v1` kinds, for the dynamic API.
fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "external-secrets.io".into(),
        version: "v1".into(),
        api_version: "external-secrets.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn external_secrets_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &resource("ExternalSecret", "externalsecrets"),
    )
}

fn cluster_secret_stores(b: &Bench) -> Api<DynamicObject> {
    Api::all_with(
        b.client.clone(),
        &resource("ClusterSecretStore", "clustersecretstores"),
    )
}

/// The API server's URL and CA, from the control plane's kubeconfig.
fn server_and_ca(b: &Bench) -> anyhow::Result<(String, Vec<u8>)> {
    let config = kube::config::Kubeconfig::read_from(&b.cp.kubeconfig)
        .context("reading the control plane's kubeconfig")?;
    let cluster = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .context("the kubeconfig has no cluster")?;
    let url = cluster
        .server
        .clone()
        .context("the kubeconfig has no server")?;
    let ca = cluster
        .certificate_authority_data
        .as_ref()
        .context("the kubeconfig has no certificate-authority-data")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .context("decoding certificate-authority-data")?;
    Ok((url, pem))
}

/// A `ClusterSecretStore` named `name` of ESO's Kubernetes provider that reads the Secrets of
/// `ns` on this very control plane, as the ESO documentation sets it up: the server's URL and
/// CA, and the token of a ServiceAccount that may read Secrets in `ns` (kept in a Secret of
/// `ns`). Returns once ESO has validated it (`Ready=True`).
pub async fn create_store(b: &Bench, name: &str, ns: &str) -> anyhow::Result<()> {
    let grant = Grant {
        rules: json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]),
        can_i: &["get", "secrets"],
    };
    let token = b.cp.service_account(ns, "eso-reader", Some(grant)).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "eso-reader-token", "namespace": ns},
        "stringData": {"token": token}});
    let out =
        b.cp.kubectl_stdin(&["apply", "-f", "-"], Some(&secret.to_string()));
    if !out.status.success() {
        bail!("creating the store's token Secret: {}", out.stderr);
    }
    let (url, ca) = server_and_ca(b)?;
    let store: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
        "metadata": {"name": name},
        "spec": {"provider": {"kubernetes": {
            "remoteNamespace": ns,
            "server": {"url": url,
                       "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "auth": {"token": {"bearerToken":
                {"name": "eso-reader-token", "key": "token", "namespace": ns}}}
        }}}
    }))?;
    cluster_secret_stores(b)
        .create(&PostParams::default(), &store)
        .await
        .with_context(|| format!("creating ClusterSecretStore {name}"))?;
    Ok(())
}

/// Waits until ESO reports the store `Ready=True`.
pub async fn wait_store_ready(b: &Bench, name: &str, eso: &mut Eso) -> anyhow::Result<()> {
    let api = cluster_secret_stores(b);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let store = api.get(name).await?;
        let ready = store.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready");
        if ready.is_some_and(|c| c["status"] == "True") {
            return Ok(());
        }
        eso.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "ClusterSecretStore {name} not Ready after 60s: {}; ESO's log ends with:\n{}",
                ready.map(|c| c.to_string()).unwrap_or_default(),
                eso.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An `ExternalSecret` `name` that derives the Secret `target` from key `key` of Secret
/// `source`, refreshed every `refresh`.
pub fn external_secret(
    name: &str,
    store: &str,
    source: &str,
    key: &str,
    target: &str,
    refresh: &str,
) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": {
            "refreshInterval": refresh,
            "secretStoreRef": {"kind": "ClusterSecretStore", "name": store},
            "target": {"name": target},
            "data": [{"secretKey": "API_KEY", "remoteRef": {"key": source, "property": key}}]
        }
    }))?)
}

/// ESO's controller (`external-secrets` without a subcommand: no webhook, no cert
/// controller), watching one namespace.
pub struct Eso {
    child: Option<Child>,
    pub metrics: std::net::SocketAddr,
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl Eso {
    /// Starts the controller with `concurrent` reconciles at once and its other flags at
    /// their defaults; returns once its metrics endpoint answers.
    pub async fn start(
        build: &Build,
        b: &Bench,
        namespace: &str,
        concurrent: u16,
    ) -> anyhow::Result<Eso> {
        let state = tempfile::tempdir().context("ESO state directory")?;
        let log = state.path().join("eso.log");
        let file = std::fs::File::create(&log).context("ESO log file")?;
        let metrics: std::net::SocketAddr =
            format!("127.0.0.1:{}", support::free_port()).parse()?;
        let mut cmd = Command::new(&build.binary);
        cmd.args([
            format!("--metrics-addr={metrics}"),
            format!("--namespace={namespace}"),
            format!("--concurrent={concurrent}"),
            "--loglevel=info".into(),
            "--zap-time-encoding=rfc3339nano".into(),
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", state.path())
        .env("KUBECONFIG", &b.cp.kubeconfig)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
        // It must die with the benchmark, even if a scenario fails mid-way.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", build.binary.display()))?;
        let mut eso = Eso {
            child: Some(child),
            metrics,
            log,
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics_text(metrics).await.is_none() {
            eso.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "ESO's metrics did not answer within 60s:\n{}",
                    eso.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(eso)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An error with the end of its log if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!("ESO exited with {status}:\n{}", self.log_tail(30));
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A counter or gauge of its `/metrics`, summed over the series whose labels contain
    /// `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let text = metrics_text(self.metrics)
            .await
            .context("scraping ESO's /metrics")?;
        Ok(sum_metric(&text, name, labels))
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("ESO did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Eso {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `/metrics` over HTTP/1.0, so that Go's server answers without chunked encoding (whose
/// chunk boundaries could cut a sample in two).
async fn metrics_text(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|()| head.split_whitespace().nth(1) == Some("200"))?;
    Some(body.to_string())
}

/// How the reports name the build.
pub fn describe(build: &Build) -> String {
    format!(
        "External Secrets Operator {} (`{}`, built from the module proxy by hack/peers.sh)",
        build.version,
        Path::new(&build.binary)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    )
}
