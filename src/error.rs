//! Errors of the controllers, classified by a stable label used in metrics and Events.

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed; retried with backoff.
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The object lacks something Kiln needs and cannot invent (a namespace, a uid).
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
    /// Serializing an object failed (a bug, not a user error).
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Filesystem work in the workspace failed.
    #[error("workspace: {0}")]
    Workspace(String),
    /// The operating system gave no random bytes (for a new hash key).
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),
    /// Adding or removing a finalizer, or the work it guards, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, stable label for metrics (`kiln_reconcile_errors_total{error=…}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::MissingObjectKey(_) => "missing_key",
            Error::Serialization(_) => "serialization",
            Error::Workspace(_) => "workspace",
            Error::Random(_) => "random",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// What a `ReconcileFailed` Event says: what Kiln was doing and the API server's status
    /// reason and code, never the server's message. That message may quote the object Kiln
    /// sent (a webhook's refusal, say), which for a derived Secret holds key values, and
    /// Events are readable by everyone with `view` in the namespace; the operator's log has
    /// the whole error.
    pub fn summary(&self) -> String {
        match self {
            Error::Kube { action, source } => match source {
                kube::Error::Api(status) => format!(
                    "Kubernetes API call failed while {action}: {} ({})",
                    if status.reason.is_empty() {
                        "no reason given"
                    } else {
                        status.reason.as_str()
                    },
                    status.code
                ),
                _ => {
                    format!("Kubernetes API call failed while {action}: connection or client error")
                }
            },
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.summary(),
                _ => "updating the finalizer failed".to_owned(),
            },
            other => other.to_string(),
        }
    }
}

/// Extension to attach what Kiln was doing to a kube error.
pub trait KubeContext<T> {
    fn context(self, action: impl Into<String>) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn context(self, action: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            action: action.into(),
            source,
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_keep_the_reason_and_drop_the_servers_message() {
        let status = kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "admission webhook denied: data.API_KEY=sk-secret-value".into(),
            ..Default::default()
        };
        let e = Error::Kube {
            action: "applying Secret llm-credentials".into(),
            source: kube::Error::Api(Box::new(status)),
        };
        let summary = e.summary();
        assert_eq!(
            summary,
            "Kubernetes API call failed while applying Secret llm-credentials: Invalid (422)"
        );
        assert!(
            e.to_string().contains("sk-secret-value"),
            "the log keeps it"
        );
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(e)));
        assert_eq!(wrapped.summary(), summary);
        assert_eq!(
            Error::Workspace("disk full".into()).summary(),
            "workspace: disk full"
        );
    }
}
