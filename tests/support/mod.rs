//! The integration-test harness: one real control plane (etcd, kube-apiserver,
//! kube-controller-manager) per test binary, Kiln's CRDs applied with kubectl, a fresh
//! namespace per test, and Kiln operators started as child processes.
//!
//! Nothing is mocked: every behaviour under test is decided by the real API server.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running control plane, shared by every test of one test binary.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
    /// What `kubectl apply` of `crds/` printed on stderr when this control plane was new: the
    /// API server's warnings about the CRDs, if it had any.
    pub crd_apply_stderr: String,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The binaries directory, from `KILN_K8S_BIN`. Fails loudly, with the command that builds
/// them, when it is missing.
pub fn k8s_bin() -> PathBuf {
    let dir = std::env::var_os("KILN_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "KILN_K8S_BIN is not set. The integration tests need real Kubernetes binaries:\n  \
             export KILN_K8S_BIN=$(hack/k8s-binaries.sh)\n\
             (the first build takes 10-20 minutes; later runs take a second)"
            )
        });
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{} has no {b}: rebuild with `export KILN_K8S_BIN=$(hack/k8s-binaries.sh)`",
            dir.display()
        );
    }
    dir
}

/// The control plane of this test binary, started on first use with the CRDs applied.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let bin = k8s_bin();
        let base = std::env::temp_dir().join("kiln-tests");
        std::fs::create_dir_all(&base).expect("create the test state directory");
        let dir = tempfile::Builder::new()
            .prefix("cp-")
            .tempdir_in(&base)
            .expect("create a control-plane directory")
            .keep();
        let start = Instant::now();
        let status = Command::new(repo().join("hack/control-plane.sh"))
            .arg("start")
            .arg(&dir)
            .env("KILN_K8S_BIN", &bin)
            .status()
            .expect("run hack/control-plane.sh");
        assert!(
            status.success(),
            "hack/control-plane.sh start {} failed; see its logs in {}/logs",
            dir.display(),
            dir.display()
        );
        spawn_reaper(&dir);
        eprintln!(
            "control plane up in {:.1}s at {}",
            start.elapsed().as_secs_f64(),
            dir.display()
        );
        let mut cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            bin,
            crd_apply_stderr: String::new(),
        };
        let applied = cp.kubectl(&[
            "apply",
            "--server-side",
            "-f",
            repo().join("crds").to_str().unwrap_or("crds"),
        ]);
        cp.crd_apply_stderr = applied.stderr.clone();
        applied.success();
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "drafts.kiln.dev",
            "jobs.kiln.dev",
            "providerconfigs.kiln.dev",
        ])
        .success();
        cp
    })
}

/// Stops the control plane when this test process ends, however it ends (success, a
/// failed assertion, a panic or a signal): a detached watcher polls our pid.
fn spawn_reaper(dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; '{cp}' stop '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        cp = repo().join("hack/control-plane.sh").display(),
        dir = dir.display(),
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A new session, so that a Ctrl-C aimed at the test run does not kill the reaper first.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // Deliberately not waited for: it must outlive this process to clean up after it.
    #[allow(clippy::zombie_processes)]
    cmd.spawn().expect("spawn the control-plane reaper");
}

/// The outcome of a kubectl run.
pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub args: String,
}

impl Output {
    /// Asserts success and returns stdout.
    pub fn success(self) -> String {
        assert!(
            self.status.success(),
            "kubectl {} failed:\n{}{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Asserts failure and returns stderr.
    pub fn failure(self) -> String {
        assert!(
            !self.status.success(),
            "kubectl {} succeeded but should have failed:\n{}",
            self.args,
            self.stdout
        );
        self.stderr
    }
}

impl ControlPlane {
    /// Runs kubectl as a user would, against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `input` on stdin (`kubectl apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new(self.bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write kubectl stdin");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("wait for kubectl");
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.join(" "),
        }
    }

    /// A ServiceAccount `name` in `ns` and a token for it. With a `grant`, a Role with its
    /// rules is bound to the account, and the token is returned once the API server's
    /// authorizer (fed by an informer) allows `grant.can_i` (`kubectl auth can-i` arguments,
    /// such as `["create", "providerconfigs.kiln.dev", "--subresource=usage"]`).
    pub async fn service_account(&self, ns: &str, name: &str, grant: Option<Grant<'_>>) -> String {
        self.kubectl(&["create", "serviceaccount", name, "-n", ns])
            .success();
        if let Some(grant) = grant {
            let role = serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name, "namespace": ns},
                "rules": grant.rules,
            });
            self.kubectl_stdin(&["apply", "-f", "-"], Some(&role.to_string()))
                .success();
            let sa = format!("--serviceaccount={ns}:{name}");
            let role = format!("--role={name}");
            self.kubectl(&["create", "rolebinding", name, "-n", ns, &role, &sa])
                .success();
            let user = format!("--as=system:serviceaccount:{ns}:{name}");
            let mut args = vec!["auth", "can-i"];
            args.extend_from_slice(grant.can_i);
            args.extend_from_slice(&["-n", ns, &user]);
            eventually(
                Duration::from_secs(30),
                "RBAC to grant the new Role",
                || {
                    let out = self.kubectl(&args);
                    async move { out.status.success().then_some(()) }
                },
            )
            .await;
        }
        self.kubectl(&["create", "token", name, "-n", ns, "--duration=1h"])
            .success()
            .trim()
            .to_string()
    }

    /// A kube client with cluster-admin rights.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig is valid");
        Client::try_from(config).expect("build client")
    }
}

