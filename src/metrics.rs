//! Prometheus metrics, served on `/metrics`.

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub kind: &'static str,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
}

/// One API key of one ProviderConfig.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub namespace: String,
    pub provider_config: String,
    pub key: String,
}

/// Counts one controller's cache, at scrape time.
type CountFn = Box<dyn Fn() -> i64 + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkspaceLabels {
    pub what: &'static str,
}

type PhaseFn = Box<dyn Fn() -> Vec<Option<String>> + Send + Sync>;

struct PhaseSource {
    kind: &'static str,
    phases: &'static [&'static str],
    read: PhaseFn,
}

/// Labels of an operation's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric Kiln exports. One instance per process, shared by `Arc`.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Objects per kind and phase, as of their last reconcile.
    pub objects_by_phase: Family<PhaseLabels, Gauge>,
    /// Transitions worth counting (`Published`, `DriftCorrected`, `Expired`, …).
    pub transitions: Family<EventLabels, Counter>,
    /// Seconds between an object's `expiresAt` and its actual expiry.
    pub expiry_lag: Family<ControllerLabels, Histogram>,
    /// ProviderConfig API keys whose value changed (by fingerprint).
    pub provider_key_rotations: Counter,
    /// Workloads rolled out because a followed ProviderConfig's credentials changed.
    pub provider_rollouts: Family<WorkloadLabels, Counter>,
    /// Workloads rolled out because a followed published config got a new revision.
    pub config_rollouts: Family<WorkloadLabels, Counter>,
    /// Key uses reported by clients (`POST .../providerconfigs/{name}/usage`).
    pub provider_key_uses: Family<KeyLabels, Counter>,
    /// ProviderConfigs that claim the default of their type and are not the effective one.
    pub provider_default_conflicts: Gauge,
    /// Where `provider_default_conflicts` comes from: each ProviderConfig controller's cache
    /// (one per watched namespace; they add up), read at scrape time like `objects`.
    provider_conflict_sources: Mutex<Vec<CountFn>>,
    /// Archive builds: duration and bytes written.
    pub archive_duration: Histogram,
    pub archive_bytes: Counter,
    /// Objects of Jobs that no longer exist, deleted from the object store by the sweep.
    pub object_store_swept: Counter,
    /// Sweeps of the object store, by result (`ok`, `error`).
    pub object_store_sweeps: Family<ResultLabels, Counter>,
    /// Requests to the HTTP listener by route, method and status, and their latency.
    pub http: HttpMetrics,
    /// Serialises text encoding; the registry itself is immutable after construction.
    encode_lock: Mutex<()>,
    /// Where `objects` counts come from: each controller's cache, read at scrape time, so
    /// the numbers are exact and deleted objects never linger.
    phase_sources: Mutex<Vec<PhaseSource>>,
    /// The job workspace, read at scrape time (its accounting is in memory: no disk scan).
    workspace: std::sync::OnceLock<std::sync::Arc<crate::workspace::Workspace>>,
    workspace_gauges: Family<WorkspaceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error class",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            });
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        let objects_by_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "objects",
            "Objects by kind and phase",
            objects_by_phase.clone(),
        );
        let transitions = Family::<EventLabels, Counter>::default();
        registry.register(
            "transitions",
            "Lifecycle transitions by kind and reason",
            transitions.clone(),
        );
        let expiry_lag = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0])
        });
        registry.register(
            "expiry_lag_seconds",
            "Time from expiresAt to the expiry action",
            expiry_lag.clone(),
        );
        let provider_key_rotations = Counter::default();
        registry.register(
            "provider_key_rotations",
            "ProviderConfig API keys whose value changed",
            provider_key_rotations.clone(),
        );
        let provider_rollouts = Family::<WorkloadLabels, Counter>::default();
        registry.register(
            "provider_rollouts",
            "Workloads rolled out because a followed ProviderConfig's credentials or settings changed",
            provider_rollouts.clone(),
        );
        let config_rollouts = Family::<WorkloadLabels, Counter>::default();
        registry.register(
            "config_rollouts",
            "Workloads rolled out because a followed published config got a new revision",
            config_rollouts.clone(),
        );
        let provider_key_uses = Family::<KeyLabels, Counter>::default();
        registry.register(
            "provider_key_uses",
            "Uses of a ProviderConfig's API key reported by clients",
            provider_key_uses.clone(),
        );
        let provider_default_conflicts = Gauge::default();
        registry.register(
            "provider_default_conflicts",
            "ProviderConfigs claiming the default of their type that are not the effective default",
            provider_default_conflicts.clone(),
        );
        // Series exist from the start, so dashboards and alerts see zeros, not gaps.
        for controller in ["draft", "job", "providerconfig"] {
            drop(reconciles.get_or_create(&ControllerLabels { controller }));
            drop(reconcile_duration.get_or_create(&ControllerLabels { controller }));
        }
        let archive_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "archive_build_duration_seconds",
            "Time to build a job's archive",
            archive_duration.clone(),
        );
        let archive_bytes = Counter::default();
        registry.register(
            "archive_bytes",
            "Bytes of archives built",
            archive_bytes.clone(),
        );
        let object_store_swept = Counter::default();
        registry.register(
            "object_store_swept_objects",
            "Objects of Jobs that no longer exist, deleted from the object store by the sweep",
            object_store_swept.clone(),
        );
        let object_store_sweeps = Family::<ResultLabels, Counter>::default();
        registry.register(
            "object_store_sweeps",
            "Sweeps of the object store for objects of Jobs that no longer exist, by result",
            object_store_sweeps.clone(),
        );
        let http = HttpMetrics::register(&mut registry);
        let workspace_gauges = Family::<WorkspaceLabels, Gauge>::default();
        registry.register(
            "workspace",
            "Job workspace usage: jobs, files, bytes (of files) and archive_bytes",
            workspace_gauges.clone(),
        );
        Self {
            http,
            archive_duration,
            archive_bytes,
            object_store_swept,
            object_store_sweeps,
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            objects_by_phase,
            transitions,
            expiry_lag,
            provider_key_rotations,
            provider_rollouts,
            config_rollouts,
            provider_key_uses,
            provider_default_conflicts,
            provider_conflict_sources: Mutex::new(Vec::new()),
            encode_lock: Mutex::new(()),
            phase_sources: Mutex::new(Vec::new()),
            workspace: std::sync::OnceLock::new(),
            workspace_gauges,
        }
    }

    /// The registry, for subsystems that register their own metrics at startup.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let _guard = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_phase_counts();
        self.refresh_workspace();
        self.refresh_provider_default_conflicts();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &'static str, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }

    /// Records an archive build.
    pub fn archive_built(&self, seconds: f64, bytes: u64) {
        self.archive_duration.observe(seconds);
        self.archive_bytes.inc_by(bytes);
    }

    /// Records an expiry: its lag behind `expiresAt` and the transition.
    pub fn expired(&self, controller: &'static str, kind: &'static str, lag_seconds: f64) {
        self.expiry_lag
            .get_or_create(&ControllerLabels { controller })
            .observe(lag_seconds);
        self.transition(kind, "Expired");
    }

    /// Registers a cache to count objects of `kind` by phase from (one per controller and
    /// scope; counts of the same kind add up).
    pub fn register_phase_source(
        &self,
        kind: &'static str,
        phases: &'static [&'static str],
        read: impl Fn() -> Vec<Option<String>> + Send + Sync + 'static,
    ) {
        let mut sources = self.phase_sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.push(PhaseSource {
            kind,
            phases,
            read: Box::new(read),
        });
    }

    /// Exports the workspace's usage from now on.
    pub fn watch_workspace(&self, workspace: std::sync::Arc<crate::workspace::Workspace>) {
        let _ = self.workspace.set(workspace);
    }

    fn refresh_workspace(&self) {
        let Some(ws) = self.workspace.get() else {
            return;
        };
        let usage = ws.usage();
        for (what, value) in [
            ("jobs", usage.jobs),
            ("files", usage.files),
            ("bytes", usage.bytes),
            ("archive_bytes", usage.archive_bytes),
        ] {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            self.workspace_gauges
                .get_or_create(&WorkspaceLabels { what })
                .set(value);
        }
    }

    fn refresh_phase_counts(&self) {
        use std::collections::BTreeMap;
        let sources = self.phase_sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: BTreeMap<&'static str, (BTreeMap<String, i64>, &'static [&'static str])> =
            BTreeMap::new();
        for source in sources.iter() {
            let entry = counts
                .entry(source.kind)
                .or_insert_with(|| (BTreeMap::new(), source.phases));
            for phase in (source.read)() {
                *entry
                    .0
                    .entry(phase.unwrap_or_else(|| "Unknown".into()))
                    .or_default() += 1;
            }
        }
        for (kind, (by_phase, phases)) in counts {
            self.set_phase_counts(kind, &by_phase, phases);
        }
    }

    /// Sets the per-phase object counts of `kind` from a fresh snapshot.
    pub fn set_phase_counts(
        &self,
        kind: &'static str,
        counts: &std::collections::BTreeMap<String, i64>,
        all_phases: &[&str],
    ) {
        for phase in all_phases {
            let n = counts.get(*phase).copied().unwrap_or(0);
            self.objects_by_phase
                .get_or_create(&PhaseLabels {
                    kind,
                    phase: (*phase).to_string(),
                })
                .set(n);
        }
    }

    pub fn transition(&self, kind: &'static str, reason: &'static str) {
        self.transitions
            .get_or_create(&EventLabels { kind, reason })
            .inc();
    }

    /// Counts one reported use of a ProviderConfig's key.
    pub fn provider_key_used(&self, namespace: &str, provider_config: &str, key: &str) {
        self.provider_key_uses
            .get_or_create(&KeyLabels {
                namespace: namespace.to_owned(),
                provider_config: provider_config.to_owned(),
                key: key.to_owned(),
            })
            .inc();
    }

    /// Records one workload rolled out for a ProviderConfig.
    pub fn provider_rollout(&self, kind: &str) {
        self.provider_rollouts
            .get_or_create(&WorkloadLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn config_rollout(&self, kind: &str) {
        self.config_rollouts
            .get_or_create(&WorkloadLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Registers a ProviderConfig cache to count default conflicts from.
    pub fn register_provider_default_conflicts(
        &self,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        self.provider_conflict_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(read));
    }

    fn refresh_provider_default_conflicts(&self) {
        let sources = self
            .provider_conflict_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.provider_default_conflicts
            .set(sources.iter().map(|read| read()).sum());
    }
}

/// Records the duration of a reconcile when dropped, whichever way it ends.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/api/v1/namespaces/{ns}/jobs/{name}/files/{*path}`), never the
    /// raw path, so that there is one series per route rather than per file.
    pub route: String,
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub route: String,
    pub method: &'static str,
}

/// The HTTP listener's metrics: `kiln_http_requests_total` and
/// `kiln_http_request_duration_seconds` (time to the response headers; a streamed body may
/// take longer).
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<HttpRouteLabels, Histogram>,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status code",
            requests.clone(),
        );
        let duration = Family::<HttpRouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency up to the response headers",
            duration.clone(),
        );
        HttpMetrics { requests, duration }
    }

    /// Records one request.
    pub fn observe(&self, route: String, method: &'static str, code: u16, seconds: f64) {
        self.duration
            .get_or_create(&HttpRouteLabels {
                route: route.clone(),
                method,
            })
            .observe(seconds);
        self.requests
            .get_or_create(&HttpLabels {
                route,
                method,
                code,
            })
            .inc();
    }
}
