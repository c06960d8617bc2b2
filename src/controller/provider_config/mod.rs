//! The ProviderConfig controller, a pipeline (`docs/provider-config.md` for its rules):
//! read the keys → elect the default → derive the ConfigMap and Secret → move or remove the
//! default aliases → roll out followers → status and Events. A finalizer reports the
//! deletion of a config that running workloads use, and holds it if the config asks
//! (`protect.rs`).
//!
//! Watches: ProviderConfigs (tapped to re-reconcile configs of the same type when the set
//! claiming the default changes); the derived ConfigMaps by Kiln's labels and ownership;
//! Secrets as metadata only (never their data), mapped to the configs that reference or own
//! them. The referenced Secrets are then read one by one, so Kiln never caches the
//! namespace's Secrets.

mod events;
mod follow;
mod protect;
mod resolve;
mod status;
mod sync;
mod triggers;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::followers::{Index, Target as FollowTarget};
use super::{
    Context, ReadinessProbe, Scope, backoff_on_error, drive, slim_for_cache, store_ready,
    watcher_config,
};
use crate::api::conditions::types::DEFAULT_CONFLICT;
use crate::api::provider_config::ProviderConfig;
use crate::apply;
use crate::desired::labels::{MANAGED_BY, MANAGED_BY_KILN};
use crate::desired::provider_config::{
    Claimant, Credentials, PROVIDER_ROLE, Role, Target, elect, owner_reference, provider_json,
    settings_hash,
};
use crate::error::{Error, KubeContext, Result};
use crate::metrics::Metrics;
use events::Happenings;
use status::{Facts, Standing};
use sync::{SecretOutcome, Writer, Written};
use triggers::{Siblings, claims_default, configs_for_secret};

const NAME: &str = "providerconfig";
const KIND: &str = "ProviderConfig";

/// What the reconciles of one controller (one per scope) share.
struct Shared {
    store: Store<ProviderConfig>,
    workloads: Index,
}

pub fn start(
    ctx: Arc<Context>,
    scope: &Scope,
    shutdown: CancellationToken,
    workloads: Index,
    followers_changed: UnboundedReceiver<FollowTarget>,
) -> (ReadinessProbe, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let probe = store_ready(store.clone());
    let (siblings_tx, siblings_rx) = unbounded_channel();
    let mut siblings = Siblings::new(store.clone(), siblings_tx);
    register_metrics(&ctx.metrics, &store);
    // Managed fields are dropped before caching: nothing reads them. The reflector updates
    // the store before it passes an event on, so the tap below (and the sibling reconciles it
    // asks for) sees the change.
    let primary = reflector::reflector(
        writer,
        watcher(scope.api::<ProviderConfig>(&ctx.client), watcher_config())
            .modify(slim_for_cache::<ProviderConfig>),
    )
    .inspect_ok(move |event| siblings.observe(event))
    .applied_objects();

    let secret_store = store.clone();
    let derived = format!("{MANAGED_BY}={MANAGED_BY_KILN},{PROVIDER_ROLE}");
    let controller = Controller::for_stream(primary, store.clone())
        .owns(
            scope.api::<ConfigMap>(&ctx.client),
            watcher::Config::default().labels(&derived).page_size(500),
        )
        // Metadata only, on the wire and in memory: a Secret's data never reaches Kiln
        // through this watch, whatever the number of Secrets in the namespace.
        .watches(
            scope.api::<PartialObjectMeta<Secret>>(&ctx.client),
            watcher::Config::default().page_size(500),
            move |secret| configs_for_secret(&secret_store, &secret),
        )
        .reconcile_on(UnboundedReceiverStream::new(siblings_rx))
        .reconcile_on(ctx.key_usage.requests())
        // A follower appeared, went, or was rolled out: its config's status says so.
        .reconcile_on(
            UnboundedReceiverStream::new(followers_changed)
                .map(|t| ObjectRef::new(&t.name).within(&t.namespace)),
        );

    let shared = Arc::new(Shared { store, workloads });
    let task = tokio::spawn(drive(
        NAME,
        controller,
        move |pc, ctx| reconcile(pc, ctx, shared.clone()),
        error_policy,
        ctx,
        shutdown,
    ));
    (probe, task)
}

