//! What the webhooks know of the cluster: watched caches of DynaKubes, of node and namespace metadata
//! (labels are all the rules need), of the CSI driver's DaemonSet, of the per-namespace Secrets the
//! injected pods mount (metadata, watched by name) and of the workload kinds that own pods (metadata,
//! without managed fields or annotations), so that neither validating nor injecting lists or gets objects
//! per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, ReplicationController, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use pure_api::dynakube::DynaKube;
use pure_api::dynakube::PROXY_SECRET_KEY;
use pure_api::dynakube::names::{CSI_DAEMONSET, ENRICHMENT_SECRET, INIT_SECRET};
use pure_api::validation::ProxySecret;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Watched caches plus a client for the few reads that are not cached.
#[derive(Clone)]
pub struct ClusterCache {
    client: Client,
    dynakubes: Store<DynaKube>,
    nodes: Store<PartialObjectMeta<Node>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    csi_daemonsets: Store<PartialObjectMeta<DaemonSet>>,
    init_secrets: Store<PartialObjectMeta<Secret>>,
    enrichment_secrets: Store<PartialObjectMeta<Secret>>,
    replica_sets: Store<PartialObjectMeta<ReplicaSet>>,
    jobs: Store<PartialObjectMeta<Job>>,
    replication_controllers: Store<PartialObjectMeta<ReplicationController>>,
    ready: Arc<AtomicBool>,
}

/// Page size of the initial lists: a page of metadata of 100 objects keeps one response small.
const PAGE_SIZE: u32 = 100;

/// A consistent copy of the cached state, for one validation.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every DynaKube.
    pub dynakubes: Vec<DynaKube>,
    /// Node metadata.
    pub nodes: Vec<ObjectMeta>,
    /// Namespace metadata.
    pub namespaces: Vec<ObjectMeta>,
}

/// Watches `K` objects into a cache. With `K = PartialObjectMeta<_>` only metadata is transferred.
fn spawn_reflector<K>(api: Api<K>, what: &'static str, shutdown: CancellationToken) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    spawn_reflector_with(api, watcher::Config::default(), what, shutdown)
}

fn spawn_reflector_with<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    shutdown: CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config.page_size(PAGE_SIZE))
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None);
    let stream = reflector::reflector(writer, stream);
    spawn_drain(stream, what, shutdown);
    reader
}

fn spawn_drain<S, T>(stream: S, what: &'static str, shutdown: CancellationToken)
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                item = stream.next() => match item {
                    None => return,
                    Some(Err(err)) => tracing::warn!(
                        %err,
                        resource = what,
                        "watch failed: {}; retrying with backoff",
                        rbac_advice(&err)
                    ),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
}

/// Watches the metadata of an owner kind, keeping only names and owner references.
fn spawn_owner_reflector<K>(
    api: Api<PartialObjectMeta<K>>,
    what: &'static str,
    shutdown: &CancellationToken,
) -> Store<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    PartialObjectMeta<K>: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().page_size(PAGE_SIZE))
        .default_backoff()
        .modify(|object: &mut PartialObjectMeta<K>| {
            let meta = &mut object.metadata;
            meta.managed_fields = None;
            meta.annotations = None;
            meta.labels = None;
        });
    spawn_drain(reflector::reflector(writer, stream), what, shutdown.clone());
    reader
}

impl ClusterCache {
    /// Starts watching. The cache is ready once every watch has listed once ([`Self::is_ready`]).
    pub fn start(client: Client, shutdown: &CancellationToken) -> Self {
        let dynakubes = spawn_reflector(Api::<DynaKube>::all(client.clone()), "DynaKube", shutdown.clone());
        let nodes = spawn_reflector(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            "Node",
            shutdown.clone(),
        );
        let namespaces = spawn_reflector(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            "Namespace",
            shutdown.clone(),
        );
        // Only the DaemonSets of that name, in every namespace: the rule looks in the DynaKube's namespace,
        // and the watch carries at most one small object per namespace.
        let csi_daemonsets = spawn_reflector_with(
            Api::<PartialObjectMeta<DaemonSet>>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={CSI_DAEMONSET}")),
            "DaemonSet",
            shutdown.clone(),
        );
        // The per-namespace Secrets by name: only their presence is read (a pod that mounts a missing
        // Secret would never start), and RBAC can grant list/watch for these two names only.
        let named_secrets = |name: &str, what| {
            spawn_reflector_with(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                what,
                shutdown.clone(),
            )
        };
        let init_secrets = named_secrets(INIT_SECRET, "Secret dynatrace-dynakube-config");
        let enrichment_secrets = named_secrets(ENRICHMENT_SECRET, "Secret dynatrace-data-ingest-endpoint");
        // The kinds between a pod and its workload; their owner references are all that is read.
        let replica_sets = spawn_owner_reflector(Api::all(client.clone()), "ReplicaSet", shutdown);
        let jobs = spawn_owner_reflector(Api::all(client.clone()), "Job", shutdown);
        let replication_controllers =
            spawn_owner_reflector(Api::all(client.clone()), "ReplicationController", shutdown);
        let ready = Arc::new(AtomicBool::new(false));
        let cache = Self {
            client,
            dynakubes,
            nodes,
            namespaces,
            csi_daemonsets,
            init_secrets,
            enrichment_secrets,
            replica_sets,
            jobs,
            replication_controllers,
            ready: ready.clone(),
        };
        let waiting = cache.clone();
        tokio::spawn(async move {
            let all = async {
                waiting.dynakubes.wait_until_ready().await?;
                waiting.nodes.wait_until_ready().await?;
                waiting.namespaces.wait_until_ready().await?;
                waiting.csi_daemonsets.wait_until_ready().await?;
                waiting.init_secrets.wait_until_ready().await?;
                waiting.enrichment_secrets.wait_until_ready().await?;
                waiting.replica_sets.wait_until_ready().await?;
                waiting.jobs.wait_until_ready().await?;
                waiting.replication_controllers.wait_until_ready().await
            };
            if all.await.is_ok() {
                ready.store(true, Ordering::Release);
                tracing::info!("cluster caches are ready");
            }
        });
        cache
    }

