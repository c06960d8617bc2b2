//! Expiry rules shared by Draft and Job (pure).
//!
//! The expiry rules (users' reference: `docs/api.md`, "Expiry"): every object has a TTL (a Draft's `retention`, a Job's
//! `ttl`), a clock that starts at creation and restarts on renewal (and, for a Draft, on each
//! change of its spec), an `ExpiringSoon` warning window, and an expiration policy. This
//! module decides; the controllers act. Nothing here talks to the API server or reads the
//! clock: `now` is always an argument, so every rule is table-tested.
//!
//! A reconcile uses it in this order:
//! 1. [`clock_start`] → `status.ttlStartTime` (and `status.observedRenew` = the current value
//!    of [`RENEW_ANNOTATION`]);
//! 2. [`expires_at`] → `status.expiresAt`;
//! 3. [`evaluate`] → the `ExpiringSoon`/`Expired` conditions and the requeue
//!    ([`requeue_after`], capped by the resync period);
//! 4. on [`ExpiryState::Expired`], [`effective_expiration`] says whether to delete or mark.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};

/// What happens when an object's TTL runs out (`spec.expiration`: `"Delete"` or
/// `"MarkExpired"`).
///
/// Re-exported from [`crate::api`], where the CRD types live, so that the spec field and
/// these rules share one type instead of two that must be converted.
pub use crate::api::Expiration;

/// Any new value of this annotation restarts the TTL clock (`kubectl annotate --overwrite
/// draft/x kiln.dev/renew="$(date +%s)"`).
pub const RENEW_ANNOTATION: &str = "kiln.dev/renew";

/// Argo CD's resource tracking annotation (`application.resourceTrackingMethod: annotation`
/// or `annotation+label`; the default since Argo CD 3.0).
pub const ARGOCD_TRACKING_ANNOTATION: &str = "argocd.argoproj.io/tracking-id";

/// Labels kustomize-controller (Flux) puts on everything a Kustomization applies.
pub const FLUX_KUSTOMIZE_LABELS: [&str; 2] = [
    "kustomize.toolkit.fluxcd.io/name",
    "kustomize.toolkit.fluxcd.io/namespace",
];

/// Labels helm-controller (Flux) puts on everything a HelmRelease installs.
pub const FLUX_HELM_LABELS: [&str; 2] = [
    "helm.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/namespace",
];

/// Whether a GitOps tool manages this object, so that deleting it would only make the tool
/// create it again (with a fresh clock: a delete/recreate cycle every TTL).
///
/// Recognised, each with a non-empty value:
/// - Argo CD's [`ARGOCD_TRACKING_ANNOTATION`];
/// - Flux kustomize-controller's [`FLUX_KUSTOMIZE_LABELS`] (both);
/// - Flux helm-controller's [`FLUX_HELM_LABELS`] (both): with drift detection or on the next
///   upgrade, helm-controller puts a deleted object back, just as kustomize-controller does.
///
/// Deliberately not recognised: the label `app.kubernetes.io/instance`. It is what Argo CD's
/// legacy label tracking writes (the default before Argo CD 3.0), but it is also one of
/// Kubernetes' recommended labels, set by most Helm charts and by hand, and Argo CD can be
/// configured to track with another label key anyway. Counting it would silently turn
/// `Delete` into `MarkExpired` for untracked objects, which then pile up; users of label
/// tracking set `spec.expiration: MarkExpired` (or switch Argo CD to annotation tracking,
/// which Argo CD recommends). Plain Helm (`app.kubernetes.io/managed-by: Helm`) is not a
/// GitOps tool: nothing recreates a deleted object until someone runs `helm upgrade`.
pub fn gitops_tracked(meta: &ObjectMeta) -> bool {
    let has = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .is_some_and(|v| !v.is_empty())
    };
    has(&meta.annotations, ARGOCD_TRACKING_ANNOTATION)
        || FLUX_KUSTOMIZE_LABELS.iter().all(|k| has(&meta.labels, k))
        || FLUX_HELM_LABELS.iter().all(|k| has(&meta.labels, k))
}

