//! `kiln render -f job.yaml --out DIR [--from-file KIND/NAME/KEY=PATH]…`: writes a Job's
//! declared files and `plan.json` as the Job controller would.
//!
//! The same functions produce the bytes ([`declared::wanted`]: templates, `contentFrom`,
//! `plan.json`) and store them ([`declared::store`]: path rules and limits), into a real
//! [`Workspace`] in a temporary directory; the stored files are then copied to `--out`. What
//! differs from the operator, on purpose:
//! - the ConfigMaps and Secrets come from the input manifests and `--from-file`;
//! - a Secret need not carry `kiln.dev/allow-job-source` (whoever runs the tool supplied its
//!   bytes; the annotation guards the cluster's Secrets against Job authors);
//! - a template read from a Secret reports its error in full (the operator withholds the
//!   details from status and Events, which people without access to the Secret may read).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;

use super::{collect_objects, read_documents};
use crate::api::job::KilnJob;
use crate::resolve::Offline;
use crate::resolve::declared::{self, Sources};
use crate::workspace::{JobKey, Limits, Workspace};

/// A ConfigMap or Secret key whose value is a file: `configmap/NAME/KEY=PATH` or
/// `secret/NAME/KEY=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromFile {
    pub kind: SourceKind,
    pub name: String,
    pub key: String,
    pub path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

impl FromStr for FromFile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?}: expected configmap/NAME/KEY=PATH or secret/NAME/KEY=PATH");
        let (reference, path) = s.split_once('=').ok_or_else(usage)?;
        let mut parts = reference.split('/');
        let (Some(kind), Some(name), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(usage());
        };
        let kind = match kind {
            "configmap" => SourceKind::ConfigMap,
            "secret" => SourceKind::Secret,
            _ => return Err(usage()),
        };
        if name.is_empty() || key.is_empty() || path.is_empty() {
            return Err(usage());
        }
        Ok(FromFile {
            kind,
            name: name.to_string(),
            key: key.to_string(),
            path: PathBuf::from(path),
        })
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files written to the output directory, `plan.json` included, sorted.
    pub written: Vec<String>,
    /// Declared files that could not be produced (the operator's `TemplateError`,
    /// `SourceNotFound`, …).
    pub problems: usize,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.problems == 0
    }
}

/// Renders the one Job among `inputs` into `out_dir`. ConfigMaps and Secrets among the inputs
/// and `from_files` (which win) are the sources of `contentFrom` and `template.sourceFrom`.
/// Prints `wrote PATH (N bytes)` per file and `ORIGIN: Job NAME: REASON: MESSAGE` per
/// problem to `out`. Files that render are written even when others do not.
pub async fn run(
    inputs: &[PathBuf],
    from_files: &[FromFile],
    out_dir: &Path,
    limits: Limits,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let documents = read_documents(inputs)?;
    let mut objects = Offline::default();
    collect_objects(&documents, &mut objects)?;
    add_from_files(&mut objects, from_files)?;

    let jobs: Vec<_> = documents.iter().filter(|d| d.is_kiln("Job")).collect();
    let [document] = jobs.as_slice() else {
        bail!(
            "render takes exactly one Job (kind: Job, apiVersion: kiln.dev/…); the input has {}",
            jobs.len()
        );
    };
    let job: KilnJob = document.parse()?;
    let sources = Sources {
        objects,
        require_opt_in: false,
        withhold_secret_details: false,
    };
    let (wanted, mut problems) = declared::wanted(&job.spec, &sources).await?;

    // The operator's workspace enforces the path rules and the limits; a scratch one applies
    // them here, and only what it accepted is copied out.
    let scratch = Scratch::new()?;
    let ws = Workspace::open(scratch.0.clone(), limits).context("opening a scratch workspace")?;
    let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
    let key = JobKey::new(namespace, "offline").context("naming the scratch job")?;
    ws.ensure_job(&key).context("creating the scratch job")?;
    let stored = declared::store(&ws, &key, wanted).context("storing the files")?;
    problems.extend(stored.problems);

    let mut summary = Summary {
        problems: problems.len(),
        ..Summary::default()
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for file in ws.list(&key).context("listing the rendered files")? {
        let bytes = ws
            .read(&key, &file.path)
            .with_context(|| format!("reading back {}", file.path))?;
        let target = out_dir.join(file.path.as_str());
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, &bytes).with_context(|| format!("writing {}", target.display()))?;
        writeln!(out, "wrote {} ({} bytes)", file.path, bytes.len())?;
        summary.written.push(file.path.to_string());
    }
    for problem in &problems {
        writeln!(
            out,
            "{}: Job {}: {}: {}",
            document.origin,
            document.name(),
            problem.reason(),
            problem.message()
        )?;
    }
    Ok(summary)
}

