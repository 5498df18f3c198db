//! One watch per kind for every controller of the process. The DynaKube, OneAgent, namespace and node
//! controllers each need some of the same kinds (DynaKubes three times, Nodes three times, DaemonSets and
//! Secret metadata twice); a [`Watches`] opens each watch once, keeps one cache (a kube-runtime
//! [`Store`]) where a controller reads the objects, and hands every event to each controller that
//! subscribed.
//!
//! What is cached is cut to what the controllers read: `managedFields` never (nobody reads them, and they
//! are often the larger half of an object), Nodes as their name, labels, cordon and taints ([`CachedNode`]),
//! DaemonSets as metadata only. Secrets
//! the operator does not write and ConfigMaps are watched as metadata, not cached (their events only
//! trigger work; the objects are read by name), and only in the namespaces that hold DynaKubes
//! ([`ScopedWatch`]); the per-namespace Secrets the operator writes are watched by name and kept as a
//! fingerprint with their name, namespace and owner ([`ManagedSecret`]). So the operator
//! never lists every Secret of the cluster. The initial lists come in pages of [`PAGE_SIZE`] so that one
//! list response stays small.
//!
//! Controllers subscribe while they are set up, before [`Watches::start`] opens the watches, so that each
//! sees the initial list. Subscribers run inside the watch's task and must not block: they notify, or
//! send into an unbounded channel that a controller drains.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, NodeSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use pure_api::dynakube::{DynaKube, names};
use pure_api::oneagent::OneAgent;
use pure_desired::mapping;
use serde::de::DeserializeOwned;

use crate::wake::AbortOnDrop;

/// Objects per page of an initial list: a page of 500 Secrets is megabytes of JSON at once.
pub const PAGE_SIZE: u32 = 100;

/// Something a controller does with each event of a watch (after the cache has applied it).
type Subscriber<C> = Box<dyn FnMut(&watcher::Event<C>, &Store<C>) + Send>;

/// One watch of kind `K`, set up but not started yet.
struct Pending<
    K: Resource<DynamicType = ()> + Clone + 'static,
    C: reflector::Lookup<DynamicType = ()> + Clone + 'static,
> {
    api: Api<K>,
    config: watcher::Config,
    /// Cuts each object to what is kept and passed on (see the module documentation).
    trim: fn(K) -> C,
    writer: Writer<C>,
    /// Whether a controller reads the cache; without, the watch only passes events on.
    cached: bool,
    subscribers: Vec<Subscriber<C>>,
}

/// A shared watch of kind `K`: its cache and, until it starts, its subscribers. Each object is kept and
/// passed on as `C`: `K` cut to what the controllers read, or a smaller type of its own.
pub struct Watch<
    K: Resource<DynamicType = ()> + Clone + 'static,
    C: reflector::Lookup<DynamicType = ()> + Clone + 'static = K,
> {
    reader: Store<C>,
    pending: Mutex<Option<Pending<K, C>>>,
}

impl<K, C> Watch<K, C>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    C: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn new(api: Api<K>, config: watcher::Config, trim: fn(K) -> C) -> Self {
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

    fn with_pending(&self, f: impl FnOnce(&mut Pending<K, C>)) {
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
    pub fn store(&self) -> Store<C> {
        self.with_pending(|p| p.cached = true);
        self.reader.clone()
    }

    /// Calls `subscriber` with every event of the watch, after the cache (if any) has applied it.
    pub fn subscribe(&self, subscriber: impl FnMut(&watcher::Event<C>, &Store<C>) + Send + 'static) {
        self.with_pending(|p| p.subscribers.push(Box::new(subscriber)));
    }

    /// The objects for a kube-runtime `Controller` of this kind (`Controller::for_shared_stream` with
    /// [`Watch::store`]): each object applied, and every cached object after each (re)list.
    pub fn controller_stream(&self) -> impl Stream<Item = Arc<C>> + Send + 'static {
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
    pub fn touched(&self) -> impl Stream<Item = Arc<C>> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded();
        self.subscribe(move |event, _| {
            if let Some(object) = touched_object(event) {
                let _ = sender.unbounded_send(Arc::new(object.clone()));
            }
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
            let events = watcher::watcher(api, config)
                .default_backoff()
                .map_ok(move |event| map_event(event, trim));
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
                        "watching failed: {}; retrying with backoff",
                        crate::error::advice(&error)
                    ),
                }
            }
        }))
    }
}