/// Configs by phase and default conflicts, counted from this controller's cache when
/// `/metrics` is scraped.
fn register_metrics(metrics: &Metrics, store: &Store<ProviderConfig>) {
    let counted = store.clone();
    metrics.register_phase_source(
        KIND,
        &["Pending", "Ready", "Degraded", "Unknown"],
        move || {
            counted
                .state()
                .iter()
                .map(|pc| {
                    let phase = pc.status.as_ref().and_then(|s| s.phase);
                    phase.map(|p| format!("{p:?}"))
                })
                .collect()
        },
    );
    let counted = store.clone();
    metrics.register_provider_default_conflicts(move || {
        let conflicts = counted
            .state()
            .iter()
            .filter(|pc| {
                pc.status
                    .as_ref()
                    .is_some_and(|s| crate::conditions::is_true(&s.conditions, DEFAULT_CONFLICT))
            })
            .count();
        i64::try_from(conflicts).unwrap_or(i64::MAX)
    });
}

#[tracing::instrument(skip_all, fields(namespace = pc.namespace().unwrap_or_default(), name = pc.name_any()))]
async fn reconcile(
    pc: Arc<ProviderConfig>,
    ctx: Arc<Context>,
    shared: Arc<Shared>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(NAME);
    let ns = pc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = pc.name_any();
    let pcs: Api<ProviderConfig> = Api::namespaced(ctx.client.clone(), &ns);
    // Read afresh: a Secret event can start this reconcile before the watch has delivered
    // this controller's own last status write, and the status carries decisions (a pending
    // rollout, rotation times) that must build on the latest one.
    let Some(pc) = pcs
        .get_opt(&name)
        .await
        .context(format!("reading ProviderConfig {name}"))?
    else {
        ctx.key_usage.forget(&ns, &name);
        return Ok(Action::await_change());
    };
    if pc.metadata.deletion_timestamp.is_some() {
        ctx.key_usage.forget(&ns, &name);
        // Kiln's finalizer holds the deletion until the users are reported (and, if asked,
        // gone); then the garbage collector removes the derived objects and the siblings
        // re-elect.
        return protect::on_deletion(&ctx, &pcs, &pc, &shared.store).await;
    }
    protect::ensure_finalizer(&pcs, &pc).await?;
    let uid = pc.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let now = Timestamp::now();
    let current = pc.status.clone().unwrap_or_default();
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let writer = Writer {
        configmaps: &configmaps,
        secrets: &secrets,
    };
    let provider_type = pc.spec.provider_type.as_str();

    let resolution = resolve::resolve(&secrets, &pc.spec).await?;
    let claimants = elect(claimants(&shared.store, &pc, &uid));
    let standing = standing_of(&claimants, &pc, &uid);

    let json = provider_json(&name, &pc.spec, standing == Standing::Default);
    let own = |role| Target {
        namespace: &ns,
        config: &name,
        provider_type,
        role,
        owners: vec![owner_reference(&name, &uid, true)],
    };
    let config_map = writer.config_map(&own(Role::Provider), &json).await?;
    let secret = writer
        .secret(
            &own(Role::Credentials),
            resolution.credentials().as_ref(),
            None,
        )
        .await?;
    if secret.written == Written::Applied {
        info!(
            keys = secret.holds.as_ref().map_or(0, Credentials::key_count),
            "derived Secret written"
        );
    }

    let mut happened = Happenings::default();
    let alias_conflict = match &standing {
        Standing::Default => publish_aliases(&writer, &ns, &pc, &claimants, &json, &secret).await?,
        // A claimant held in deletion keeps its aliases: their users may be what holds it.
        Standing::NotClaiming
            if claimants.is_empty() && !protect::holds_aliases(&shared.store, &pc) =>
        {
            happened.aliases_removed = remove_aliases(&configmaps, &secrets, provider_type).await?;
            None
        }
        _ => None,
    };

    let hash = secret.hash.clone();
    let settings_hash = settings_hash(&json);
    let following = follow::follow(
        &ctx,
        &shared.workloads,
        &current,
        &follow::Followed {
            namespace: &ns,
            name: &name,
            credentials: hash.as_deref(),
            settings: &settings_hash,
        },
        now,
        &mut happened,
    )
    .await?;

    let facts = Facts {
        resolution: &resolution,
        config_map,
        config_map_name: Role::Provider.object_name(&name, provider_type),
        secret: secret.written,
        secret_name: Role::Credentials.object_name(&name, provider_type),
        credentials_hash: hash,
        hash_key: secret.key.as_ref(),
        standing: &standing,
        provider_type,
        alias_conflict,
        settings_hash,
        following: &following,
        last_used: &ctx.key_usage.last_used(&ns, &name),
    };
    let desired = status::build(&pc, &current, &facts, now);
    events::announce(&ctx, &pc, &current, &desired, &happened).await;
    let wrote = apply::status(
        &pcs,
        &name,
        apply::managers::PROVIDER_CONFIG,
        pc.status.as_ref(),
        &desired,
    )
    .await?;
    debug!(status_written = wrote, "reconciled");
    Ok(Action::requeue(following.requeue.min(ctx.settings.resync)))
}

