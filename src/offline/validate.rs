//! `kiln validate -f FILE… [--schema-dir DIR]`: checks Draft manifests as the Draft controller
//! does ([`crate::resolve::schema::check`]) and prints every error with its JSON pointer.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Document, collect_objects, manifest_files, read_documents};
use crate::api::draft::Draft;
use crate::resolve::Offline;
use crate::resolve::schema::{self, Verdict};

/// What a run found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Drafts checked.
    pub drafts: usize,
    /// Drafts with at least one error.
    pub invalid: usize,
}

impl Summary {
    /// Whether the run passes: at least one draft, none invalid. Finding no draft at all fails,
    /// so a wrong glob in a pipeline cannot pass silently.
    pub fn passed(&self) -> bool {
        self.drafts > 0 && self.invalid == 0
    }
}

/// Checks every Draft in `inputs`. The schemas named by `schemaRef` are looked up among the
/// ConfigMaps in `schema_dir` (every `*.yaml`, `*.yml`, `*.json` there) and in `inputs`
/// themselves. One line per draft goes to `out`: `ORIGIN: Draft NAME: valid`, or one line per
/// error, `ORIGIN: Draft NAME: POINTER: MESSAGE` (the pointer into `spec.config`, as in
/// `status.validationErrors`; `(config)` for the config as a whole).
pub async fn run(
    inputs: &[PathBuf],
    schema_dir: Option<&Path>,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let documents = read_documents(inputs)?;
    let mut objects = Offline::default();
    if let Some(dir) = schema_dir {
        collect_objects(&read_documents(&manifest_files(dir)?)?, &mut objects)?;
    }
    // ConfigMaps in the inputs come last: next to the drafts, they win over the directory.
    collect_objects(&documents, &mut objects)?;

    let mut summary = Summary::default();
    for document in documents.iter().filter(|d| d.is_kiln("Draft")) {
        summary.drafts += 1;
        let lines = check(document, &objects).await?;
        if !lines.is_empty() {
            summary.invalid += 1;
        }
        let prefix = format!("{}: Draft {}", document.origin, document.name());
        if lines.is_empty() {
            writeln!(out, "{prefix}: valid")?;
        }
        for line in lines {
            writeln!(out, "{prefix}: {line}")?;
        }
    }
    Ok(summary)
}

/// The errors of one Draft document, one line each; empty when it is valid.
async fn check(document: &Document, objects: &Offline) -> anyhow::Result<Vec<String>> {
    let draft: Draft = match document.parse() {
        Ok(draft) => draft,
        // A manifest that does not even have the Draft's shape is an error of the input,
        // reported like the others so that every file is still checked.
        Err(error) => return Ok(vec![format!("(manifest): {:#}", error.root_cause())]),
    };
    let verdict = schema::check(objects, &draft.spec, &draft.spec.config)
        .await
        .with_context(|| format!("{}: checking Draft {}", document.origin, document.name()))?;
    Ok(match verdict {
        Verdict::Valid => Vec::new(),
        Verdict::Violations(issues) => issues
            .into_iter()
            .map(|issue| {
                let pointer = if issue.path.is_empty() {
                    "(config)"
                } else {
                    issue.path.as_str()
                };
                format!("{pointer}: {}", issue.message)
            })
            .collect(),
        Verdict::BrokenSchema { reason, message } => vec![format!("{reason}: {message}")],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    async fn validate_text(text: &str, schema_dir: Option<&Path>) -> (Summary, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("in.yaml");
        std::fs::write(&file, text).expect("write");
        let mut out = Vec::new();
        let summary = run(&[file], schema_dir, &mut out).await.expect("runs");
        let out = String::from_utf8(out).expect("utf-8");
        (
            summary,
            out.replace(&dir.path().display().to_string(), "DIR"),
        )
    }

    #[tokio::test]
    async fn the_example_draft_is_valid() {
        let mut out = Vec::new();
        let summary = run(&[example("draft.yaml")], None, &mut out)
            .await
            .expect("runs");
        assert_eq!(
            summary,
            Summary {
                drafts: 1,
                invalid: 0
            }
        );
        assert!(summary.passed());
        let out = String::from_utf8(out).expect("utf-8");
        assert!(
            out.ends_with("draft.yaml#1: Draft welcome-email: valid\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn every_error_is_printed_with_its_pointer() {
        let example = std::fs::read_to_string(example("draft.yaml")).expect("example");
        let broken = example
            .replace("  generation:\n", "  generated:\n")
            .replace(
                "type: content\n    metadata",
                "type: artifact\n    metadata",
            );
        let text = format!(
            "{example}---\n{}",
            broken.replace("welcome-email\n", "broken\n")
        );
        let (summary, out) = validate_text(&text, None).await;
        assert_eq!(
            summary,
            Summary {
                drafts: 2,
                invalid: 1
            }
        );
        assert!(!summary.passed());
        assert!(
            out.contains("DIR/in.yaml#1: Draft welcome-email: valid\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "DIR/in.yaml#2: Draft broken: /generation: \"generation\" is a required property\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("DIR/in.yaml#2: Draft broken: /type: "),
            "{out}"
        );
    }

    #[tokio::test]
    async fn schema_refs_are_read_from_the_schema_dir() {
        let schemas = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            schemas.path().join("schema.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict}\ndata:\n  schema.json: '{\"type\": \"object\", \"required\": [\"owner\"]}'\n",
        )
        .expect("write");
        let draft = |name: &str, schema: &str| {
            format!(
                "apiVersion: kiln.dev/v1alpha1\nkind: Draft\nmetadata: {{name: {name}}}\nspec:\n  configType: content\n  schemaRef: {{name: {schema}, key: schema.json}}\n  config: {{id: x}}\n"
            )
        };
        let text = format!("{}---\n{}", draft("a", "strict"), draft("b", "absent"));
        let (summary, out) = validate_text(&text, Some(schemas.path())).await;
        assert_eq!(summary.invalid, 2, "{out}");
        assert!(
            out.contains("Draft a: /owner: \"owner\" is a required property"),
            "{out}"
        );
        assert!(
            out.contains("Draft b: SchemaNotFound: schemaRef: ConfigMap \"absent\""),
            "{out}"
        );
    }

    #[tokio::test]
    async fn no_draft_at_all_does_not_pass() {
        let (summary, out) = validate_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            None,
        )
        .await;
        assert_eq!(summary, Summary::default());
        assert!(!summary.passed());
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_malformed_draft_is_an_error_not_a_crash() {
        let (summary, out) = validate_text(
            "apiVersion: kiln.dev/v1alpha1\nkind: Draft\nmetadata: {name: m}\nspec: {configType: poem, config: {}}\n",
            None,
        )
        .await;
        assert_eq!(summary.invalid, 1);
        assert!(out.contains("Draft m: (manifest): "), "{out}");
    }
}
