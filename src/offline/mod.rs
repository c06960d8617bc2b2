//! `kiln validate` and `kiln render`: the operator's validation and rendering for CI pipelines,
//! without a cluster.
//!
//! Both read manifests (multi-document YAML or JSON, `-` for stdin, `kind: List` unwrapped) and
//! hand them to the code the controllers run ([`crate::resolve`], [`crate::validate`],
//! [`crate::desired::job`], [`crate::workspace`]), with the referenced ConfigMaps and Secrets
//! taken from files instead of the API server ([`crate::resolve::Offline`]). Nothing here
//! decides anything the operator decides differently; this module only reads input and
//! prints results.

pub mod render;
pub mod validate;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::Value;

use crate::resolve::Offline;

/// One document of an input, with where it came from for messages: `file.yaml#2` is the
/// second non-empty document of the file (empty ones are not counted).
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: String,
    pub value: Value,
}

impl Document {
    /// `apiVersion`'s group (empty for the core group) and `kind`.
    fn group_kind(&self) -> (&str, &str) {
        let api_version = self.value["apiVersion"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        (group, self.value["kind"].as_str().unwrap_or_default())
    }

    /// Whether this is a Kiln object of `kind`.
    pub fn is_kiln(&self, kind: &str) -> bool {
        self.group_kind() == ("kiln.dev", kind)
    }

    /// `metadata.name`, or `?` when there is none (it is only used in messages).
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("?")
    }

    /// The document as a typed object, with its origin in the error.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_value(self.value.clone()).with_context(|| {
            let (_, kind) = self.group_kind();
            format!("{}: {kind} {:?} is malformed", self.origin, self.name())
        })
    }
}

/// Reads every document of every input. `-` is stdin (read once, however often it is named).
pub fn read_documents(inputs: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let mut documents = Vec::new();
    let mut stdin_read = false;
    for input in inputs {
        let (origin, text) = if input.as_os_str() == "-" {
            if stdin_read {
                continue;
            }
            stdin_read = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            ("<stdin>".to_string(), text)
        } else {
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("reading {}", input.display()))?;
            (input.display().to_string(), text)
        };
        documents.extend(parse_documents(&origin, &text)?);
    }
    Ok(documents)
}

/// Splits a YAML stream (JSON is YAML) into documents: empty documents are skipped, and the
/// items of a `kind: List` (what `kubectl get -o yaml` prints) count as documents.
pub fn parse_documents(origin: &str, text: &str) -> anyhow::Result<Vec<Document>> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple(text).with_context(|| format!("{origin}: not valid YAML"))?;
    let mut documents = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let origin = format!("{origin}#{}", index + 1);
        match value {
            Value::Null => {}
            Value::Object(_) if value["kind"] == "List" && value["items"].is_array() => {
                let Value::Array(items) = value["items"].clone() else {
                    continue;
                };
                for (item_index, item) in items.into_iter().enumerate() {
                    documents.push(Document {
                        origin: format!("{origin}/items/{item_index}"),
                        value: item,
                    });
                }
            }
            Value::Object(_) => documents.push(Document { origin, value }),
            _ => bail!("{origin}: a document must be a mapping (an object with a kind)"),
        }
    }
    Ok(documents)
}

/// Adds the ConfigMaps and Secrets among `documents` to `objects`.
pub fn collect_objects(documents: &[Document], objects: &mut Offline) -> anyhow::Result<()> {
    for document in documents {
        match document.group_kind() {
            ("", "ConfigMap") => objects.add_config_map(document.parse::<ConfigMap>()?),
            ("", "Secret") => objects.add_secret(document.parse::<Secret>()?),
            _ => {}
        }
    }
    Ok(())
}

/// Every regular file directly in `dir` whose name ends in `.yaml`, `.yml` or `.json`, sorted.
pub fn manifest_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_streams_lists_and_empty_documents() {
        let text = "---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{\"apiVersion\": \"kiln.dev/v1alpha1\", \"kind\": \"Draft\", \"metadata\": {\"name\": \"b\"}}]}\n";
        let docs = parse_documents("in.yaml", text).expect("parses");
        let names: Vec<_> = docs.iter().map(|d| (d.origin.as_str(), d.name())).collect();
        assert_eq!(names, [("in.yaml#1", "a"), ("in.yaml#2/items/0", "b")]);
        assert!(docs[1].is_kiln("Draft"));
        assert!(!docs[0].is_kiln("ConfigMap"));
    }

    #[test]
    fn scalars_and_bad_yaml_are_refused_with_their_origin() {
        let err = parse_documents("x.yaml", "just a string\n").expect_err("scalar");
        assert!(err.to_string().starts_with("x.yaml#1: "), "{err}");
        let err = parse_documents("y.yaml", "a: [1\n").expect_err("bad yaml");
        assert!(err.to_string().starts_with("y.yaml: "), "{err}");
    }

    #[test]
    fn secrets_string_data_is_folded_into_data() {
        let docs = parse_documents(
            "s.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n",
        )
        .expect("parses");
        let mut objects = Offline::default();
        collect_objects(&docs, &mut objects).expect("collects");
        let data = objects.secrets["s"].data.as_ref().expect("data");
        assert_eq!(data["k"].0, b"v");
    }
}
