//! Per-object retry delays after failed reconciles: 5 s after the first failure, doubling with
//! each failure in a row up to 5 minutes, forgotten after a success. kube-runtime retries
//! whatever the error policy says; a fixed short delay would have an object whose error
//! will not go away by itself (a missing RBAC grant, a webhook refusing it) hit the API
//! server every few seconds for as long as it stays broken.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The delay after the first failure.
const FIRST: Duration = Duration::from_secs(5);
/// The longest delay.
const MAX: Duration = Duration::from_secs(300);

/// Failures in a row, by controller and object.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of an object of `controller` and returns how long to wait before
    /// retrying it.
    pub fn failed(&self, controller: &str, namespace: Option<&str>, name: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures
            .entry(key(controller, namespace, name))
            .or_insert(0);
        *n = n.saturating_add(1);
        delay(*n)
    }

    /// Forgets the failures of an object after it reconciled.
    pub fn succeeded(&self, controller: &str, namespace: Option<&str>, name: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        // Every reconcile ends here; most with nothing to forget, and then without building
        // a key.
        if !failures.is_empty() {
            failures.remove(&key(controller, namespace, name));
        }
    }
}

/// The delay after `failures` failures in a row (at least 1).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(MAX)
}

/// The key of an object in [`Backoff`].
fn key(controller: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{controller}/{}/{name}", namespace.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_five_seconds_to_five_minutes() {
        let seconds: Vec<u64> = (1..=10).map(|n| delay(n).as_secs()).collect();
        assert_eq!(seconds, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn each_object_counts_alone_and_a_success_starts_over() {
        let b = Backoff::default();
        let a = ("draft", Some("ns"), "a");
        let fail =
            |(controller, ns, name): (&str, Option<&str>, &str)| b.failed(controller, ns, name);
        assert_eq!(fail(a), Duration::from_secs(5));
        assert_eq!(fail(a), Duration::from_secs(10));
        assert_eq!(
            fail(("draft", Some("ns"), "c")),
            Duration::from_secs(5),
            "another object"
        );
        assert_eq!(fail(a), Duration::from_secs(20));
        b.succeeded("draft", Some("ns"), "a");
        assert_eq!(fail(a), Duration::from_secs(5), "after a success");
    }
}
