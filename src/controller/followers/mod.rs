//! The workloads that follow what Kiln publishes (`crate::desired::follow` has the contract):
//! an index of the scope's Deployments, StatefulSets and DaemonSets, each cut down before it
//! is cached to its name, version and `kiln.dev/*` annotations (its own and its pod
//! template's) — a few hundred bytes, however large the workload.
//!
//! The index answers "who follows X" for the Draft and ProviderConfig reconciles without a
//! request, and tells those controllers when the answer changes: a workload that starts or
//! stops following, is rolled out, or goes away makes its targets reconcile, so that their
//! `status.followers` stays true. A workload's other changes (its status, above all, which
//! changes at every step of a rollout) reach nobody.

pub mod rollout;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

use super::{Context, ReadinessProbe, Scope, store_ready};
use crate::desired::follow::{FOLLOW, FOLLOW_CONFIG, Mark, Seen, is_follow_annotation, targets};
use crate::error::Result;

/// How long a reconcile waits for the index's first lists.
pub const SYNC_WAIT: Duration = Duration::from_secs(5);

/// A workload kind that can follow.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + k8s_openapi::Resource
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn template_meta(&self) -> Option<&ObjectMeta>;
    /// Keeps only what the index needs; see [`slim`].
    fn cut_down(&mut self);
}

macro_rules! workload {
    ($kind:ty) => {
        impl Workload for $kind {
            fn template_meta(&self) -> Option<&ObjectMeta> {
                self.spec.as_ref()?.template.metadata.as_ref()
            }
            fn cut_down(&mut self) {
                self.status = None;
                if let Some(spec) = self.spec.as_mut() {
                    let template = spec.template.metadata.take().map(only_kiln);
                    *spec = Default::default();
                    spec.template.metadata = template;
                }
            }
        }
    };
}
workload!(Deployment);
workload!(StatefulSet);
workload!(DaemonSet);

fn only_kiln(mut meta: ObjectMeta) -> ObjectMeta {
    let annotations = meta.annotations.take().map(|mut a| {
        a.retain(|k, _| is_follow_annotation(k));
        a
    });
    ObjectMeta {
        annotations: annotations.filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    }
}

/// Cuts a workload down to what the index reads: name, namespace, uid, resourceVersion (for
/// conditional patches) and `kiln.dev/*` annotations, its own and its pod template's.
fn slim<W: Workload>(w: &mut W) {
    w.cut_down();
    let meta = w.meta_mut();
    let keep = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..only_kiln(std::mem::take(meta))
    };
    *meta = keep;
}

/// One follower, as the index holds it.
#[derive(Clone, Debug)]
pub struct Follower {
    pub kind: &'static str,
    pub name: String,
    pub resource_version: String,
    /// Its own `kiln.dev/*` annotations.
    pub annotations: Option<BTreeMap<String, String>>,
    /// Its pod template's `kiln.dev/*` annotations.
    pub template: Option<BTreeMap<String, String>>,
}

impl Follower {
    /// The follower as `crate::desired::follow::report` reads it.
    pub fn seen(&self) -> Seen<'_> {
        Seen {
            kind: self.kind,
            name: &self.name,
            template: self.template.as_ref(),
        }
    }
}

/// Marks the followers a pass rolled out as carrying `marks`: the index learns of the
/// patches only when their watch events arrive, and the status written now must not call
/// them behind.
fn record(followers: &mut [Follower], pass: &rollout::Pass, marks: &[Mark]) {
    for f in followers.iter_mut() {
        if pass
            .rolled
            .iter()
            .any(|r| *r == format!("{}/{}", f.kind, f.name))
        {
            let template = f.template.get_or_insert_with(BTreeMap::new);
            for m in marks {
                template.insert(m.key.clone(), m.value.clone());
            }
        }
    }
}

/// The debounce window of rollouts.
pub fn debounce(ctx: &Context) -> SignedDuration {
    SignedDuration::try_from(ctx.settings.rollout_debounce).unwrap_or(SignedDuration::from_secs(30))
}

/// What one step of a debounced rollout did.
pub struct Step {
    /// Workloads rolled out, as `Kind/name`.
    pub rolled: Vec<String>,
    /// The window had closed and no follower waits any more: the rollout is over.
    pub done: bool,
    /// When to look again.
    pub requeue: Duration,
}

