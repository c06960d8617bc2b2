//! Key usage that clients report (`POST .../providerconfigs/{name}/usage`), coalesced into
//! `status.keys[].lastUsedTime`.
//!
//! Reports land in memory; every flush interval, the ProviderConfigs with new reports are
//! handed to the controller (a nudge), whose reconcile copies the flushed times into the
//! status it writes anyway. Only flushed times reach the status, so however many reports
//! arrive, a ProviderConfig's status changes for usage at most once per interval. Reports not
//! yet flushed are lost if the operator stops: `lastUsedTime` may lag by one interval, never
//! run ahead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::api::provider_config::ProviderConfig;
use crate::nudge::Nudge;

/// A ProviderConfig, by namespace and name.
type ConfigRef = (String, String);

/// Last use of each key, by key name.
pub type LastUsed = BTreeMap<String, Timestamp>;

/// The reports of every ProviderConfig, shared by the HTTP API and the controller.
pub struct KeyUsage {
    state: Mutex<State>,
    nudge: Nudge<ProviderConfig>,
}

#[derive(Default)]
struct State {
    /// Reported since the last flush.
    pending: HashMap<ConfigRef, LastUsed>,
    /// What the status may show.
    flushed: HashMap<ConfigRef, LastUsed>,
}

impl KeyUsage {
    pub fn new(nudge: Nudge<ProviderConfig>) -> Self {
        KeyUsage {
            state: Mutex::default(),
            nudge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain maps of timestamps: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reconcile requests [`KeyUsage::flush`] sends, for `Controller::reconcile_on`.
    pub fn requests(
        &self,
    ) -> impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<ProviderConfig>> + Send + 'static
    {
        self.nudge.subscribe()
    }

    /// Records a use of `key` at `at` (to the second, as the status keeps it: a finer time
    /// would never compare equal to the status read back, and every reconcile would write).
    pub fn record(&self, namespace: &str, name: &str, key: &str, at: Timestamp) {
        let at = Timestamp::from_second(at.as_second()).unwrap_or(at);
        let mut st = self.lock();
        let times = st
            .pending
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default();
        keep_later(times, key.to_owned(), at);
    }

    /// Makes the pending reports visible to the status and asks the controller to write them.
    /// Returns how many ProviderConfigs had new reports.
    pub fn flush(&self) -> usize {
        let nudged: Vec<ConfigRef> = {
            let mut st = self.lock();
            let pending = std::mem::take(&mut st.pending);
            let nudged = pending.keys().cloned().collect();
            for (config, times) in pending {
                let flushed = st.flushed.entry(config).or_default();
                for (key, at) in times {
                    keep_later(flushed, key, at);
                }
            }
            nudged
        };
        for (namespace, name) in &nudged {
            self.nudge.nudge(namespace, name);
        }
        nudged.len()
    }

    /// The flushed last uses of a ProviderConfig's keys.
    pub fn last_used(&self, namespace: &str, name: &str) -> LastUsed {
        self.lock()
            .flushed
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets a ProviderConfig that is gone (its reports must not reach a new one of the same
    /// name).
    pub fn forget(&self, namespace: &str, name: &str) {
        let config = (namespace.to_owned(), name.to_owned());
        let mut st = self.lock();
        st.pending.remove(&config);
        st.flushed.remove(&config);
    }

    /// Flushes every `interval` until `shutdown`.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => { self.flush(); }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Records `at` for `key` unless a later time is already there: times only move forward.
fn keep_later(times: &mut LastUsed, key: String, at: Timestamp) {
    let time = times.entry(key).or_insert(at);
    *time = (*time).max(at);
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("a valid time")
    }

    #[tokio::test]
    async fn a_thousand_reports_make_one_nudge_per_flush() {
        let nudge = Nudge::default();
        let mut nudges = Box::pin(nudge.subscribe());
        let usage = KeyUsage::new(nudge);
        for i in 0..1000 {
            usage.record("team", "openai", "primary", at(1_000 + i % 7));
        }
        assert_eq!(
            usage.last_used("team", "openai"),
            LastUsed::new(),
            "not flushed yet"
        );
        assert_eq!(usage.flush(), 1);
        let nudged = nudges.next().await.expect("a nudge");
        assert_eq!(
            (nudged.name.as_str(), nudged.namespace.as_deref()),
            ("openai", Some("team"))
        );
        assert_eq!(
            usage.last_used("team", "openai"),
            LastUsed::from([("primary".to_owned(), at(1_006))])
        );
        assert_eq!(usage.flush(), 0, "nothing new, no nudge");
    }

    #[test]
    fn times_only_move_forward_and_keys_stay_apart() {
        let usage = KeyUsage::new(Nudge::default());
        usage.record("team", "openai", "primary", at(50));
        usage.flush();
        usage.record("team", "openai", "primary", at(40));
        usage.record("team", "openai", "backup", at(45));
        usage.record("other", "openai", "primary", at(99));
        assert_eq!(usage.flush(), 2);
        assert_eq!(
            usage.last_used("team", "openai"),
            LastUsed::from([
                ("backup".to_owned(), at(45)),
                ("primary".to_owned(), at(50)),
            ])
        );
    }

    #[test]
    fn a_forgotten_config_starts_over() {
        let usage = KeyUsage::new(Nudge::default());
        usage.record("team", "openai", "primary", at(50));
        usage.flush();
        usage.record("team", "openai", "primary", at(60));
        usage.forget("team", "openai");
        assert_eq!(usage.flush(), 0);
        assert_eq!(usage.last_used("team", "openai"), LastUsed::new());
    }
}
