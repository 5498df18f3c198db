//! What the validating webhook knows of the cluster: watched caches of DynaKubes, of node and namespace
//! metadata (labels are all the rules need) and of the CSI driver's DaemonSet, so that validating does not
//! list or get objects per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use pure_api::dynakube::DynaKube;
use pure_api::dynakube::PROXY_SECRET_KEY;
use pure_api::dynakube::names::CSI_DAEMONSET;
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
    ready: Arc<AtomicBool>,
}

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
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
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
                    Some(Err(err)) => tracing::warn!(%err, resource = what, "watch failed; retrying with backoff"),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
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
        let ready = Arc::new(AtomicBool::new(false));
        let cache = Self {
            client,
            dynakubes,
            nodes,
            namespaces,
            csi_daemonsets,
            ready: ready.clone(),
        };
        let waiting = cache.clone();
        tokio::spawn(async move {
            let all = async {
                waiting.dynakubes.wait_until_ready().await?;
                waiting.nodes.wait_until_ready().await?;
                waiting.namespaces.wait_until_ready().await?;
                waiting.csi_daemonsets.wait_until_ready().await
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
