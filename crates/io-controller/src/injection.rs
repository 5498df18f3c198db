//! Missed-injection detection: running pods in the namespaces a DynaKube injects into that the webhook did
//! not inject (created while it was unavailable, or before the namespace was mapped). Per DynaKube that
//! injects code modules (cloudNativeFullStack, applicationMonitoring), at each change of its spec or
//! annotations and every [`InjectionConfig::interval`] otherwise, the check
//! 1. lists the metadata of the running pods of its mapped namespaces, in pages (pods are never cached:
//!    the operator's memory must not grow with the cluster's pods), and sorts them with
//!    [`pure_desired::missed`];
//! 2. sets the gauge `dynatrace_operator_pods_not_injected{namespace,dynakube}`;
//! 3. with `feature.dynatrace.com/restart-missed-injections: "true"`, restarts the Deployments (through
//!    the pod's ReplicaSet), StatefulSets and DaemonSets of those pods like `kubectl rollout restart`, at
//!    most the budget per interval and never twice for one cause (see [`pure_desired::missed`]);
//! 4. server-side applies `status.injection` under its own field manager when the result changed (or
//!    hourly), and publishes a warning event naming a few pods when the set changed.
//!
//! Nothing sleeps inside a check: the next one is a requeue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use pure_desired::mapping::INSTANCE_LABEL;
use pure_desired::missed::{self, Finding, PodView, Scan, Severity, Workload, WorkloadKind};
use serde_json::json;

use crate::error::{ReconcileError, kube_error};
use crate::metrics::Metrics;
use crate::status::{self, INJECTION_MANAGER};
use crate::watches::{PAGE_SIZE, Watches};

/// Name of this controller in logs and metrics.
const CONTROLLER: &str = "injection";
/// Up to this many mapped namespaces are listed one by one; more are read with one cluster-wide list
/// (a DynaKube that maps a few namespaces of a large cluster must not read every pod of the cluster).
const PER_NAMESPACE_LISTS: usize = 20;

/// What the missed-injection check needs.
#[derive(Clone)]
pub struct InjectionConfig {
    /// A check at least this often per DynaKube; also the window of the restart budget.
    pub interval: Duration,
    /// Where the gauge and the counters go.
    pub metrics: Metrics,
}

impl InjectionConfig {
    /// A check every 5 minutes.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            interval: Duration::from_secs(5 * 60),
            metrics,
        }
    }
}

/// What the checks share.
struct Context {
    client: Client,
    config: InjectionConfig,
    reporter: Reporter,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Per DynaKube uid: when it was last checked, and the fingerprint of its spec and annotations then.
    checked: Mutex<HashMap<String, (Instant, u64)>>,
    /// Per DynaKube uid: when each restart within the last interval happened (the budget's window).
    restarts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Runs the check until `shutdown` completes, with watches of its own.
pub async fn run(
    client: Client,
    config: InjectionConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let watches = Watches::new(&client);
    let controller = controller(&watches, client, config, shutdown);
    let _running = watches.start();
    controller.await;
}

/// Sets up the check on the shared `watches` (DynaKubes and Namespaces); it runs when the returned future
/// is polled and the watches have started.
pub(crate) fn controller(
    watches: &Watches,
    client: Client,
    config: InjectionConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    // A deleted DynaKube is never reconciled again: drop its gauge here.
    let metrics = config.metrics.clone();
    watches.dynakubes.subscribe(move |event, _| {
        if let watcher::Event::Delete(dynakube) = event {
            metrics.forget_dynakube(&dynakube.namespace().unwrap_or_default(), &dynakube.name_any());
        }
    });
    let ctx = Arc::new(Context {
        client,
        config,
        reporter: Reporter {
            controller: "dynatrace-operator".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        },
        namespaces: watches.namespaces.store(),
        checked: Mutex::default(),
        restarts: Mutex::default(),
    });
    let shutdown = shutdown.shared();
    Controller::for_shared_stream(watches.dynakubes.controller_stream(), watches.dynakubes.store())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(dynakube = %object.name, "injection checked"),
                Err(error) => tracing::debug!(%error, "injection check did not finish"),
            }
        })
}

fn error_policy(dynakube: Arc<DynaKube>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    tracing::warn!(dynakube = %dynakube.name_any(), %error, "missed-injection check failed");
    Action::requeue(ctx.config.interval.min(Duration::from_secs(60)))
}

/// What makes a check due before the interval: the spec (generation) and the annotations (feature flags).
fn fingerprint(dynakube: &DynaKube) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        dynakube.metadata.generation,
        dynakube.metadata.annotations.as_ref(),
    )
        .hash(&mut hasher);
    hasher.finish()
}