/// The configs of `pc`'s type in its namespace that claim the default, `pc` as just read
/// (the store may not have its latest spec yet) and the others from the store.
fn claimants(store: &Store<ProviderConfig>, pc: &ProviderConfig, uid: &str) -> Vec<Claimant> {
    let claimant = |p: &ProviderConfig| Claimant {
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    let mut out: Vec<Claimant> = store
        .state()
        .iter()
        .filter(|p| p.uid().as_deref() != Some(uid))
        .filter(|p| p.namespace() == pc.namespace())
        .filter(|p| p.spec.provider_type == pc.spec.provider_type)
        .filter(|p| claims_default(p))
        .map(|p| claimant(p))
        .collect();
    if claims_default(pc) {
        out.push(claimant(pc));
    }
    out
}

fn standing_of(claimants: &[Claimant], pc: &ProviderConfig, uid: &str) -> Standing {
    if !claims_default(pc) {
        return Standing::NotClaiming;
    }
    match claimants.first() {
        Some(first) if first.uid != uid => Standing::Conflict {
            winner: first.name.clone(),
        },
        _ => Standing::Default,
    }
}

/// Points the aliases at this config (the effective default). Every claimant is an owner,
/// this one the controller: when it is deleted, the garbage collector keeps the aliases for
/// the next default, which takes them over with one apply — they never disappear. Returns
/// the name of an alias held by a foreign object, if any.
async fn publish_aliases(
    writer: &Writer<'_>,
    ns: &str,
    pc: &ProviderConfig,
    claimants: &[Claimant],
    json: &str,
    credentials: &SecretOutcome,
) -> Result<Option<String>> {
    let name = pc.name_any();
    let owners: Vec<_> = claimants
        .iter()
        .enumerate()
        .map(|(i, c)| owner_reference(&c.name, &c.uid, i == 0))
        .collect();
    let alias = |role| Target {
        namespace: ns,
        config: &name,
        provider_type: &pc.spec.provider_type,
        role,
        owners: owners.clone(),
    };
    let provider = alias(Role::DefaultProvider);
    if writer.config_map(&provider, json).await? == Written::Conflict {
        return Ok(Some(format!("ConfigMap {}", provider.name())));
    }
    // Without credentials yet (keys never resolved), the alias Secret stays as it is. With
    // them, it is hashed under the config's own key, so that it carries the same hash.
    let credentials_alias = alias(Role::DefaultCredentials);
    let held = credentials.key.as_ref().and(credentials.holds.as_ref());
    if writer
        .secret(&credentials_alias, held, credentials.key.as_ref())
        .await?
        .written
        == Written::Conflict
    {
        return Ok(Some(format!("Secret {}", credentials_alias.name())));
    }
    Ok(None)
}

/// No config claims the default of this type any more: the aliases go.
async fn remove_aliases(
    configmaps: &Api<ConfigMap>,
    secrets: &Api<Secret>,
    provider_type: &str,
) -> Result<bool> {
    let provider = Role::DefaultProvider;
    let credentials = Role::DefaultCredentials;
    let a = sync::remove_alias(
        configmaps,
        &provider.object_name("", provider_type),
        provider.label(),
    )
    .await?;
    let b = sync::remove_alias(
        secrets,
        &credentials.object_name("", provider_type),
        credentials.label(),
    )
    .await?;
    if a || b {
        info!(provider_type, "default aliases removed");
    }
    Ok(a || b)
}

fn error_policy(pc: Arc<ProviderConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_on_error(NAME, &ctx, error, pc.as_ref())
}
