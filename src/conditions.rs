//! Pure helpers to maintain a status's `conditions` the kstatus way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition Kiln wants to be true of an object, before time stamps are decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Merges `desired` into `current`: conditions whose status did not change keep their
/// `lastTransitionTime` (so an unchanged world produces an identical status and no write);
/// `remove` lists types that no longer apply. The result is sorted by type, for stable diffs.
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    remove: &[&str],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !remove.contains(&c.type_.as_str()))
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let status = status_str(d.status);
        let last_transition_time = current
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: d.type_.to_string(),
            status: status.to_string(),
            reason: d.reason.to_string(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Whether `conditions` has `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let first = merge(
            &[],
            &[Desired::new("Ready", true, "Ok", "fine")],
            &[],
            Some(1),
            at(10),
        );
        let second = merge(
            &first,
            &[Desired::new("Ready", true, "Ok", "fine")],
            &[],
            Some(1),
            at(20),
        );
        assert_eq!(first, second);
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let first = merge(
            &[],
            &[Desired::new("Ready", true, "Ok", "fine")],
            &[],
            Some(1),
            at(10),
        );
        let second = merge(
            &first,
            &[Desired::new("Ready", false, "Broken", "no")],
            &[],
            Some(2),
            at(20),
        );
        assert_eq!(second[0].last_transition_time, Time(at(20)));
        assert_eq!(second[0].reason, "Broken");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn removes_and_sorts() {
        let first = merge(
            &[],
            &[
                Desired::new("Stalled", true, "X", ""),
                Desired::new("Ready", false, "X", ""),
            ],
            &[],
            None,
            at(1),
        );
        assert_eq!(
            first.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Ready", "Stalled"]
        );
        let second = merge(&first, &[], &["Stalled"], None, at(2));
        assert_eq!(second.len(), 1);
        assert!(!is_true(&second, "Ready"));
    }
}