async fn reconcile(dynakube: Arc<DynaKube>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = dynakube.namespace().unwrap_or_default();
    let name = dynakube.name_any();
    let uid = dynakube.uid().unwrap_or_default();
    // Only DynaKubes that inject code modules: the check's rules follow the OneAgent annotations, so an
    // enrichment-only DynaKube (classicFullStack, hostMonitoring) would count pods opted out of enrichment.
    let injects = dynakube.namespace_selectors().inject.is_some();
    if !injects || dynakube.metadata.deletion_timestamp.is_some() {
        ctx.config.metrics.forget_dynakube(&namespace, &name);
        if dynakube.status.as_ref().is_some_and(|s| s.injection.is_some()) {
            // What this check no longer reports disappears: apply an empty part.
            status::apply_status(&ctx.client, dynakube.as_ref(), INJECTION_MANAGER, &json!({}))
                .await
                .map_err(kube_error(format!(
                    "removing status.injection of DynaKube {namespace}:{name}"
                )))?;
            ctx.config.metrics.status_written(CONTROLLER);
        }
        return Ok(Action::await_change());
    }
    // Every status write (ours and the other controllers') reaches this controller; only a changed spec
    // or annotations, or the interval, start a check.
    let print = fingerprint(&dynakube);
    let due = {
        let checked = ctx.checked.lock().unwrap_or_else(PoisonError::into_inner);
        match checked.get(&uid) {
            Some((at, seen)) if *seen == print && at.elapsed() < ctx.config.interval => {
                Err(ctx.config.interval - at.elapsed())
            }
            _ => Ok(()),
        }
    };
    if let Err(wait) = due {
        return Ok(Action::requeue(wait));
    }
    let started = Instant::now();
    let result = check(&dynakube, &ctx).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    ctx.config.metrics.observe(CONTROLLER, outcome, started.elapsed());
    result?;
    ctx.checked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(uid, (started, print));
    Ok(Action::requeue(ctx.config.interval))
}

/// One check of one DynaKube.
async fn check(dynakube: &DynaKube, ctx: &Context) -> Result<(), ReconcileError> {
    let namespace = dynakube.namespace().unwrap_or_default();
    let name = dynakube.name_any();
    let flags = dynakube.feature_flags();
    let mapped: Vec<String> = ctx
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter(|ns| ns.labels().get(INSTANCE_LABEL) == Some(&name))
        .map(|ns| ns.name_any())
        .collect();
    let finding = scan(&ctx.client, &mapped, flags.automatic_injection()).await?;
    ctx.config
        .metrics
        .set_pods_not_injected(&namespace, &name, finding.missed);

    let mut events = Vec::new();
    let budget = flags
        .restart_missed_injections()
        .then(|| flags.restart_missed_injections_budget());
    if let Some(budget) = budget {
        let (restarted, deferred) = restart(dynakube, ctx, &finding, budget).await;
        if let Some(note) = missed::restarted_note(&restarted, deferred) {
            events.push((EventType::Normal, missed::RESTARTED_REASON, note));
        }
    }

    let stored = dynakube.status.as_ref().and_then(|s| s.injection.as_ref());
    let interval_minutes = ctx.config.interval.as_secs().div_ceil(60);
    if let Some((severity, reason, note)) = missed::event(stored, &finding, budget, interval_minutes) {
        let type_ = match severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        };
        events.insert(0, (type_, reason, note));
    }
    let now = status::now();
    if let Some(injection) = missed::next_status(stored, &finding, &now) {
        status::apply_status(
            &ctx.client,
            dynakube,
            INJECTION_MANAGER,
            &json!({ "injection": injection }),
        )
        .await
        .map_err(kube_error(format!(
            "writing status.injection of DynaKube {namespace}:{name}"
        )))?;
        ctx.config.metrics.status_written(CONTROLLER);
    }
    if finding.missed > 0 {
        tracing::info!(
            dynakube = %name,
            missed = finding.missed,
            held_back = finding.held_back,
            not_restartable = finding.not_restartable,
            "running pods without injection"
        );
    }
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let reference = dynakube.object_ref(&());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "CheckInjection".to_owned(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason, "cannot publish an event");
        }
    }
    Ok(())
}

