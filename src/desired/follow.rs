//! The contract between Kiln and the workloads that follow what it publishes, decided without
//! touching the cluster.
//!
//! A Deployment, StatefulSet or DaemonSet opts in with an annotation on itself:
//! `kiln.dev/follow: <providerconfig>[,…]` or `kiln.dev/follow-config: <configId>-<configType>[,…]`.
//! Kiln rolls it out by writing *marks* into its pod template — one annotation per followed
//! value (`kiln.dev/credentials-hash-<config>`, `kiln.dev/settings-hash-<config>`,
//! `kiln.dev/config-revision-<name>`) — which makes the workload's controller replace its
//! pods. The time of that rollout goes on the workload itself ([`ROLLED_OUT_AT`]), where it
//! restarts nothing and bounds how often one workload is restarted, whatever it follows.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use crate::api::common::FollowerStatus;

/// Workload annotation: the ProviderConfigs (comma-separated names) it follows.
pub const FOLLOW: &str = "kiln.dev/follow";
/// Workload annotation: the published configs (`<configId>-<configType>`, comma-separated)
/// it follows.
pub const FOLLOW_CONFIG: &str = "kiln.dev/follow-config";
/// Workload annotation: when Kiln last rolled it out.
pub const ROLLED_OUT_AT: &str = "kiln.dev/rolled-out-at";
/// Pod-template mark: a ProviderConfig's credentials hash.
pub const CREDENTIALS_HASH_PREFIX: &str = "kiln.dev/credentials-hash-";
/// Pod-template mark: a hash of a ProviderConfig's settings (`provider.json`).
pub const SETTINGS_HASH_PREFIX: &str = "kiln.dev/settings-hash-";
/// Pod-template mark: the revision of a published config.
pub const CONFIG_REVISION_PREFIX: &str = "kiln.dev/config-revision-";

/// Every annotation prefix Kiln reads or writes on a follower; the rest of a workload is
/// none of Kiln's business.
pub fn is_follow_annotation(key: &str) -> bool {
    key.starts_with("kiln.dev/")
}

/// The names listed in a workload's `annotation` (`FOLLOW` or `FOLLOW_CONFIG`).
pub fn targets<'a>(
    annotations: Option<&'a BTreeMap<String, String>>,
    annotation: &str,
) -> Vec<&'a str> {
    annotations
        .and_then(|a| a.get(annotation))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The pod-template annotation `prefix` + `name`. An annotation name has at most 63
/// characters; longer names are shortened and suffixed with a hash of the full name, so that
/// the key stays unique and valid.
pub fn mark_key(prefix: &str, name: &str) -> String {
    const MAX_NAME: usize = 63;
    let room = MAX_NAME - (prefix.len() - "kiln.dev/".len());
    if name.len() <= room {
        return format!("{prefix}{name}");
    }
    let digest = &super::sha256_hex(name.as_bytes())[..8];
    let keep = room - digest.len() - 1;
    format!("{prefix}{}-{digest}", &name[..keep])
}

/// One value a follower's pod template must carry: the annotation and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub key: String,
    pub value: String,
}

impl Mark {
    pub fn new(prefix: &str, name: &str, value: impl Into<String>) -> Self {
        Self {
            key: mark_key(prefix, name),
            value: value.into(),
        }
    }
}

/// The marks a pod template does not carry (yet).
pub fn stale<'a>(marks: &'a [Mark], template: Option<&BTreeMap<String, String>>) -> Vec<&'a Mark> {
    marks
        .iter()
        .filter(|m| template.and_then(|t| t.get(&m.key)) != Some(&m.value))
        .collect()
}

/// What to do with one follower while a rollout is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerPlan {
    /// Its pod template already carries every mark.
    UpToDate,
    /// Annotate its pod template now.
    Roll,
    /// It was rolled out less than one debounce window ago: not before `until`.
    Wait { until: Timestamp },
}

