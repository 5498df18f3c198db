//! Namespace mapping and per-namespace Secrets (spec §4): labels every namespace with the DynaKube that
//! injects into it, keeps the Secrets `dynatrace-dynakube-config` and `dynatrace-data-ingest-endpoint` in
//! every mapped namespace, deletes them where a namespace is no longer mapped to their DynaKube, and
//! reports namespaces that several DynaKubes select in the condition `NamespaceConflict`.
//!
//! The mapping is global (a conflict involves several DynaKubes, a relabel two), so this is one loop over
//! watch caches rather than a per-object controller: reflectors keep Namespaces, DynaKubes, the operator's
//! per-namespace Secrets and Nodes in memory, every relevant change wakes the loop, and a pass computes the
//! whole desired state ([`pure_desired::mapping`]) and writes only the difference, a bounded number of writes
//! at a time. A new namespace is labelled within a second of its creation. Nothing waits inside a pass:
//! failures are retried by the next pass after a backoff, and a DynaKube whose inputs are not there yet
//! (tenant UUID, token Secret) is picked up by the watch event that brings them.
//!
//! Beyond the reference: a conflict no longer blocks namespaces or the mapping of the others, a deleted
//! DynaKube's labels and Secrets go at once (owner references cannot cross namespaces), and the Secrets
//! are deleted where a namespace stops being mapped (the reference leaked them, weakness 10).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt as _};
use pure_api::dynakube::{DynaKube, ProxySource, names};
use pure_desired::mapping::{
    self, ConditionUpdate, DynaKubeRef, InitSecretFacts, Mapping, NAMESPACE_CONFLICT_CONDITION,
    NamespaceView, SecretTemplate,
};
use serde_json::json;
use tokio::sync::Notify;

use crate::dynakube::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::watches::{CachedNode, ManagedSecret, Watch, Watches};

/// Name of this controller in logs and metrics.
const CONTROLLER: &str = "namespaces";
/// Watch events come in bursts (a namespace and its default objects, our own writes): one pass covers a
/// burst.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// First retry after a failed pass; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry interval after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Event notes are limited to 1 kB.
const MAX_NOTE_BYTES: usize = 1000;
/// The per-namespace Secrets.
const SECRET_NAMES: [&str; 2] = [names::INIT_SECRET, names::ENRICHMENT_SECRET];

/// What the namespace controller needs to know.
#[derive(Clone)]
pub struct NamespaceConfig {
    /// The operator's namespace: never labelled, so the operator's own pods are never injected.
    pub operator_namespace: String,
    /// API writes (labels, Secrets) in flight at once.
    pub max_parallel_writes: usize,
    /// A full pass at least this often, even without a watch event.
    pub resync: Duration,
    /// Where to count passes (`dynatrace_operator_reconciles_total{controller="namespaces"}`), if anywhere.
    pub metrics: Option<Metrics>,
}

impl NamespaceConfig {
    /// The defaults for an operator in `operator_namespace`: 16 writes at a time, a resync every 5 minutes,
    /// no metrics.
    pub fn new(operator_namespace: impl Into<String>) -> Self {
        Self {
            operator_namespace: operator_namespace.into(),
            max_parallel_writes: 16,
            resync: Duration::from_secs(5 * 60),
            metrics: None,
        }
    }
}

/// Why part of a pass failed (the controllers' one error model). The pass is retried after a backoff.
pub use crate::error::ReconcileError as Error;
use crate::error::kube_error;

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 404)
}

/// Runs the controller until `shutdown` completes. It watches Namespaces, DynaKubes, the per-namespace
/// Secrets it writes, Nodes (for `monitoringNodes`), and the metadata of Secrets and ConfigMaps (a change
/// of a DynaKube's token, proxy or TLS Secret or trusted-CAs ConfigMap rewrites its Secrets). Failures are
/// logged and retried with a backoff of up to a minute.
pub async fn run(client: Client, config: NamespaceConfig, shutdown: impl Future<Output = ()>) {
    let watches = Watches::new(&client);
    let controller = controller(&watches, client, config, shutdown);
    let _running = watches.start();
    controller.await;
}

