//! Declared files: the bytes each `spec.files` entry should have, resolved from the spec and
//! the ConfigMaps and Secrets it references.
//!
//! A file made from a Secret is *sensitive*: [`Resolved::secrets`] names the Secrets, so the
//! controller can record them before the bytes reach the workspace and the file API can ask
//! whether a reader may see those Secrets. A Secret is used at all only when it opts in with
//! the annotation [`ALLOW_JOB_SOURCE`] (unless the operator was started without that
//! requirement): creating a Job is a weaker right than reading a Secret, and a Job must not
//! turn one into the other.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::Objects;
use crate::api::KeyRef;
use crate::api::job::{ContentSource, DeclaredFile, KilnJobSpec};
use crate::desired::job::{PLAN_FILE, plan_json, render_template};
use crate::error::Result;
use crate::workspace::{JobKey, JobPath, Workspace};

/// The annotation a Secret must carry (value `"true"`) to be read into a Job's files.
pub const ALLOW_JOB_SOURCE: &str = "kiln.dev/allow-job-source";

/// Why a declared file cannot be produced. Each is the user's to fix (or to create the
/// referenced object); Kiln retries on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// `contentFrom` or `template.sourceFrom` names a ConfigMap/Secret or key that does not exist.
    SourceNotFound(String),
    /// The Secret named as a source has not opted in with [`ALLOW_JOB_SOURCE`].
    SourceNotAllowed(String),
    /// The template does not parse or render (message names file and line).
    TemplateError(String),
}

impl Problem {
    /// The condition reason it is reported under (`SourceNotFound`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::SourceNotFound(_) => "SourceNotFound",
            Problem::SourceNotAllowed(_) => "SourceNotAllowed",
            Problem::TemplateError(_) => "TemplateError",
        }
    }

    /// What is wrong, naming the file.
    pub fn message(&self) -> &str {
        match self {
            Problem::SourceNotFound(m)
            | Problem::SourceNotAllowed(m)
            | Problem::TemplateError(m) => m,
        }
    }
}

/// A declared file's bytes and the Secrets they were made from (sorted, no duplicates).
#[derive(Debug)]
pub struct Resolved {
    pub bytes: Vec<u8>,
    pub secrets: Vec<String>,
}

/// Reads ConfigMap and Secret keys in the job's namespace, under the operator's rules.
pub struct Sources<O> {
    pub objects: O,
    /// Whether a Secret must carry [`ALLOW_JOB_SOURCE`] to be used. The operator's choice
    /// (`--secret-sources-require-opt-in`); offline, the person running the tool supplied the
    /// Secret's bytes and no authority is at stake.
    pub require_opt_in: bool,
    /// Whether a template made from a Secret reports its error without details. The operator
    /// must (its messages reach status and Events, readable by people who may not read the
    /// Secret); offline, the details go to the person who supplied the template.
    pub withhold_secret_details: bool,
}