/// One step of a debounced rollout whose window opened at `since` (None: none is open): once
/// the window has closed, rolls `followers` out as `req` says and records it in them.
pub async fn step(
    ctx: &Context,
    followers: &mut [Follower],
    since: Option<Timestamp>,
    req: &rollout::Request<'_>,
) -> Result<Step> {
    let waiting = |requeue| Step {
        rolled: Vec::new(),
        done: false,
        requeue,
    };
    let Some(since) = since else {
        return Ok(waiting(ctx.settings.resync));
    };
    let due = since.checked_add(req.debounce).unwrap_or(req.now);
    if req.now < due {
        return Ok(waiting(until(req.now, due)));
    }
    let pass = rollout::roll(ctx, followers, req).await?;
    record(followers, &pass, req.marks);
    Ok(Step {
        done: pass.wait_until.is_none(),
        requeue: pass
            .wait_until
            .map_or(ctx.settings.resync, |at| until(req.now, at)),
        rolled: pass.rolled,
    })
}

/// When a debounce window opened at `now` is recorded to start: Kubernetes keeps times to the
/// second, and rounding up keeps the window at least as long as the debounce once the status
/// has been written and read back.
pub fn settle(now: Timestamp) -> Timestamp {
    let round = TimestampRound::new()
        .smallest(Unit::Second)
        .mode(RoundMode::Ceil);
    now.round(round).unwrap_or(now)
}

/// Time from `now` to `at`, plus a little so that the requeued reconcile finds `at` passed.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default();
    wait + Duration::from_millis(20)
}

/// What a change of a workload concerns: the objects it follows (or followed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub namespace: String,
    pub name: String,
}

/// The index of one scope's workloads, shared by that scope's controllers.
#[derive(Clone)]
pub struct Workloads {
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
}

/// The receiving ends of the index's notifications, one per kind of target.
pub struct Changes {
    /// Published configs (`<configId>-<configType>`) whose followers changed.
    pub configs: UnboundedReceiver<Target>,
    /// ProviderConfigs whose followers changed.
    pub providers: UnboundedReceiver<Target>,
}

impl Workloads {
    /// Starts the three watches; returns the index, its readiness and the change streams.
    pub fn start(
        client: &Client,
        scope: &Scope,
        shutdown: &CancellationToken,
    ) -> (Self, Vec<ReadinessProbe>, Changes) {
        let (configs_tx, configs) = unbounded_channel();
        let (providers_tx, providers) = unbounded_channel();
        let notify = Notify {
            configs: configs_tx,
            providers: providers_tx,
        };
        let deployments = watch::<Deployment>(client, scope, shutdown, notify.clone());
        let statefulsets = watch::<StatefulSet>(client, scope, shutdown, notify.clone());
        let daemonsets = watch::<DaemonSet>(client, scope, shutdown, notify);
        let probes = vec![
            store_ready(deployments.clone()),
            store_ready(statefulsets.clone()),
            store_ready(daemonsets.clone()),
        ];
        let index = Self {
            deployments,
            statefulsets,
            daemonsets,
        };
        (index, probes, Changes { configs, providers })
    }

    /// Waits (a little) until the first list of every kind is in: before that, "no
    /// followers" could be an artefact of start-up, and writing it into a status would be a
    /// wrong write. False when the lists are not in after [`SYNC_WAIT`] — Kiln may not be
    /// allowed to list workloads (the watch logs why): the caller then leaves followers as
    /// they are and looks again later, so that drafts and configs still work without them.
    pub async fn synced(&self) -> bool {
        let all = async {
            // The stores' writers live as long as their watch tasks; an error means shutdown.
            let _ = self.deployments.wait_until_ready().await;
            let _ = self.statefulsets.wait_until_ready().await;
            let _ = self.daemonsets.wait_until_ready().await;
        };
        tokio::time::timeout(SYNC_WAIT, all).await.is_ok()
    }

    /// The workloads in `namespace` whose `annotation` (`FOLLOW` or `FOLLOW_CONFIG`) lists
    /// `target`.
    pub fn following(&self, namespace: &str, annotation: &str, target: &str) -> Vec<Follower> {
        let mut out = Vec::new();
        collect(&self.deployments, namespace, annotation, target, &mut out);
        collect(&self.statefulsets, namespace, annotation, target, &mut out);
        collect(&self.daemonsets, namespace, annotation, target, &mut out);
        out
    }
}

