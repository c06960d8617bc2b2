//! `kiln rollback`: restore a resource from an earlier revision.

/// Restores a draft's `spec.config` from revision `revision`.
pub async fn draft(name: &str, revision: i64, namespace: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!(
        "rollback of draft {name} to revision {revision} in {namespace:?} is not implemented yet"
    )
}
