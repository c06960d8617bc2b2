//! Who changed a Draft's spec, for the history entry of the revision it published: the field
//! manager that owns the config (from `metadata.managedFields`, which the API server keeps for
//! every write) and the `kiln.dev/change-cause` annotation when the writer set one.
//!
//! The config is what a revision publishes, so its owner is the author; when several share it
//! (server-side apply), the one that wrote last. Only when no entry owns the config (an
//! object written before managed fields existed) does any writer of the spec count. Times in
//! managed fields are whole seconds, so ownership decides before time does.
//!
//! The controller's cache drops managed fields, the bulk of an object's metadata; it keeps
//! just this one entry, without its field set ([`slim_spec_manager`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

/// The annotation a writer may set to say why it changed the Draft (like `kubectl`'s old
/// `kubernetes.io/change-cause`).
pub const CHANGE_CAUSE: &str = "kiln.dev/change-cause";
/// Longest manager name or cause kept in the history; a longer one is cut (with `…`), so that
/// a hundred entries cannot make the object large.
const MAX_CHARS: usize = 256;

/// Who changed the spec, as far as the object says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Author {
    /// The field manager of the last write to the spec (`kubectl-client-side-apply`,
    /// `argocd-controller`, `helm`, …).
    pub manager: Option<String>,
    /// The `kiln.dev/change-cause` annotation.
    pub cause: Option<String>,
}

/// The author of the spec as it is now.
pub fn spec_author(meta: &ObjectMeta) -> Author {
    Author {
        manager: spec_manager(meta).and_then(|e| e.manager.as_deref().map(cut)),
        cause: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHANGE_CAUSE))
            .filter(|c| !c.trim().is_empty())
            .map(|c| cut(c.trim())),
    }
}

/// The author's managed-fields entry without its field set: all the cache keeps of them.
pub fn slim_spec_manager(meta: &ObjectMeta) -> Option<Vec<ManagedFieldsEntry>> {
    spec_manager(meta).map(|e| {
        vec![ManagedFieldsEntry {
            manager: e.manager.clone(),
            operation: e.operation.clone(),
            time: e.time.clone(),
            ..Default::default()
        }]
    })
}

/// The entry of the config's owner (see the module docs). An entry without a field set is
/// one this module kept before (the cache's form).
fn spec_manager(meta: &ObjectMeta) -> Option<&ManagedFieldsEntry> {
    let newest = |owns: &dyn Fn(&serde_json::Value) -> bool| {
        meta.managed_fields
            .iter()
            .flatten()
            .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
            .filter(|e| e.fields_v1.as_ref().is_none_or(|f| owns(&f.0)))
            .max_by_key(|e| e.time.as_ref().map(|t| t.0))
    };
    newest(&|f| f.pointer("/f:spec/f:config").is_some())
        .or_else(|| newest(&|f| f.get("f:spec").is_some()))
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(entries: serde_json::Value, annotations: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(serde_json::json!({
            "name": "d", "managedFields": entries, "annotations": annotations,
        }))
        .expect("metadata")
    }

    fn entry(manager: &str, time: &str, fields: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"manager": manager, "operation": "Apply", "apiVersion": "kiln.dev/v1alpha1",
            "time": time, "fieldsType": "FieldsV1", "fieldsV1": fields})
    }

    #[test]
    fn the_owner_of_the_config_is_the_author() {
        let m = meta(
            serde_json::json!([
                entry("kubectl-client-side-apply", "2026-01-01T00:00:00Z",
                      serde_json::json!({"f:spec": {"f:config": {}}})),
                entry("argocd-controller", "2026-02-01T00:00:00Z",
                      serde_json::json!({"f:spec": {"f:config": {"f:id": {}}}})),
                // Newer, and in the spec, but not the config.
                entry("publisher", "2026-02-15T00:00:00Z",
                      serde_json::json!({"f:spec": {"f:publish": {}}})),
                // Newer, but not the spec: labels, and Kiln's own status writes.
                entry("labeler", "2026-03-01T00:00:00Z",
                      serde_json::json!({"f:metadata": {"f:labels": {}}})),
                {"manager": "kiln", "operation": "Apply", "subresource": "status",
                 "time": "2026-04-01T00:00:00Z", "fieldsV1": {"f:status": {}}},
            ]),
            serde_json::json!({CHANGE_CAUSE: "  raise the temperature  "}),
        );
        let author = spec_author(&m);
        assert_eq!(author.manager.as_deref(), Some("argocd-controller"));
        assert_eq!(author.cause.as_deref(), Some("raise the temperature"));
    }

    #[test]
    fn the_cache_keeps_only_the_author_and_still_finds_it() {
        let mut m = meta(
            serde_json::json!([
                entry(
                    "a",
                    "2026-01-01T00:00:00Z",
                    serde_json::json!({"f:spec": {}})
                ),
                entry(
                    "b",
                    "2026-02-01T00:00:00Z",
                    serde_json::json!({"f:spec": {}})
                ),
            ]),
            serde_json::json!({}),
        );
        m.managed_fields = slim_spec_manager(&m);
        let kept = m.managed_fields.as_ref().expect("one entry");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].fields_v1, None);
        assert_eq!(spec_author(&m).manager.as_deref(), Some("b"));
        // Twice changes nothing.
        m.managed_fields = slim_spec_manager(&m);
        assert_eq!(spec_author(&m).manager.as_deref(), Some("b"));
    }

    #[test]
    fn nothing_known_is_nothing_said_and_long_text_is_cut() {
        let m = meta(
            serde_json::json!([]),
            serde_json::json!({CHANGE_CAUSE: " "}),
        );
        assert_eq!(spec_author(&m), Author::default());
        let long = "é".repeat(1000);
        let m = meta(
            serde_json::json!([]),
            serde_json::json!({CHANGE_CAUSE: long}),
        );
        let cause = spec_author(&m).cause.expect("cause");
        assert_eq!(cause.chars().count(), MAX_CHARS + 1);
        assert!(cause.ends_with('…'));
    }
}