/// What [`ControlPlane::service_account`] grants: a Role's rules, and the `kubectl auth can-i`
/// question that is answered yes once they are in force.
pub struct Grant<'a> {
    pub rules: serde_json::Value,
    pub can_i: &'a [&'a str],
}

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

/// Creates a fresh namespace for one test: `<prefix>-<pid>-<n>`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NAMESPACES.fetch_add(1, Ordering::SeqCst)
    );
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// A Kiln operator running as a child process against the test control plane.
pub struct Operator {
    child: Option<Child>,
    pub http_addr: std::net::SocketAddr,
    pub workspace: PathBuf,
    pub log: PathBuf,
    state: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
}

/// Settings for a test operator.
pub struct OperatorOptions {
    /// Watch only these namespaces (tests keep to their own).
    pub namespaces: Vec<String>,
    /// Extra flags.
    pub extra_args: Vec<String>,
    /// `RUST_LOG`.
    pub log_level: String,
    /// Extra environment variables (the object store's `AWS_*`).
    pub env: Vec<(String, String)>,
}

impl OperatorOptions {
    pub fn namespace(ns: &str) -> Self {
        Self {
            namespaces: vec![ns.to_string()],
            extra_args: Vec::new(),
            log_level: "info,kiln=debug".into(),
            env: Vec::new(),
        }
    }

    /// These options plus environment variables.
    pub fn with_env(mut self, env: &[(String, String)]) -> Self {
        self.env.extend(env.iter().cloned());
        self
    }

    /// These options plus extra `kiln run` flags.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args
            .extend(args.iter().map(|arg| arg.to_string()));
        self
    }
}

/// A free loopback port (the kernel picks it; racy only against other processes binding
/// ports at the same instant, which tests tolerate).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Operator {
    /// Starts `kiln run` and waits until `/readyz` answers 200.
    pub async fn start(cp: &ControlPlane, options: OperatorOptions) -> Operator {
        let state = tempfile::tempdir().expect("operator state dir");
        let workspace = state.path().join("workspace");
        let http_addr: std::net::SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let lease = format!("kiln-test-{}", options.namespaces.join("-"));
        let mut args = vec![
            "run".to_string(),
            format!("--http-addr={http_addr}"),
            format!("--workspace-dir={}", workspace.display()),
            format!("--lease-name={}", &lease[..lease.len().min(63)]),
            "--lease-namespace=default".to_string(),
        ];
        if !options.namespaces.is_empty() {
            args.push(format!("--namespaces={}", options.namespaces.join(",")));
        }
        args.extend(options.extra_args);
        let mut op = Operator {
            child: None,
            http_addr,
            workspace,
            log: state.path().join("kiln.log"),
            state,
            args,
            env: options.env,
            kubeconfig: cp.kubeconfig.clone(),
        };
        op.spawn(&options.log_level);
        op.wait_ready().await;
        op
    }

    fn spawn(&mut self, log_level: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", log_level)
            .env("HOSTNAME", format!("test-{}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // The operator must die with the test process, even if a test panics mid-way.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start kiln run"));
    }

    /// Waits until `/readyz` returns 200, or fails with the operator's log.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = http_status(self.http_addr, "/readyz").await
                && code == 200
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "kiln exited with {status} before becoming ready:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kiln not ready after 60s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("operator is running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kiln did not exit within 30s of SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the operator and starts it again with the same settings and workspace.
    pub async fn restart(&mut self, log_level: &str) {
        self.restart_after(log_level, || {}).await;
    }

    /// Stops the operator, runs `meanwhile` (say, wiping its workspace as a pod replacement
    /// would: nothing writes to it then), and starts it again.
    pub async fn restart_after(&mut self, log_level: &str, meanwhile: impl FnOnce()) {
        let status = self.terminate();
        assert!(
            status.success(),
            "kiln exited with {status} on SIGTERM:\n{}",
            self.logs()
        );
        meanwhile();
        self.spawn(log_level);
        self.wait_ready().await;
    }

    /// Kills the operator with SIGKILL (a crash, an OOM kill, a node gone): no draining.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("operator is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A pod replacement: SIGKILL, a new empty workspace directory, a new process.
    pub async fn kill_and_wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.workspace).expect("wipe the workspace");
        self.start_again().await;
    }

    /// Starts the operator again after [`Operator::kill`], with the same settings.
    pub async fn start_again(&mut self) {
        self.spawn("info,kiln=debug");
        self.wait_ready().await;
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GETs `path` over plain HTTP/1.1 and returns the status code (None if unreachable).
pub async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(code, _)| code)
}