/// The expiration policy in effect: the spec's when set; otherwise `MarkExpired` for an
/// object a GitOps tool tracks ([`gitops_tracked`]) and `Delete` for the rest.
///
/// Evaluated on every reconcile, not frozen: an object that a GitOps tool adopts later
/// switches to `MarkExpired` from then on. Report the result in `status.expiration`.
pub fn effective_expiration(spec: Option<Expiration>, meta: &ObjectMeta) -> Expiration {
    spec.unwrap_or(if gitops_tracked(meta) {
        Expiration::MarkExpired
    } else {
        Expiration::Delete
    })
}

/// What [`clock_start`] needs: the object's facts and what the previous status recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInput<'a> {
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// The time of this reconcile.
    pub now: Timestamp,
    /// `status.ttlStartTime` as last written, `None` before the first reconcile.
    pub previous_start: Option<Timestamp>,
    /// Whether a change of the spec restarts the clock: `true` for a Draft (retention counts
    /// from the last change of the spec), `false` for a Job (TTL counts from creation).
    pub restart_on_generation: bool,
    /// `status.observedGeneration` as last written.
    pub observed_generation: Option<i64>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedRenew` as last written.
    pub observed_renew: Option<&'a str>,
    /// The current value of [`RENEW_ANNOTATION`], if present.
    pub renew: Option<&'a str>,
}

/// When the TTL clock (re)started: the value for `status.ttlStartTime`.
///
/// - A new renewal — the annotation present with a value other than `observedRenew` — or,
///   when `restart_on_generation`, a generation other than `observedGeneration`: `now`.
/// - Otherwise the previous start is kept, so repeated reconciles are no-ops. Removing the
///   annotation is not a renewal.
/// - First reconcile (no previous start): the creation time, which for a Draft is its first
///   change. But when the object shows that something happened after creation that Kiln did
///   not see — a renew annotation, or (for a Draft) a generation above 1 — the start is
///   `now`: the true instant lies somewhere between creation and now, and erring late
///   never deletes an object early (think of a Kiln that was down for a while).
///
/// The result is truncated to whole seconds, because `metav1.Time` is serialized at second
/// precision: a sub-second start would read back different from what was computed, making
/// every reconcile see a changed status and write again.
///
/// The caller must write, in the same status update, `ttlStartTime` = the result,
/// `observedGeneration` = `generation` and `observedRenew` = `renew` (including clearing it
/// when the annotation is gone, so that putting the same value back later renews again). If
/// `observedGeneration` could advance without this function's result being written with it,
/// a spec change would be swallowed and the clock not restarted.
pub fn clock_start(input: ClockInput<'_>) -> Timestamp {
    let now = floor_second(input.now);
    let renewed = input.renew.is_some() && input.renew != input.observed_renew;
    let Some(previous) = input.previous_start else {
        let edited_since_creation =
            input.restart_on_generation && input.generation.is_some_and(|g| g > 1);
        return if renewed || edited_since_creation {
            now
        } else {
            floor_second(input.created)
        };
    };
    let spec_changed = input.restart_on_generation
        && matches!(
            (input.observed_generation, input.generation),
            (Some(seen), Some(current)) if seen != current
        );
    if renewed || spec_changed {
        now
    } else {
        previous
    }
}

/// When an object whose clock started at `start` expires: the value for `status.expiresAt`.
///
/// Rounded up to a whole second (for a TTL such as `1.5s`), for the same serialization
/// reason as [`clock_start`] and so that Kiln never acts before the `expiresAt` it shows.
/// Saturates at jiff's limits (years -9999 and 9999) instead of failing.
pub fn expires_at(start: Timestamp, ttl: SignedDuration) -> Timestamp {
    match start.checked_add(ttl) {
        Ok(at) => at
            .round(
                TimestampRound::new()
                    .smallest(Unit::Second)
                    .mode(RoundMode::Ceil),
            )
            // Only fails in the last second before Timestamp::MAX.
            .unwrap_or_else(|_| floor_second(at)),
        Err(_) if ttl.is_negative() => Timestamp::MIN,
        Err(_) => floor_second(Timestamp::MAX),
    }
}

/// The earlier of two deadlines: the TTL clock's (`expiresAt` from [`expires_at`] and its
/// TTL) and, once a job has finished, the one counted from its finish (`finished_at` +
/// `ttlAfterFinished`). Returns the winning expiry, the TTL that produced it (whose share
/// gives the `ExpiringSoon` lead time) and whether the deadline from the finish won. On a tie
/// the TTL clock wins.
pub fn earliest_expiry(
    by_clock: (Timestamp, SignedDuration),
    after_finish: Option<(Timestamp, SignedDuration)>,
) -> (Timestamp, SignedDuration, bool) {
    match after_finish {
        Some((finished_at, ttl)) => {
            let at = expires_at(finished_at, ttl);
            if at < by_clock.0 {
                (at, ttl, true)
            } else {
                (by_clock.0, by_clock.1, false)
            }
        }
        None => (by_clock.0, by_clock.1, false),
    }
}

/// How long before expiry the `ExpiringSoon` condition and Event appear. Operator-wide.
///
/// The lead time is `fraction × TTL`, at most `max`, and never more than the TTL itself.
/// The default: 10% of the TTL, at most 24h (30 days → 24h; 48h → 4h48m;
/// 10s → 1s). A fixed lead time is `fraction: 1.0` with `max` set to it
/// ([`WarningPolicy::fixed`]); no warning at all is `fraction: 0.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarningPolicy {
    /// Share of the TTL, in `0.0..=1.0` (values outside, or NaN, are clamped: NaN counts as 0).
    pub fraction: f64,
    /// Upper bound of the lead time.
    pub max: SignedDuration,
}

