//! The ProviderConfig's desired status, computed from what the reconcile found (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::follow::Following;
use super::resolve::Resolution;
use super::sync::Written;
use crate::api::conditions::types::{DEFAULT_CONFLICT, READY, RECONCILING, STALLED};
use crate::api::provider_config::{
    KeyStatus, ProviderConfig, ProviderConfigPhase, ProviderConfigStatus, RolloutStatus,
};
use crate::conditions::{Desired, merge};
use crate::desired::provider_config::{HashKey, same_scheme};
use crate::key_usage::LastUsed;

/// Where this config stands among the configs of its type that claim the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It does not claim the default.
    NotClaiming,
    /// It is the effective default.
    Default,
    /// It claims the default, and `winner` (older) holds it.
    Conflict { winner: String },
}

/// Everything the status is built from.
pub struct Facts<'a> {
    pub resolution: &'a Resolution,
    pub config_map: Written,
    pub config_map_name: String,
    pub secret: Written,
    pub secret_name: String,
    /// Hash of what the derived Secret holds now (None: there is none).
    pub credentials_hash: Option<String>,
    /// The key of the fingerprints (None: no derived Secret carries one yet).
    pub hash_key: Option<&'a HashKey>,
    pub standing: &'a Standing,
    pub provider_type: &'a str,
    /// A name conflict on one of the default aliases.
    pub alias_conflict: Option<String>,
    /// Hash of the derived `provider.json` now.
    pub settings_hash: String,
    /// Rollouts and followers.
    pub following: &'a Following,
    /// Key uses reported to the HTTP API and flushed (see [`crate::key_usage`]).
    pub last_used: &'a LastUsed,
}

pub fn build(
    pc: &ProviderConfig,
    current: &ProviderConfigStatus,
    facts: &Facts<'_>,
    now: Timestamp,
) -> ProviderConfigStatus {
    let generation = pc.metadata.generation;
    let mut status = current.clone();
    status.observed_generation = generation;
    status.keys = keys(
        current,
        facts.resolution,
        facts.hash_key,
        facts.last_used,
        now,
    );
    status.effective_default = Some(*facts.standing == Standing::Default);
    status.config_map = Some(facts.config_map_name.clone());
    status.secret = (facts.credentials_hash.is_some() && facts.secret != Written::Conflict)
        .then(|| facts.secret_name.clone());
    if facts.secret != Written::Conflict {
        status.credentials_hash = facts
            .credentials_hash
            .clone()
            .or(current.credentials_hash.clone());
    }
    status.settings_hash = Some(facts.settings_hash.clone());
    status.rollout =
        Some(facts.following.rollout.clone()).filter(|r| *r != RolloutStatus::default());
    status.followers = facts.following.followers.clone();
    status.followers_behind = Some(facts.following.behind).filter(|_| !status.followers.is_empty());

    let (ready, stalled) = readiness(facts);
    status.phase = Some(if ready.status {
        ProviderConfigPhase::Ready
    } else {
        ProviderConfigPhase::Degraded
    });
    let mut desired = vec![
        ready,
        stalled,
        Desired::new(RECONCILING, false, "Reconciled", ""),
    ];
    let mut remove = Vec::new();
    match facts.standing {
        Standing::NotClaiming => remove.push(DEFAULT_CONFLICT),
        Standing::Default => desired.push(Desired::new(
            DEFAULT_CONFLICT,
            false,
            "EffectiveDefault",
            format!(
                "this config is the default for {}; default-{}-* aliases follow it",
                facts.provider_type, facts.provider_type
            ),
        )),
        Standing::Conflict { winner } => desired.push(Desired::new(
            DEFAULT_CONFLICT,
            true,
            "DefaultConflict",
            format!(
                "ProviderConfig {winner} (older) is the default for {}; default-{}-* aliases follow it",
                facts.provider_type, facts.provider_type
            ),
        )),
    }
    status.conditions = merge(&current.conditions, &desired, &remove, generation, now);
    status
}