/// Sets up the controller on the shared `watches` (see [`run`]); it runs when the returned future is
/// polled and the watches have started.
pub(crate) fn controller(
    watches: &Watches,
    client: Client,
    config: NamespaceConfig,
    shutdown: impl Future<Output = ()>,
) -> impl Future<Output = ()> {
    let trigger = Arc::new(Notify::new());
    let namespaces = watches.namespaces.store();
    let dynakubes = watches.dynakubes.store();
    let secrets = watches.managed_secrets.each_ref().map(Watch::store);
    let nodes = watches.nodes.store();
    watches.namespaces.subscribe(wake_on_change(
        trigger.clone(),
        // Only the labels and whether it is terminating matter.
        |ns: &PartialObjectMeta<Namespace>| {
            fingerprint(&(
                ns.metadata.labels.as_ref(),
                ns.metadata.deletion_timestamp.is_some(),
            ))
        },
    ));
    watches
        .dynakubes
        .subscribe(wake_on_change(trigger.clone(), |dk: &DynaKube| {
            fingerprint(&dk.metadata.resource_version)
        }));
    for watch in &watches.managed_secrets {
        watch.subscribe(wake_on_change(trigger.clone(), |secret: &ManagedSecret| {
            fingerprint(&secret.resource_version)
        }));
    }
    // Nodes change often; only their labels and existence matter here.
    watches
        .nodes
        .subscribe(wake_on_change(trigger.clone(), |node: &CachedNode| {
            fingerprint(&node.metadata.labels)
        }));
    watches.secret_metadata.subscribe(wake_on_reference(
        dynakubes.clone(),
        referenced_secrets,
        trigger.clone(),
    ));
    watches.config_map_metadata.subscribe(wake_on_reference(
        dynakubes.clone(),
        referenced_config_maps,
        trigger.clone(),
    ));
    run_loop(
        client, config, shutdown, trigger, namespaces, dynakubes, secrets, nodes,
    )
}

/// The controller's passes, once the caches are filled.
#[allow(clippy::too_many_arguments)] // the parts `controller` wires together
async fn run_loop(
    client: Client,
    config: NamespaceConfig,
    shutdown: impl Future<Output = ()>,
    trigger: Arc<Notify>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    dynakubes: Store<DynaKube>,
    secrets: [Store<ManagedSecret>; 2],
    nodes: Store<CachedNode>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let ready = async {
        for result in [
            namespaces.wait_until_ready().await,
            dynakubes.wait_until_ready().await,
            secrets[0].wait_until_ready().await,
            secrets[1].wait_until_ready().await,
            nodes.wait_until_ready().await,
        ] {
            if let Err(error) = result {
                tracing::error!(%error, "namespace mapping: a watch cache stopped before it was filled");
            }
        }
    };
    tokio::select! {
        () = &mut shutdown => return,
        () = ready => {}
    }
    tracing::info!(
        operator_namespace = %config.operator_namespace,
        "namespace mapping started"
    );
    let client_for_inputs = client.clone();
    let mut controller = Controller {
        reporter: Reporter {
            controller: "dynatrace-operator".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        },
        client,
        config,
        namespaces,
        dynakubes,
        secrets,
        nodes,
        inputs: io_dynakube_inputs::Reader::new(client_for_inputs),
        pending_labels: HashMap::new(),
        pending_secrets: HashMap::new(),
        announced: HashMap::new(),
        reported_problems: HashMap::new(),
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let report = tokio::select! {
            () = &mut shutdown => break,
            report = controller.pass() => report,
        };
        let elapsed = started.elapsed();
        let wait = if report.errors.is_empty() {
            backoff = MIN_BACKOFF;
            controller.observe("success", elapsed);
            report.log(elapsed);
            controller.config.resync
        } else {
            controller.observe("error", elapsed);
            report.log(elapsed);
            for error in &report.errors {
                tracing::error!("namespace mapping: {error}");
            }
            let wait = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            wait
        };
        if !crate::wake::next_pass(&mut shutdown, &trigger, wait, DEBOUNCE).await {
            break;
        }
    }
    tracing::info!("namespace mapping stopped");
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn object_key<K: reflector::Lookup>(object: &K) -> String {
    format!(
        "{}/{}",
        reflector::Lookup::namespace(object).unwrap_or_default(),
        reflector::Lookup::name(object).unwrap_or_default()
    )
}

/// Wakes the loop when an object appears, goes, or changes what `fingerprint` covers (after a re-list,
/// once).
fn wake_on_change<K>(
    trigger: Arc<Notify>,
    fingerprint: fn(&K) -> u64,
) -> impl FnMut(&watcher::Event<K>, &Store<K>) + Send + 'static
where
    K: reflector::Lookup<DynamicType = ()> + Clone + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut relisted: HashMap<String, u64> = HashMap::new();
    move |event, _| match event {
        watcher::Event::Apply(object) => {
            if seen.insert(object_key(object), fingerprint(object)) != Some(fingerprint(object)) {
                trigger.notify_one();
            }
        }
        watcher::Event::Delete(object) => {
            seen.remove(&object_key(object));
            trigger.notify_one();
        }
        watcher::Event::Init => relisted.clear(),
        watcher::Event::InitApply(object) => {
            relisted.insert(object_key(object), fingerprint(object));
        }
        watcher::Event::InitDone => {
            seen = std::mem::take(&mut relisted);
            trigger.notify_one();
        }
    }
}