impl Default for WarningPolicy {
    fn default() -> Self {
        Self {
            fraction: 0.10,
            max: SignedDuration::from_hours(24),
        }
    }
}

impl WarningPolicy {
    /// Warn `lead` before expiry whatever the TTL (but never before the clock started).
    pub fn fixed(lead: SignedDuration) -> Self {
        Self {
            fraction: 1.0,
            max: lead,
        }
    }

    /// The lead time for this TTL, in `0..=ttl`, rounded to the millisecond (so that
    /// 10% of 48h is exactly 4h48m rather than a float's approximation of it).
    pub fn warn_before(&self, ttl: SignedDuration) -> SignedDuration {
        if !ttl.is_positive() {
            return SignedDuration::ZERO;
        }
        let fraction = if self.fraction.is_nan() {
            0.0
        } else {
            self.fraction.clamp(0.0, 1.0)
        };
        let millis = (ttl.as_nanos() as f64 * fraction / 1e6).round();
        let lead = SignedDuration::try_from_millis_i128(millis as i128).unwrap_or(ttl);
        lead.min(self.max).min(ttl).max(SignedDuration::ZERO)
    }
}

/// Where an object stands relative to its expiry, and when to look at it next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryState {
    /// Not yet in the warning window.
    Active {
        /// When the warning window opens (`ExpiringSoon` starts).
        requeue_at: Timestamp,
    },
    /// In the warning window: set `ExpiringSoon` and emit its Event.
    ExpiringSoon {
        /// The expiry itself.
        requeue_at: Timestamp,
    },
    /// At or past `expiresAt`: apply the [`effective_expiration`].
    Expired,
}

impl ExpiryState {
    /// The next instant this object needs a reconcile for expiry, `None` once expired.
    pub fn requeue_at(&self) -> Option<Timestamp> {
        match *self {
            ExpiryState::Active { requeue_at } | ExpiryState::ExpiringSoon { requeue_at } => {
                Some(requeue_at)
            }
            ExpiryState::Expired => None,
        }
    }
}

/// Classifies `now` against `expires_at`, with the warning window of `policy` for `ttl`.
///
/// Boundaries are inclusive on the later side: at exactly `expires_at` the object is
/// expired, and at exactly the start of the window it is expiring soon, so a requeue that
/// lands on the instant acts on it. A zero lead time means no `ExpiringSoon` at all.
pub fn evaluate(
    now: Timestamp,
    expires_at: Timestamp,
    ttl: SignedDuration,
    policy: &WarningPolicy,
) -> ExpiryState {
    if now >= expires_at {
        return ExpiryState::Expired;
    }
    let warn_from = expires_at
        .checked_sub(policy.warn_before(ttl))
        .unwrap_or(Timestamp::MIN);
    if now >= warn_from {
        ExpiryState::ExpiringSoon {
            requeue_at: expires_at,
        }
    } else {
        ExpiryState::Active {
            requeue_at: warn_from,
        }
    }
}