/// `Ready` and `Stalled`. A name conflict needs a person (Stalled); a missing Secret or key
/// heals by itself once the Secret exists, since Kiln watches Secrets (not Stalled).
fn readiness(facts: &Facts<'_>) -> (Desired, Desired) {
    let conflict = [
        (facts.config_map, "ConfigMap", &facts.config_map_name),
        (facts.secret, "Secret", &facts.secret_name),
    ]
    .into_iter()
    .find(|(w, _, _)| *w == Written::Conflict)
    .map(|(_, kind, name)| format!("{kind} {name} exists and is not owned by this ProviderConfig"))
    .or_else(|| {
        facts
            .alias_conflict
            .as_ref()
            .map(|name| format!("{name} exists and is not managed by Kiln"))
    });
    if let Some(message) = conflict {
        return (
            Desired::new(READY, false, "NameConflict", message.clone()),
            Desired::new(
                STALLED,
                true,
                "NameConflict",
                format!("{message}; rename the ProviderConfig or remove the object"),
            ),
        );
    }
    let missing = facts.resolution.missing();
    if !missing.is_empty() {
        let what = missing
            .iter()
            .map(|(key, why)| format!("{why} (key {key})"))
            .collect::<Vec<_>>()
            .join("; ");
        let kept = if facts.credentials_hash.is_some() {
            format!("the last good Secret {} is kept", facts.secret_name)
        } else {
            format!("Secret {} is not written until then", facts.secret_name)
        };
        return (
            Desired::new(READY, false, "SecretNotFound", format!("{what}; {kept}")),
            Desired::new(STALLED, false, "Reconciled", ""),
        );
    }
    let n = facts.resolution.active_count();
    (
        Desired::new(
            READY,
            true,
            "Synced",
            format!(
                "ConfigMap {} and Secret {} are up to date ({n} active key{})",
                facts.config_map_name,
                facts.secret_name,
                if n == 1 { "" } else { "s" }
            ),
        ),
        Desired::new(STALLED, false, "Reconciled", ""),
    )
}