/// Wakes the loop when an object of kind `K` that a DynaKube refers to (in its namespace) changes. Only
/// metadata is watched; the pass reads the object itself. The list of a namespace whose watch just opened
/// counts as a change too: the object may have been created between the pass that missed it and the watch.
fn wake_on_reference<K>(
    dynakubes: Store<DynaKube>,
    referenced: fn(&DynaKube) -> Vec<String>,
    trigger: Arc<Notify>,
) -> impl FnMut(&watcher::Event<PartialObjectMeta<K>>) + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    move |event| {
        let object = match event {
            watcher::Event::Apply(object)
            | watcher::Event::Delete(object)
            | watcher::Event::InitApply(object) => object,
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let (namespace, name) = (object.namespace(), object.name_any());
        let wanted = dynakubes
            .find(|dk| dk.namespace() == namespace && referenced(dk).contains(&name))
            .is_some();
        if wanted {
            trigger.notify_one();
        }
    }
}

/// The Secrets a DynaKube's per-namespace Secrets are made from: tokens, proxy, ActiveGate TLS.
fn referenced_secrets(dynakube: &DynaKube) -> Vec<String> {
    let mut names = vec![dynakube.tokens_secret_name()];
    if let Some(ProxySource::Secret(name)) = dynakube.proxy() {
        names.push(name.to_owned());
    }
    names.extend(dynakube.activegate_tls_secret().map(str::to_owned));
    names
}

/// The ConfigMaps a DynaKube's per-namespace Secrets are made from: trusted CAs.
fn referenced_config_maps(dynakube: &DynaKube) -> Vec<String> {
    dynakube
        .trusted_cas_config_map()
        .map(str::to_owned)
        .into_iter()
        .collect()
}

/// A label written in a pass whose watch event has not arrived yet: the namespace's resourceVersion when
/// it was written, and the value. The next pass does not write it again while the cache still shows that
/// version.
struct PendingLabel {
    seen_version: Option<String>,
    value: Option<String>,
}

/// A Secret written (hash of its data) or deleted (`None`) in a pass, with the resourceVersion the cache
/// showed then (`None`: absent).
struct PendingSecret {
    seen_version: Option<String>,
    data: Option<u64>,
}

/// Why a DynaKube's Secrets cannot be built now. Waiting and user problems are not retried: the watch event
/// that fixes them (DynaKube status, token Secret, ...) starts the next pass.
enum InputProblem {
    /// Something the DynaKube reconcile provides is not there yet.
    Waiting(String),
    /// Something the user must fix.
    User(String),
    /// An API call failed.
    Kube(Error),
}

impl From<io_dynakube_inputs::Error> for InputProblem {
    fn from(error: io_dynakube_inputs::Error) -> Self {
        match error {
            io_dynakube_inputs::Error::Problem(problem) => Self::User(format!(
                "{problem}; the Secrets in the mapped namespaces are kept as they are until then"
            )),
            io_dynakube_inputs::Error::Kube { what, source } => Self::Kube(Error::Kube { what, source }),
        }
    }
}

/// What a logged problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Topic {
    /// The namespace selector.
    Selector,
    /// The inputs of the per-namespace Secrets.
    SecretInputs,
}

/// What a pass did.
#[derive(Default)]
struct Report {
    labelled: usize,
    unlabelled: usize,
    secrets_written: usize,
    secrets_deleted: usize,
    conditions_written: usize,
    conflicts: usize,
    mapped: usize,
    errors: Vec<Error>,
}

impl Report {
    fn wrote(&self) -> bool {
        self.labelled
            + self.unlabelled
            + self.secrets_written
            + self.secrets_deleted
            + self.conditions_written
            > 0
    }

    fn log(&self, elapsed: Duration) {
        let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if self.wrote() || !self.errors.is_empty() {
            tracing::info!(
                labelled = self.labelled,
                unlabelled = self.unlabelled,
                secrets_written = self.secrets_written,
                secrets_deleted = self.secrets_deleted,
                conditions_written = self.conditions_written,
                mapped_namespaces = self.mapped,
                conflicts = self.conflicts,
                errors = self.errors.len(),
                millis,
                "namespace mapping pass"
            );
        } else {
            tracing::debug!(
                mapped_namespaces = self.mapped,
                millis,
                "namespace mapping is up to date"
            );
        }
    }
}

