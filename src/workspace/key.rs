//! [`JobKey`]: which job's directory an operation is about.

use std::fmt;

use super::error::Error;

/// Longest Kubernetes namespace name (a DNS label).
const MAX_NAMESPACE_LEN: usize = 63;

/// Kubernetes uids are 36-character UUIDs; a little room is left for other uid formats.
const MAX_UID_LEN: usize = 64;

/// A job's identity in the workspace: its namespace and its uid.
///
/// Keyed by uid rather than name, so that a Job deleted and re-created under the same name
/// never sees the old Job's files. Both parts are validated so that they are always exactly one
/// safe directory name: a namespace is a DNS label (`[a-z0-9-]`, 1–63 characters, starting and
/// ending with a letter or digit); a uid is 1–64 ASCII letters, digits or `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey {
    namespace: String,
    uid: String,
}

impl JobKey {
    /// Validates a namespace and a uid.
    pub fn new(namespace: impl Into<String>, uid: impl Into<String>) -> Result<Self, Error> {
        let namespace = namespace.into();
        let uid = uid.into();
        if let Some(reason) = namespace_problem(&namespace) {
            return Err(Error::InvalidNamespace {
                namespace: truncate_for_message(&namespace),
                reason,
            });
        }
        if let Some(reason) = uid_problem(&uid) {
            return Err(Error::InvalidUid {
                uid: truncate_for_message(&uid),
                reason,
            });
        }
        Ok(JobKey { namespace, uid })
    }

    /// The job's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The job's uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.uid)
    }
}

fn namespace_problem(ns: &str) -> Option<&'static str> {
    if ns.is_empty() {
        return Some("it is empty");
    }
    if ns.len() > MAX_NAMESPACE_LEN {
        return Some("it is longer than 63 characters");
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    if ns.starts_with('-') || ns.ends_with('-') {
        return Some("it must start and end with a letter or digit");
    }
    None
}

fn uid_problem(uid: &str) -> Option<&'static str> {
    if uid.is_empty() {
        return Some("it is empty");
    }
    if uid.len() > MAX_UID_LEN {
        return Some("it is longer than 64 characters");
    }
    if !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Some("only ASCII letters, digits and '-' are allowed");
    }
    None
}

/// Hostile input can be huge; an error message repeats at most the first 100 characters.
pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_names_and_uids() {
        let key = JobKey::new("team-a", "0f8c1a2e-5b6d-4c3e-9f10-123456789abc").unwrap();
        assert_eq!(key.namespace(), "team-a");
        assert_eq!(key.uid(), "0f8c1a2e-5b6d-4c3e-9f10-123456789abc");
        assert_eq!(
            key.to_string(),
            "team-a/0f8c1a2e-5b6d-4c3e-9f10-123456789abc"
        );
        assert!(JobKey::new("a", "1").is_ok());
        assert!(JobKey::new("a".repeat(63), "u").is_ok());
    }

    #[test]
    fn refuses_unsafe_namespaces() {
        for ns in [
            "",
            "..",
            ".",
            "a/b",
            "A",
            "-a",
            "a-",
            "a.b",
            "a b",
            "a\0",
            "ns\\x",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(JobKey::new(ns, "uid"), Err(Error::InvalidNamespace { .. })),
                "namespace {ns:?} should be refused"
            );
        }
    }

    #[test]
    fn refuses_unsafe_uids() {
        for uid in [
            "",
            "..",
            ".",
            "a/b",
            "a.b",
            "a_b",
            "a b",
            "a\0",
            &"1".repeat(65),
        ] {
            assert!(
                matches!(JobKey::new("ns", uid), Err(Error::InvalidUid { .. })),
                "uid {uid:?} should be refused"
            );
        }
    }

    #[test]
    fn long_input_is_truncated_in_messages() {
        let err = JobKey::new("x".repeat(5000), "u").unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }
}