/// Decides for one follower. `annotations` are the workload's own, `template` its pod
/// template's. The debounce is per workload ([`ROLLED_OUT_AT`]), so a workload that follows
/// several things is still restarted at most once per window.
pub fn plan(
    marks: &[Mark],
    annotations: Option<&BTreeMap<String, String>>,
    template: Option<&BTreeMap<String, String>>,
    debounce: SignedDuration,
    now: Timestamp,
) -> FollowerPlan {
    if stale(marks, template).is_empty() {
        return FollowerPlan::UpToDate;
    }
    let last = annotations
        .and_then(|a| a.get(ROLLED_OUT_AT))
        .and_then(|t| t.parse::<Timestamp>().ok());
    match last.and_then(|t| t.checked_add(debounce).ok()) {
        Some(until) if until > now => FollowerPlan::Wait { until },
        _ => FollowerPlan::Roll,
    }
}

/// The merge patch that rolls a workload out: the marks in its pod template and the rollout
/// time on the workload. `resource_version` makes it conditional, so two rollouts of the same
/// workload at once (for two followed things) cannot both restart it within one window.
pub fn rollout_patch(marks: &[Mark], resource_version: &str, now: Timestamp) -> Value {
    let template: Map<String, Value> = marks
        .iter()
        .map(|m| (m.key.clone(), Value::String(m.value.clone())))
        .collect();
    json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": { ROLLED_OUT_AT: now.to_string() },
        },
        "spec": { "template": { "metadata": { "annotations": template } } },
    })
}

/// A follower as the status reports it: `Kind/name` and its pod template's annotations.
pub struct Seen<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub template: Option<&'a BTreeMap<String, String>>,
}