fn collect<W: Workload>(
    store: &Store<W>,
    namespace: &str,
    annotation: &str,
    target: &str,
    out: &mut Vec<Follower>,
) {
    let kind = <W as k8s_openapi::Resource>::KIND;
    for w in store.state() {
        if w.namespace().as_deref() != Some(namespace)
            || !targets(w.meta().annotations.as_ref(), annotation).contains(&target)
        {
            continue;
        }
        out.push(Follower {
            kind,
            name: w.name_any(),
            resource_version: w.resource_version().unwrap_or_default(),
            annotations: w.meta().annotations.clone(),
            template: w.template_meta().and_then(|m| m.annotations.clone()),
        });
    }
}

#[derive(Clone)]
struct Notify {
    configs: UnboundedSender<Target>,
    providers: UnboundedSender<Target>,
}

fn watch<W: Workload>(
    client: &Client,
    scope: &Scope,
    shutdown: &CancellationToken,
    notify: Notify,
) -> Store<W> {
    let (store, writer) = reflector::store();
    let mut tap = Tap::new(notify);
    let stream = reflector::reflector(
        writer,
        watcher(
            scope.api::<W>(client),
            watcher::Config::default().page_size(500),
        )
        .default_backoff()
        .modify(slim::<W>),
    );
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let events = stream.take_until(shutdown.cancelled_owned());
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => tap.observe(&event),
                Err(error) => tracing::warn!(kind = %W::kind(&()), %error, "watching workloads"),
            }
        }
    });
    store
}

/// What of a workload its targets' statuses depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Signature {
    namespace: String,
    follows: Vec<String>,
    follows_config: Vec<String>,
    template: Option<BTreeMap<String, String>>,
}

impl Signature {
    fn of<W: Workload>(w: &W) -> Option<Self> {
        let annotations = w.meta().annotations.as_ref();
        let follows: Vec<String> = targets(annotations, FOLLOW)
            .into_iter()
            .map(str::to_string)
            .collect();
        let follows_config: Vec<String> = targets(annotations, FOLLOW_CONFIG)
            .into_iter()
            .map(str::to_string)
            .collect();
        if follows.is_empty() && follows_config.is_empty() {
            return None;
        }
        Some(Self {
            namespace: w.namespace().unwrap_or_default(),
            follows,
            follows_config,
            template: w.template_meta().and_then(|m| m.annotations.clone()),
        })
    }
}

/// Watches the followers go by and tells their targets when a signature changes.
struct Tap {
    notify: Notify,
    /// Last signature per workload uid (followers only).
    seen: HashMap<String, Signature>,
    /// Uids listed since the last `Init`: what a re-list did not list is gone.
    relisted: HashSet<String>,
}

impl Tap {
    fn new(notify: Notify) -> Self {
        Self {
            notify,
            seen: HashMap::new(),
            relisted: HashSet::new(),
        }
    }

    fn observe<W: Workload>(&mut self, event: &watcher::Event<W>) {
        match event {
            watcher::Event::Init => self.relisted.clear(),
            watcher::Event::InitApply(w) => {
                self.relisted.insert(w.uid().unwrap_or_default());
                self.apply(w);
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|uid| !self.relisted.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(old) = self.seen.remove(&uid) {
                        self.tell(&old);
                    }
                }
                self.relisted.clear();
            }
            watcher::Event::Apply(w) => self.apply(w),
            watcher::Event::Delete(w) => {
                if let Some(old) = self.seen.remove(&w.uid().unwrap_or_default()) {
                    self.tell(&old);
                }
            }
        }
    }

    fn apply<W: Workload>(&mut self, w: &W) {
        let uid = w.uid().unwrap_or_default();
        let now = Signature::of(w);
        let before = match &now {
            Some(sig) => self.seen.insert(uid, sig.clone()),
            None => self.seen.remove(&uid),
        };
        if before == now {
            return;
        }
        self.tell_all([before.as_ref(), now.as_ref()].into_iter().flatten());
    }

    fn tell(&self, sig: &Signature) {
        self.tell_all([sig]);
    }

    /// Tells each target named by `sigs` once.
    fn tell_all<'a>(&self, sigs: impl IntoIterator<Item = &'a Signature>) {
        let mut configs = HashSet::new();
        let mut providers = HashSet::new();
        for sig in sigs {
            configs.extend(sig.follows_config.iter().map(|n| (&sig.namespace, n)));
            providers.extend(sig.follows.iter().map(|n| (&sig.namespace, n)));
        }
        let target = |(namespace, name): (&String, &String)| Target {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        // The receivers live as long as the controllers; a send fails only during shutdown,
        // when nothing needs reconciling any more.
        for t in configs {
            let _ = self.notify.configs.send(target(t));
        }
        for t in providers {
            let _ = self.notify.providers.send(target(t));
        }
    }
}