/// `status.keys[]`, in spec order. A key that cannot be read keeps its last fingerprint;
/// `lastRotatedTime` moves only when a known fingerprint changes (the first sighting of a
/// key is not a rotation).
fn keys(
    current: &ProviderConfigStatus,
    resolution: &Resolution,
    hash_key: Option<&HashKey>,
    last_used: &LastUsed,
    now: Timestamp,
) -> Vec<KeyStatus> {
    resolution
        .keys
        .iter()
        .map(|key| {
            let before = current.keys.iter().find(|k| k.name == key.name);
            let fingerprint = match (&key.value, hash_key) {
                (Ok(value), Some(hash_key)) => Some(value.fingerprint(hash_key)),
                _ => None,
            };
            let old = before.and_then(|b| b.fingerprint.clone());
            // A fingerprint made another way (by an older Kiln) is replaced, not a rotation.
            let rotated = matches!((&old, &fingerprint),
                (Some(a), Some(b)) if a != b && same_scheme(a, b));
            KeyStatus {
                name: key.name.clone(),
                active: key.active,
                resolved: key.value.is_ok(),
                fingerprint: fingerprint.or(old),
                last_rotated_time: if rotated {
                    Some(Time(now))
                } else {
                    before.and_then(|b| b.last_rotated_time.clone())
                },
                // The later of what the status says and what was reported since.
                last_used_time: before
                    .and_then(|b| b.last_used_time.as_ref().map(|t| t.0))
                    .max(last_used.get(&key.name).copied())
                    .map(Time),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{find, is_true};
    use crate::controller::provider_config::resolve::{Missing, ResolvedKey};
    use crate::desired::provider_config::SecretValue;

    static TEST_KEY: HashKey = HashKey::from_bytes([9; 32]);
    static NO_USAGE: LastUsed = LastUsed::new();
    static NO_FOLLOWERS: Following = Following {
        rollout: RolloutStatus {
            pending_since: None,
            pending_changes: Vec::new(),
            last_time: None,
            last_hash: None,
            last_workloads: None,
        },
        followers: Vec::new(),
        behind: 0,
        requeue: std::time::Duration::from_secs(600),
    };

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn pc() -> ProviderConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "main", "namespace": "ns", "generation": 2},
            "spec": {"providerType": "openai", "apiKeys": [
                {"name": "primary", "secretRef": {"name": "keys", "key": "primary"}}]}
        }))
        .unwrap()
    }

    fn resolution(value: Result<&str, Missing>) -> Resolution {
        Resolution {
            keys: vec![ResolvedKey {
                name: "primary".into(),
                active: true,
                value: value.map(|v| SecretValue::new(v.as_bytes().to_vec())),
            }],
        }
    }

    fn facts<'a>(r: &'a Resolution, standing: &'a Standing, hash: Option<&str>) -> Facts<'a> {
        Facts {
            resolution: r,
            config_map: Written::Unchanged,
            config_map_name: "main-provider".into(),
            secret: if hash.is_some() {
                Written::Applied
            } else {
                Written::Kept
            },
            secret_name: "main-credentials".into(),
            credentials_hash: hash.map(str::to_string),
            hash_key: Some(&TEST_KEY),
            standing,
            provider_type: "openai",
            alias_conflict: None,
            settings_hash: "sha256:s".into(),
            following: &NO_FOLLOWERS,
            last_used: &NO_USAGE,
        }
    }

    #[test]
    fn reported_uses_move_last_used_forward_only() {
        let r = resolution(Ok("A"));
        let standing = Standing::Default;
        let used = LastUsed::from([("primary".to_owned(), at(50)), ("gone".to_owned(), at(60))]);
        let first = build(
            &pc(),
            &Default::default(),
            &Facts {
                last_used: &used,
                ..facts(&r, &standing, Some("h1"))
            },
            at(70),
        );
        assert_eq!(
            first.keys.len(),
            1,
            "only keys of the spec: {:?}",
            first.keys
        );
        assert_eq!(first.keys[0].last_used_time, Some(Time(at(50))));
        // Nothing reported since (a new leader, say): the status keeps its time.
        let kept = build(&pc(), &first, &facts(&r, &standing, Some("h1")), at(80));
        assert_eq!(kept.keys[0].last_used_time, Some(Time(at(50))));
        assert_eq!(kept, first, "no change, no write");
        // An older report never moves it back.
        let older = LastUsed::from([("primary".to_owned(), at(40))]);
        let s = build(
            &pc(),
            &first,
            &Facts {
                last_used: &older,
                ..facts(&r, &standing, Some("h1"))
            },
            at(90),
        );
        assert_eq!(s.keys[0].last_used_time, Some(Time(at(50))));
    }

    #[test]
    fn synced_config_is_ready_and_records_keys() {
        let r = resolution(Ok("A"));
        let s = build(
            &pc(),
            &Default::default(),
            &facts(&r, &Standing::Default, Some("h1")),
            at(10),
        );
        assert_eq!(s.phase, Some(ProviderConfigPhase::Ready));
        assert!(is_true(&s.conditions, READY));
        assert!(!is_true(&s.conditions, DEFAULT_CONFLICT));
        assert_eq!(s.effective_default, Some(true));
        assert_eq!(s.credentials_hash.as_deref(), Some("h1"));
        assert_eq!(s.observed_generation, Some(2));
        let key = &s.keys[0];
        assert!(key.resolved && key.active);
        assert!(
            key.fingerprint
                .as_deref()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert_eq!(
            key.last_rotated_time, None,
            "first sighting is not a rotation"
        );
        // Same facts later: identical status, so no write.
        let again = build(
            &pc(),
            &s,
            &facts(&r, &Standing::Default, Some("h1")),
            at(20),
        );
        assert_eq!(again, s);
    }

    #[test]
    fn an_older_kind_of_fingerprint_is_replaced_without_a_rotation() {
        let r = resolution(Ok("A"));
        let mut old = build(
            &pc(),
            &Default::default(),
            &facts(&r, &Standing::Default, Some("h1")),
            at(10),
        );
        old.keys[0].fingerprint = Some("sha256:0123456789ab".into());
        let s = build(
            &pc(),
            &old,
            &facts(&r, &Standing::Default, Some("h1")),
            at(20),
        );
        assert!(
            s.keys[0]
                .fingerprint
                .as_deref()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert_eq!(s.keys[0].last_rotated_time, None);
    }

    #[test]
    fn a_new_value_is_a_rotation() {
        let r1 = resolution(Ok("A"));
        let s1 = build(
            &pc(),
            &Default::default(),
            &facts(&r1, &Standing::NotClaiming, Some("h1")),
            at(10),
        );
        let r2 = resolution(Ok("B"));
        let s2 = build(
            &pc(),
            &s1,
            &facts(&r2, &Standing::NotClaiming, Some("h2")),
            at(20),
        );
        assert_ne!(s1.keys[0].fingerprint, s2.keys[0].fingerprint);
        assert_eq!(s2.keys[0].last_rotated_time, Some(Time(at(20))));
        assert!(find(&s2.conditions, DEFAULT_CONFLICT).is_none());
        assert_eq!(s2.effective_default, Some(false));
    }

    #[test]
    fn missing_secret_degrades_and_keeps_the_last_good_hash() {
        let r1 = resolution(Ok("A"));
        let s1 = build(
            &pc(),
            &Default::default(),
            &facts(&r1, &Standing::Default, Some("h1")),
            at(10),
        );
        let gone = resolution(Err(Missing::Secret {
            secret: "keys".into(),
        }));
        let s2 = build(
            &pc(),
            &s1,
            &facts(&gone, &Standing::Default, Some("h1")),
            at(20),
        );
        assert_eq!(s2.phase, Some(ProviderConfigPhase::Degraded));
        let ready = find(&s2.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(
            ready
                .message
                .contains("Secret keys not found (key primary)"),
            "{}",
            ready.message
        );
        assert!(
            ready
                .message
                .contains("last good Secret main-credentials is kept")
        );
        assert!(!is_true(&s2.conditions, STALLED));
        assert!(!s2.keys[0].resolved);
        assert_eq!(
            s2.keys[0].fingerprint, s1.keys[0].fingerprint,
            "last known fingerprint"
        );
        assert_eq!(s2.credentials_hash.as_deref(), Some("h1"));
    }

    #[test]
    fn losing_claimant_reports_the_conflict_and_stays_ready() {
        let r = resolution(Ok("A"));
        let standing = Standing::Conflict {
            winner: "older".into(),
        };
        let s = build(
            &pc(),
            &Default::default(),
            &facts(&r, &standing, Some("h")),
            at(10),
        );
        assert!(is_true(&s.conditions, READY));
        let c = find(&s.conditions, DEFAULT_CONFLICT).unwrap();
        assert_eq!(c.status, "True");
        assert!(c.message.contains("older"));
        assert_eq!(s.effective_default, Some(false));
    }

    #[test]
    fn a_foreign_object_is_a_stalled_name_conflict() {
        let r = resolution(Ok("A"));
        let mut f = facts(&r, &Standing::NotClaiming, None);
        f.secret = Written::Conflict;
        let s = build(&pc(), &Default::default(), &f, at(10));
        assert!(is_true(&s.conditions, STALLED));
        assert_eq!(find(&s.conditions, READY).unwrap().reason, "NameConflict");
        assert_eq!(s.secret, None);
    }
}