impl<O: Objects> Sources<O> {
    async fn read(
        &self,
        source: &ContentSource,
        path: &str,
    ) -> Result<std::result::Result<Vec<u8>, Problem>> {
        if let Some(r) = &source.config_map_key_ref {
            let cm = self.objects.config_map(&r.name).await?;
            let bytes = cm.and_then(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| {
                        cm.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(|b| b.0.clone())
                    })
            });
            return Ok(bytes.ok_or_else(|| missing("ConfigMap", r, path)));
        }
        if let Some(r) = &source.secret_key_ref {
            let secret = self.objects.secret(&r.name).await?;
            if let Some(secret) = &secret
                && self.require_opt_in
                && !opted_in(secret)
            {
                return Ok(Err(Problem::SourceNotAllowed(format!(
                    "{path}: Secret {:?} may not be used as a job file source: someone who may \
                     update it must annotate it with {ALLOW_JOB_SOURCE}=\"true\"",
                    r.name
                ))));
            }
            let bytes = secret
                .and_then(|s| s.data.and_then(|mut d| d.remove(&r.key)))
                .map(|ByteString(b)| b);
            return Ok(bytes.ok_or_else(|| missing("Secret", r, path)));
        }
        Ok(Err(Problem::SourceNotFound(format!(
            "{path}: no source given"
        ))))
    }

    /// The bytes `file` should hold, and the Secrets they come from.
    pub async fn resolve(
        &self,
        file: &DeclaredFile,
    ) -> Result<std::result::Result<Resolved, Problem>> {
        let secrets = secret_sources(file);
        let resolved = |bytes| Resolved {
            bytes,
            secrets: secrets.clone(),
        };
        if let Some(content) = &file.content {
            return Ok(Ok(resolved(content.clone().into_bytes())));
        }
        if let Some(source) = &file.content_from {
            return Ok(self.read(source, &file.path).await?.map(resolved));
        }
        let Some(template) = &file.template else {
            return Ok(Err(Problem::SourceNotFound(format!(
                "{}: no content, contentFrom or template",
                file.path
            ))));
        };
        let text = match (&template.source, &template.source_from) {
            (Some(text), _) => text.clone(),
            (None, Some(source)) => match self.read(source, &file.path).await? {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(_) => {
                        return Ok(Err(Problem::TemplateError(format!(
                            "{}: template source is not UTF-8",
                            file.path
                        ))));
                    }
                },
                Err(problem) => return Ok(Err(problem)),
            },
            (None, None) => {
                return Ok(Err(Problem::TemplateError(format!(
                    "{}: template has no source",
                    file.path
                ))));
            }
        };
        let context = template
            .context
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        // Fuel bounds a render's instructions, not its time: one instruction may copy
        // megabytes, and a hostile template can keep a core busy for seconds (the template
        // fuzz target saw tens of seconds in an unoptimised build). On the blocking pool it
        // cannot stall the runtime's workers, which renew the leader Lease and serve the API.
        let path = file.path.clone();
        let rendered =
            tokio::task::spawn_blocking(move || render_template(&path, &text, &context)).await;
        let rendered = match rendered {
            Ok(rendered) => rendered,
            Err(e) => {
                return Ok(Err(Problem::TemplateError(format!(
                    "{}: rendering failed: {e}",
                    file.path
                ))));
            }
        };
        Ok(match rendered {
            Ok(text) => Ok(resolved(text.into_bytes())),
            // A parse or render error quotes names and tokens of the template: when the
            // template is a Secret's value, the status and Events must not carry them.
            Err(e) if self.withhold_secret_details && !secrets.is_empty() => {
                Err(Problem::TemplateError(format!(
                    "{}: the template from Secret {} does not render{} (details withheld: they \
                 would show the Secret's content; check it with `kiln render` offline or \
                 in a ConfigMap)",
                    file.path,
                    secrets.join(", "),
                    e.line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                )))
            }
            Err(e) => Err(Problem::TemplateError(e.to_string())),
        })
    }
}

/// What the job's spec says its workspace should hold, in write order: `plan.json` (when
/// there is a plan), then each declared file, so a declared `plan.json` wins as it is written
/// last. Files that cannot be produced are left out and reported as problems.
pub async fn wanted<O: Objects>(
    spec: &KilnJobSpec,
    sources: &Sources<O>,
) -> Result<(Vec<(String, Resolved)>, Vec<Problem>)> {
    let mut wanted: Vec<(String, Resolved)> = Vec::new();
    let mut problems = Vec::new();
    if let Some(plan) = &spec.plan {
        let plan = Resolved {
            bytes: plan_json(plan).into_bytes(),
            secrets: Vec::new(),
        };
        wanted.push((PLAN_FILE.to_string(), plan));
    }
    for file in &spec.files {
        match sources.resolve(file).await? {
            Ok(resolved) => wanted.push((file.path.clone(), resolved)),
            Err(problem) => problems.push(problem),
        }
    }
    Ok((wanted, problems))
}

/// What [`store`] did to the workspace.
#[derive(Debug, Default)]
pub struct Stored {
    /// Files the workspace refused (a bad path, a limit).
    pub problems: Vec<Problem>,
    /// Paths whose bytes changed (created or replaced), in write order: what a complete job's
    /// archive no longer holds.
    pub written: Vec<String>,
}

/// Writes `wanted` into the job's workspace (blocking I/O), each file only when its bytes
/// differ from what is there, under the workspace's path rules and limits. A file the
/// workspace refuses (a bad path, a limit) is a problem of the job, not an error of the call.
pub fn store(
    ws: &Workspace,
    key: &JobKey,
    wanted: Vec<(String, Resolved)>,
) -> crate::workspace::Result<Stored> {
    let mut stored = Stored::default();
    let problems = &mut stored.problems;
    for (path, Resolved { bytes, secrets }) in wanted {
        // The CRD already refuses bad paths; this is the workspace's own, final check.
        let path = match JobPath::parse(&path) {
            Ok(p) => p,
            Err(e) => {
                problems.push(Problem::TemplateError(format!("{path}: {e}")));
                continue;
            }
        };
        // Recorded even when the bytes are already there: a record lost or never made
        // (a file written by an older Kiln) is made good before anyone can read it.
        ws.mark_sensitive(key, &path, &secrets)?;
        if ws.read(key, &path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        // Declared files are desired state, rebuilt from the Job: never sent to the object
        // store (see `Workspace::write_declared`).
        match ws.write_declared(key, &path, &bytes) {
            Ok(_) => stored.written.push(path.as_str().to_owned()),
            Err(e) => problems.push(Problem::TemplateError(format!("{path}: {e}"))),
        }
    }
    Ok(stored)
}

/// The kind of object a declared file can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

impl SourceKind {
    /// The kind's name, as people write it (`ConfigMap`, `Secret`).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::ConfigMap => "ConfigMap",
            SourceKind::Secret => "Secret",
        }
    }
}