/// The event with its object(s) cut by `trim`.
fn map_event<K, C>(event: watcher::Event<K>, trim: fn(K) -> C) -> watcher::Event<C> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(trim(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(trim(object)),
        watcher::Event::InitApply(object) => watcher::Event::InitApply(trim(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Drops `managedFields`: no controller reads them.
fn drop_managed_fields<K: Resource>(mut object: K) -> K {
    object.meta_mut().managed_fields = None;
    object
}

/// A Node as the caches keep it: its name and labels (which DynaKube's node selector picks it) and, of its
/// spec, whether it is cordoned and its taints (whether it is about to go away). A `Node` without its
/// status still takes 1.5 kB before its strings, as its status struct is inline.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct CachedNode {
    /// Name, labels and resourceVersion only.
    pub metadata: ObjectMeta,
    /// `unschedulable` and `taints` only.
    pub spec: Option<NodeSpec>,
}

impl CachedNode {
    fn of(node: Node) -> Self {
        let Node { metadata, spec, .. } = node;
        Self {
            metadata: ObjectMeta {
                name: metadata.name,
                labels: metadata.labels,
                resource_version: metadata.resource_version,
                ..ObjectMeta::default()
            },
            spec: spec.map(|spec| NodeSpec {
                unschedulable: spec.unschedulable,
                taints: spec.taints,
                ..NodeSpec::default()
            }),
        }
    }
}

impl Resource for CachedNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <Node as Resource>::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        <Node as Resource>::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        <Node as Resource>::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <Node as Resource>::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A per-namespace Secret the operator writes ([`names::INIT_SECRET`], [`names::ENRICHMENT_SECRET`]) as
/// the cache keeps it: where it is, who wrote it and a fingerprint of its content, enough to tell whether
/// it is current. As a `Secret` with digested data each took about 2.5 kB with the store's key, and there
/// are two per namespace; an init Secret itself lists every monitored node (17 kB at 500 nodes).
#[derive(Clone, Debug)]
pub struct ManagedSecret {
    /// The Secret's name.
    pub name: String,
    /// The Secret's namespace.
    pub namespace: String,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// The DynaKube that wrote it ([`mapping::managed_secret_owner`]); `None` when the labels do not say.
    pub owner: Option<String>,
    /// [`mapping::secret_fingerprint`] of it.
    pub fingerprint: u64,
}

impl ManagedSecret {
    fn of(secret: Secret) -> Self {
        let fingerprint = mapping::secret_fingerprint(&secret);
        let owner = mapping::managed_secret_owner(&secret.metadata).map(str::to_owned);
        let meta = secret.metadata;
        Self {
            name: meta.name.unwrap_or_default(),
            namespace: meta.namespace.unwrap_or_default(),
            resource_version: meta.resource_version,
            owner,
            fingerprint,
        }
    }
}

impl reflector::Lookup for ManagedSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// A metadata watch of kind `K` (Secrets, ConfigMaps) in each namespace that holds a DynaKube or a legacy
/// OneAgent, and nowhere else: the objects a DynaKube refers to (tokens, proxy, TLS Secret, trusted CAs)
/// live in its own namespace, and a watch of every namespace would need list/watch of every Secret of the
/// cluster. A watch opens when the first DynaKube or OneAgent of a namespace appears and closes when the
/// last goes away. Nothing is cached: the events only trigger work, and the objects are read by name.
pub struct ScopedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    client: Client,
    /// Until the watch starts; then the subscribers move into the running tasks.
    subscribers: Mutex<Option<Vec<ScopedSubscriber<K>>>>,
}

/// Something a controller does with each event of a [`ScopedWatch`].
type ScopedSubscriber<K> = Box<dyn FnMut(&watcher::Event<PartialObjectMeta<K>>) + Send>;

impl<K> ScopedWatch<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            subscribers: Mutex::new(Some(Vec::new())),
        }
    }

    /// Calls `subscriber` with every event of the watch in each watched namespace.
    pub fn subscribe(&self, subscriber: impl FnMut(&watcher::Event<PartialObjectMeta<K>>) + Send + 'static) {
        match self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(subscribers) => subscribers.push(Box::new(subscriber)),
            None => tracing::error!(
                kind = %K::kind(&()),
                "a controller subscribed to a watch that had already started; it misses its events"
            ),
        }
    }

    /// Every object applied, deleted or (re)listed, for the triggers of a `Controller`
    /// (`watches_shared_stream`).
    pub fn touched(&self) -> impl Stream<Item = Arc<PartialObjectMeta<K>>> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded();
        self.subscribe(move |event| {
            if let Some(object) = touched_object(event) {
                let _ = sender.unbounded_send(Arc::new(object.clone()));
            }
        });
        receiver
    }

    /// Starts the watch when anything subscribed: it follows the namespaces of the DynaKubes (and, when a
    /// controller uses them, the OneAgents) in `dynakubes` and `oneagents`.
    fn start(
        &self,
        dynakubes: &Watch<DynaKube>,
        oneagents: &Watch<OneAgent>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        if subscribers.is_empty() {
            return None;
        }
        let subscribers = Arc::new(Mutex::new(subscribers));
        // Each kind reports the namespaces it holds after every change; the task below opens and closes
        // the watches to match.
        let (sender, mut receiver) = mpsc::unbounded::<(Holder, BTreeSet<String>)>();
        dynakubes.with_pending(|p| p.cached = true);
        dynakubes.subscribe(report_namespaces(Holder::DynaKube, sender.clone()));
        let mut oneagents_used = false;
        oneagents.with_pending(|p| {
            oneagents_used = p.cached || !p.subscribers.is_empty();
            p.cached |= oneagents_used;
        });
        if oneagents_used {
            oneagents.subscribe(report_namespaces(Holder::OneAgent, sender));
        }
        let client = self.client.clone();
        Some(tokio::spawn(async move {
            let mut held: [BTreeSet<String>; 2] = Default::default();
            // Dropping a task handle does not stop the task, so each is aborted when it leaves the map
            // (and when this task is aborted, its map is dropped).
            let mut running: HashMap<String, AbortOnDrop> = HashMap::new();
            while let Some((holder, namespaces)) = receiver.next().await {
                held[holder as usize] = namespaces;
                let wanted: BTreeSet<&String> = held[0].union(&held[1]).collect();
                running.retain(|namespace, _| wanted.contains(namespace));
                for namespace in wanted {
                    if running.contains_key(namespace) {
                        continue;
                    }
                    tracing::debug!(kind = %K::kind(&()), %namespace, "watching a namespace that holds a DynaKube");
                    let task = tokio::spawn(watch_namespace::<K>(
                        Api::namespaced(client.clone(), namespace),
                        subscribers.clone(),
                    ));
                    running.insert(namespace.clone(), AbortOnDrop::from(task));
                }
            }
        }))
    }
}