/// Added to every expiry requeue so that the reconcile lands just after the instant.
///
/// The delay is computed from the wall clock (`now`, like `expiresAt`) but timed by tokio on
/// the monotonic clock; the two drift apart (NTP slews the wall clock), and tokio's timer
/// has millisecond granularity. A reconcile that landed a hair early would find the object
/// not yet expired and requeue for the remaining milliseconds: a wasted reconcile. 50 ms
/// covers the usual drift over a requeue period and is small next to the 2 s expiry
/// precision Kiln promises. Drift over days is larger; it is absorbed because the requeue
/// is capped by the resync period, and each reconcile recomputes from a fresh `now`.
pub const REQUEUE_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The delay for `Action::requeue` to reach `at`: never negative (an instant already past
/// gives just the margin), plus [`REQUEUE_MARGIN`]. Cap it with the resync period.
pub fn requeue_after(now: Timestamp, at: Timestamp) -> std::time::Duration {
    let remaining = at.duration_since(now).max(SignedDuration::ZERO);
    std::time::Duration::try_from(remaining)
        .unwrap_or(std::time::Duration::ZERO)
        .saturating_add(REQUEUE_MARGIN)
}

/// How late an expiry was acted on, in seconds, for the expiry-lag metric: `now −
/// expires_at`, at least 0 (Kiln never acts before `expiresAt`, see [`evaluate`]; a negative
/// value could only come from a caller's clock mix-up and would only distort a histogram).
pub fn lag(now: Timestamp, expires_at: Timestamp) -> f64 {
    now.duration_since(expires_at).as_secs_f64().max(0.0)
}

/// `t` truncated to the whole second, as `metav1.Time` stores it.
pub fn floor_second(t: Timestamp) -> Timestamp {
    t.round(
        TimestampRound::new()
            .smallest(Unit::Second)
            .mode(RoundMode::Floor),
    )
    .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn at_nanos(s: i64, n: i32) -> Timestamp {
        Timestamp::new(s, n).unwrap()
    }

    const fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    #[test]
    fn the_earlier_of_the_ttl_and_the_ttl_after_finished_wins() {
        let created = at(0);
        let by_clock = (expires_at(created, hours(48)), hours(48));
        // Not finished: only the TTL.
        assert_eq!(
            earliest_expiry(by_clock, None),
            (at(48 * 3600), hours(48), false)
        );
        // Finished early with a short TTL after finishing: that deadline wins.
        assert_eq!(
            earliest_expiry(by_clock, Some((at(3600), hours(1)))),
            (at(2 * 3600), hours(1), true)
        );
        // Finished late: the TTL from creation still comes first.
        assert_eq!(
            earliest_expiry(by_clock, Some((at(47 * 3600), hours(2)))),
            (at(48 * 3600), hours(48), false)
        );
        // A tie goes to the TTL clock.
        assert_eq!(
            earliest_expiry(by_clock, Some((at(46 * 3600), hours(2)))),
            (at(48 * 3600), hours(48), false)
        );
        // Sub-second TTLs round up, as expiresAt always does.
        let (when, _, won) =
            earliest_expiry(by_clock, Some((at(10), SignedDuration::from_millis(1500))));
        assert_eq!((when, won), (at(12), true));
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        ObjectMeta {
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    const ARGO: &str = "argocd.argoproj.io/tracking-id";
    const KS_NAME: &str = "kustomize.toolkit.fluxcd.io/name";
    const KS_NS: &str = "kustomize.toolkit.fluxcd.io/namespace";
    const HR_NAME: &str = "helm.toolkit.fluxcd.io/name";
    const HR_NS: &str = "helm.toolkit.fluxcd.io/namespace";
    const INSTANCE: &str = "app.kubernetes.io/instance";

    #[test]
    fn gitops_detection() {
        let argo_id = "my-app:kiln.dev/Draft:team/d1";
        // (case, labels, annotations, tracked)
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Pairs, Pairs, bool)] = &[
            ("bare object", &[], &[], false),
            ("argo annotation", &[], &[(ARGO, argo_id)], true),
            (
                "argo annotation+label",
                &[(INSTANCE, "my-app")],
                &[(ARGO, argo_id)],
                true,
            ),
            ("empty argo annotation", &[], &[(ARGO, "")], false),
            (
                "argo id as a label is not argo's",
                &[(ARGO, "x")],
                &[],
                false,
            ),
            (
                "legacy instance label alone",
                &[(INSTANCE, "my-app")],
                &[],
                false,
            ),
            (
                "helm chart's recommended labels",
                &[(INSTANCE, "rel"), ("app.kubernetes.io/managed-by", "Helm")],
                &[("meta.helm.sh/release-name", "rel")],
                false,
            ),
            (
                "flux kustomization",
                &[(KS_NAME, "apps"), (KS_NS, "flux-system")],
                &[],
                true,
            ),
            ("flux kustomize name only", &[(KS_NAME, "apps")], &[], false),
            (
                "flux kustomize namespace only",
                &[(KS_NS, "flux-system")],
                &[],
                false,
            ),
            (
                "flux kustomize empty name",
                &[(KS_NAME, ""), (KS_NS, "flux-system")],
                &[],
                false,
            ),
            (
                "flux kustomize as annotations",
                &[],
                &[(KS_NAME, "a"), (KS_NS, "b")],
                false,
            ),
            (
                "flux helmrelease",
                &[(HR_NAME, "kiln"), (HR_NS, "apps")],
                &[],
                true,
            ),
            ("flux helm name only", &[(HR_NAME, "kiln")], &[], false),
            (
                "flux helm name, kustomize namespace",
                &[(HR_NAME, "a"), (KS_NS, "b")],
                &[],
                false,
            ),
            (
                "unrelated",
                &[("app", "web")],
                &[("kiln.dev/renew", "1")],
                false,
            ),
        ];
        for (name, labels, annotations, want) in cases {
            assert_eq!(gitops_tracked(&meta(labels, annotations)), *want, "{name}");
        }
    }

    #[test]
    fn effective_expiration_table() {
        use Expiration::{Delete, MarkExpired};
        let tracked = meta(&[], &[(ARGO, "app:kiln.dev/Job:ns/j")]);
        let untracked = meta(&[(INSTANCE, "rel")], &[]);
        let cases = [
            (None, &untracked, Delete),
            (None, &tracked, MarkExpired),
            (Some(Delete), &tracked, Delete),
            (Some(Delete), &untracked, Delete),
            (Some(MarkExpired), &untracked, MarkExpired),
            (Some(MarkExpired), &tracked, MarkExpired),
        ];
        for (spec, meta, want) in cases {
            assert_eq!(effective_expiration(spec, meta), want, "{spec:?}");
        }
    }

    #[test]
    fn expiration_serde_names() {
        use Expiration::{Delete, MarkExpired};
        assert_eq!(serde_json::to_value(Delete).unwrap(), "Delete");
        assert_eq!(serde_json::to_value(MarkExpired).unwrap(), "MarkExpired");
        let parsed: Expiration = serde_json::from_value("MarkExpired".into()).unwrap();
        assert_eq!(parsed, MarkExpired);
    }

    /// A reconcile at t=1000 of an object created at t=100 that last started at t=500.
    fn base<'a>(restart_on_generation: bool) -> ClockInput<'a> {
        ClockInput {
            created: at(100),
            now: at(1000),
            previous_start: Some(at(500)),
            restart_on_generation,
            observed_generation: Some(3),
            generation: Some(3),
            observed_renew: None,
            renew: None,
        }
    }

    #[test]
    fn clock_restarts() {
        let draft = base(true);
        let job = base(false);
        let cases: &[(&str, ClockInput, Timestamp)] = &[
            // First reconcile.
            (
                "job, first",
                ClockInput {
                    previous_start: None,
                    observed_generation: None,
                    generation: Some(1),
                    ..job
                },
                at(100),
            ),
            (
                "draft, first",
                ClockInput {
                    previous_start: None,
                    observed_generation: None,
                    generation: Some(1),
                    ..draft
                },
                at(100),
            ),
            (
                "draft, first, edited before Kiln saw it",
                ClockInput {
                    previous_start: None,
                    observed_generation: None,
                    generation: Some(4),
                    ..draft
                },
                at(1000),
            ),
            (
                "job, first, edited spec doesn't matter",
                ClockInput {
                    previous_start: None,
                    observed_generation: None,
                    generation: Some(4),
                    ..job
                },
                at(100),
            ),
            (
                "job, first, renew present",
                ClockInput {
                    previous_start: None,
                    renew: Some("x"),
                    ..job
                },
                at(1000),
            ),
            (
                "job, first, sub-second creation",
                ClockInput {
                    previous_start: None,
                    created: at_nanos(100, 999_999_999),
                    ..job
                },
                at(100),
            ),
            // Steady state.
            ("job, nothing new", job, at(500)),
            ("draft, nothing new", draft, at(500)),
            (
                "renew added",
                ClockInput {
                    renew: Some("1"),
                    ..job
                },
                at(1000),
            ),
            (
                "renew changed",
                ClockInput {
                    observed_renew: Some("1"),
                    renew: Some("2"),
                    ..job
                },
                at(1000),
            ),
            (
                "renew changed, draft",
                ClockInput {
                    observed_renew: Some("1"),
                    renew: Some("2"),
                    ..draft
                },
                at(1000),
            ),
            (
                "renew same value",
                ClockInput {
                    observed_renew: Some("1"),
                    renew: Some("1"),
                    ..job
                },
                at(500),
            ),
            (
                "renew removed",
                ClockInput {
                    observed_renew: Some("1"),
                    renew: None,
                    ..job
                },
                at(500),
            ),
            (
                "renew empty value is a value",
                ClockInput {
                    observed_renew: Some("1"),
                    renew: Some(""),
                    ..job
                },
                at(1000),
            ),
            (
                "draft, spec changed",
                ClockInput {
                    generation: Some(4),
                    ..draft
                },
                at(1000),
            ),
            (
                "job, spec changed",
                ClockInput {
                    generation: Some(4),
                    ..job
                },
                at(500),
            ),
            (
                "draft, no observed generation",
                ClockInput {
                    observed_generation: None,
                    generation: Some(4),
                    ..draft
                },
                at(500),
            ),
            (
                "draft, spec changed and renewed",
                ClockInput {
                    generation: Some(4),
                    renew: Some("1"),
                    ..draft
                },
                at(1000),
            ),
            (
                "restart truncates now",
                ClockInput {
                    renew: Some("1"),
                    now: at_nanos(1000, 600_000_000),
                    ..job
                },
                at(1000),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(clock_start(*input), *want, "{name}");
        }
    }

    #[test]
    fn clock_is_stable_once_recorded() {
        // Feeding the result back as the previous status must not move the clock again.
        let first = ClockInput {
            previous_start: None,
            observed_generation: None,
            observed_renew: None,
            renew: Some("r1"),
            generation: Some(2),
            ..base(true)
        };
        let start = clock_start(first);
        let second = ClockInput {
            now: at(5000),
            previous_start: Some(start),
            observed_generation: first.generation,
            observed_renew: first.renew,
            ..first
        };
        assert_eq!(clock_start(second), start);
    }

    #[test]
    fn expires_at_rounds_up_and_saturates() {
        assert_eq!(expires_at(at(100), hours(48)), at(100 + 48 * 3600));
        assert_eq!(
            expires_at(at(100), SignedDuration::from_millis(1500)),
            at(102)
        );
        assert_eq!(
            expires_at(at_nanos(100, 1), SignedDuration::from_secs(1)),
            at(102)
        );
        assert_eq!(
            expires_at(at(100), SignedDuration::MAX),
            floor_second(Timestamp::MAX)
        );
        assert_eq!(
            expires_at(Timestamp::MAX, SignedDuration::ZERO),
            floor_second(Timestamp::MAX)
        );
        assert_eq!(expires_at(at(100), SignedDuration::MIN), Timestamp::MIN);
    }

    #[test]
    fn warning_window() {
        let default = WarningPolicy::default();
        let cases = [
            // 10% of 30 days is 72h: capped at 24h.
            (default, hours(720), hours(24)),
            // 10% of 48h.
            (default, hours(48), SignedDuration::from_mins(4 * 60 + 48)),
            // Exactly at the cap.
            (default, hours(240), hours(24)),
            (
                default,
                SignedDuration::from_secs(10),
                SignedDuration::from_secs(1),
            ),
            (
                default,
                SignedDuration::from_secs(1),
                SignedDuration::from_millis(100),
            ),
            (
                default,
                SignedDuration::from_millis(5),
                SignedDuration::from_millis(1),
            ),
            (default, SignedDuration::from_nanos(5), SignedDuration::ZERO),
            (default, SignedDuration::ZERO, SignedDuration::ZERO),
            (
                default,
                SignedDuration::from_secs(-10),
                SignedDuration::ZERO,
            ),
            (default, SignedDuration::MAX, hours(24)),
            (WarningPolicy::fixed(hours(2)), hours(48), hours(2)),
            // A fixed lead longer than the TTL warns from the start, not before it.
            (WarningPolicy::fixed(hours(2)), hours(1), hours(1)),
            (
                WarningPolicy {
                    fraction: 0.0,
                    ..default
                },
                hours(48),
                SignedDuration::ZERO,
            ),
            (
                WarningPolicy {
                    fraction: f64::NAN,
                    ..default
                },
                hours(48),
                SignedDuration::ZERO,
            ),
            (
                WarningPolicy {
                    fraction: -1.0,
                    ..default
                },
                hours(48),
                SignedDuration::ZERO,
            ),
            (
                WarningPolicy {
                    fraction: 7.0,
                    max: hours(1000),
                },
                hours(48),
                hours(48),
            ),
            (
                WarningPolicy {
                    max: SignedDuration::from_secs(-1),
                    ..default
                },
                hours(48),
                SignedDuration::ZERO,
            ),
        ];
        for (policy, ttl, want) in cases {
            assert_eq!(policy.warn_before(ttl), want, "{policy:?} for {ttl:?}");
        }
    }

    #[test]
    fn evaluate_boundaries() {
        let policy = WarningPolicy::default();
        let ttl = hours(48);
        let expiry = at(1_000_000);
        let warn_from = at(1_000_000 - (4 * 3600 + 48 * 60));
        let second = SignedDuration::from_secs(1);
        let nano = SignedDuration::from_nanos(1);
        let active = ExpiryState::Active {
            requeue_at: warn_from,
        };
        let soon = ExpiryState::ExpiringSoon { requeue_at: expiry };
        let cases = [
            (at(0), active),
            (warn_from - nano, active),
            (warn_from, soon),
            (warn_from + second, soon),
            (expiry - nano, soon),
            (expiry, ExpiryState::Expired),
            (expiry + hours(1000), ExpiryState::Expired),
        ];
        for (now, want) in cases {
            assert_eq!(evaluate(now, expiry, ttl, &policy), want, "at {now}");
        }

        // Without a warning window, Active goes straight to Expired.
        let silent = WarningPolicy {
            fraction: 0.0,
            ..policy
        };
        assert_eq!(
            evaluate(expiry - nano, expiry, ttl, &silent),
            ExpiryState::Active { requeue_at: expiry }
        );
        assert_eq!(evaluate(expiry, expiry, ttl, &silent), ExpiryState::Expired);
        // A window reaching back past Timestamp::MIN does not panic.
        assert_eq!(
            evaluate(
                Timestamp::MIN,
                Timestamp::MIN + hours(1),
                hours(10),
                &WarningPolicy::fixed(hours(10))
            ),
            ExpiryState::ExpiringSoon {
                requeue_at: Timestamp::MIN + hours(1)
            }
        );
    }

    #[test]
    fn requeue_at_follows_state() {
        assert_eq!(
            ExpiryState::Active { requeue_at: at(5) }.requeue_at(),
            Some(at(5))
        );
        assert_eq!(
            ExpiryState::ExpiringSoon { requeue_at: at(6) }.requeue_at(),
            Some(at(6))
        );
        assert_eq!(ExpiryState::Expired.requeue_at(), None);
    }

    #[test]
    fn requeue_after_is_never_negative_and_lands_after() {
        let now = at(1000);
        assert_eq!(
            requeue_after(now, at(1010)),
            Duration::from_secs(10) + REQUEUE_MARGIN
        );
        assert_eq!(
            requeue_after(now, at_nanos(1000, 1)),
            Duration::from_nanos(1) + REQUEUE_MARGIN
        );
        assert_eq!(requeue_after(now, now), REQUEUE_MARGIN);
        assert_eq!(requeue_after(now, at(10)), REQUEUE_MARGIN);
        assert_eq!(
            requeue_after(Timestamp::MAX, Timestamp::MIN),
            REQUEUE_MARGIN
        );
        assert!(requeue_after(Timestamp::MIN, Timestamp::MAX) > Duration::from_secs(1 << 38));
    }

    #[test]
    fn lag_in_seconds() {
        assert_eq!(lag(at(1000), at(1000)), 0.0);
        assert_eq!(lag(at_nanos(1001, 500_000_000), at(1000)), 1.5);
        assert_eq!(lag(at(999), at(1000)), 0.0);
    }
}
