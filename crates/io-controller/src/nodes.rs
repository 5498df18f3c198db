//! The node controller (spec §9): a node running a DynaKube's OneAgent that is cordoned, tainted
//! `ToBeDeletedByClusterAutoscaler` or deleted is reported to that DynaKube's environment as
//! `MARKED_FOR_TERMINATION`, on the host entity found by the node's IP, at most once per hour per node. The
//! decisions are in [`pure_desired::nodes`]; this module reads the cluster, calls the tenant and writes the node
//! cache ConfigMap `dynatrace-node-cache` in the operator's namespace (in the reference's format).
//!
//! Two parts share the cache behind one lock, so their read-modify-write cycles never interleave:
//! - a kube-runtime [`Controller`] on Nodes observes nodes that exist: it keeps the cache entries of the
//!   nodes the DynaKubes list in `status.oneAgent.instances` and marks cordoned or tainted ones. A change of
//!   those lists reconciles every node at once; owned nodes are reconciled again every
//!   [`NodeConfig::resync`], so their entries stay fresh even when the node object does not change.
//! - the cleanup handles deletions, which a Controller never reconciles (the object is gone from its store).
//!   It runs on the process's shared Node watch ([`crate::watches`]): each `Delete` event, each completed
//!   (re)list and every
//!   [`NodeConfig::cleanup_interval`], it compares the cache with the nodes in that store. A cached node that
//!   is gone is marked (once, through the same hourly rule) and dropped; stale entries are dropped. Diffing
//!   against the store instead of acting on the event alone also catches deletions missed while the
//!   operator was down or its watch was interrupted, and needs no finalizer on the nodes.
//!   The same comparison removes the CSI driver's status ConfigMaps `dynatrace-csi-<node>` of deleted
//!   nodes (owned by the CSI DaemonSet, so the garbage collector leaves them while the driver stays).
//!
//! A reconcile leaves a node alone (and looks again a second later) while the cleanup's store does not
//! show it: otherwise a brand-new node could look deleted, or a stale copy of a deleted node could come
//! back into the cache.
//!
//! Nothing sleeps inside a reconcile: failures requeue with an exponential backoff per node, and a failed
//! mark of a deleted node keeps its entry for the next cleanup.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt as _};
use io_tenant_client::{AttachRules, Event, TenantClient};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use pure_desired::nodes::{
    MarkRequest, NODE_CACHE_NAME, NodeCache, cache_changed, cleanup_stamp_due, entity_for_ip, marking_due,
    node_owner, node_owners, observe_node, plan_cleanup, termination_event, termination_reason,
};

use crate::dynakube::{
    Context, ReconcileError, Requeue, TenantSettings, build_tenant_client, kube_error, read_tokens,
};
use crate::metrics::Metrics;
use crate::watches::{CachedNode, Watches};

/// Name of the controller in metrics and logs.
const CONTROLLER: &str = "nodes";

/// Node reconciles in flight at once. Their work is serialized on the node cache's lock anyway, so more
/// only hold memory: without a limit every node's reconcile is a task of its own at once (at 500 nodes,
/// 2 MiB of the operator's peak heap).
const MAX_CONCURRENT_RECONCILES: u16 = 4;

/// How the node controller runs.
#[derive(Clone)]
pub struct NodeConfig {
    /// The operator's namespace: where the DynaKubes and the node cache ConfigMap are.
    pub operator_namespace: String,
    /// Metrics: reconciles of controller `nodes` and the tenant calls.
    pub metrics: Metrics,
    /// Owner of the node cache ConfigMap (the operator Deployment, see [`crate::owner`]): set when it is
    /// created and added to one that lacks it, so that it goes with the Deployment; `None` leaves it as is.
    pub cache_owner: Option<OwnerReference>,
    /// How often an owned node is reconciled without a change, which keeps its entry fresh (well below the
    /// hour after which unseen entries are dropped).
    pub resync: Duration,
    /// How often the cleanup runs without a node deletion.
    pub cleanup_interval: Duration,
    /// First retry after a failure; doubled per failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl NodeConfig {
    /// The defaults: resync every 10 minutes, cleanup every 10 minutes (the reference's cache lifetime),
    /// retries from 5 seconds up to 5 minutes, no owner for the cache.
    pub fn new(operator_namespace: impl Into<String>, metrics: Metrics) -> Self {
        Self {
            operator_namespace: operator_namespace.into(),
            metrics,
            cache_owner: None,
            resync: Duration::from_secs(10 * 60),
            cleanup_interval: Duration::from_secs(10 * 60),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5 * 60),
        }
    }

    /// The wait before retry number `failures` (1 for the first).
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.min_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// The node cache ConfigMap as last read or written, and the marks sent by this process.
#[derive(Default)]
struct CacheState {
    /// `None`: unknown, read it; `Some(None)`: it does not exist.
    config_map: Option<Option<ConfigMap>>,
    /// Node → when this process marked it. Guards the hourly rule when writing the mark into the cache
    /// failed, or when an older copy of a deleted node shows up again.
    marks: BTreeMap<String, i64>,
}

