//! Events for every transition of a ProviderConfig: they are the audit trail. Messages name
//! keys, Secrets and fingerprints, never a value.

use kube::runtime::events::EventType;

use crate::api::conditions::types::{DEFAULT_CONFLICT, READY};
use crate::api::provider_config::{ProviderConfig, ProviderConfigStatus};
use crate::conditions::find;
use crate::controller::Context;
use crate::controller::followers::rollout::short;
use crate::desired::provider_config::same_scheme;

use super::KIND;

/// What else happened in this reconcile that the statuses alone do not show.
#[derive(Clone, Debug, Default)]
pub struct Happenings {
    /// The default aliases were deleted (no config claims the default any more).
    pub aliases_removed: bool,
    /// Workloads rolled out, as `Kind/name`.
    pub rolled: Vec<String>,
    /// The credentials or settings changed and a rollout now waits for the debounce window.
    pub rollout_scheduled: Option<String>,
}

pub async fn announce(
    ctx: &Context,
    pc: &ProviderConfig,
    old: &ProviderConfigStatus,
    new: &ProviderConfigStatus,
    happened: &Happenings,
) {
    for key in &new.keys {
        let before = old.keys.iter().find(|k| k.name == key.name);
        if let (Some(a), Some(b)) = (
            before.and_then(|k| k.fingerprint.as_ref()),
            key.fingerprint.as_ref(),
        ) && a != b
            && same_scheme(a, b)
        {
            ctx.metrics.provider_key_rotations.inc();
            let note = format!("key {} rotated: fingerprint {a} -> {b}", key.name);
            ctx.event(pc, EventType::Normal, "KeyRotated", "Rotate", note)
                .await;
        }
        match (before.map(|k| k.active), key.active) {
            (Some(true), false) => {
                let note = format!(
                    "key {} deactivated: removed from the derived Secret",
                    key.name
                );
                ctx.event(pc, EventType::Normal, "KeyDeactivated", "Sync", note)
                    .await;
            }
            (Some(false), true) => {
                let note = format!("key {} activated: added to the derived Secret", key.name);
                ctx.event(pc, EventType::Normal, "KeyActivated", "Sync", note)
                    .await;
            }
            _ => {}
        }
    }

    let changed = |t: &str| {
        let (a, b) = (find(&old.conditions, t), find(&new.conditions, t));
        a.map(|c| (&c.status, &c.reason, &c.message))
            != b.map(|c| (&c.status, &c.reason, &c.message))
    };
    if changed(READY)
        && let Some(ready) = find(&new.conditions, READY)
    {
        let was_ready = find(&old.conditions, READY).is_some_and(|c| c.status == "True");
        match (ready.status.as_str(), ready.reason.as_str()) {
            ("True", _) if !was_ready => {
                ctx.event(
                    pc,
                    EventType::Normal,
                    "Synced",
                    "Sync",
                    ready.message.clone(),
                )
                .await
            }
            ("False", reason @ ("SecretNotFound" | "NameConflict")) => {
                ctx.metrics.transition(
                    KIND,
                    if reason == "NameConflict" {
                        "NameConflict"
                    } else {
                        "SecretNotFound"
                    },
                );
                ctx.event(
                    pc,
                    EventType::Warning,
                    reason,
                    "Sync",
                    ready.message.clone(),
                )
                .await
            }
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (&old.credentials_hash, &new.credentials_hash)
        && a != b
    {
        let note = format!(
            "Secret {} updated: credentials hash {} -> {}{}",
            new.secret.as_deref().unwrap_or_default(),
            short(a),
            short(b),
            happened
                .rollout_scheduled
                .as_deref()
                .map(|m| format!("; {m}"))
                .unwrap_or_default()
        );
        ctx.event(pc, EventType::Normal, "CredentialsUpdated", "Sync", note)
            .await;
    }

    if let (Some(a), Some(b)) = (&old.settings_hash, &new.settings_hash)
        && a != b
    {
        let note = format!(
            "ConfigMap {} updated: settings hash {} -> {}{}",
            new.config_map.as_deref().unwrap_or_default(),
            short(a),
            short(b),
            happened
                .rollout_scheduled
                .as_deref()
                .map(|m| format!("; {m}"))
                .unwrap_or_default()
        );
        ctx.event(pc, EventType::Normal, "SettingsUpdated", "Sync", note)
            .await;
    }

    if changed(DEFAULT_CONFLICT)
        && let Some(c) = find(&new.conditions, DEFAULT_CONFLICT)
        && c.status == "True"
    {
        ctx.event(
            pc,
            EventType::Warning,
            "DefaultConflict",
            "Elect",
            c.message.clone(),
        )
        .await;
    }
    if new.effective_default == Some(true) && old.effective_default != Some(true) {
        let t = &pc.spec.provider_type;
        let note = format!(
            "this config is now the default for {t}: default-{t}-provider and default-{t}-credentials follow it"
        );
        ctx.event(pc, EventType::Normal, "DefaultElected", "Elect", note)
            .await;
    }
    if happened.aliases_removed {
        let t = &pc.spec.provider_type;
        let note = format!("no config claims the default for {t} any more: default-{t}-* removed");
        ctx.event(
            pc,
            EventType::Normal,
            "DefaultAliasesRemoved",
            "Elect",
            note,
        )
        .await;
    }
    if !happened.rolled.is_empty() {
        let note = format!(
            "rolled out {} with credentials hash {} and settings hash {}",
            happened.rolled.join(", "),
            short(new.credentials_hash.as_deref().unwrap_or_default()),
            short(new.settings_hash.as_deref().unwrap_or_default())
        );
        ctx.event(pc, EventType::Normal, "RolloutTriggered", "Rollout", note)
            .await;
    }
}
