//! What a draft publishes: canonical JSON, the current ConfigMap `<configId>-<configType>`
//! and one immutable ConfigMap per revision `<configId>-<configType>-r<N>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::labels::*;
use super::sha256_hex;
use crate::api::draft::ConfigType;

/// Kiln's default for `publish.keepRevisions`.
pub const DEFAULT_KEEP_REVISIONS: i32 = 10;

/// The published config in its canonical form: keys sorted at every level, pretty-printed,
/// with a trailing newline, so the same config always gives the same bytes and hash
/// whatever the order the user wrote it in.
pub fn canonical_json(config: &Value) -> String {
    let mut out = serde_json::to_string_pretty(&sorted(config)).unwrap_or_else(|_| "null".into());
    out.push('\n');
    out
}

/// Sorts object keys recursively. serde_json's map is already ordered unless a dependency
/// enables `preserve_order`; sorting explicitly keeps the hash stable either way.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// What a publish of one config looks like, before it is compared with the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub config_id: String,
    pub config_type: ConfigType,
    pub json: String,
    pub hash: String,
}

impl Publication {
    pub fn new(config_id: &str, config_type: ConfigType, config: &Value) -> Self {
        let json = canonical_json(config);
        let hash = sha256_hex(json.as_bytes());
        Self {
            config_id: config_id.to_string(),
            config_type,
            json,
            hash,
        }
    }

    /// `<configId>-<configType>`: the ConfigMap applications read.
    pub fn name(&self) -> String {
        format!("{}-{}", self.config_id, self.config_type)
    }

    /// `<configId>-<configType>.json`: the one key of every ConfigMap of this config.
    pub fn key(&self) -> String {
        format!("{}.json", self.name())
    }

    /// `<configId>-<configType>-r<N>`.
    pub fn revision_name(&self, revision: i64) -> String {
        format!("{}-r{revision}", self.name())
    }

    fn labels(&self, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGED_BY_KILN.to_string()),
            (CONFIG_ID.to_string(), self.config_id.clone()),
            (CONFIG_TYPE.to_string(), self.config_type.to_string()),
            (ROLE.to_string(), role.to_string()),
        ])
    }

    fn annotations(&self, source: &Source, revision: i64) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SOURCE_DRAFT.to_string(), source.name.clone()),
            (SOURCE_DRAFT_UID.to_string(), source.uid.clone()),
            (REVISION.to_string(), revision.to_string()),
            (SHA256.to_string(), self.hash.clone()),
        ])
    }

    /// The current ConfigMap. Deliberately without an ownerReference: it outlives the draft.
    pub fn published(&self, namespace: &str, source: &Source, revision: i64) -> ConfigMap {
        self.config_map(
            self.name(),
            namespace,
            source,
            revision,
            ROLE_PUBLISHED,
            None,
        )
    }

    /// The immutable ConfigMap of one revision.
    pub fn revision(&self, namespace: &str, source: &Source, revision: i64) -> ConfigMap {
        self.config_map(
            self.revision_name(revision),
            namespace,
            source,
            revision,
            ROLE_REVISION,
            Some(true),
        )
    }

    fn config_map(
        &self,
        name: String,
        namespace: &str,
        source: &Source,
        revision: i64,
        role: &str,
        immutable: Option<bool>,
    ) -> ConfigMap {
        let mut labels = self.labels(role);
        if role == ROLE_REVISION {
            labels.insert(REVISION.to_string(), revision.to_string());
        }
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.to_string()),
                labels: Some(labels),
                annotations: Some(self.annotations(source, revision)),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(self.key(), self.json.clone())])),
            immutable,
            ..Default::default()
        }
    }

    /// Whether `existing` already holds exactly this publication at `revision` for `source`:
    /// same data, same Kiln labels and annotations. Anything else is drift to repair.
    pub fn matches(&self, existing: &ConfigMap, source: &Source, revision: i64) -> bool {
        let want = self.published(
            existing.metadata.namespace.as_deref().unwrap_or_default(),
            source,
            revision,
        );
        existing.data == want.data
            && existing.binary_data.as_ref().is_none_or(|b| b.is_empty())
            && contains_all(
                existing.metadata.labels.as_ref(),
                want.metadata.labels.as_ref(),
            )
            && contains_all(
                existing.metadata.annotations.as_ref(),
                want.metadata.annotations.as_ref(),
            )
    }
}

fn contains_all(
    have: Option<&BTreeMap<String, String>>,
    want: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let have = have.unwrap_or(&empty);
    want.unwrap_or(&empty)
        .iter()
        .all(|(k, v)| have.get(k) == Some(v))
}

/// The draft a publication comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub uid: String,
}

/// Who holds a published ConfigMap, read from its labels and annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the ConfigMap does not exist.
    Free,
    /// A ConfigMap Kiln does not manage: never touched.
    Unmanaged,
    /// Published by this draft, at this revision and hash.
    This { revision: i64, hash: Option<String> },
    /// Published by another draft (which may or may not still exist).
    Other {
        draft: String,
        uid: String,
        revision: i64,
    },
}