/// Adds each `--from-file` value to the ConfigMap or Secret it names, creating it if needed.
/// A ConfigMap key holds text (`data`) when the file is UTF-8, else bytes (`binaryData`), as
/// `kubectl create configmap --from-file` does.
fn add_from_files(objects: &mut Offline, from_files: &[FromFile]) -> anyhow::Result<()> {
    for from in from_files {
        let bytes = std::fs::read(&from.path)
            .with_context(|| format!("reading {} for --from-file", from.path.display()))?;
        let meta = || ObjectMeta {
            name: Some(from.name.clone()),
            ..ObjectMeta::default()
        };
        match from.kind {
            SourceKind::ConfigMap => {
                let cm = objects
                    .configmaps
                    .entry(from.name.clone())
                    .or_insert_with(|| ConfigMap {
                        metadata: meta(),
                        ..ConfigMap::default()
                    });
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        if let Some(binary) = cm.binary_data.as_mut() {
                            binary.remove(&from.key);
                        }
                        cm.data
                            .get_or_insert_with(BTreeMap::new)
                            .insert(from.key.clone(), text);
                    }
                    Err(e) => {
                        if let Some(data) = cm.data.as_mut() {
                            data.remove(&from.key);
                        }
                        cm.binary_data
                            .get_or_insert_with(BTreeMap::new)
                            .insert(from.key.clone(), ByteString(e.into_bytes()));
                    }
                }
            }
            SourceKind::Secret => {
                let secret = objects
                    .secrets
                    .entry(from.name.clone())
                    .or_insert_with(|| Secret {
                        metadata: meta(),
                        ..Secret::default()
                    });
                secret
                    .data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(from.key.clone(), ByteString(bytes));
            }
        }
    }
    Ok(())
}