/// A minimal HTTP/1.1 GET over a raw TCP stream, so the harness needs no HTTP client crate.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Operator {
    /// The operator process's pid (for reading its `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A response read by [`http_request`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What [`http_request`] sends as the body.
#[derive(Clone, Copy)]
pub enum HttpBody<'a> {
    /// No body and no `Content-Length`.
    None,
    /// With `Content-Length`.
    Bytes(&'a [u8]),
    /// `Transfer-Encoding: chunked`, one chunk per slice: the server does not know the size.
    Chunked(&'a [&'a [u8]]),
}

/// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`), so the harness
/// needs no HTTP client crate. `target` is sent as written: tests can send request targets
/// (`../x`, `%00`) that a normalising client would rewrite. The response body may be
/// `Content-Length`-delimited, chunked, or run to the end of the connection.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: HttpBody<'_>,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (mut rx, mut tx) = stream.into_split();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut out: Vec<u8> = Vec::new();
    match body {
        HttpBody::None => {
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
        }
        HttpBody::Bytes(bytes) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(bytes);
        }
        HttpBody::Chunked(chunks) => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    // Written while the response is read: a server may answer (413, 401) without reading
    // the body, and then the write fails; the response is what the test wants.
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&out).await;
        tx
    });
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response arrived (the server closed with our body unread).
            Err(_) if !raw.is_empty() => break,
            Err(e) => panic!("{method} {target}: reading the response failed: {e}"),
        }
    }
    drop(writer.await);
    parse_response(&raw, method == "HEAD").unwrap_or_else(|| {
        panic!(
            "{method} {target}: malformed response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8], head_only: bool) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if head_only || status == 204 || status == 304 {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if let Some(len) = get("content-length") {
        rest.get(..len.parse::<usize>().ok()?)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// Deterministic bytes that do not compress (xorshift), so that nothing on the way (deflate,
/// HTTP) can shrink them.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A real S3-compatible server (MinIO) started by `hack/object-store.sh` for one test, with
/// state in its own directory; stopped when dropped (and by a reaper if the test process dies).
pub struct ObjectStore {
    pub dir: PathBuf,
    /// The variables of `DIR/s3.env`: `AWS_*` and `KILN_OBJECT_STORE`.
    pub env: Vec<(String, String)>,
}

impl ObjectStore {
    /// Starts a server, or fails loudly saying how to get one: the tests that need a store
    /// never pass without one.
    pub fn start() -> ObjectStore {
        let base = std::env::temp_dir().join("kiln-tests");
        std::fs::create_dir_all(&base).expect("create the test state directory");
        let dir = tempfile::Builder::new()
            .prefix("s3-")
            .tempdir_in(&base)
            .expect("create an object-store directory")
            .keep();
        let store = ObjectStore {
            dir,
            env: Vec::new(),
        };
        store.script("start");
        spawn_store_reaper(&store.dir);
        let text = std::fs::read_to_string(store.dir.join("s3.env")).expect("read s3.env");
        let env = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut store = store;
        store.env = env;
        store
    }

    fn script(&self, command: &str) {
        let out = Command::new(repo().join("hack/object-store.sh"))
            .arg(command)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run hack/object-store.sh");
        assert!(
            out.status.success(),
            "hack/object-store.sh {command} {} failed:\n{}\n\
             The object-store tests need a real S3 server built from the Go module proxy:\n  \
             hack/object-store.sh build   # needs Go >= 1.24; minutes the first time, cached after\n\
             then run the tests again (hack/test.sh does both).",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (uploads must then fail).
    pub fn stop(&self) {
        self.script("stop");
    }

    /// Starts it again on the same port, with the same credentials and data.
    pub fn resume(&self) {
        self.script("start");
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("s3.env has no {name}"))
    }

    /// The bucket of `KILN_OBJECT_STORE`.
    pub fn bucket(&self) -> String {
        let url = self.var("KILN_OBJECT_STORE").trim_start_matches("s3://");
        url.split('/').next().unwrap_or_default().to_string()
    }

    /// A client of the server, configured from `s3.env` like Kiln is.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.var("AWS_ENDPOINT_URL"))
            .with_access_key_id(self.var("AWS_ACCESS_KEY_ID"))
            .with_secret_access_key(self.var("AWS_SECRET_ACCESS_KEY"))
            .with_region(self.var("AWS_REGION"))
            .with_bucket_name(self.bucket())
            .with_allow_http(true)
            .build()
            .expect("an S3 client for the test server")
    }

    /// Every key under `prefix` (a full key prefix, without the bucket).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let client = self.client();
        let prefix = object_store::path::Path::from(prefix);
        let mut keys: Vec<String> = client
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list the test bucket");
        keys.sort();
        keys
    }

    /// `KILN_OBJECT_STORE`'s prefix.
    pub fn prefix(&self) -> String {
        let url = self.var("KILN_OBJECT_STORE").trim_start_matches("s3://");
        url.split_once('/')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("hack/object-store.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

fn spawn_store_reaper(dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; '{s3}' stop '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        s3 = repo().join("hack/object-store.sh").display(),
        dir = dir.display(),
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)]
    cmd.spawn().expect("spawn the object-store reaper");
}