/// The ConfigMaps and Secrets `file` reads (its `contentFrom` and its template's
/// `sourceFrom`), by kind and name, in the namespace of its Job.
pub fn sources(file: &DeclaredFile) -> impl Iterator<Item = (SourceKind, &str)> {
    let refs = [
        file.content_from.as_ref(),
        file.template.as_ref().and_then(|t| t.source_from.as_ref()),
    ];
    refs.into_iter().flatten().flat_map(|s| {
        let config_maps = s.config_map_key_ref.iter();
        let secrets = s.secret_key_ref.iter();
        config_maps
            .map(|r| (SourceKind::ConfigMap, r.name.as_str()))
            .chain(secrets.map(|r| (SourceKind::Secret, r.name.as_str())))
    })
}

/// The Secrets `file` reads (its `contentFrom` or its template's `sourceFrom`), sorted.
pub fn secret_sources(file: &DeclaredFile) -> Vec<String> {
    let mut names: Vec<String> = sources(file)
        .filter(|(kind, _)| *kind == SourceKind::Secret)
        .map(|(_, name)| name.to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn opted_in(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_JOB_SOURCE))
        .is_some_and(|v| v == "true")
}

fn missing(kind: &str, r: &KeyRef, path: &str) -> Problem {
    Problem::SourceNotFound(format!(
        "{path}: {kind} {:?} or its key {:?} not found",
        r.name, r.key
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::job::TemplateSource;

    fn key(name: &str) -> Option<KeyRef> {
        Some(KeyRef {
            name: name.into(),
            key: "k".into(),
        })
    }

    fn file() -> DeclaredFile {
        DeclaredFile {
            path: "p.txt".into(),
            content: None,
            content_from: None,
            template: None,
        }
    }

    #[test]
    fn files_from_secrets_name_them() {
        let inline = DeclaredFile {
            content: Some("x".into()),
            ..file()
        };
        assert!(secret_sources(&inline).is_empty());
        let from_configmap = DeclaredFile {
            content_from: Some(ContentSource {
                config_map_key_ref: key("cm"),
                secret_key_ref: None,
            }),
            ..file()
        };
        assert!(secret_sources(&from_configmap).is_empty());
        let from_secret = DeclaredFile {
            content_from: Some(ContentSource {
                config_map_key_ref: None,
                secret_key_ref: key("db"),
            }),
            ..file()
        };
        assert_eq!(secret_sources(&from_secret), ["db"]);
        let template_from_secret = DeclaredFile {
            template: Some(TemplateSource {
                source: None,
                source_from: Some(ContentSource {
                    config_map_key_ref: None,
                    secret_key_ref: key("tpl"),
                }),
                context: None,
            }),
            ..file()
        };
        assert_eq!(secret_sources(&template_from_secret), ["tpl"]);
    }

    #[test]
    fn sources_are_every_object_a_file_reads() {
        assert_eq!(sources(&file()).count(), 0);
        let both = DeclaredFile {
            content_from: Some(ContentSource {
                config_map_key_ref: key("cm"),
                secret_key_ref: None,
            }),
            template: Some(TemplateSource {
                source: None,
                source_from: Some(ContentSource {
                    config_map_key_ref: None,
                    secret_key_ref: key("tpl"),
                }),
                context: None,
            }),
            ..file()
        };
        let found: Vec<_> = sources(&both).collect();
        assert_eq!(
            found,
            [(SourceKind::ConfigMap, "cm"), (SourceKind::Secret, "tpl")]
        );
    }

    #[test]
    fn only_an_exact_true_opts_in() {
        let secret = |value: Option<&str>| Secret {
            metadata: kube::api::ObjectMeta {
                annotations: value.map(|v| [(ALLOW_JOB_SOURCE.to_string(), v.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(opted_in(&secret(Some("true"))));
        for value in [None, Some("false"), Some("True"), Some("yes"), Some("")] {
            assert!(!opted_in(&secret(value)), "{value:?}");
        }
    }
}