/// A directory under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let dir = std::env::temp_dir().join(format!("kiln-render-{}", hex::encode(nonce)));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover in the temporary directory is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    async fn render(
        inputs: &[PathBuf],
        from: &[FromFile],
        out_dir: &Path,
        limits: Limits,
    ) -> (Summary, String) {
        let mut out = Vec::new();
        let summary = run(inputs, from, out_dir, limits, &mut out)
            .await
            .expect("runs");
        (summary, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn from_file_names_a_configmap_or_secret_key() {
        let parsed: FromFile = "secret/db/password=./pw.txt".parse().expect("parses");
        assert_eq!(
            parsed,
            FromFile {
                kind: SourceKind::Secret,
                name: "db".into(),
                key: "password".into(),
                path: "./pw.txt".into()
            }
        );
        let parsed: FromFile = "configmap/cfg/a.b=x=y".parse().expect("parses");
        assert_eq!(parsed.kind, SourceKind::ConfigMap);
        assert_eq!(parsed.path, PathBuf::from("x=y"));
        for bad in [
            "secret/db=pw",
            "pod/a/b=c",
            "configmap/a/b/c=d",
            "configmap/a/b",
            "configmap//b=c",
            "configmap/a/b=",
        ] {
            assert!(bad.parse::<FromFile>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_example_job_renders_its_files_and_plan() {
        let out_dir = tempfile::tempdir().expect("tempdir");
        let (summary, out) = render(
            &[example("job.yaml")],
            &[],
            out_dir.path(),
            Limits::default(),
        )
        .await;
        assert!(summary.passed(), "{out}");
        assert_eq!(summary.written, ["README.md", "plan.json", "src/main.py"]);
        let main = std::fs::read_to_string(out_dir.path().join("src/main.py")).expect("main.py");
        // The operator keeps a template's trailing newline, after the loop's own.
        assert_eq!(main, "print(\"hello, world\")\nprint(\"hello, kiln\")\n\n");
        let plan = std::fs::read_to_string(out_dir.path().join("plan.json")).expect("plan");
        let job: KilnJob =
            serde_saphyr::from_str(&std::fs::read_to_string(example("job.yaml")).expect("example"))
                .expect("example parses");
        let expected = job.spec.plan.as_ref().expect("plan");
        assert_eq!(plan, crate::desired::job::plan_json(expected));
        assert!(out.contains("wrote src/main.py ("), "{out}");
    }

    #[tokio::test]
    async fn content_from_reads_configmap_and_secret_keys_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = dir.path().join("job.yaml");
        std::fs::write(
            &job,
            "apiVersion: kiln.dev/v1alpha1\nkind: Job\nmetadata: {name: j}\nspec:\n  projectName: p\n  files:\n  - path: conf/app.ini\n    contentFrom: {configMapKeyRef: {name: cfg, key: app.ini}}\n  - path: conf/token\n    contentFrom: {secretKeyRef: {name: creds, key: token}}\n  - path: greeting.txt\n    template:\n      sourceFrom: {secretKeyRef: {name: creds, key: tpl}}\n      context: {who: ci}\n",
        )
        .expect("write");
        for (name, text) in [
            ("app.ini", "[a]\nb=1\n"),
            ("token", "t0k"),
            ("tpl", "hi {{ who }}"),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let from = |spec: &str| -> FromFile {
            spec.replace("DIR", &dir.path().display().to_string())
                .parse()
                .expect("from-file")
        };
        let out_dir = dir.path().join("out");
        let (summary, out) = render(
            std::slice::from_ref(&job),
            &[
                from("configmap/cfg/app.ini=DIR/app.ini"),
                from("secret/creds/token=DIR/token"),
                from("secret/creds/tpl=DIR/tpl"),
            ],
            &out_dir,
            Limits::default(),
        )
        .await;
        assert!(summary.passed(), "{out}");
        let read = |p: &str| std::fs::read_to_string(out_dir.join(p)).expect(p);
        assert_eq!(read("conf/app.ini"), "[a]\nb=1\n");
        assert_eq!(read("conf/token"), "t0k");
        assert_eq!(read("greeting.txt"), "hi ci");

        // Without the sources, the operator's problems are reported, with full template
        // details, and the other files are still written.
        std::fs::write(dir.path().join("tpl"), "hi {{ who").expect("write");
        let out_dir = dir.path().join("out2");
        let (summary, out) = render(
            &[job],
            &[from("secret/creds/tpl=DIR/tpl")],
            &out_dir,
            Limits::default(),
        )
        .await;
        assert_eq!(summary.problems, 3, "{out}");
        assert!(summary.written.is_empty(), "{out}");
        assert!(
            out.contains(": Job j: SourceNotFound: conf/app.ini: ConfigMap \"cfg\""),
            "{out}"
        );
        assert!(
            out.contains(": Job j: TemplateError: greeting.txt: line 1: syntax error"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn the_operators_limits_and_path_rules_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = dir.path().join("job.yaml");
        std::fs::write(
            &job,
            "apiVersion: kiln.dev/v1alpha1\nkind: Job\nmetadata: {name: j}\nspec:\n  projectName: p\n  files:\n  - {path: small.txt, content: ok}\n  - {path: big.txt, content: this is far too long}\n  - {path: 'a/../../escape', content: x}\n",
        )
        .expect("write");
        let limits = Limits {
            max_file_bytes: 8,
            ..Limits::default()
        };
        let out_dir = dir.path().join("out");
        let (summary, out) = render(&[job], &[], &out_dir, limits).await;
        assert_eq!(summary.written, ["small.txt"], "{out}");
        assert_eq!(summary.problems, 2, "{out}");
        assert!(out.contains("over the limit of 8 bytes per file"), "{out}");
        assert!(out.contains("'..'"), "{out}");
        assert!(!dir.path().join("escape").exists());
    }

    #[tokio::test]
    async fn exactly_one_job_is_rendered() {
        let out_dir = tempfile::tempdir().expect("tempdir");
        let mut out = Vec::new();
        let err = run(
            &[example("draft.yaml")],
            &[],
            out_dir.path(),
            Limits::default(),
            &mut out,
        )
        .await
        .expect_err("no job");
        assert!(err.to_string().contains("the input has 0"), "{err}");
    }
}
