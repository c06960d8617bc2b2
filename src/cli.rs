//! The `kiln` command line. Every flag of `run` has a `KILN_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::workspace::Limits;

/// The commit Kiln was built from: a short git commit id, or `unknown` for a build outside a
/// git checkout that was not given `KILN_GIT_COMMIT` (see build.rs).
pub const GIT_COMMIT: &str = env!("KILN_GIT_COMMIT");

/// What `kiln version` and `kiln --version` print after the name: the crate version, which is
/// also the chart's appVersion and the image tag of a release, and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KILN_GIT_COMMIT"),
    ")"
);

/// Kiln: configuration with a lifecycle, inside the cluster.
#[derive(Parser, Debug)]
#[command(name = "kiln", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controllers and the HTTP server (API, health, metrics).
    Run(Box<RunArgs>),
    /// Print Kiln's CustomResourceDefinitions as YAML (the source of `crds/`).
    Crds(CrdsArgs),
    /// Check Draft manifests as the operator would, without a cluster (for CI pipelines).
    /// Prints every error with its JSON pointer; exits with 1 on any error.
    Validate(ValidateArgs),
    /// Write a Job's declared files and `plan.json` as the operator would, without a cluster.
    /// Exits with 1 when a file cannot be produced.
    Render(RenderArgs),
    /// Roll a resource back to an earlier revision.
    #[command(subcommand)]
    Rollback(RollbackCommand),
    /// Print the version and the git commit Kiln was built from.
    Version,
}

#[derive(Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD (`<plural>.<group>.yaml`) into this directory instead of
    /// printing them all to stdout.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Manifests to check (multi-document YAML or JSON; `-` for stdin). Drafts are checked;
    /// ConfigMaps serve as `schemaRef` schemas; other objects are ignored.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// A directory of ConfigMap manifests (`*.yaml`, `*.yml`, `*.json`) holding the schemas
    /// that drafts name in `spec.schemaRef`.
    #[arg(long, value_name = "DIR")]
    pub schema_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Manifests holding exactly one Job (multi-document YAML or JSON; `-` for stdin).
    /// ConfigMaps and Secrets among them serve as `contentFrom` / `sourceFrom` sources.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Where the files are written (created if needed; existing files are overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A source key read from a file: `configmap/NAME/KEY=PATH` or `secret/NAME/KEY=PATH`.
    /// Repeat for each key; wins over the same key in a manifest.
    #[arg(long, value_name = "KIND/NAME/KEY=PATH")]
    pub from_file: Vec<crate::offline::render::FromFile>,
    /// Largest file, in bytes (the operator's `--max-file-bytes`).
    #[arg(long, env = "KILN_MAX_FILE_BYTES", default_value_t = Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
    /// Largest total of the job's files, in bytes (the operator's `--max-job-bytes`).
    #[arg(long, env = "KILN_MAX_JOB_BYTES", default_value_t = Limits::default().max_job_bytes)]
    pub max_job_bytes: u64,
    /// Most files in the job (the operator's `--max-files-per-job`).
    #[arg(long, env = "KILN_MAX_FILES_PER_JOB", default_value_t = Limits::default().max_files_per_job)]
    pub max_files_per_job: u64,
}