/// A per-namespace Secret as the pass wants it.
struct DesiredSecret {
    template: SecretTemplate,
    /// [`SecretTemplate::fingerprint`]: what the Secret cache keeps of a Secret ([`ManagedSecret`]).
    fingerprint: u64,
    /// [`data_hash`] of the data.
    hash: u64,
}

impl DesiredSecret {
    fn new(template: SecretTemplate) -> Arc<Self> {
        Arc::new(Self {
            hash: data_hash(&template.data),
            fingerprint: template.fingerprint(),
            template,
        })
    }
}

/// A write to a per-namespace Secret.
enum SecretOp {
    Apply {
        template: Arc<DesiredSecret>,
        key: (String, &'static str),
        pending: PendingSecret,
    },
    Delete {
        key: (String, &'static str),
        pending: PendingSecret,
    },
}

struct Controller {
    client: Client,
    config: NamespaceConfig,
    reporter: Reporter,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    dynakubes: Store<DynaKube>,
    secrets: [Store<ManagedSecret>; 2],
    nodes: Store<CachedNode>,
    /// Reads the DynaKubes' token, proxy and TLS Secrets, trusted CAs and the cluster id.
    inputs: io_dynakube_inputs::Reader,
    pending_labels: HashMap<String, PendingLabel>,
    pending_secrets: HashMap<(String, &'static str), PendingSecret>,
    /// Per DynaKube, the note of the last conflict event published, so that a condition the DynaKube
    /// reconcile overwrote and this controller restores does not publish the event again.
    announced: HashMap<DynaKubeRef, String>,
    /// Per DynaKube and topic, the last problem logged, so that each pass does not log it again.
    reported_problems: HashMap<(DynaKubeRef, Topic), String>,
}

impl Controller {
    fn observe(&self, outcome: &'static str, elapsed: Duration) {
        if let Some(metrics) = &self.config.metrics {
            metrics.observe(CONTROLLER, outcome, elapsed);
        }
    }

    /// One pass: labels, conflict conditions, Secrets.
    async fn pass(&mut self) -> Report {
        let mut report = Report::default();
        let dynakubes = self.dynakubes.state();
        let namespaces = self.namespaces.state();
        // A terminating namespace is left alone: writes into it fail, and it goes with everything in it.
        let live: Vec<&PartialObjectMeta<Namespace>> = namespaces
            .iter()
            .map(AsRef::as_ref)
            .filter(|ns| ns.metadata.deletion_timestamp.is_none() && ns.metadata.name.is_some())
            .collect();
        let mapping = mapping::map_namespaces(
            dynakubes.iter().map(AsRef::as_ref),
            live.iter().map(|ns| NamespaceView {
                name: ns.metadata.name.as_deref().unwrap_or_default(),
                labels: ns.metadata.labels.as_ref(),
            }),
            &self.config.operator_namespace,
        );
        report.mapped = mapping.assigned.len();
        report.conflicts = mapping.conflicts.len();
        let invalid: HashSet<&DynaKubeRef> = mapping.invalid_selectors.iter().map(|(dk, _)| dk).collect();
        self.reported_problems
            .retain(|(dk, topic), _| *topic != Topic::Selector || invalid.contains(dk));
        for (dynakube, problems) in &mapping.invalid_selectors {
            self.report_problem(
                dynakube,
                Topic::Selector,
                true,
                format!(
                    "spec.namespaceSelector is invalid ({}); the DynaKube keeps the namespaces it has and gets \
                     no new ones until it is fixed",
                    problems.join("; ")
                ),
            );
        }
        self.write_labels(&live, &mapping, &mut report).await;
        self.write_conditions(&dynakubes, &mapping, &mut report).await;
        self.write_secrets(&dynakubes, &live, &mapping, &mut report).await;
        let present: HashSet<DynaKubeRef> = dynakubes.iter().map(|dk| DynaKubeRef::of(dk)).collect();
        self.announced.retain(|dk, _| present.contains(dk));
        self.reported_problems.retain(|(dk, _), _| present.contains(dk));
        report
    }

    /// Logs a problem of a DynaKube once (until it changes): as a warning when the user must act, else as
    /// information.
    fn report_problem(&mut self, dynakube: &DynaKubeRef, topic: Topic, warn: bool, message: String) {
        let key = (dynakube.clone(), topic);
        if self.reported_problems.get(&key) == Some(&message) {
            return;
        }
        if warn {
            tracing::warn!(dynakube = %dynakube, "namespace mapping: {message}");
        } else {
            tracing::info!(dynakube = %dynakube, "namespace mapping: {message}");
        }
        self.reported_problems.insert(key, message);
    }

    async fn write_labels(
        &mut self,
        live: &[&PartialObjectMeta<Namespace>],
        mapping: &Mapping,
        report: &mut Report,
    ) {
        let versions: HashMap<&str, Option<&str>> = live
            .iter()
            .map(|ns| {
                (
                    ns.metadata.name.as_deref().unwrap_or_default(),
                    ns.metadata.resource_version.as_deref(),
                )
            })
            .collect();
        self.pending_labels
            .retain(|ns, p| versions.get(ns.as_str()).copied().flatten() == p.seen_version.as_deref());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        // Lazily, and only the outcome kept: the API answers each patch with the whole Namespace, and a
        // pass over 1,000 namespaces that kept every answer (or every future) until the end held megabytes.
        // By index: a closure over borrowed items trips the compiler's `Send` check in a spawned task
        // (higher-ranked lifetimes).
        let all_changes = &mapping.changes;
        let to_write: Vec<usize> = (0..all_changes.len())
            .filter(|&i| {
                let change = &all_changes[i];
                self.pending_labels
                    .get(&change.namespace)
                    .is_none_or(|p| p.value != change.to)
            })
            .collect();
        let writes = to_write.into_iter().map(|i| {
            let (api, params) = (&api, &params);
            async move {
                let change = &all_changes[i];
                let patch = Patch::Merge(mapping::label_patch(change.to.as_deref()));
                let result = api.patch(&change.namespace, params, &patch).await.map(|_| ());
                (change, result)
            }
        });
        let results: Vec<_> = stream::iter(writes)
            .buffer_unordered(self.config.max_parallel_writes.max(1))
            .collect()
            .await;
        for (change, result) in results {
            match result {
                Ok(()) => {
                    match &change.to {
                        Some(dk) => {
                            report.labelled += 1;
                            tracing::debug!(namespace = %change.namespace, dynakube = %dk, "labelled");
                        }
                        None => {
                            report.unlabelled += 1;
                            tracing::debug!(namespace = %change.namespace, "unlabelled");
                        }
                    }
                    self.pending_labels.insert(
                        change.namespace.clone(),
                        PendingLabel {
                            seen_version: versions
                                .get(change.namespace.as_str())
                                .copied()
                                .flatten()
                                .map(str::to_owned),
                            value: change.to.clone(),
                        },
                    );
                }
                // Deleted meanwhile: nothing to label.
                Err(error) if is_not_found(&error) => {}
                Err(error) => report.errors.push(kube_error(format!(
                    "set label {}={} on namespace {}",
                    mapping::INSTANCE_LABEL,
                    change.to.as_deref().unwrap_or("(removed)"),
                    change.namespace
                ))(error)),
            }
        }
    }

    async fn write_conditions(
        &mut self,
        dynakubes: &[Arc<DynaKube>],
        mapping: &Mapping,
        report: &mut Report,
    ) {
        for dynakube in dynakubes {
            let dk_ref = DynaKubeRef::of(dynakube);
            let conflicts = mapping.conflicts_of(&dk_ref);
            if mapping::conflict_condition(&dk_ref, &conflicts, conflict_condition_of(dynakube)).is_none() {
                continue;
            }
            match self.write_condition(dynakube, &dk_ref, &conflicts).await {
                Ok(Some(update)) => {
                    report.conditions_written += 1;
                    self.announce(dynakube, &dk_ref, &update).await;
                }
                Ok(None) => {}
                Err(error) => report.errors.push(error),
            }
        }
    }

    /// Applies the conflict condition as the only condition of this controller's field manager: the
    /// DynaKube's other conditions belong to the DynaKube controller and stay as they are. Returns what was
    /// written, or `None` when nothing needed writing (or the DynaKube is gone).
    async fn write_condition(
        &self,
        dynakube: &DynaKube,
        dk_ref: &DynaKubeRef,
        conflicts: &[&mapping::Conflict],
    ) -> Result<Option<ConditionUpdate>, Error> {
        let existing = conflict_condition_of(dynakube);
        let Some(update) = mapping::conflict_condition(dk_ref, conflicts, existing) else {
            return Ok(None);
        };
        let condition = conflict_condition(dynakube, existing, &update);
        let status = json!({ "conditions": [condition] });
        match crate::status::apply_status(&self.client, dynakube, crate::status::NAMESPACES_MANAGER, &status)
            .await
        {
            Ok(_) => Ok(Some(update)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(kube_error(format!(
                "write the {NAMESPACE_CONFLICT_CONDITION} condition of DynaKube {dk_ref}"
            ))(error)),
        }
    }

    /// Publishes the event of a condition change, unless the same note was published last for the
    /// DynaKube. Publishing failures are only logged.
    async fn announce(&mut self, dynakube: &DynaKube, dk_ref: &DynaKubeRef, update: &ConditionUpdate) {
        if self.announced.get(dk_ref) == Some(&update.message) {
            return;
        }
        let (type_, reason) = if update.status == "True" {
            (EventType::Warning, "NamespaceConflict")
        } else {
            (EventType::Normal, "NamespaceConflictResolved")
        };
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(&update.message, MAX_NOTE_BYTES)),
            action: "MapNamespaces".to_owned(),
            secondary: None,
        };
        // A recorder per event: a shared one folds events of one reason into a series that keeps the first
        // note, which would hide which namespaces conflict now.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &dynakube.object_ref(&())).await {
            Ok(()) => {
                self.announced.insert(dk_ref.clone(), update.message.clone());
            }
            Err(error) => {
                tracing::warn!(dynakube = %dk_ref, %error, reason, "cannot publish an event");
            }
        }
    }

    async fn write_secrets(
        &mut self,
        dynakubes: &[Arc<DynaKube>],
        live: &[&PartialObjectMeta<Namespace>],
        mapping: &Mapping,
        report: &mut Report,
    ) {
        let live_names: HashSet<&str> = live.iter().filter_map(|ns| ns.metadata.name.as_deref()).collect();
        let cached: Vec<Arc<ManagedSecret>> = self.secrets.iter().flat_map(Store::state).collect();
        // (namespace, Secret name) → the Secret, for the Secrets this controller writes.
        let existing: HashMap<(String, &'static str), &ManagedSecret> = cached
            .iter()
            .filter_map(|secret| {
                secret.owner.as_ref()?;
                let name = SECRET_NAMES.into_iter().find(|n| secret.name == *n)?;
                Some(((secret.namespace.clone(), name), secret.as_ref()))
            })
            .collect();
        self.pending_secrets.retain(|key, p| {
            existing.get(key).and_then(|s| s.resource_version.as_deref()) == p.seen_version.as_deref()
        });

        // One copy of each template, shared by its namespaces: an init Secret lists every monitored node, so
        // a copy per namespace is megabytes per pass.
        let mut desired: Vec<(String, Arc<DesiredSecret>)> = Vec::new();
        // Secrets that stay as they are: their DynaKube still maps the namespace but cannot build them now.
        let mut keep: HashSet<(String, &'static str)> = HashSet::new();
        for dynakube in dynakubes {
            let dk_ref = DynaKubeRef::of(dynakube);
            let targets: Vec<&str> = mapping.namespaces_of(&dk_ref).collect();
            if targets.is_empty() {
                continue;
            }
            match self.templates(dynakube).await {
                Ok(templates) => {
                    self.reported_problems
                        .remove(&(dk_ref.clone(), Topic::SecretInputs));
                    let templates: Vec<Arc<DesiredSecret>> =
                        templates.into_iter().map(DesiredSecret::new).collect();
                    for namespace in &targets {
                        for template in &templates {
                            desired.push(((*namespace).to_owned(), template.clone()));
                        }
                    }
                }
                Err(problem) => {
                    match problem {
                        InputProblem::Waiting(message) => {
                            self.report_problem(&dk_ref, Topic::SecretInputs, false, message);
                        }
                        InputProblem::User(message) => {
                            self.report_problem(&dk_ref, Topic::SecretInputs, true, message);
                        }
                        InputProblem::Kube(error) => report.errors.push(error),
                    }
                    for namespace in &targets {
                        for name in SECRET_NAMES {
                            keep.insert(((*namespace).to_owned(), name));
                        }
                    }
                }
            }
        }

        let mut ops = Vec::new();
        let desired_keys: HashSet<(String, &'static str)> = desired
            .iter()
            .map(|(ns, t)| (ns.clone(), t.template.name))
            .collect();
        for (namespace, template) in &desired {
            let key = (namespace.clone(), template.template.name);
            let current = existing.get(&key);
            if current.is_some_and(|s| s.fingerprint == template.fingerprint) {
                continue;
            }
            let pending = PendingSecret {
                seen_version: current.and_then(|s| s.resource_version.clone()),
                data: Some(template.hash),
            };
            if self
                .pending_secrets
                .get(&key)
                .is_some_and(|p| p.data == pending.data)
            {
                continue;
            }
            ops.push(SecretOp::Apply {
                template: template.clone(),
                key,
                pending,
            });
        }
        for (key, secret) in &existing {
            let owner = secret.owner.as_deref();
            let mapped_here = mapping.desired_label(&key.0) == owner;
            if !live_names.contains(key.0.as_str())
                || desired_keys.contains(key)
                || (mapped_here && keep.contains(key))
            {
                continue;
            }
            let pending = PendingSecret {
                seen_version: secret.resource_version.clone(),
                data: None,
            };
            if self.pending_secrets.get(key).is_some_and(|p| p.data.is_none()) {
                continue;
            }
            ops.push(SecretOp::Delete {
                key: key.clone(),
                pending,
            });
        }

        let client = &self.client;
        // Lazily: only the writes in flight exist at a time.
        let writes = ops.into_iter().map(|op| async move {
            match op {
                SecretOp::Apply {
                    template,
                    key,
                    pending,
                } => {
                    // Built when written: only the writes in flight hold a Secret.
                    let secret = template.template.for_namespace(&key.0);
                    let api: Api<Secret> = Api::namespaced(client.clone(), &key.0);
                    let result = api
                        .patch(
                            key.1,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&secret),
                        )
                        .await
                        .map(|_| ())
                        .map_err(kube_error(format!("apply Secret {}:{}", key.0, key.1)));
                    (key, pending, result)
                }
                SecretOp::Delete { key, pending } => {
                    let api: Api<Secret> = Api::namespaced(client.clone(), &key.0);
                    let result = match api.delete(key.1, &DeleteParams::background()).await {
                        Ok(_) => Ok(()),
                        Err(error) if is_not_found(&error) => Ok(()),
                        Err(error) => Err(kube_error(format!(
                            "delete Secret {}:{} (its namespace is no longer mapped to its DynaKube)",
                            key.0, key.1
                        ))(error)),
                    };
                    (key, pending, result)
                }
            }
        });
        let results: Vec<_> = stream::iter(writes)
            .buffer_unordered(self.config.max_parallel_writes.max(1))
            .collect()
            .await;
        for (key, pending, result) in results {
            match result {
                Ok(()) => {
                    if pending.data.is_some() {
                        report.secrets_written += 1;
                    } else {
                        report.secrets_deleted += 1;
                    }
                    self.pending_secrets.insert(key, pending);
                }
                // The namespace went meanwhile; its Secrets with it.
                Err(Error::Kube { source, .. }) if is_not_found(&source) => {}
                Err(error) => report.errors.push(error),
            }
        }
    }

    /// The Secrets of a DynaKube's mapped namespaces, or why they cannot be built now.
    async fn templates(&mut self, dynakube: &DynaKube) -> Result<Vec<SecretTemplate>, InputProblem> {
        let dk_ref = DynaKubeRef::of(dynakube);
        let namespace = &dk_ref.namespace;
        let tenant_uuid = dynakube
            .status
            .as_ref()
            .and_then(|s| s.one_agent.as_ref())
            .and_then(|o| o.connection_info_status.as_ref())
            .and_then(|c| c.tenant_uuid.as_deref())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                InputProblem::Waiting(
                    "the tenant UUID is not known yet (status.oneAgent.connectionInfoStatus.tenantUUID); the \
                     namespaces are labelled, their Secrets follow once the DynaKube reconcile has read the \
                     connection info"
                        .to_owned(),
                )
            })?;
        let inputs = &self.inputs;
        let (_, tokens) = inputs
            .dynakube_tokens(dynakube)
            .await
            .map_err(InputProblem::from)?;
        let user = |e: pure_desired::DesiredError| InputProblem::User(e.to_string());
        if dynakube.namespace_selectors().inject.is_none() {
            // Enrichment only (classicFullStack, hostMonitoring): nothing reads the init Secret there.
            return Ok(mapping::data_ingest_secret(dynakube, &tokens)
                .map_err(user)?
                .into_iter()
                .collect());
        }
        let proxy = inputs
            .proxy(namespace, dynakube.proxy())
            .await
            .map_err(InputProblem::from)?;
        let trusted_cas = inputs
            .trusted_cas(namespace, dynakube.trusted_cas_config_map())
            .await
            .map_err(InputProblem::from)?;
        let tls_cert = inputs
            .activegate_tls_cert(dynakube)
            .await
            .map_err(InputProblem::from)?;
        let cluster_id = inputs.cluster_id().await.map_err(InputProblem::from)?;
        let nodes = self.nodes.state();
        let monitoring_nodes = mapping::monitoring_nodes(
            dynakube,
            nodes.iter().map(|n| {
                (
                    n.metadata.name.as_deref().unwrap_or_default(),
                    n.metadata.labels.as_ref(),
                )
            }),
            Some(tenant_uuid),
        );
        let facts = InitSecretFacts {
            tokens: &tokens,
            proxy: proxy.as_deref(),
            trusted_cas: trusted_cas.as_deref(),
            tls_cert: tls_cert.as_deref(),
            tenant_uuid,
            cluster_id: &cluster_id,
            monitoring_nodes: &monitoring_nodes,
        };
        let mut templates = vec![mapping::init_secret(dynakube, &facts).map_err(user)?];
        templates.extend(mapping::data_ingest_secret(dynakube, &tokens).map_err(user)?);
        Ok(templates)
    }
}

/// The DynaKube's `NamespaceConflict` condition, if it has one.
fn conflict_condition_of(dynakube: &DynaKube) -> Option<&Condition> {
    dynakube
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == NAMESPACE_CONFLICT_CONDITION)
}