/// What the reconciles and the cleanup share.
struct Shared {
    config: NodeConfig,
    /// For [`build_tenant_client`]: the client and the metrics.
    ctx: Context,
    dynakubes: Store<DynaKube>,
    /// The nodes in the cluster, as the cleanup sees them.
    node_names: Store<CachedNode>,
    cache: tokio::sync::Mutex<CacheState>,
    /// Node → consecutive failed reconciles, for the backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

/// A node the cleanup's node list does not show yet is reconciled again after this long.
const NOT_LISTED_RETRY: Duration = Duration::from_secs(1);

fn now_seconds() -> i64 {
    Timestamp::now().as_second()
}

/// Whether a reflector store has completed its first list.
fn is_ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Runs the node controller until `shutdown` completes: the Controller on Nodes and the cleanup of deleted
/// and stale nodes. Needs to list and watch Nodes (cluster-wide) and DynaKubes, read Secrets and ConfigMaps,
/// and write ConfigMaps in the operator's namespace.
pub async fn run(
    client: Client,
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let watches = Watches::new(&client);
    let controller = controller(&watches, client, config, shutdown);
    let _running = watches.start();
    controller.await;
}

/// Sets up the node controller on the shared `watches` (see [`run`]); it runs when the returned future is
/// polled and the watches have started.
pub(crate) fn controller(
    watches: &Watches,
    client: Client,
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let shutdown = FutureExt::shared(Box::pin(shutdown) as Pin<Box<dyn Future<Output = ()> + Send + Sync>>);
    let namespace = config.operator_namespace.clone();

    // DynaKubes (of the operator's namespace): who owns which node. A change of those lists reconciles
    // every node.
    let dynakubes = watches.dynakubes.store();
    let (owners_sender, owners_changed) = futures::channel::mpsc::unbounded();
    {
        let namespace = namespace.clone();
        let mut last = None;
        watches.dynakubes.subscribe(move |_, store| {
            let here = in_namespace(store, &namespace);
            let owners = node_owners(here.iter().map(AsRef::as_ref));
            if last.as_ref() != Some(&owners) {
                last = Some(owners);
                let _ = owners_sender.unbounded_send(());
            }
        });
    }

    // The cleanup runs after each node deletion and each completed (re)list; the store is up to date when
    // the event arrives.
    let node_names = watches.nodes.store();
    let (cleanup_sender, node_events) = futures::channel::mpsc::unbounded();
    watches.nodes.subscribe(move |event, _| {
        if matches!(event, watcher::Event::Delete(_) | watcher::Event::InitDone) {
            let _ = cleanup_sender.unbounded_send(());
        }
    });
    let nodes = watches.nodes.controller_stream();

    let shared = Arc::new(Shared {
        ctx: Context {
            client: client.clone(),
            operator_version: String::new(),
            requeue: Requeue::default(),
            metrics: config.metrics.clone(),
            reporter: Reporter {
                controller: "dynatrace-operator".to_owned(),
                instance: None,
            },
            checked_secrets: Arc::default(),
            inputs: io_dynakube_inputs::Reader::new(client.clone()),
            openshift: Arc::default(),
        },
        config,
        dynakubes,
        node_names: node_names.clone(),
        cache: tokio::sync::Mutex::default(),
        failures: std::sync::Mutex::default(),
    });

    let controller = Controller::for_shared_stream(nodes, node_names.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES))
        .reconcile_all_on(owners_changed)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, shared.clone())
        .for_each(|result| async move {
            match result {
                Ok((node, _)) => tracing::trace!(node = %node.name, "node reconciled"),
                Err(error) => tracing::debug!(%error, "node reconcile did not finish"),
            }
        });

    let cleanup = cleanup_loop(shared, node_events, shutdown.clone());

    async move {
        let both = futures::future::join(controller, cleanup);
        let grace = async {
            shutdown.clone().await;
            tokio::time::sleep(crate::SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            _ = both => {}
            () = grace => tracing::warn!(
                "the node controller did not stop within {:?} of shutdown; stopping anyway",
                crate::SHUTDOWN_GRACE
            ),
        }
    }
}