/// The status lines of the followers, sorted, and how many are behind. `shown` is the mark
/// whose value the status reports as rolled out (a revision, a hash). A follower is behind
/// when its template lacks a mark while a rollout is pending, or carries an old value of one:
/// a workload created after the last change and never rolled out started with the current
/// content, so it is not behind.
pub fn report(
    followers: &[Seen<'_>],
    marks: &[Mark],
    shown: &str,
    pending: bool,
    display: impl Fn(&str) -> String,
) -> (Vec<FollowerStatus>, i32) {
    let mut out: Vec<FollowerStatus> = followers
        .iter()
        .map(|f| {
            let behind = stale(marks, f.template)
                .iter()
                .any(|m| pending || f.template.is_some_and(|t| t.contains_key(&m.key)));
            FollowerStatus {
                kind: f.kind.to_string(),
                name: f.name.to_string(),
                rolled_out: f.template.and_then(|t| t.get(shown)).map(|v| display(v)),
                behind,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let behind = out.iter().filter(|f| f.behind).count();
    (out, i32::try_from(behind).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn rev(v: &str) -> Mark {
        Mark::new(CONFIG_REVISION_PREFIX, "app-content", v)
    }

    #[test]
    fn follow_annotations_list_targets() {
        let a = BTreeMap::from([
            (FOLLOW.to_string(), " a, b ,,c".to_string()),
            (FOLLOW_CONFIG.to_string(), "x-content".to_string()),
        ]);
        assert_eq!(targets(Some(&a), FOLLOW), ["a", "b", "c"]);
        assert_eq!(targets(Some(&a), FOLLOW_CONFIG), ["x-content"]);
        assert!(targets(None, FOLLOW).is_empty());
    }

    #[test]
    fn mark_keys_stay_valid_annotation_names() {
        assert_eq!(
            mark_key(CREDENTIALS_HASH_PREFIX, "main"),
            "kiln.dev/credentials-hash-main"
        );
        for prefix in [
            CREDENTIALS_HASH_PREFIX,
            SETTINGS_HASH_PREFIX,
            CONFIG_REVISION_PREFIX,
        ] {
            let long = "a".repeat(200);
            let key = mark_key(prefix, &long);
            assert_eq!(key.strip_prefix("kiln.dev/").unwrap().len(), 63);
            assert_ne!(key, mark_key(prefix, &"a".repeat(201)));
        }
        let exact = "b".repeat(63 - "credentials-hash-".len());
        assert_eq!(
            mark_key(CREDENTIALS_HASH_PREFIX, &exact).len(),
            "kiln.dev/".len() + 63
        );
    }

    #[test]
    fn follower_plans() {
        let debounce = SignedDuration::from_secs(30);
        let template = BTreeMap::from([(rev("1").key, "1".to_string())]);
        assert_eq!(
            plan(&[rev("1")], None, Some(&template), debounce, at(100)),
            FollowerPlan::UpToDate
        );
        assert_eq!(
            plan(&[rev("2")], None, Some(&template), debounce, at(100)),
            FollowerPlan::Roll
        );
        assert_eq!(
            plan(&[rev("2")], None, None, debounce, at(100)),
            FollowerPlan::Roll
        );
        let recent = BTreeMap::from([(ROLLED_OUT_AT.to_string(), at(90).to_string())]);
        assert_eq!(
            plan(
                &[rev("2")],
                Some(&recent),
                Some(&template),
                debounce,
                at(100)
            ),
            FollowerPlan::Wait { until: at(120) }
        );
        assert_eq!(
            plan(
                &[rev("2")],
                Some(&recent),
                Some(&template),
                debounce,
                at(120)
            ),
            FollowerPlan::Roll
        );
        let garbage = BTreeMap::from([(ROLLED_OUT_AT.to_string(), "yesterday".to_string())]);
        assert_eq!(
            plan(&[rev("2")], Some(&garbage), None, debounce, at(100)),
            FollowerPlan::Roll
        );
        // Two marks: one stale one is enough.
        let settings = Mark::new(SETTINGS_HASH_PREFIX, "p", "s2");
        let both = BTreeMap::from([
            (rev("1").key, "1".to_string()),
            (settings.key.clone(), "s1".to_string()),
        ]);
        let marks = [rev("1"), settings];
        assert_eq!(stale(&marks, Some(&both)).len(), 1);
        assert_eq!(
            stale(&marks, Some(&both))[0].key,
            "kiln.dev/settings-hash-p"
        );
        assert_eq!(
            plan(&marks, None, Some(&both), debounce, at(100)),
            FollowerPlan::Roll
        );
    }

    #[test]
    fn rollout_patch_is_conditional_and_carries_every_mark() {
        let marks = [
            Mark::new(CREDENTIALS_HASH_PREFIX, "p", "h"),
            Mark::new(SETTINGS_HASH_PREFIX, "p", "s"),
        ];
        let patch = rollout_patch(&marks, "42", at(0));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let template = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(template["kiln.dev/credentials-hash-p"], "h");
        assert_eq!(template["kiln.dev/settings-hash-p"], "s");
        assert_eq!(
            patch["metadata"]["annotations"][ROLLED_OUT_AT],
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn report_counts_who_is_behind() {
        let key = rev("3").key;
        let at3 = BTreeMap::from([(key.clone(), "3".to_string())]);
        let at2 = BTreeMap::from([(key.clone(), "2".to_string())]);
        let followers = [
            Seen {
                kind: "Deployment",
                name: "b",
                template: Some(&at3),
            },
            Seen {
                kind: "Deployment",
                name: "a",
                template: Some(&at2),
            },
            Seen {
                kind: "StatefulSet",
                name: "new",
                template: None,
            },
        ];
        let (lines, behind) = report(&followers, &[rev("3")], &key, false, str::to_string);
        assert_eq!(behind, 1);
        assert_eq!(lines[0].name, "a");
        assert!(lines[0].behind);
        assert_eq!(lines[0].rolled_out.as_deref(), Some("2"));
        assert!(!lines[1].behind);
        // Never rolled out and created after the change: not behind, unless a rollout waits.
        assert!(!lines[2].behind);
        assert_eq!(lines[2].rolled_out, None);
        let (_, behind) = report(&followers, &[rev("3")], &key, true, str::to_string);
        assert_eq!(behind, 2);
    }
}