    /// Whether every watch has listed once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The cached state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            dynakubes: self.dynakubes.state().iter().map(|d| (**d).clone()).collect(),
            nodes: self.nodes.state().iter().map(|n| n.metadata.clone()).collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .map(|n| n.metadata.clone())
                .collect(),
        }
    }

    /// Whether the CSI driver's DaemonSet exists in `namespace`, from the watch; `None` until the watch
    /// has listed once.
    pub fn csi_driver_installed(&self, namespace: &str) -> Option<bool> {
        if !self.is_ready() {
            return None;
        }
        Some(self.csi_daemonsets.state().iter().any(|d| {
            d.metadata.namespace.as_deref() == Some(namespace)
                && d.metadata.name.as_deref() == Some(CSI_DAEMONSET)
        }))
    }

    /// The cached metadata of namespace `name`.
    pub fn namespace(&self, name: &str) -> Option<Arc<PartialObjectMeta<Namespace>>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    /// The DynaKube `name` in `namespace`.
    pub fn dynakube(&self, namespace: &str, name: &str) -> Option<Arc<DynaKube>> {
        self.dynakubes.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every DynaKube in `namespace`.
    pub fn dynakubes_in(&self, namespace: &str) -> Vec<DynaKube> {
        self.dynakubes
            .state()
            .iter()
            .filter(|d| d.metadata.namespace.as_deref() == Some(namespace))
            .map(|d| (**d).clone())
            .collect()
    }

    /// Whether the init Secret `dynatrace-dynakube-config` exists in `namespace`.
    pub fn has_init_secret(&self, namespace: &str) -> bool {
        self.init_secrets
            .get(&ObjectRef::new(INIT_SECRET).within(namespace))
            .is_some()
    }

    /// Whether the enrichment Secret `dynatrace-data-ingest-endpoint` exists in `namespace`.
    pub fn has_enrichment_secret(&self, namespace: &str) -> bool {
        self.enrichment_secrets
            .get(&ObjectRef::new(ENRICHMENT_SECRET).within(namespace))
            .is_some()
    }

    /// The cached metadata (name and owner references) of a ReplicaSet, Job or ReplicationController;
    /// `None` for other kinds and for objects not in the cache.
    pub fn owner_metadata(&self, kind: &str, namespace: &str, name: &str) -> Option<ObjectMeta> {
        fn get<K>(store: &Store<PartialObjectMeta<K>>, namespace: &str, name: &str) -> Option<ObjectMeta>
        where
            K: Resource<DynamicType = ()> + Clone,
            PartialObjectMeta<K>: Resource<DynamicType = ()> + Clone,
        {
            store
                .get(&ObjectRef::new(name).within(namespace))
                .map(|o| o.metadata.clone())
        }
        match kind {
            "ReplicaSet" => get(&self.replica_sets, namespace, name),
            "Job" => get(&self.jobs, namespace, name),
            "ReplicationController" => get(&self.replication_controllers, namespace, name),
            _ => None,
        }
    }

    /// The cluster id: the UID of the `kube-system` namespace, as the reference uses.
    pub fn cluster_id(&self) -> Option<String> {
        self.namespace("kube-system")
            .and_then(|ns| ns.metadata.uid.clone())
            .filter(|uid| !uid.is_empty())
    }

    /// Whether Istio's networking API is served; `None` when discovery failed.
    pub async fn istio_installed(&self) -> Option<bool> {
        match self.client.list_api_groups().await {
            Ok(groups) => Some(groups.groups.iter().any(|g| g.name == "networking.istio.io")),
            Err(err) => {
                tracing::warn!(%err, "cannot list API groups; skipping the Istio rule");
                None
            }
        }
    }

    /// The proxy URL from the Secret `name` in `namespace`.
    pub async fn proxy_secret(&self, namespace: &str, name: &str) -> ProxySecret {
        match Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
        {
            Ok(Some(secret)) => match secret.data.and_then(|d| d.get(PROXY_SECRET_KEY).cloned()) {
                Some(value) => ProxySecret::Value(String::from_utf8_lossy(&value.0).into_owned()),
                None => ProxySecret::MissingKey,
            },
            Ok(None) => ProxySecret::Unreadable(format!("Secret {namespace}/{name} does not exist")),
            Err(err) => ProxySecret::Unreadable(err.to_string()),
        }
    }
}

/// For a denied request, the missing rule and the role it belongs in (the API server's message names only
/// the verb and the resource); else a hint at the webhook's RBAC and the API server.
pub(crate) fn rbac_advice(error: &dyn std::fmt::Display) -> String {
    pure_install::rbac::advice(error, "the webhook")
}