/// The DynaKubes of `namespace` in the shared store (which holds every namespace's).
fn in_namespace(store: &Store<DynaKube>, namespace: &str) -> Vec<Arc<DynaKube>> {
    store.state_filter(|dk| dk.metadata.namespace.as_deref() == Some(namespace))
}

/// Reconciles one node that exists.
async fn reconcile(node: Arc<CachedNode>, shared: Arc<Shared>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = observe(&node, &shared).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    shared
        .config
        .metrics
        .observe(CONTROLLER, outcome, started.elapsed());
    let seen = result?;
    shared
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&node.name_any());
    Ok(match seen {
        Seen::Owned => Action::requeue(shared.config.resync),
        // A node no DynaKube owns waits for a change of the node or of the DynaKubes' lists.
        Seen::NotOwned => Action::await_change(),
        Seen::NotListed => Action::requeue(NOT_LISTED_RETRY),
    })
}

/// What a reconcile found.
enum Seen {
    /// A DynaKube owns the node: its entry is up to date.
    Owned,
    /// No DynaKube owns the node (or the DynaKubes are not listed yet).
    NotOwned,
    /// The cleanup's node list does not show the node (yet, or any more), so it was left alone.
    NotListed,
}

/// Retries a failed reconcile with an exponential backoff per node.
fn error_policy(node: Arc<CachedNode>, error: &ReconcileError, shared: Arc<Shared>) -> Action {
    let name = node.name_any();
    let failures = {
        let mut failures = shared
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(name.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = shared.config.backoff(failures);
    tracing::warn!(node = %name, %error, retry_in = ?delay, "node reconcile failed");
    Action::requeue(delay)
}

/// Updates the node's cache entry and marks it when it is about to go away.
async fn observe(node: &CachedNode, shared: &Shared) -> Result<Seen, ReconcileError> {
    // Until the DynaKubes are listed every node looks unowned; the end of the list reconciles all nodes.
    if !is_ready(&shared.dynakubes) {
        return Ok(Seen::NotOwned);
    }
    let name = node.name_any();
    let dynakubes = shared.dynakubes_here();
    let Some(owner) = node_owner(dynakubes.iter().map(AsRef::as_ref), &name) else {
        return Ok(Seen::NotOwned);
    };
    // The two node watches are independent. An entry written for a node the cleanup's list does not show
    // yet would look deleted to the cleanup; one written from a stale copy of a node the cleanup already
    // handled as deleted would come back. Either way the node is left alone until the lists agree.
    if !is_ready(&shared.node_names) || shared.node_names.get(&ObjectRef::new(&name)).is_none() {
        return Ok(Seen::NotListed);
    }
    let reason = termination_reason(node.spec.as_ref());
    let mut state = shared.cache.lock().await;
    let (current, mut cache) = shared.load(&mut state).await?;
    let now = now_seconds();
    let remembered = state.marks.get(&name).copied();
    let mut marked = Ok(());
    if let Some(mark) = observe_node(&mut cache, &name, Some(&owner), reason, remembered, now) {
        marked = shared.mark(&mark, &dynakubes).await;
        if marked.is_ok() {
            cache.record_mark(&name, now);
            state.marks.insert(name, now);
        }
    }
    // The refreshed entry is written even when the mark failed; the retry marks it then.
    shared.save(&mut state, current, &cache).await?;
    marked.map(|()| Seen::Owned)
}

impl Shared {
    /// The DynaKubes of the operator's namespace: only those own nodes.
    fn dynakubes_here(&self) -> Vec<Arc<DynaKube>> {
        in_namespace(&self.dynakubes, &self.config.operator_namespace)
    }

    fn cache_api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.ctx.client.clone(), &self.config.operator_namespace)
    }

    /// The cache as last read or written (read from the API server when unknown), with this process's marks
    /// merged in.
    async fn load(&self, state: &mut CacheState) -> Result<(Option<ConfigMap>, NodeCache), ReconcileError> {
        let current = match &state.config_map {
            Some(known) => known.clone(),
            None => {
                let read = self
                    .cache_api()
                    .get_opt(NODE_CACHE_NAME)
                    .await
                    .map_err(kube_error(format!(
                        "reading the node cache ConfigMap {}:{NODE_CACHE_NAME}",
                        self.config.operator_namespace
                    )))?;
                state.config_map = Some(read.clone());
                read
            }
        };
        let mut cache = NodeCache::from_config_map(current.as_ref());
        for (node, reason) in &cache.unreadable {
            tracing::warn!(node = %node, %reason, "dropping an unreadable entry of the node cache");
        }
        let now = now_seconds();
        // Marks older than the hour no longer hold anything back.
        state.marks.retain(|_, marked| !marking_due(Some(*marked), now));
        cache.merge_marks(&state.marks);
        Ok((current, cache))
    }

    /// Writes the cache when it differs from `current`. A conflict (someone else wrote it) forgets the
    /// remembered copy, so the retry reads it again.
    async fn save(
        &self,
        state: &mut CacheState,
        current: Option<ConfigMap>,
        cache: &NodeCache,
    ) -> Result<(), ReconcileError> {
        let namespace = &self.config.operator_namespace;
        let mut desired = cache.to_config_map(namespace, current.as_ref());
        // A cache written by an earlier version lacks the owner: written once more to get it.
        let owner_added = self
            .config
            .cache_owner
            .as_ref()
            .is_some_and(|owner| crate::owner::add_owner(&mut desired.metadata.owner_references, owner));
        if !owner_added && !cache_changed(current.as_ref(), &desired) {
            return Ok(());
        }
        let api = self.cache_api();
        let written = match current {
            Some(_) => {
                api.replace(NODE_CACHE_NAME, &PostParams::default(), &desired)
                    .await
            }
            None => api.create(&PostParams::default(), &desired).await,
        };
        match written {
            Ok(written) => {
                state.config_map = Some(Some(written));
                Ok(())
            }
            Err(error) => {
                state.config_map = None;
                Err(kube_error(format!(
                    "writing the node cache ConfigMap {namespace}:{NODE_CACHE_NAME}"
                ))(error))
            }
        }
    }

    /// Deletes the CSI driver's status ConfigMaps (`pure_csi::status`) of nodes that no longer exist. Their
    /// owner is the CSI DaemonSet, so the garbage collector removes them with the driver but not with their
    /// node; the operator sees node deletions here anyway, so it cleans up, once for all nodes (rather than
    /// every node's provisioner racing for it with cluster-wide rights).
    async fn remove_stale_status(&self, in_cluster: &BTreeSet<String>) -> Result<(), ReconcileError> {
        let namespace = &self.config.operator_namespace;
        let api = self.cache_api();
        let maps = api
            .list_metadata(&ListParams::default().labels(pure_csi::status::NODE_LABEL))
            .await
            .map_err(kube_error(format!(
                "listing the CSI status ConfigMaps in namespace {namespace}"
            )))?;
        let names = maps.items.iter().filter_map(|m| m.metadata.name.as_deref());
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        for name in pure_csi::status::stale_config_maps(names, in_cluster) {
            let Some(node) = pure_csi::status::node_of(name) else {
                continue;
            };
            // The node list may lag behind a node created a moment ago, whose driver already wrote its
            // status: the API server has the last word.
            if nodes
                .get_metadata_opt(node)
                .await
                .map_err(kube_error(format!("reading the node {node}")))?
                .is_some()
            {
                continue;
            }
            let uid = maps
                .items
                .iter()
                .find(|m| m.metadata.name.as_deref() == Some(name))
                .and_then(|m| m.metadata.uid.clone());
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(node = %node, config_map = %name, "removed the CSI status of a deleted node")
                }
                // Gone already, or replaced by a new one of a new node of that name.
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(error) => {
                    return Err(kube_error(format!("deleting the ConfigMap {namespace}/{name}"))(
                        error,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends the mark to the DynaKube's environment. `Ok` when it is settled: sent, or skipped because the
    /// environment knows no host with the IP (as in the reference) or the DynaKube is gone. Tenant and token
    /// problems are errors, so the caller tries again later.
    async fn mark(&self, mark: &MarkRequest, dynakubes: &[Arc<DynaKube>]) -> Result<(), ReconcileError> {
        let Some(dynakube) = dynakubes.iter().find(|d| d.name_any() == mark.dynakube) else {
            tracing::info!(node = %mark.node, dynakube = %mark.dynakube, "the DynaKube is gone; not marking the node");
            return Ok(());
        };
        let tenant = self.tenant_client(dynakube).await?;
        let hosts = tenant.hosts().await?;
        let found = entity_for_ip(
            hosts
                .iter()
                .map(|h| (h.entity_id.as_str(), h.ip_addresses.as_slice())),
            &mark.ip,
        );
        let Some(entity) = found else {
            tracing::info!(
                node = %mark.node, ip = %mark.ip, dynakube = %mark.dynakube,
                "the environment knows no host with the node's IP; not marking it for termination"
            );
            return Ok(());
        };
        let event = termination_event(mark, entity);
        tenant
            .send_event(&Event {
                event_type: event.event_type.to_owned(),
                start: event.start_ms,
                end: event.end_ms,
                description: event.description,
                attach_rules: AttachRules {
                    entity_ids: vec![event.entity_id],
                },
                source: event.source.to_owned(),
            })
            .await?;
        tracing::info!(
            node = %mark.node, reason = ?mark.reason, dynakube = %mark.dynakube, ip = %mark.ip, entity = %entity,
            "marked the node's host for termination"
        );
        Ok(())
    }

    /// A client of the DynaKube's environment: its token Secret, API URL, proxy, trusted CAs and network zone
    /// (the token scopes are not checked here; the DynaKube controller reports them).
    async fn tenant_client(&self, dynakube: &DynaKube) -> Result<TenantClient, ReconcileError> {
        let namespace = dynakube.namespace().unwrap_or_default();
        let (_, tokens) = read_tokens(&self.ctx, dynakube).await?;
        let settings = TenantSettings::of_dynakube(dynakube, &namespace);
        build_tenant_client(
            &self.ctx,
            &settings,
            tokens.api_token.clone(),
            tokens.paas_token.clone(),
        )
        .await
    }

    /// Compares the cache with the nodes in the cluster: marks and drops deleted nodes, drops stale entries
    /// (spec §9 step 5). Returns whether everything was settled; `false` asks for an early retry.
    async fn cleanup(&self) -> Result<bool, ReconcileError> {
        let nodes = &self.node_names;
        // Without the DynaKubes every deleted node would look orphaned and be dropped unmarked.
        if !is_ready(&self.dynakubes) || !is_ready(nodes) {
            return Ok(false);
        }
        let mut state = self.cache.lock().await;
        // Read afresh: the cleanup also picks up what others changed.
        state.config_map = None;
        let (current, mut cache) = self.load(&mut state).await?;
        let now = now_seconds();
        let in_cluster: BTreeSet<String> = nodes.state().iter().map(|n| n.name_any()).collect();
        let dynakubes = self.dynakubes_here();
        let owners = node_owners(dynakubes.iter().map(AsRef::as_ref));
        let names: BTreeSet<String> = dynakubes.iter().map(|d| d.name_any()).collect();
        let plan = plan_cleanup(&cache, &in_cluster, &owners, &names, now);
        for (node, why) in &plan.remove {
            tracing::info!(node = %node, why, "dropping the node from the node cache");
            cache.entries.remove(node);
            cache.unreadable.remove(node);
        }
        let mut settled = true;
        for mark in &plan.marks {
            match self.mark(mark, &dynakubes).await {
                Ok(()) => {
                    cache.entries.remove(&mark.node);
                    state.marks.insert(mark.node.clone(), now);
                }
                Err(error) => {
                    settled = false;
                    tracing::warn!(
                        node = %mark.node, dynakube = %mark.dynakube, %error,
                        "cannot mark the deleted node for termination; trying again later"
                    );
                }
            }
        }
        if cleanup_stamp_due(cache.last_cleanup, now) {
            cache.last_cleanup = Some(now);
        }
        self.save(&mut state, current, &cache).await?;
        drop(state);
        if let Err(error) = self.remove_stale_status(&in_cluster).await {
            settled = false;
            tracing::warn!(%error, "cannot remove the CSI status ConfigMaps of deleted nodes; trying again later");
        }
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|node, _| in_cluster.contains(node));
        Ok(settled)
    }
}

/// Runs the cleanup after each node deletion, each completed (re)list of the nodes (`node_events`) and every
/// [`NodeConfig::cleanup_interval`]; a failed cleanup is retried with an exponential backoff.
async fn cleanup_loop(
    shared: Arc<Shared>,
    node_events: impl Stream<Item = ()>,
    shutdown: impl Future<Output = ()>,
) {
    let mut node_events = pin!(node_events);
    let mut shutdown = pin!(shutdown);
    // Nothing is due until the first list of the nodes is complete.
    let mut next: Option<tokio::time::Instant> = None;
    let mut failures = 0u32;
    loop {
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            event = node_events.next() => match event {
                Some(()) => next = Some(tokio::time::Instant::now()),
                None => break,
            },
            () = due => {
                let result = shared.cleanup().await;
                let wait = match result {
                    Ok(true) => {
                        failures = 0;
                        shared.config.cleanup_interval
                    }
                    Ok(false) => {
                        failures = failures.saturating_add(1);
                        shared.config.backoff(failures)
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let wait = shared.config.backoff(failures);
                        tracing::warn!(%error, retry_in = ?wait, "the node cache cleanup failed");
                        wait
                    }
                };
                next = Some(tokio::time::Instant::now() + wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let config = NodeConfig::new("dynatrace", Metrics::new());
        let waits: Vec<u64> = (1..=8).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(config.backoff(0), Duration::from_secs(5));
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(300));
    }
}
