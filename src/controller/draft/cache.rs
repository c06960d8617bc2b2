//! How Drafts are held in the controller's cache. Besides what every cached object drops
//! ([`slim_for_cache`]), `spec.config` is kept as its compact JSON text: one allocation the
//! size of the JSON instead of a tree of maps, strings and numbers several times that size.
//! Reconciles parse it back ([`config`]); with thousands of drafts this is most of the
//! cache's memory, and parsing a config costs microseconds.
//!
//! The CRD declares `config` as an object, so a string there can only be this cache's form.

use std::borrow::Cow;

use serde_json::Value;

use crate::api::draft::Draft;
use crate::controller::slim_for_cache;
use crate::error::Result;

/// Slims `draft` for the cache and compacts its config. Of the managed fields, only the
/// spec's last writer stays, for the history ([`super::author`]).
pub fn compact(draft: &mut Draft) {
    let author = super::author::slim_spec_manager(&draft.metadata);
    slim_for_cache(draft);
    draft.metadata.managed_fields = author;
    if !draft.spec.config.is_string()
        && let Ok(text) = serde_json::to_string(&draft.spec.config)
    {
        draft.spec.config = Value::String(text);
    }
}

/// The draft's config, parsed back from the cache's compact form when it is in that form.
pub fn config(draft: &Draft) -> Result<Cow<'_, Value>> {
    match &draft.spec.config {
        Value::String(text) => Ok(Cow::Owned(serde_json::from_str(text)?)),
        config => Ok(Cow::Borrowed(config)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compacted_config_parses_back_to_the_same_value() {
        let original = serde_json::json!({
            "id": "x", "generation": {"patterns": [{"type": "llm", "n": 1.5, "ok": true}]},
            "unicode": "é\u{2028}\"", "empty": {}, "null": null,
        });
        let mut draft: Draft = serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Draft", "metadata": {"name": "d"},
            "spec": {"configType": "content", "config": original.clone()},
        }))
        .unwrap();
        assert!(matches!(config(&draft).unwrap(), Cow::Borrowed(_)));
        compact(&mut draft);
        assert!(draft.spec.config.is_string());
        assert_eq!(config(&draft).unwrap().as_ref(), &original);
        // Compacting twice changes nothing.
        compact(&mut draft);
        assert_eq!(config(&draft).unwrap().as_ref(), &original);
    }
}