/// Sends the namespaces that hold an object of the cache after each change (not during a re-list).
fn report_namespaces<H: Resource<DynamicType = ()> + Clone>(
    holder: Holder,
    sender: mpsc::UnboundedSender<(Holder, BTreeSet<String>)>,
) -> impl FnMut(&watcher::Event<H>, &Store<H>) + Send + 'static {
    move |event, store| match event {
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => {
            let namespaces = store.state().iter().filter_map(|o| o.namespace()).collect();
            let _ = sender.unbounded_send((holder, namespaces));
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// The kinds whose namespaces a [`ScopedWatch`] covers.
#[derive(Clone, Copy)]
enum Holder {
    DynaKube = 0,
    OneAgent = 1,
}

/// The metadata watch of one namespace of a [`ScopedWatch`].
async fn watch_namespace<K>(api: Api<PartialObjectMeta<K>>, subscribers: Arc<Mutex<Vec<ScopedSubscriber<K>>>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let events = watcher::watcher(api, config)
        .default_backoff()
        .modify(|object| object.metadata.managed_fields = None);
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let mut subscribers = subscribers.lock().unwrap_or_else(PoisonError::into_inner);
                for subscriber in subscribers.iter_mut() {
                    subscriber(&event);
                }
            }
            Err(error) => tracing::warn!(
                kind = %K::kind(&()),
                %error,
                "watching a namespace that holds DynaKubes failed: {}; retrying with backoff",
                crate::error::advice(&error)
            ),
        }
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
    /// Nodes as their name, labels, cordon and taints ([`CachedNode`]).
    pub nodes: Watch<Node, CachedNode>,
    /// The per-namespace Secrets the operator writes, one watch per name (selected by the name and their
    /// labels), each kept as a [`ManagedSecret`]. Selecting by name lets RBAC grant
    /// list/watch on these names only (`resourceNames` applies to a list with a `metadata.name` field
    /// selector).
    pub managed_secrets: [Watch<Secret, ManagedSecret>; 2],
    /// Secret metadata in the namespaces that hold DynaKubes: a change of a token, proxy or TLS Secret
    /// triggers the controllers that read it.
    pub secret_metadata: ScopedWatch<Secret>,
    /// ConfigMap metadata in the namespaces that hold DynaKubes: a change of a trusted-CAs ConfigMap
    /// triggers the namespace controller.
    pub config_map_metadata: ScopedWatch<ConfigMap>,
}

