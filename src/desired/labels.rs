//! Kiln's own labels and annotations. Derived objects carry these, never a GitOps tool's
//! tracking labels or annotations (Argo CD would prune or flag them).

use std::collections::BTreeMap;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_KILN: &str = "kiln";
pub const CONFIG_ID: &str = "kiln.dev/config-id";
pub const CONFIG_TYPE: &str = "kiln.dev/config-type";
/// `published` for `<id>-<type>`, `revision` for `<id>-<type>-r<N>`.
pub const ROLE: &str = "kiln.dev/role";
pub const ROLE_PUBLISHED: &str = "published";
pub const ROLE_REVISION: &str = "revision";

pub const SOURCE_DRAFT: &str = "kiln.dev/source-draft";
pub const SOURCE_DRAFT_UID: &str = "kiln.dev/source-draft-uid";
pub const REVISION: &str = "kiln.dev/revision";
pub const SHA256: &str = "kiln.dev/sha256";

/// Selector of every ConfigMap a draft publishes (current and revisions).
pub fn published_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_KILN},{ROLE}")
}

pub fn managed_by_kiln(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_KILN)
}