/// Lists the running pods of `namespaces` as metadata, in pages, into a [`Scan`].
async fn scan(
    client: &Client,
    namespaces: &[String],
    automatic_injection: bool,
) -> Result<Finding, ReconcileError> {
    let mut scan = Scan::new();
    if namespaces.is_empty() {
        return Ok(scan.finish());
    }
    let wanted: HashSet<&str> = namespaces.iter().map(String::as_str).collect();
    let scopes: Vec<(String, String)> = if namespaces.len() <= PER_NAMESPACE_LISTS {
        namespaces
            .iter()
            .map(|ns| (format!("/api/v1/namespaces/{ns}/pods"), format!("namespace {ns}")))
            .collect()
    } else {
        vec![("/api/v1/pods".to_owned(), "all namespaces".to_owned())]
    };
    for (path, scope) in scopes {
        let what = || format!("listing the running pods of {scope}");
        let request = kube::core::Request::new(path);
        let mut params = ListParams::default()
            .fields("status.phase=Running")
            .limit(PAGE_SIZE);
        loop {
            let http_request = request
                .list_metadata(&params)
                .map_err(|e| kube_error(what())(kube::Error::BuildRequest(e)))?;
            // Read into [`PodMetaList`], not `PartialObjectMeta<Pod>`: a pod's managedFields (tens of
            // entries for a pod a controller created) would be most of a page in memory, and nothing here
            // reads them.
            let page: PodMetaList = client.request(http_request).await.map_err(kube_error(what()))?;
            for pod in &page.items {
                let meta = &pod.metadata;
                if !wanted.contains(meta.namespace.as_str()) {
                    continue;
                }
                let controller = meta
                    .owner_references
                    .iter()
                    .find(|owner| owner.controller == Some(true))
                    .map(|owner| (owner.kind.as_str(), owner.name.as_str()));
                scan.add(
                    &PodView {
                        namespace: &meta.namespace,
                        name: &meta.name,
                        annotations: Some(&meta.annotations),
                        labels: Some(&meta.labels),
                        controller,
                        deleting: meta.deletion_timestamp.is_some(),
                    },
                    automatic_injection,
                );
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(scan.finish())
}

/// A page of pod metadata as the check reads it.
#[derive(serde::Deserialize)]
struct PodMetaList {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
    items: Vec<PodMetaItem>,
}

#[derive(serde::Deserialize)]
struct PodMetaItem {
    metadata: PodMeta,
}

/// The fields of a pod's metadata that the check reads; serde skips the rest without keeping it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMeta {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    owner_references: Vec<PodOwner>,
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct PodOwner {
    kind: String,
    name: String,
    controller: Option<bool>,
}

/// Restarts the candidates' workloads within what is left of the budget in this interval; returns those
/// restarted and how many candidates wait. Failures are logged: the next check tries again.
async fn restart(
    dynakube: &DynaKube,
    ctx: &Context,
    finding: &Finding,
    budget: u32,
) -> (Vec<Workload>, usize) {
    let uid = dynakube.uid().unwrap_or_default();
    let left = {
        let mut restarts = ctx.restarts.lock().unwrap_or_else(PoisonError::into_inner);
        let window = restarts.entry(uid.clone()).or_default();
        while window
            .front()
            .is_some_and(|at| at.elapsed() >= ctx.config.interval)
        {
            window.pop_front();
        }
        usize::try_from(budget)
            .unwrap_or(usize::MAX)
            .saturating_sub(window.len())
    };
    // ReplicaSets are looked up only until the budget is filled.
    let mut workloads: Vec<Workload> = Vec::new();
    let mut unique = HashSet::new();
    let mut looked_at = 0;
    for candidate in &finding.candidates {
        if unique.len() >= left {
            break;
        }
        looked_at += 1;
        if let Some(workload) = Workload::direct(candidate) {
            unique.insert((workload.namespace.clone(), workload.kind, workload.name.clone()));
            workloads.push(workload);
            continue;
        }
        let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &candidate.namespace);
        match replica_sets.get_metadata_opt(&candidate.name).await {
            Ok(Some(replica_set)) => {
                let deployment = replica_set
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment");
                if let Some(deployment) = deployment {
                    let workload = Workload::deployment(candidate, &deployment.name);
                    unique.insert((workload.namespace.clone(), workload.kind, workload.name.clone()));
                    workloads.push(workload);
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                %error,
                replicaset = %format!("{}/{}", candidate.namespace, candidate.name),
                "cannot read the ReplicaSet of a pod that was not injected; checking again later"
            ),
        }
    }
    let (planned, _) = missed::plan_restarts(workloads, left);
    let deferred = finding.candidates.len() - looked_at;
    // Whole seconds, as `kubectl rollout restart` writes them.
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let dynakube_name = dynakube.name_any();
    let mut restarted = Vec::new();
    for workload in planned {
        let patch = missed::restart_patch(&workload, &dynakube_name, &now);
        let params = PatchParams {
            field_manager: Some(INJECTION_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let client = ctx.client.clone();
        let ns = workload.namespace.as_str();
        let result = match workload.kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(client, ns)
                .patch(&workload.name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client, ns)
                .patch(&workload.name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client, ns)
                .patch(&workload.name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                tracing::info!(%workload, pod = %workload.pod, "restarted a workload whose pod was not injected");
                ctx.config
                    .metrics
                    .missed_injection_restarted(&dynakube.namespace().unwrap_or_default(), &dynakube_name);
                ctx.restarts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(uid.clone())
                    .or_default()
                    .push_back(Instant::now());
                restarted.push(workload);
            }
            Err(error) => {
                tracing::warn!(%error, %workload, "cannot restart a workload whose pod was not injected; trying again at the next check")
            }
        }
    }
    (restarted, deferred)
}
