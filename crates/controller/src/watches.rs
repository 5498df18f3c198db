//! One watch per kind for every controller of the process. The DynaKube, OneAgent, namespace and node
//! controllers each need some of the same kinds (DynaKubes three times, Nodes three times, DaemonSets and
//! Secret metadata twice); a [`Watches`] opens each watch once, keeps one cache (a kube-runtime
//! [`Store`]) where a controller reads the objects, and hands every event to each controller that
//! subscribed.
//!
//! What is cached is cut to what the controllers read: `managedFields` never (nobody reads them, and they
//! are often the larger half of an object), Node status not at all, DaemonSets, Secrets the operator does
//! not write and ConfigMaps as metadata only and not cached (their events only trigger work; the objects
//! are read by name). The initial lists come in pages of [`PAGE_SIZE`] so that one list response stays
//! small.
//!
//! Controllers subscribe while they are set up, before [`Watches::start`] opens the watches, so that each
//! sees the initial list. Subscribers run inside the watch's task and must not block: they notify, or
//! send into an unbounded channel that a controller drains.

use std::sync::{Arc, Mutex, PoisonError};

use api::dynakube::DynaKube;
use api::oneagent::OneAgent;
use futures::channel::mpsc;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// Objects per page of an initial list: a page of 500 Secrets is megabytes of JSON at once.
pub const PAGE_SIZE: u32 = 100;

/// Something a controller does with each event of a watch (after the cache has applied it).
type Subscriber<K> = Box<dyn FnMut(&watcher::Event<K>, &Store<K>) + Send>;

/// One watch of kind `K`, set up but not started yet.
struct Pending<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    config: watcher::Config,
    /// Cuts what is kept and passed on (see the module documentation).
    trim: fn(&mut K),
    writer: Writer<K>,
    /// Whether a controller reads the cache; without, the watch only passes events on.
    cached: bool,
    subscribers: Vec<Subscriber<K>>,
}

/// A shared watch of kind `K`: its cache and, until it starts, its subscribers.
pub struct Watch<K: Resource<DynamicType = ()> + Clone + 'static> {
    reader: Store<K>,
    pending: Mutex<Option<Pending<K>>>,
}

impl<K> Watch<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    fn new(api: Api<K>, config: watcher::Config, trim: fn(&mut K)) -> Self {
        let writer = Writer::default();
        Self {
            reader: writer.as_reader(),
            pending: Mutex::new(Some(Pending {
                api,
                config: config.page_size(PAGE_SIZE),
                trim,
                writer,
                cached: false,
                subscribers: Vec::new(),
            })),
        }
    }

    fn with_pending(&self, f: impl FnOnce(&mut Pending<K>)) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.as_mut() {
            Some(pending) => f(pending),
            // A programming error: every controller is set up before the watches start.
            None => tracing::error!(
                kind = %K::kind(&()),
                "a controller subscribed to a watch that had already started; it misses its events"
            ),
        }
    }

    /// The cache of this watch; it is filled once the watch has started.
    pub fn store(&self) -> Store<K> {
        self.with_pending(|p| p.cached = true);
        self.reader.clone()
    }

    /// Calls `subscriber` with every event of the watch, after the cache (if any) has applied it.
    pub fn subscribe(&self, subscriber: impl FnMut(&watcher::Event<K>, &Store<K>) + Send + 'static) {
        self.with_pending(|p| p.subscribers.push(Box::new(subscriber)));
    }

    /// The objects for a kube-runtime `Controller` of this kind (`Controller::for_shared_stream` with
    /// [`Watch::store`]): each object applied, and every cached object after each (re)list.
    pub fn controller_stream(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.with_pending(|p| p.cached = true);
        let (sender, receiver) = mpsc::unbounded();
        self.subscribe(move |event, store| match event {
            watcher::Event::Apply(object) => {
                if let Some(cached) = store.get(&ObjectRef::from_obj(object)) {
                    let _ = sender.unbounded_send(cached);
                }
            }
            watcher::Event::InitDone => {
                for cached in store.state() {
                    let _ = sender.unbounded_send(cached);
                }
            }
            watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitApply(_) => {}
        });
        receiver
    }

    /// Every object applied, deleted or (re)listed, for the triggers of a `Controller`
    /// (`owns_shared_stream`, `watches_shared_stream`).
    pub fn touched(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded();
        self.subscribe(move |event, _| match event {
            watcher::Event::Apply(object)
            | watcher::Event::Delete(object)
            | watcher::Event::InitApply(object) => {
                let _ = sender.unbounded_send(Arc::new(object.clone()));
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        });
        receiver
    }

    /// Starts the watch when anything uses it.
    fn start(&self) -> Option<tokio::task::JoinHandle<()>> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        if !pending.cached && pending.subscribers.is_empty() {
            return None;
        }
        let reader = self.reader.clone();
        Some(tokio::spawn(async move {
            let Pending {
                api,
                config,
                trim,
                mut writer,
                cached,
                mut subscribers,
            } = pending;
            let events = watcher::watcher(api, config).default_backoff().modify(trim);
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        if cached {
                            writer.apply_watcher_event(&event);
                        }
                        for subscriber in &mut subscribers {
                            subscriber(&event, &reader);
                        }
                    }
                    Err(error) => tracing::warn!(
                        kind = %K::kind(&()),
                        %error,
                        "watching failed; retrying with backoff (check the operator's RBAC for list/watch)"
                    ),
                }
            }
        }))
    }
}