impl RenderArgs {
    /// The workspace limits a render is held to. The workspace budget does not apply to one
    /// job on its own.
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_bytes: self.max_file_bytes,
            max_job_bytes: self.max_job_bytes,
            max_files_per_job: self.max_files_per_job,
            max_workspace_bytes: u64::MAX,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RollbackCommand {
    /// Restore a draft's `spec.config` from one of its published revisions.
    Draft {
        /// The draft's name.
        name: String,
        /// The revision to restore.
        #[arg(long)]
        to_revision: i64,
        /// The draft's namespace (default: the kubeconfig's).
        #[arg(short, long, env = "KILN_NAMESPACE")]
        namespace: Option<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `kiln run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespaces to watch, comma-separated. All namespaces when empty.
    #[arg(long, env = "KILN_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Where job files and archives live (the pod's emptyDir).
    #[arg(
        long,
        env = "KILN_WORKSPACE_DIR",
        default_value = "/var/lib/kiln/workspace"
    )]
    pub workspace_dir: PathBuf,

    /// The one HTTP listener: file API, health and metrics.
    #[arg(long, env = "KILN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// PEM certificate for the HTTP listener. With `--tls-key`, the listener serves TLS.
    #[arg(long, env = "KILN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for the HTTP listener.
    #[arg(long, env = "KILN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Elect a leader on a Lease so that two replicas never reconcile at once.
    #[arg(long, env = "KILN_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "KILN_LEASE_NAME", default_value = "kiln-leader")]
    pub lease_name: String,

    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "KILN_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease (default: the pod name, else hostname + pid).
    #[arg(long, env = "KILN_POD_NAME")]
    pub identity: Option<String>,

    /// Largest file a job may hold, in bytes.
    #[arg(long, env = "KILN_MAX_FILE_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_file_bytes: u64,

    /// Largest total size of one job's files, in bytes.
    #[arg(long, env = "KILN_MAX_JOB_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_job_bytes: u64,

    /// Most files one job may hold.
    #[arg(long, env = "KILN_MAX_FILES_PER_JOB", default_value_t = 10_000)]
    pub max_files_per_job: u64,

    /// Budget of the whole workspace, in bytes.
    #[arg(long, env = "KILN_MAX_WORKSPACE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_workspace_bytes: u64,

    /// How long before expiry `ExpiringSoon` appears, as a duration (`1h`). Default: 10% of
    /// the TTL, at most 24h.
    #[arg(long, env = "KILN_EXPIRY_WARNING")]
    pub expiry_warning: Option<String>,

    /// A Draft's retention when its spec sets none (`spec.retention`), as a duration.
    #[arg(long, env = "KILN_DEFAULT_DRAFT_RETENTION", default_value = "720h",
          value_parser = parse_ttl_flag)]
    pub default_draft_retention: String,

    /// A Job's TTL when its spec sets none (`spec.ttl`), as a duration.
    #[arg(long, env = "KILN_DEFAULT_JOB_TTL", default_value = "48h",
          value_parser = parse_ttl_flag)]
    pub default_job_ttl: String,

    /// Shortest time between two rollouts of a workload following a ProviderConfig or a
    /// published config.
    #[arg(long, env = "KILN_ROLLOUT_DEBOUNCE", default_value = "30s")]
    pub rollout_debounce: String,

    /// How often reported key uses (`POST .../providerconfigs/{name}/usage`) are written to
    /// the ProviderConfig's status: at most one status write per ProviderConfig per interval.
    #[arg(long, env = "KILN_USAGE_FLUSH", default_value = "60s")]
    pub usage_flush: String,

    /// How often every object is reconciled again even without a change.
    #[arg(long, env = "KILN_RESYNC", default_value = "10m")]
    pub resync: String,

    /// Most reconciles of one kind running at once (per watched namespace). Bounds the
    /// operator's connections to the API server and its share of the server's in-flight
    /// request limit when many objects change at once.
    #[arg(long, env = "KILN_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Use a Secret as a Job file source only when it carries the annotation
    /// `kiln.dev/allow-job-source: "true"`. Turning this off lets anyone who may create Jobs
    /// in a namespace have Kiln read any Secret there (readers of the resulting files still
    /// need `get` on the Secret).
    #[arg(long, env = "KILN_SECRET_SOURCES_REQUIRE_OPT_IN", default_value_t = true, action = clap::ArgAction::Set)]
    pub secret_sources_require_opt_in: bool,

    /// An S3-compatible object store behind the job workspace, as `s3://bucket/prefix`:
    /// uploads and archives are stored there before they are acknowledged, and a workspace
    /// lost with the pod is restored from it. Endpoint, region and credentials come from the
    /// usual `AWS_*` variables. Without it, files live only in the workspace directory.
    #[arg(long, env = "KILN_OBJECT_STORE", value_name = "URL")]
    pub object_store: Option<String>,
}

/// Accepts a duration only if Kiln would accept it as a TTL in a spec, and keeps the text as
/// written: status reports the effective TTL as the user would have written it.
fn parse_ttl_flag(text: &str) -> Result<String, String> {
    crate::duration::parse_ttl(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<Box<RunArgs>, clap::Error> {
        let argv = ["kiln", "run"].iter().chain(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn concurrency_defaults_to_sixteen_and_refuses_zero() {
        assert_eq!(run_args(&[]).expect("defaults").concurrency, 16);
        assert_eq!(run_args(&["--concurrency=4"]).expect("4").concurrency, 4);
        let zero = run_args(&["--concurrency=0"]).expect_err("0 must be refused");
        assert_eq!(zero.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn default_ttls_are_durations_kiln_accepts() {
        let defaults = run_args(&[]).expect("defaults");
        assert_eq!(defaults.default_draft_retention, "720h");
        assert_eq!(defaults.default_job_ttl, "48h");
        let set =
            run_args(&["--default-draft-retention=24h", "--default-job-ttl=1h30m"]).expect("set");
        assert_eq!(set.default_draft_retention, "24h");
        assert_eq!(set.default_job_ttl, "1h30m");
        for bad in [
            "--default-job-ttl=0s",
            "--default-job-ttl=2 days",
            "--default-draft-retention=",
        ] {
            let err = run_args(&[bad]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }

    #[test]
    fn secret_sources_need_an_opt_in_unless_turned_off() {
        assert!(
            run_args(&[])
                .expect("defaults")
                .secret_sources_require_opt_in
        );
        let off = run_args(&["--secret-sources-require-opt-in=false"]).expect("false");
        assert!(!off.secret_sources_require_opt_in);
    }
}