/// Shared handle, as the controllers keep it.
pub type Index = Arc<Workloads>;

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(
        uid: &str,
        follow_config: Option<&str>,
        template_rev: Option<&str>,
    ) -> Deployment {
        let mut annotations = serde_json::Map::new();
        if let Some(f) = follow_config {
            annotations.insert(FOLLOW_CONFIG.into(), f.into());
        }
        annotations.insert("unrelated/big".into(), "x".repeat(1000).into());
        let mut template = serde_json::Map::new();
        if let Some(r) = template_rev {
            template.insert("kiln.dev/config-revision-app-content".into(), r.into());
        }
        template.insert("other/annotation".into(), "y".into());
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("d-{uid}"), "namespace": "ns", "uid": uid,
                         "resourceVersion": "7", "labels": {"app": "x"},
                         "annotations": annotations},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}, "annotations": template},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 3}
        }))
        .unwrap()
    }

    #[test]
    fn workloads_are_cut_down_to_kiln_annotations() {
        let mut d = deployment("u1", Some("app-content"), Some("3"));
        slim(&mut d);
        assert_eq!(d.metadata.name.as_deref(), Some("d-u1"));
        assert_eq!(d.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(d.metadata.labels, None);
        let own = d.metadata.annotations.clone().unwrap();
        assert_eq!(own.keys().collect::<Vec<_>>(), [FOLLOW_CONFIG]);
        let template = d.template_meta().unwrap().annotations.clone().unwrap();
        assert_eq!(template.len(), 1);
        assert!(d.status.is_none());
        assert!(d.spec.as_ref().unwrap().template.spec.is_none());
    }

    fn tap() -> (Tap, Changes) {
        let (configs_tx, configs) = unbounded_channel();
        let (providers_tx, providers) = unbounded_channel();
        let tap = Tap::new(Notify {
            configs: configs_tx,
            providers: providers_tx,
        });
        (tap, Changes { configs, providers })
    }

    fn slimmed(d: Deployment) -> Deployment {
        let mut d = d;
        slim(&mut d);
        d
    }

    #[test]
    fn only_changes_of_followers_reach_their_targets() {
        let (mut tap, mut rx) = tap();
        let d = slimmed(deployment("u1", Some("app-content"), None));
        tap.observe(&watcher::Event::Apply(d.clone()));
        assert_eq!(rx.configs.try_recv().unwrap().name, "app-content");
        // The same signature again (a status update, say): nothing.
        tap.observe(&watcher::Event::Apply(d));
        assert!(rx.configs.try_recv().is_err());
        // Rolled out: the template changed.
        tap.observe(&watcher::Event::Apply(slimmed(deployment(
            "u1",
            Some("app-content"),
            Some("2"),
        ))));
        assert_eq!(rx.configs.try_recv().unwrap().name, "app-content");
        // Switches to following another config: both hear of it.
        tap.observe(&watcher::Event::Apply(slimmed(deployment(
            "u1",
            Some("other-content"),
            Some("2"),
        ))));
        let mut names = vec![
            rx.configs.try_recv().unwrap().name,
            rx.configs.try_recv().unwrap().name,
        ];
        names.sort();
        assert_eq!(names, ["app-content", "other-content"]);
        // A workload that follows nothing: nobody hears of it.
        tap.observe(&watcher::Event::Apply(slimmed(deployment(
            "u2", None, None,
        ))));
        assert!(rx.configs.try_recv().is_err());
        assert!(rx.providers.try_recv().is_err());
    }

    #[test]
    fn a_relist_reports_followers_that_went_away() {
        let (mut tap, mut rx) = tap();
        tap.observe(&watcher::Event::Apply(slimmed(deployment(
            "u1",
            Some("app-content"),
            None,
        ))));
        let _ = rx.configs.try_recv();
        tap.observe::<Deployment>(&watcher::Event::Init);
        tap.observe::<Deployment>(&watcher::Event::InitDone);
        assert_eq!(rx.configs.try_recv().unwrap().name, "app-content");
        assert!(tap.seen.is_empty());
    }
}