/// Reads the holder of `existing` for the draft `source`.
pub fn holder(existing: Option<&ConfigMap>, source: &Source) -> Holder {
    let Some(cm) = existing else {
        return Holder::Free;
    };
    if !managed_by_kiln(cm.metadata.labels.as_ref()) {
        return Holder::Unmanaged;
    }
    let annotations = cm.metadata.annotations.clone().unwrap_or_default();
    let revision = annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let uid = annotations
        .get(SOURCE_DRAFT_UID)
        .cloned()
        .unwrap_or_default();
    if uid == source.uid {
        Holder::This {
            revision,
            hash: annotations.get(SHA256).cloned(),
        }
    } else {
        Holder::Other {
            draft: annotations.get(SOURCE_DRAFT).cloned().unwrap_or_default(),
            uid,
            revision,
        }
    }
}

/// Revisions to delete so that at most `keep` remain, oldest first.
/// Whether writing revision `revision` can leave more than `keep` revisions of a configId.
/// Revisions are numbered upward from 1 and never reused, so while the newest is at most
/// `keep` there cannot be too many, and the list request pruning needs can be skipped.
/// (Leftovers of an earlier holder whose published ConfigMap was deleted by hand are
/// pruned once the numbering passes `keep`.)
pub fn may_need_pruning(revision: i64, keep: i32) -> bool {
    revision > i64::from(keep.max(1))
}

pub fn revisions_to_prune(mut existing: Vec<i64>, keep: i32) -> Vec<i64> {
    existing.sort_unstable();
    existing.dedup();
    let keep = usize::try_from(keep.max(1)).unwrap_or(1);
    let excess = existing.len().saturating_sub(keep);
    existing.truncate(excess);
    existing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source() -> Source {
        Source {
            name: "d".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn pruning_is_needed_only_past_keep() {
        assert!(!may_need_pruning(1, 5));
        assert!(!may_need_pruning(5, 5));
        assert!(may_need_pruning(6, 5));
        // keep below 1 is treated as 1, as in revisions_to_prune.
        assert!(!may_need_pruning(1, 0));
        assert!(may_need_pruning(2, 0));
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a = canonical_json(&json!({"b": 1, "a": {"y": [ {"d": 1, "c": 2} ], "x": null}}));
        let b = canonical_json(&json!({"a": {"x": null, "y": [ {"c": 2, "d": 1} ]}, "b": 1}));
        assert_eq!(a, b);
        assert!(a.starts_with("{\n  \"a\""));
        assert!(a.ends_with("}\n"));
    }

    #[test]
    fn names_key_labels_and_annotations() {
        let p = Publication::new("welcome-email", ConfigType::Content, &json!({"id": "x"}));
        assert_eq!(p.name(), "welcome-email-content");
        assert_eq!(p.key(), "welcome-email-content.json");
        assert_eq!(p.revision_name(3), "welcome-email-content-r3");
        let cm = p.published("ns", &source(), 3);
        assert!(
            cm.metadata.owner_references.is_none(),
            "the published ConfigMap must outlive the draft"
        );
        let labels = cm.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY], "kiln");
        assert_eq!(labels[CONFIG_ID], "welcome-email");
        assert_eq!(labels[CONFIG_TYPE], "content");
        let ann = cm.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[REVISION], "3");
        assert_eq!(ann[SHA256], p.hash);
        assert_eq!(ann[SOURCE_DRAFT], "d");
        let rev = p.revision("ns", &source(), 3);
        assert_eq!(rev.immutable, Some(true));
        assert_eq!(
            rev.metadata.name.as_deref(),
            Some("welcome-email-content-r3")
        );
    }

    #[test]
    fn matches_detects_edits() {
        let p = Publication::new("a", ConfigType::Artifact, &json!({"id": "x"}));
        let cm = p.published("ns", &source(), 1);
        assert!(p.matches(&cm, &source(), 1));
        let mut edited = cm.clone();
        edited.data.as_mut().unwrap().insert(p.key(), "{}".into());
        assert!(!p.matches(&edited, &source(), 1));
        let mut extra = cm.clone();
        extra
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        assert!(
            p.matches(&extra, &source(), 1),
            "foreign labels are not drift"
        );
        assert!(!p.matches(&cm, &source(), 2));
    }

    #[test]
    fn holder_classification() {
        let p = Publication::new("a", ConfigType::Content, &json!({}));
        assert_eq!(holder(None, &source()), Holder::Free);
        let mine = p.published("ns", &source(), 4);
        assert_eq!(
            holder(Some(&mine), &source()),
            Holder::This {
                revision: 4,
                hash: Some(p.hash.clone())
            }
        );
        let other = Source {
            name: "e".into(),
            uid: "u2".into(),
        };
        assert_eq!(
            holder(Some(&mine), &other),
            Holder::Other {
                draft: "d".into(),
                uid: "u1".into(),
                revision: 4
            }
        );
        let mut foreign = mine.clone();
        foreign.metadata.labels = None;
        assert_eq!(holder(Some(&foreign), &source()), Holder::Unmanaged);
    }

    #[test]
    fn pruning_keeps_the_newest() {
        assert_eq!(revisions_to_prune(vec![3, 1, 2, 5, 4], 2), vec![1, 2, 3]);
        assert_eq!(revisions_to_prune(vec![1], 10), Vec::<i64>::new());
        assert_eq!(
            revisions_to_prune(vec![1, 2], 0),
            vec![1],
            "keep at least one"
        );
    }
}