/// The conflict condition as `update` says; the transition time changes only with the status.
fn conflict_condition(
    dynakube: &DynaKube,
    existing: Option<&Condition>,
    update: &ConditionUpdate,
) -> Condition {
    let last_transition_time = existing
        .filter(|c| c.status == update.status)
        .map_or_else(|| Time(Timestamp::now()), |c| c.last_transition_time.clone());
    Condition {
        type_: NAMESPACE_CONFLICT_CONDITION.to_owned(),
        status: update.status.to_owned(),
        reason: update.reason.to_owned(),
        message: update.message.clone(),
        last_transition_time,
        observed_generation: dynakube.metadata.generation,
    }
}

fn data_hash(data: &BTreeMap<String, k8s_openapi::ByteString>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (key, value) in data {
        key.hash(&mut hasher);
        value.0.hash(&mut hasher);
    }
    hasher.finish()
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghij", 8), "abcde...");
        let cut = truncate("ääääää", 8);
        assert!(cut.len() <= 8 && cut.ends_with("..."), "{cut}");
    }

    #[test]
    fn the_conflict_condition_keeps_its_transition_time_while_its_status_stays() {
        let dynakube: DynaKube = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace", "generation": 3 },
            "spec": { "apiUrl": "https://x/api" },
            "status": { "conditions": [
                { "type": "Tokens", "status": "True", "reason": "TokenReady", "message": "ok",
                  "lastTransitionTime": "2024-01-01T00:00:00Z" },
                { "type": "NamespaceConflict", "status": "True", "reason": "SelectedByOtherDynaKubes",
                  "message": "old", "lastTransitionTime": "2024-01-02T00:00:00Z" },
            ] },
        }))
        .unwrap();
        let update = ConditionUpdate {
            status: "True",
            reason: mapping::CONFLICT_REASON,
            message: "new".into(),
        };
        let existing = conflict_condition_of(&dynakube).cloned();
        let condition = conflict_condition(&dynakube, existing.as_ref(), &update);
        assert_eq!(condition.type_, NAMESPACE_CONFLICT_CONDITION);
        assert_eq!(condition.message, "new");
        assert_eq!(condition.observed_generation, Some(3));
        assert_eq!(
            condition.last_transition_time,
            existing.as_ref().unwrap().last_transition_time,
            "same status, same transition time"
        );
        let resolved = ConditionUpdate {
            status: "False",
            reason: mapping::NO_CONFLICT_REASON,
            message: "fine".into(),
        };
        let condition = conflict_condition(&dynakube, existing.as_ref(), &resolved);
        assert_ne!(
            condition.last_transition_time,
            existing.unwrap().last_transition_time
        );
        assert_eq!(conflict_condition(&dynakube, None, &update).status, "True");
    }

    #[test]
    fn references_of_a_dynakube() {
        let dynakube: DynaKube = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace" },
            "spec": {
                "apiUrl": "https://x/api", "tokens": "tokens",
                "proxy": { "valueFrom": "proxy-secret" }, "trustedCAs": "cas",
                "activeGate": { "tlsSecretName": "ag-tls" },
            },
        }))
        .unwrap();
        assert_eq!(
            referenced_secrets(&dynakube),
            vec!["tokens", "proxy-secret", "ag-tls"]
        );
        assert_eq!(referenced_config_maps(&dynakube), vec!["cas"]);
        let mut literal = dynakube.clone();
        literal.spec.proxy.as_mut().unwrap().value = Some("http://proxy".into());
        assert_eq!(
            referenced_secrets(&literal),
            vec!["tokens", "ag-tls"],
            "a literal value wins over the proxy Secret"
        );
    }
}