/// Drops `managedFields`: no controller reads them.
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Keeps what the controllers read of a Node: its name, labels and spec (cordon, taints).
fn trim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.status = None;
}

/// Keeps a digest of the data of the Secrets the operator writes: enough to tell whether one is current.
fn digest_secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    if let Some(data) = &mut secret.data {
        crate::namespaces::digest_data(data);
    }
}

/// The watches of the operator process, one per kind.
pub struct Watches {
    /// DynaKubes in every namespace.
    pub dynakubes: Watch<DynaKube>,
    /// Legacy OneAgents in every namespace.
    pub oneagents: Watch<OneAgent>,
    /// DaemonSets (metadata): the DynaKube and OneAgent controllers own theirs.
    pub daemonsets: Watch<PartialObjectMeta<DaemonSet>>,
    /// Namespaces (metadata).
    pub namespaces: Watch<PartialObjectMeta<Namespace>>,
    /// Nodes without their status (see [`trim_node`]).
    pub nodes: Watch<Node>,
    /// The per-namespace Secrets the operator writes (selected by their labels), with a digest of their
    /// data ([`digest_secret`]).
    pub managed_secrets: Watch<Secret>,
    /// Secret metadata: a change of a token, proxy or TLS Secret triggers the controllers that read it.
    pub secret_metadata: Watch<PartialObjectMeta<Secret>>,
    /// ConfigMap metadata: a change of a trusted-CAs ConfigMap triggers the namespace controller.
    pub config_map_metadata: Watch<PartialObjectMeta<ConfigMap>>,
}

impl Watches {
    /// The watches, not started: controllers subscribe, then [`Watches::start`] opens the ones in use.
    pub fn new(client: &Client) -> Self {
        let all = watcher::Config::default;
        Self {
            dynakubes: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            oneagents: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            daemonsets: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            namespaces: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            nodes: Watch::new(Api::all(client.clone()), all(), trim_node),
            managed_secrets: Watch::new(
                Api::all(client.clone()),
                all().labels(&desired::mapping::managed_secrets_selector()),
                digest_secret,
            ),
            secret_metadata: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            config_map_metadata: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
        }
    }

    /// Opens every watch a controller subscribed to or reads the cache of. The watches stop when the
    /// returned value is dropped.
    pub fn start(&self) -> Running {
        let tasks = [
            self.dynakubes.start(),
            self.oneagents.start(),
            self.daemonsets.start(),
            self.namespaces.start(),
            self.nodes.start(),
            self.managed_secrets.start(),
            self.secret_metadata.start(),
            self.config_map_metadata.start(),
        ];
        Running(tasks.into_iter().flatten().collect())
    }
}

/// The running watches; dropping this stops them.
pub struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
