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
