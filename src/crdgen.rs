//! `kiln crds`: the CRDs as YAML, the single source of `crds/` and of the Helm chart's copy.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// A CRD as the YAML document committed in `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}

/// The file name of a CRD in `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in crate::api::crds() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

/// Writes one file per CRD into `dir`.
pub fn write_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in crate::api::crds() {
        std::fs::write(dir.join(file_name(&crd)), to_yaml(&crd)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `crds/` is generated; a change to `src/api/` must come with regenerated files.
    #[test]
    fn committed_crds_are_fresh() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for crd in crate::api::crds() {
            let path = dir.join(super::file_name(&crd));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            let generated = super::to_yaml(&crd).expect("CRD serializes");
            assert!(
                committed == generated,
                "{} is stale or missing: regenerate with `cargo run -- crds --output-dir crds`",
                path.display()
            );
        }
    }
}
