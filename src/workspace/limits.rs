//! Operator-wide size limits of the workspace (set with `--max-*` flags / Helm values).

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// The limits every write is checked against before anything is stored.
///
/// Only the bytes of users' files count. Archives are derived data and are not counted (see
/// [`crate::workspace`]); size the `emptyDir` for roughly twice `max_workspace_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest single file, in bytes. Default 10 MiB.
    pub max_file_bytes: u64,
    /// Largest total of one job's files, in bytes. Default 100 MiB.
    pub max_job_bytes: u64,
    /// Most files in one job. Default 10,000.
    pub max_files_per_job: u64,
    /// Largest total of all jobs' files, in bytes. Default 1 GiB.
    pub max_workspace_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 10 * MIB,
            max_job_bytes: 100 * MIB,
            max_files_per_job: 10_000,
            max_workspace_bytes: 1024 * MIB,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let l = Limits::default();
        assert_eq!(l.max_file_bytes, 10_485_760);
        assert_eq!(l.max_job_bytes, 104_857_600);
        assert_eq!(l.max_files_per_job, 10_000);
        assert_eq!(l.max_workspace_bytes, 1_073_741_824);
    }
}
