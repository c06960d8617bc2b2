//! Kiln's custom resources (`kiln.dev/v1alpha1`). Types only: no logic lives here.
//!
//! Everything the API server can check is declared in the schema (patterns, lengths, CEL
//! rules), so bad input is refused at `kubectl apply` time. What only Kiln can judge is
//! reported in `status`.

pub mod common;
pub mod conditions;
pub mod draft;
pub mod job;
pub mod provider_config;

pub use common::{Expiration, KeyRef, ValidationIssue};
pub use draft::{Draft, DraftSpec, DraftStatus};
pub use job::{KilnJob, KilnJobSpec, KilnJobStatus};
pub use provider_config::{ProviderConfig, ProviderConfigSpec, ProviderConfigStatus};

/// The API group of every Kiln kind.
pub const GROUP: &str = "kiln.dev";
/// The served (and stored) version.
pub const VERSION: &str = "v1alpha1";
/// The category that makes `kubectl get kiln` list every Kiln object.
pub const CATEGORY: &str = "kiln";

/// All of Kiln's CustomResourceDefinitions, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Draft::crd(), KilnJob::crd(), ProviderConfig::crd()]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn read(path: &str) -> String {
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    /// The minor version in the digits that follow `prefix` in `text`.
    fn minor_after(text: &str, prefix: &str, what: &str) -> u32 {
        let at = text
            .find(prefix)
            .unwrap_or_else(|| panic!("{what}: no {prefix:?}"))
            + prefix.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{what}: no version after {prefix:?}"))
    }

    /// The Kubernetes releases the tests run against: the default (hack/k8s/go.mod) and the
    /// others pinned in hack/k8s/<version>/.
    fn tested_releases() -> Vec<String> {
        let default = read("hack/k8s/go.mod");
        let default = default
            .lines()
            .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes v"))
            .and_then(|v| v.split_whitespace().next())
            .expect("hack/k8s/go.mod requires k8s.io/kubernetes");
        let mut releases = vec![format!("v{default}")];
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/k8s");
        for entry in std::fs::read_dir(dir).expect("hack/k8s").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("v1.") && entry.path().join("go.mod").is_file() {
                releases.push(name);
            }
        }
        releases
    }

    fn minor(release: &str) -> u32 {
        release
            .trim_start_matches("v1.")
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{release} is not v1.<minor>.<patch>"))
    }

    /// The oldest Kubernetes Kiln claims is one number everywhere it is stated: the
    /// k8s-openapi feature Kiln is built with, the chart's `kubeVersion`, and the oldest
    /// release the tests run against. The README and docs/install.md list every tested
    /// release.
    #[test]
    fn the_claimed_minimum_is_the_oldest_tested_release() {
        let built_for = minor_after(&read("Cargo.toml"), "\"v1_", "Cargo.toml (k8s-openapi)");
        let chart = minor_after(
            &read("charts/kiln/Chart.yaml"),
            "kubeVersion: \">=1.",
            "charts/kiln/Chart.yaml",
        );
        let releases = tested_releases();
        let oldest = releases.iter().map(|r| minor(r)).min().expect("a release");
        assert_eq!(
            (built_for, chart),
            (oldest, oldest),
            "k8s-openapi's feature (1.{built_for}), the chart's kubeVersion (1.{chart}) and the \
             oldest tested release (1.{oldest}, of {releases:?}) must agree"
        );
        for doc in ["README.md", "docs/install.md", "charts/kiln/README.md"] {
            let text = read(doc);
            assert!(
                text.contains(&format!("Kubernetes 1.{oldest} or later")),
                "{doc} should say \"Kubernetes 1.{oldest} or later\""
            );
        }
        for doc in ["README.md", "docs/install.md"] {
            let text = read(doc);
            for release in &releases {
                assert!(
                    text.contains(release.as_str()),
                    "{doc} does not list {release}"
                );
            }
        }
    }
}