impl Watches {
    /// The watches, not started: controllers subscribe, then [`Watches::start`] opens the ones in use.
    pub fn new(client: &Client) -> Self {
        let all = watcher::Config::default;
        let managed = |name: &str| {
            Watch::new(
                Api::all(client.clone()),
                all()
                    .fields(&format!("metadata.name={name}"))
                    .labels(&mapping::managed_secrets_selector()),
                ManagedSecret::of,
            )
        };
        Self {
            dynakubes: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            oneagents: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            daemonsets: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            namespaces: Watch::new(Api::all(client.clone()), all(), drop_managed_fields),
            nodes: Watch::new(Api::all(client.clone()), all(), CachedNode::of),
            managed_secrets: [managed(names::INIT_SECRET), managed(names::ENRICHMENT_SECRET)],
            secret_metadata: ScopedWatch::new(client),
            config_map_metadata: ScopedWatch::new(client),
        }
    }

    /// Opens every watch a controller subscribed to or reads the cache of. The watches stop when the
    /// returned value is dropped.
    pub fn start(&self) -> Running {
        // The scoped watches subscribe to the DynaKube and OneAgent watches, so they go first.
        let scoped = [
            self.secret_metadata.start(&self.dynakubes, &self.oneagents),
            self.config_map_metadata.start(&self.dynakubes, &self.oneagents),
        ];
        let [init_secrets, enrichment_secrets] = &self.managed_secrets;
        let tasks = [
            self.dynakubes.start(),
            self.oneagents.start(),
            self.daemonsets.start(),
            self.namespaces.start(),
            self.nodes.start(),
            init_secrets.start(),
            enrichment_secrets.start(),
        ];
        Running(scoped.into_iter().chain(tasks).flatten().collect())
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

/// The object an event applied, deleted or (re)listed; `None` for the markers of a relist.
fn touched_object<K>(event: &watcher::Event<K>) -> Option<&K> {
    match event {
        watcher::Event::Apply(object)
        | watcher::Event::Delete(object)
        | watcher::Event::InitApply(object) => Some(object),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}
