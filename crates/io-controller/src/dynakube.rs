//! The DynaKube reconciler: tokens, connection info, OneAgent version, the OneAgent DaemonSet, status.
//!
//! Each step reads what it needs, writes only when the desired object differs, and reports in the status.
//! Tenant calls are throttled by the DynaKube's API request threshold; nothing sleeps: waiting is a requeue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use io_dynakube_inputs::{TenantSettings, secret_data};
use io_tenant_client::{AgentSelector, ImageComponent, TenantClient, TenantError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use pure_api::dynakube::v1beta1::{
    CommunicationHost, ConnectionInfoStatus, OneAgentInstance, OneAgentStatus, VersionStatus,
};
use pure_api::dynakube::{DynaKube, DynaKubeStatus, names};
use pure_desired::versions::Lookup;

pub(crate) use crate::error::kube_error;
pub use crate::error::{Fix, ReconcileError};
use crate::status;
pub(crate) use crate::status::{now, upsert_condition};

/// Field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "dynatrace-operator";
/// Condition type reporting the token Secret and scopes.
pub const TOKENS_CONDITION: &str = "Tokens";
/// Condition type reporting whether the Dynatrace API answers.
pub const API_CONDITION: &str = "DynatraceAPI";
/// When to reconcile again without a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeue {
    /// After success: the version and connection info are re-checked at the threshold anyway.
    pub resync: Duration,
    /// After a problem the user must fix (tokens, configuration).
    pub fix_backoff: Duration,
    /// After the tenant throttled us or was unavailable.
    pub tenant_backoff: Duration,
    /// How long a new OneAgent pod may take to become ready before its node blocks the rollout.
    pub ready_timeout: Duration,
    /// How often a legacy OneAgent resource asks the tenant for its tokens, environment and latest
    /// version (the reference: tokens every 5 min, versions every 15 min).
    pub legacy_probe_interval: Duration,
    /// How often each injecting DynaKube's namespaces are checked for pods the webhook missed (see
    /// [`crate::injection`]); also the window of the restart budget.
    pub missed_injection_check: Duration,
}

impl Default for Requeue {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(5 * 60),
            fix_backoff: Duration::from_secs(30),
            tenant_backoff: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(
                pure_desired::rollout::DEFAULT_READY_TIMEOUT_SECONDS.unsigned_abs(),
            ),
            legacy_probe_interval: Duration::from_secs(
                u64::from(pure_desired::legacy::TOKEN_PROBE_MINUTES) * 60,
            ),
            missed_injection_check: Duration::from_secs(5 * 60),
        }
    }
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Version of this operator, written into the deployment metadata.
    pub operator_version: String,
    /// Requeue intervals.
    pub requeue: Requeue,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
    /// Who publishes the Kubernetes events about notable changes.
    pub reporter: Reporter,
    /// Per object (`namespace/name`), the resourceVersion of the token Secret whose scopes were last
    /// checked. A changed Secret is checked at once instead of after the request threshold.
    pub checked_secrets: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// Reads what a DynaKube or OneAgent refers to (Secrets, ConfigMaps, the cluster id).
    pub inputs: io_dynakube_inputs::Reader,
    /// Whether the cluster is OpenShift, read from the API server's groups on first use.
    pub openshift: Arc<tokio::sync::OnceCell<bool>>,
}

impl Context {
    /// Whether the token Secret at `version` differs from the one last checked for `key`.
    pub(crate) fn secret_changed(&self, key: &str, version: Option<&str>) -> bool {
        let checked = self
            .checked_secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        checked.get(key).map(String::as_str) != version
    }

    /// Remembers that the token Secret at `version` was checked for `key`.
    pub(crate) fn secret_checked(&self, key: String, version: Option<String>) {
        let mut checked = self
            .checked_secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match version {
            Some(version) => checked.insert(key, version),
            None => checked.remove(&key),
        };
    }
}

/// Events a reconcile collects and publishes at its end (publishing failures are only logged).
#[derive(Default)]
pub(crate) struct Notes(Vec<Event>);

impl Notes {
    /// A normal event: something changed as intended.
    pub(crate) fn normal(&mut self, reason: &str, note: String) {
        self.push(EventType::Normal, reason, note);
    }

    /// A warning: something the user should look at.
    pub(crate) fn warning(&mut self, reason: &str, note: String) {
        self.push(EventType::Warning, reason, note);
    }

    fn push(&mut self, type_: EventType, reason: &str, note: String) {
        self.0.push(Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        });
    }

    /// Publishes the events about `object`.
    pub(crate) async fn publish(self, ctx: &Context, object: &ObjectReference) {
        if self.0.is_empty() {
            return;
        }
        // A recorder of its own: a shared one folds events of the same reason into a series that keeps
        // the first note, which would hide what changed (for example the new version). Events are only
        // published on changes, so there is nothing to fold.
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        for event in self.0 {
            if let Err(error) = recorder.publish(&event, object).await {
                tracing::warn!(%error, reason = %event.reason, "cannot publish an event");
            }
        }
    }
}

/// How the end of a reconcile shows in the status and events.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    /// The new phase; `None` keeps the phase (throttling and outages are nobody's mistake).
    phase: Option<String>,
    /// The condition to set: type, status, reason and message.
    condition: Option<(&'static str, &'static str, &'static str, String)>,
    /// The warning event's reason when the condition changes to or within `False`.
    warning: Option<&'static str>,
}

/// Sorts a reconcile's result into its phase, condition and warning (pure).
fn verdict(result: &Result<Converged, ReconcileError>, tenant_backoff: Duration) -> Verdict {
    match result {
        Ok(converged) => Verdict {
            phase: Some(converged.phase.clone()),
            condition: Some((
                API_CONDITION,
                "True",
                "Reachable",
                "the Dynatrace API answered the last calls".to_owned(),
            )),
            warning: None,
        },
        Err(ReconcileError::UserFixable(fix)) => Verdict {
            phase: Some("Error".to_owned()),
            condition: Some((fix.condition, "False", fix.reason, fix.message.clone())),
            warning: Some(fix.reason),
        },
        // A rejected token is the user's to fix, not an outage of the API.
        Err(ReconcileError::Tenant(e @ TenantError::Unauthorized { .. })) => Verdict {
            phase: Some("Error".to_owned()),
            condition: Some((TOKENS_CONDITION, "False", "TokenError", e.to_string())),
            warning: Some("TokenError"),
        },
        Err(ReconcileError::Tenant(e)) if e.is_transient() => Verdict {
            phase: None,
            condition: Some((
                API_CONDITION,
                "False",
                "Unavailable",
                format!("{e}; retrying in {} s", tenant_backoff.as_secs()),
            )),
            warning: Some("DynatraceAPIUnavailable"),
        },
        Err(ReconcileError::Tenant(e)) => Verdict {
            phase: Some("Error".to_owned()),
            condition: Some((
                API_CONDITION,
                "False",
                "Error",
                format!("{e}; check spec.apiUrl, the proxy and the tokens"),
            )),
            warning: Some("DynatraceAPIError"),
        },
        Err(_) => Verdict {
            phase: Some("Error".to_owned()),
            condition: None,
            warning: None,
        },
    }
}

/// The DynaKube's token Secret: its resourceVersion and tokens. A missing Secret or key is the user's to
/// fix, and the message says how.
pub(crate) async fn read_tokens(
    ctx: &Context,
    dynakube: &DynaKube,
) -> Result<(Option<String>, pure_desired::tokens::Tokens), ReconcileError> {
    Ok(ctx.inputs.dynakube_tokens(dynakube).await?)
}

/// Whether a tenant request last made at `last` may be made again (the shared throttling rule).
fn due(last: Option<&Time>, threshold_minutes: u32) -> bool {
    pure_desired::throttle::request_due(
        last.map(pure_desired::throttle::unix_seconds),
        Timestamp::now().as_second(),
        threshold_minutes,
    )
}

/// Reconciles one DynaKube and writes its status.
pub async fn reconcile(dynakube: Arc<DynaKube>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_and_report(&dynakube, &ctx).await;
    ctx.metrics
        .observe("dynakube", Outcome::label(&result), started.elapsed());
    result.map(|outcome| outcome.action(&ctx.requeue))
}

/// How a reconcile that wrote its status ended.
pub(crate) enum Outcome {
    /// Done; look again at the latest after this (if sooner than the resync).
    Converged(Option<Duration>),
    /// Waiting for the user to fix something.
    UserFixable,
    /// The tenant throttled us or was down.
    TenantUnavailable,
}

impl Outcome {
    /// Sorts a reconcile's result: problems the user or the tenant must solve are outcomes with their own
    /// backoff; anything else stays an error for the controller's error policy.
    pub(crate) fn of(result: Result<Option<Duration>, ReconcileError>) -> Result<Self, ReconcileError> {
        match result {
            Ok(recheck) => Ok(Self::Converged(recheck)),
            Err(e) if e.needs_user() => Ok(Self::UserFixable),
            Err(e) if e.is_transient() => Ok(Self::TenantUnavailable),
            Err(other) => Err(other),
        }
    }

    /// The metric label of a result.
    pub(crate) fn label(result: &Result<Self, ReconcileError>) -> &'static str {
        match result {
            Ok(Self::Converged(_)) => "success",
            Ok(Self::UserFixable) => "user_error",
            Ok(Self::TenantUnavailable) => "tenant_unavailable",
            Err(e) => e.metric_label(),
        }
    }

    /// When to reconcile again.
    pub(crate) fn action(&self, requeue: &Requeue) -> Action {
        match self {
            // A rollout or update waiting for a pod looks again when that pod times out, not later.
            Self::Converged(recheck) => {
                Action::requeue(recheck.map_or(requeue.resync, |r| r.min(requeue.resync)))
            }
            Self::UserFixable => Action::requeue(requeue.fix_backoff),
            Self::TenantUnavailable => Action::requeue(requeue.tenant_backoff),
        }
    }
}

async fn reconcile_and_report(dynakube: &DynaKube, ctx: &Context) -> Result<Outcome, ReconcileError> {
    let mut status = reported_status(dynakube.status.as_ref());
    let mut notes = Notes::default();
    let result = converge(dynakube, ctx, &mut status, &mut notes).await;
    let verdict = verdict(&result, ctx.requeue.tenant_backoff);
    if let Some((type_, value, reason, message)) = verdict.condition {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let generation = dynakube.metadata.generation;
        if upsert_condition(conditions, type_, value, reason, &message, generation)
            && let Some(warning) = verdict.warning
        {
            notes.warning(warning, message);
        }
    }
    if let Some(phase) = verdict.phase {
        status.phase = Some(phase);
    }
    write_status(dynakube, ctx, status).await?;
    notes.publish(ctx, &dynakube.object_ref(&())).await;
    Outcome::of(result.map(|converged| converged.recheck))
}

/// Backs off after a failed reconcile.
pub fn error_policy(dynakube: Arc<DynaKube>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    tracing::warn!(dynakube = %dynakube.name_any(), %error, "reconcile failed");
    Action::requeue(ctx.requeue.fix_backoff)
}

/// The condition types the DynaKube controller owns; the namespace controller owns `NamespaceConflict`.
pub const OWNED_CONDITIONS: [&str; 3] = [TOKENS_CONDITION, API_CONDITION, ROLLOUT_CONDITION];

/// What this controller reported last: the start of this reconcile's status. Fields it never writes and
/// other controllers' conditions are left out, so they are neither re-applied nor taken over.
fn reported_status(stored: Option<&DynaKubeStatus>) -> DynaKubeStatus {
    let Some(stored) = stored else {
        return DynaKubeStatus::default();
    };
    DynaKubeStatus {
        phase: stored.phase.clone(),
        updated_timestamp: stored.updated_timestamp.clone(),
        conditions: status::owned_conditions(stored.conditions.as_ref(), &OWNED_CONDITIONS),
        one_agent: stored.one_agent.clone(),
        code_modules: stored.code_modules.clone(),
        dynatrace_api: stored.dynatrace_api.clone(),
        ..DynaKubeStatus::default()
    }
}

/// Applies the status when it differs from what this controller reported last.
async fn write_status(
    dynakube: &DynaKube,
    ctx: &Context,
    mut status: DynaKubeStatus,
) -> Result<(), ReconcileError> {
    let what = || {
        format!(
            "writing the status of DynaKube {}:{}",
            dynakube.namespace().unwrap_or_default(),
            dynakube.name_any()
        )
    };
    let took_over = status::take_over_status(&ctx.client, dynakube, status::DYNAKUBE_MANAGER)
        .await
        .map_err(kube_error(what()))?;
    let mut previous = reported_status(dynakube.status.as_ref());
    previous.updated_timestamp = None;
    status.updated_timestamp = None;
    if previous == status && !took_over {
        return Ok(());
    }
    status.updated_timestamp = Some(now());
    status::apply_status(&ctx.client, dynakube, status::DYNAKUBE_MANAGER, &status)
        .await
        .map_err(kube_error(what()))?;
    ctx.metrics.status_written("dynakube");
    Ok(())
}

/// Sets the Tokens condition; returns whether it changed.
fn set_tokens_condition(
    status: &mut DynaKubeStatus,
    dynakube: &DynaKube,
    ok: bool,
    reason: &str,
    message: &str,
) -> bool {
    let value = if ok { "True" } else { "False" };
    upsert_condition(
        status.conditions.get_or_insert_with(Vec::new),
        TOKENS_CONDITION,
        value,
        reason,
        message,
        dynakube.metadata.generation,
    )
}

/// What a successful reconcile reached.
struct Converged {
    /// The DynaKube's phase.
    phase: String,
    /// When to look again at the latest, if sooner than the resync.
    recheck: Option<Duration>,
}

impl Converged {
    fn phase(phase: &str) -> Self {
        Self {
            phase: phase.to_owned(),
            recheck: None,
        }
    }
}

/// Brings the cluster to the desired state; returns the phase.
async fn converge(
    dynakube: &DynaKube,
    ctx: &Context,
    status: &mut DynaKubeStatus,
    notes: &mut Notes,
) -> Result<Converged, ReconcileError> {
    let namespace = dynakube.namespace().unwrap_or_default();
    let threshold = dynakube.api_request_threshold_minutes();

    let (secret_version, tokens) = read_tokens(ctx, dynakube).await?;
    let tenant = tenant_client(dynakube, ctx, &tokens).await?;

    let last_scopes = status
        .dynatrace_api
        .as_ref()
        .and_then(|a| a.last_token_scope_request.as_ref());
    let check_key = format!("{namespace}/{}", dynakube.name_any());
    // A changed Secret is checked at once: the user fixed (or broke) a token and expects to see it.
    if due(last_scopes, threshold) || ctx.secret_changed(&check_key, secret_version.as_deref()) {
        ctx.secret_checked(check_key, secret_version);
        let mut granted = BTreeMap::new();
        for kind in [
            pure_desired::tokens::TokenKind::Api,
            pure_desired::tokens::TokenKind::Paas,
            pure_desired::tokens::TokenKind::DataIngest,
        ] {
            if let Some(token) = tokens.get(kind) {
                granted.insert(kind, tenant.token_scopes(token).await?);
            }
        }
        let required = pure_desired::tokens::required_scopes(dynakube, &tokens);
        let secret = format!("{namespace}:{}", dynakube.tokens_secret_name());
        let missing = pure_desired::tokens::missing_scopes(&required, &granted, &secret);
        status
            .dynatrace_api
            .get_or_insert_with(Default::default)
            .last_token_scope_request = Some(now());
        if !missing.is_empty() {
            return Err(ReconcileError::token(missing.join("; ")));
        }
        let was_failing = failing_tokens_message(status).is_some();
        if set_tokens_condition(
            status,
            dynakube,
            true,
            "TokenReady",
            "the tokens are valid and have every needed scope",
        ) && was_failing
        {
            notes.normal("TokenReady", "the tokens are valid again".to_owned());
        }
    } else if let Some(message) = failing_tokens_message(status) {
        // Within the threshold, a failed check is repeated from the status instead of calling the tenant.
        return Err(ReconcileError::token(message));
    }

    let one_agent = status.one_agent.get_or_insert_with(OneAgentStatus::default);
    connection_info(dynakube, ctx, &tenant, one_agent, threshold).await?;
    if let Some(pull_secret) = pure_desired::objects::pull_secret(dynakube, tokens.paas_or_api())? {
        apply(ctx, &namespace, pull_secret).await?;
    }
    let metadata = pure_desired::objects::deployment_metadata_config_map(
        dynakube,
        &cluster_id(ctx).await?,
        &ctx.operator_version,
    )?;
    apply(ctx, &namespace, metadata).await?;
    resolve_codemodules_version(dynakube, &tenant, &mut status.code_modules, threshold).await?;

    if !dynakube.needs_one_agent() {
        let name = names::one_agent_daemonset(&dynakube.name_any());
        if delete_daemonset(ctx, &namespace, &name).await? {
            notes.normal(
                "DaemonSetDeleted",
                format!("deleted the OneAgent DaemonSet {name}: the mode runs no OneAgent on the nodes"),
            );
        }
        // Nothing of the OneAgent on the nodes is reported any more.
        one_agent.version = VersionStatus::default();
        one_agent.instances = None;
        one_agent.last_instance_status_update = None;
        one_agent.healthcheck = None;
        one_agent.rollout = None;
        status::remove_condition(&mut status.conditions, ROLLOUT_CONDITION);
        return Ok(Converged::phase("Running"));
    }
    resolve_version(dynakube, &tenant, one_agent, threshold, notes).await?;
    if one_agent
        .connection_info_status
        .as_ref()
        .and_then(|c| c.communication_hosts.as_ref())
        .is_none_or(Vec::is_empty)
    {
        tracing::info!(dynakube = %dynakube.name_any(), "no communication hosts yet; postponing the OneAgent DaemonSet");
        return Ok(Converged::phase("Deploying"));
    }
    let healthcheck = pure_desired::pod::HealthCheck::oneagent_default();
    one_agent.healthcheck = Some(healthcheck.to_status());
    let facts = pure_desired::oneagent::Facts {
        image: one_agent.version.image_id.clone().unwrap_or_default(),
        version: one_agent.version.version.clone(),
        cluster_id: cluster_id(ctx).await?,
        operator_version: ctx.operator_version.clone(),
        healthcheck: Some(healthcheck.clone()),
    };
    let daemonset = pure_desired::oneagent::daemonset(dynakube, &facts)?;
    let applied = apply_daemonset(
        ctx,
        &namespace,
        (daemonset, pure_desired::hash::TEMPLATE_HASH_ANNOTATION),
        notes,
    )
    .await?;
    delete_daemonset(
        ctx,
        &namespace,
        &names::legacy_classic_daemonset(&dynakube.name_any()),
    )
    .await?;
    let selector = applied
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let pods = daemonset_pods(ctx, &namespace, &selector).await?;
    let instances: BTreeMap<String, OneAgentInstance> = pods
        .iter()
        .map(|pod| {
            let instance = OneAgentInstance {
                pod_name: Some(pod.name.clone()),
                ip_address: pod.host_ip.clone(),
            };
            (pod.node.clone(), instance)
        })
        .collect();
    if one_agent.instances.as_ref() != Some(&instances) {
        one_agent.instances = Some(instances);
        one_agent.last_instance_status_update = Some(now());
    }
    let progress = rollout(&applied, &pods, one_agent.version.version.as_deref(), ctx);
    let not_created = pods_not_created(ctx, &applied).await?;
    report_rollout(status, dynakube, &progress, not_created.as_deref(), notes);
    Ok(Converged {
        // Pods the cluster refuses need the user: the DynaKube is not on its way to Running.
        phase: if not_created.is_some() {
            "Error".to_owned()
        } else {
            pure_desired::rollout::daemonset_phase(&applied).to_owned()
        },
        recheck: progress
            .recheck_in
            .map(|seconds| Duration::from_secs(seconds.unsigned_abs() + 1))
            .into_iter()
            .chain(missing_pods(&applied).then_some(MISSING_PODS_RECHECK))
            .min(),
    })
}

/// How soon to look again while nodes lack their OneAgent pod: the DaemonSet controller's `FailedCreate`
/// event, which says why, does not cause a reconcile by itself.
pub(crate) const MISSING_PODS_RECHECK: Duration = Duration::from_secs(10);

/// Whether nodes the DaemonSet wants a pod on have none.
pub(crate) fn missing_pods(daemonset: &DaemonSet) -> bool {
    daemonset
        .status
        .as_ref()
        .is_some_and(|s| s.current_number_scheduled < s.desired_number_scheduled)
}

/// Why the DaemonSet cannot create its pods, when nodes lack their pod and the DaemonSet controller
/// reported a `FailedCreate` (a missing ServiceAccount, Pod Security, an SCC, a quota). Events are read only
/// while pods are missing, so a healthy DaemonSet costs no call.
pub(crate) async fn pods_not_created(
    ctx: &Context,
    daemonset: &DaemonSet,
) -> Result<Option<String>, ReconcileError> {
    let Some(ds_status) = daemonset.status.as_ref().filter(|_| missing_pods(daemonset)) else {
        return Ok(None);
    };
    let namespace = daemonset.namespace().unwrap_or_default();
    let name = daemonset.name_any();
    let selector = format!("involvedObject.kind=DaemonSet,involvedObject.name={name},reason=FailedCreate");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(ctx.client.clone(), &namespace)
        .list(&kube::api::ListParams::default().fields(&selector))
        .await
        .map_err(kube_error(format!(
            "reading the events of DaemonSet {namespace}:{name}"
        )))?;
    // Only failures of this DaemonSet object (not of an earlier one of the same name).
    let uid = daemonset.uid();
    let latest = events
        .items
        .iter()
        .filter(|e| uid.is_none() || e.involved_object.uid == uid)
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
        })
        .and_then(|e| e.message.clone());
    Ok(pure_desired::rollout::pods_not_created(
        &name,
        ds_status.desired_number_scheduled,
        ds_status.current_number_scheduled,
        latest.as_deref(),
    ))
}

/// A OneAgent pod on a node.
pub(crate) struct NodePod {
    /// The node's name.
    pub node: String,
    /// The pod's name.
    pub name: String,
    /// The node's IP, as the pod reports it.
    pub host_ip: Option<String>,
    /// What the rollout needs to know about it.
    pub rollout: pure_desired::rollout::RolloutPod,
}

/// The scheduled pods matching a DaemonSet's selector labels.
pub(crate) async fn daemonset_pods(
    ctx: &Context,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<NodePod>, ReconcileError> {
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let what = || format!("listing the OneAgent pods in {namespace} ({selector})");
    // In pages: a pod per node is megabytes of JSON at once on a large cluster. Each page is read into
    // [`PodFacts`], not `Pod`: a OneAgent pod with its spec and managedFields is tens of kB in memory,
    // the facts a few hundred bytes (at 500 nodes the page of 100 full pods was the largest part of the
    // operator's peak heap).
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"));
    let mut params = kube::api::ListParams::default()
        .labels(&selector)
        .limit(crate::watches::PAGE_SIZE);
    let mut found = Vec::new();
    loop {
        let http_request = request
            .list(&params)
            .map_err(|e| kube_error(what())(kube::Error::BuildRequest(e)))?;
        let page: PodFactsList = ctx
            .client
            .request(http_request)
            .await
            .map_err(kube_error(what()))?;
        found.extend(page.items.into_iter().filter_map(node_pod));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(found)
}

/// A page of [`PodFacts`].
#[derive(serde::Deserialize)]
struct PodFactsList {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
    items: Vec<PodFacts>,
}

/// The fields of a pod that [`node_pod`] reads; serde skips the rest of the JSON without keeping it.
#[derive(serde::Deserialize)]
struct PodFacts {
    metadata: PodFactsMeta,
    spec: Option<PodFactsSpec>,
    status: Option<PodFactsStatus>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodFactsMeta {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodFactsSpec {
    node_name: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodFactsStatus {
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
    #[serde(default)]
    conditions: Vec<PodFactsCondition>,
}

#[derive(serde::Deserialize)]
struct PodFactsCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

/// What the rollout and the status need of a OneAgent pod; `None` for a pod not scheduled yet.
fn node_pod(pod: PodFacts) -> Option<NodePod> {
    let node = pod.spec?.node_name?;
    let name = pod.metadata.name.unwrap_or_default();
    let rollout = pure_desired::rollout::RolloutPod {
        name: name.clone(),
        node: node.clone(),
        template_generation: pod
            .metadata
            .labels
            .get(pure_desired::rollout::POD_TEMPLATE_GENERATION_LABEL)
            .and_then(|g| g.parse().ok()),
        ready: pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, pure_desired::throttle::unix_seconds),
    };
    Some(NodePod {
        node,
        name,
        host_ip: pod.status.and_then(|s| s.host_ip),
        rollout,
    })
}

/// Condition type reporting the OneAgent rollout.
pub const ROLLOUT_CONDITION: &str = "OneAgentRollout";

/// The rollout's progress from the applied DaemonSet and its pods.
fn rollout(
    daemonset: &DaemonSet,
    pods: &[NodePod],
    version: Option<&str>,
    ctx: &Context,
) -> pure_desired::rollout::RolloutProgress {
    let status = daemonset.status.as_ref();
    let view = pure_desired::rollout::RolloutDaemonSet {
        template_generation: daemonset
            .annotations()
            .get(pure_desired::rollout::TEMPLATE_GENERATION_ANNOTATION)
            .and_then(|g| g.parse().ok()),
        desired_nodes: status.map_or(0, |s| s.desired_number_scheduled),
        observed: status.is_some_and(|s| s.observed_generation >= daemonset.metadata.generation),
    };
    let pods: Vec<pure_desired::rollout::RolloutPod> = pods.iter().map(|p| p.rollout.clone()).collect();
    let timeout = i64::try_from(ctx.requeue.ready_timeout.as_secs()).unwrap_or(i64::MAX);
    pure_desired::rollout::rollout_progress(&view, &pods, version, Timestamp::now().as_second(), timeout)
}

/// Puts the rollout into the status and its condition, with an event when it gets blocked or completes.
fn report_rollout(
    status: &mut DynaKubeStatus,
    dynakube: &DynaKube,
    progress: &pure_desired::rollout::RolloutProgress,
    not_created: Option<&str>,
    notes: &mut Notes,
) {
    let (value, reason, message) = match (not_created, &progress.status.blocked_node, progress.complete) {
        (Some(failure), _, _) => (
            "False",
            pure_desired::rollout::PODS_NOT_CREATED_REASON,
            failure.to_owned(),
        ),
        (None, Some(_), _) => (
            "False",
            "Blocked",
            progress.status.message.clone().unwrap_or_default(),
        ),
        (None, None, true) => (
            "True",
            "RolledOut",
            progress.status.message.clone().unwrap_or_default(),
        ),
        (None, None, false) => (
            "False",
            "Progressing",
            progress.status.message.clone().unwrap_or_default(),
        ),
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let before = conditions
        .iter()
        .find(|c| c.type_ == ROLLOUT_CONDITION)
        .map(|c| c.reason.clone());
    if upsert_condition(
        conditions,
        ROLLOUT_CONDITION,
        value,
        reason,
        &message,
        dynakube.metadata.generation,
    ) && before.as_deref() != Some(reason)
    {
        match reason {
            "Blocked" => notes.warning("RolloutBlocked", message.clone()),
            pure_desired::rollout::PODS_NOT_CREATED_REASON => {
                notes.warning("DaemonSetFailedCreate", message.clone())
            }
            "RolledOut" if before.is_some() => notes.normal("RolloutComplete", message.clone()),
            _ => {}
        }
    }
    if let Some(one_agent) = status.one_agent.as_mut() {
        one_agent.rollout = Some(progress.status.clone());
    }
}

/// The message of a failed Tokens condition, if the last check failed.
fn failing_tokens_message(status: &DynaKubeStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == TOKENS_CONDITION && c.status == "False")
        .map(|c| c.message.clone())
}

/// The UID of kube-system, the cluster's id.
pub(crate) async fn cluster_id(ctx: &Context) -> Result<String, ReconcileError> {
    Ok(ctx.inputs.cluster_id().await?)
}

/// API groups only OpenShift serves; either one marks the cluster as OpenShift.
const OPENSHIFT_GROUPS: [&str; 2] = ["security.openshift.io", "route.openshift.io"];

/// Whether the cluster is OpenShift (it serves an OpenShift API group). Read once per process: a cluster
/// does not turn into OpenShift.
pub(crate) async fn is_openshift(ctx: &Context) -> Result<bool, ReconcileError> {
    ctx.openshift
        .get_or_try_init(|| async {
            let groups = ctx
                .client
                .list_api_groups()
                .await
                .map_err(kube_error("listing the API groups to detect OpenShift"))?;
            Ok(groups
                .groups
                .iter()
                .any(|g| OPENSHIFT_GROUPS.contains(&g.name.as_str())))
        })
        .await
        .copied()
}

/// A tenant client configured from the DynaKube: API URL, tokens, proxy, trusted CAs, network zone.
async fn tenant_client(
    dynakube: &DynaKube,
    ctx: &Context,
    tokens: &pure_desired::tokens::Tokens,
) -> Result<TenantClient, ReconcileError> {
    let namespace = dynakube.namespace().unwrap_or_default();
    let settings = TenantSettings::of_dynakube(dynakube, &namespace);
    build_tenant_client(
        ctx,
        &settings,
        tokens.api_token.clone(),
        tokens.paas_token.clone(),
    )
    .await
}

/// A tenant client from the settings, whose calls are counted in the operator's metrics.
pub(crate) async fn build_tenant_client(
    ctx: &Context,
    settings: &TenantSettings<'_>,
    api_token: String,
    paas_token: Option<String>,
) -> Result<TenantClient, ReconcileError> {
    Ok(ctx
        .inputs
        .tenant_client(
            settings,
            api_token,
            paas_token,
            Some(Arc::new(ctx.metrics.clone())),
        )
        .await?)
}

/// Refreshes connection info when due or when the tenant-token Secret is missing.
async fn connection_info(
    dynakube: &DynaKube,
    ctx: &Context,
    tenant: &TenantClient,
    one_agent: &mut OneAgentStatus,
    threshold: u32,
) -> Result<(), ReconcileError> {
    let namespace = dynakube.namespace().unwrap_or_default();
    let secret_name = names::tenant_secret(&dynakube.name_any());
    let secret_exists = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_metadata_opt(&secret_name)
        .await
        .map_err(kube_error(format!("reading {namespace}:{secret_name}")))?
        .is_some();
    let last = one_agent
        .connection_info_status
        .as_ref()
        .and_then(|c| c.last_request.as_ref());
    let now_seconds = Timestamp::now().as_second();
    if !pure_desired::throttle::connection_info_due(
        secret_exists,
        last.map(pure_desired::throttle::unix_seconds),
        now_seconds,
        threshold,
    ) {
        return Ok(());
    }
    let info = tenant
        .connection_info()
        .await
        .map_err(|e| connection_info_error(e, dynakube.spec.network_zone.as_deref()))?;
    apply(
        ctx,
        &namespace,
        pure_desired::objects::tenant_secret(dynakube, &info.tenant_token)?,
    )
    .await?;
    let connection = pure_desired::objects::connection_info_config_map(
        dynakube,
        &info.tenant_uuid,
        &info.formatted_endpoints,
    )?;
    apply(ctx, &namespace, connection).await?;
    let hosts: Vec<CommunicationHost> = info
        .communication_hosts
        .iter()
        .map(|h| CommunicationHost {
            protocol: Some(h.protocol.clone()),
            host: Some(h.host.clone()),
            port: Some(u32::from(h.port)),
        })
        .collect();
    let previous_last = one_agent
        .connection_info_status
        .as_ref()
        .and_then(|c| c.last_request.clone());
    one_agent.connection_info_status = Some(ConnectionInfoStatus {
        tenant_uuid: Some(info.tenant_uuid),
        endpoints: Some(info.formatted_endpoints),
        // Only a successful answer with hosts counts as a request (as in the reference).
        last_request: if hosts.is_empty() {
            previous_last
        } else {
            Some(now())
        },
        communication_hosts: Some(hosts),
    });
    Ok(())
}

/// A connection-info request the environment rejected (HTTP 400) is the user's to fix: most often a
/// network zone it does not accept. The message names the zone and what to change.
pub(crate) fn connection_info_error(error: TenantError, network_zone: Option<&str>) -> ReconcileError {
    match (&error, network_zone.filter(|z| !z.is_empty())) {
        (
            TenantError::Server {
                status: 400, message, ..
            },
            Some(zone),
        ) => ReconcileError::settings(
            "NetworkZoneRejected",
            format!(
                "the Dynatrace API rejected the connection info for network zone \"{zone}\" (HTTP 400: {message}); \
                 set spec.networkZone to a network zone that exists in the environment, or remove it to use \
                 the default zone"
            ),
        ),
        (
            TenantError::Server {
                status: 400, message, ..
            },
            None,
        ) => ReconcileError::settings(
            "ConnectionInfoRejected",
            format!(
                "the Dynatrace API rejected the connection info request (HTTP 400: {message}); check spec.apiUrl \
                 and the environment's deployment settings"
            ),
        ),
        _ => ReconcileError::Tenant(error),
    }
}

/// Looks the OneAgent version and image up when the plan says so (source or spec changed, or the last
/// look-up is older than the threshold), refusing automatic downgrades.
async fn resolve_version(
    dynakube: &DynaKube,
    tenant: &TenantClient,
    one_agent: &mut OneAgentStatus,
    threshold: u32,
    notes: &mut Notes,
) -> Result<(), ReconcileError> {
    let current = one_agent.version.source.is_some().then_some(&one_agent.version);
    let now_seconds = Timestamp::now().as_second();
    let Some(plan) =
        pure_desired::versions::oneagent_version_plan(dynakube, current, now_seconds, threshold)?
    else {
        return Ok(());
    };
    if !plan.should_probe() {
        return Ok(());
    }
    let (image, version) = match plan.lookup {
        // No registry client yet: the image is used as written, without resolving its digest.
        Lookup::CustomImage { image } => (image, None),
        Lookup::PublicRegistry => {
            let latest = tenant.latest_image(ImageComponent::OneAgent).await?;
            (format!("{}:{}", latest.source, latest.tag), Some(latest.tag))
        }
        Lookup::TenantRegistry { image, version } => {
            let target = match version {
                Some(version) => version,
                None => tenant.latest_agent_version(&AgentSelector::host_agent()).await?,
            };
            (image, Some(target))
        }
        // Only code-module plans look up a bare version.
        Lookup::TenantVersion { .. } => return Ok(()),
    };
    if let Some(target) = &version
        && let Err(rejected) =
            pure_desired::versions::accept_version(plan.downgrade_baseline.as_deref(), target)
    {
        tracing::warn!(dynakube = %dynakube.name_any(), %rejected, "keeping the current OneAgent version");
        // Once per probe, at most every threshold minutes; the recorder folds repeats into a series.
        notes.warning("DowngradeRefused", rejected.to_string());
        one_agent.version.last_probe_timestamp = Some(now());
        return Ok(());
    }
    if one_agent.version.image_id.as_deref() != Some(image.as_str()) {
        notes.normal(
            "OneAgentVersion",
            format!(
                "OneAgent {} from {} ({image})",
                version.as_deref().unwrap_or("of the image"),
                plan.source.as_str()
            ),
        );
    }
    one_agent.version = VersionStatus {
        source: Some(plan.source.as_str().to_owned()),
        image_id: Some(image),
        version,
        last_probe_timestamp: Some(now()),
    };
    Ok(())
}

/// Looks the code-module version up when the plan says so and writes it to `status.codeModules`, where
/// the CSI provisioner reads which version to install on each node. Only DynaKubes that use the CSI driver
/// need it (without it, the init container downloads the environment's latest or pinned version itself,
/// and no look-up is spent); for the others the status is cleared.
async fn resolve_codemodules_version(
    dynakube: &DynaKube,
    tenant: &TenantClient,
    code_modules: &mut Option<VersionStatus>,
    threshold: u32,
) -> Result<(), ReconcileError> {
    // Also when the driver is only used if installed: the operator does not know whether it is, and one
    // look-up per threshold is cheap.
    if !dynakube.csi_driver_use().may_use() {
        *code_modules = None;
        return Ok(());
    }
    let current = code_modules.as_ref().filter(|c| c.source.is_some());
    let now_seconds = Timestamp::now().as_second();
    let Some(plan) =
        pure_desired::versions::codemodules_version_plan(dynakube, current, now_seconds, threshold)
    else {
        *code_modules = None;
        return Ok(());
    };
    if !plan.should_probe() {
        return Ok(());
    }
    let (image, version) = match plan.lookup {
        Lookup::CustomImage { image } => (Some(image), None),
        Lookup::PublicRegistry => {
            let latest = tenant.latest_image(ImageComponent::CodeModules).await?;
            (
                Some(format!("{}:{}", latest.source, latest.tag)),
                Some(latest.tag),
            )
        }
        // A pinned version is written as it is: whether the environment has it shows where it is
        // downloaded (the CSI provisioner's events, the init container's log).
        Lookup::TenantVersion {
            version: Some(version),
        } => (None, Some(version)),
        Lookup::TenantVersion { version: None } => (
            None,
            Some(
                tenant
                    .latest_agent_version(&AgentSelector::code_modules())
                    .await?,
            ),
        ),
        // Only OneAgent plans use the environment's image registry.
        Lookup::TenantRegistry { .. } => return Ok(()),
    };
    *code_modules = Some(VersionStatus {
        source: Some(plan.source.as_str().to_owned()),
        image_id: image,
        version,
        last_probe_timestamp: Some(now()),
    });
    Ok(())
}

/// Server-side applies an object built by `desired`, which sets its owner.
pub(crate) async fn apply<K>(ctx: &Context, namespace: &str, object: K) -> Result<(), ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(kube_error(format!(
        "applying {} {namespace}:{name}",
        K::kind(&())
    )))?;
    Ok(())
}

/// Creates or updates the DaemonSet when its template hash changed; recreates it when the selector
/// changed (selectors are immutable). Returns the DaemonSet as the cluster has it.
pub(crate) async fn apply_daemonset(
    ctx: &Context,
    namespace: &str,
    (daemonset, hash_annotation): (DaemonSet, &str),
    notes: &mut Notes,
) -> Result<DaemonSet, ReconcileError> {
    let name = daemonset.name_any();
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(kube_error(format!("reading DaemonSet {namespace}:{name}")))?;
    let (reason, note) = match &existing {
        None => (
            "DaemonSetCreated",
            format!("created the OneAgent DaemonSet {name}"),
        ),
        Some(existing) => {
            let hash = |ds: &DaemonSet| ds.annotations().get(hash_annotation).cloned();
            if hash(existing) == hash(&daemonset) {
                return Ok(existing.clone());
            }
            let selector = |ds: &DaemonSet| ds.spec.as_ref().map(|s| s.selector.clone());
            if selector(existing) == selector(&daemonset) {
                (
                    "DaemonSetUpdated",
                    format!("updated the OneAgent DaemonSet {name}: its desired spec changed"),
                )
            } else {
                delete_daemonset(ctx, namespace, &name).await?;
                (
                    "DaemonSetRecreated",
                    format!("recreated the OneAgent DaemonSet {name}: its pod selector changed"),
                )
            }
        }
    };
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&daemonset),
        )
        .await
        .map_err(kube_error(format!("applying DaemonSet {namespace}:{name}")))?;
    notes.normal(reason, note);
    Ok(applied)
}

/// Deletes a DaemonSet; returns whether there was one.
pub(crate) async fn delete_daemonset(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<bool, ReconcileError> {
    match Api::<DaemonSet>::namespaced(ctx.client.clone(), namespace)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(kube_error(format!("deleting DaemonSet {namespace}:{name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_of(error: ReconcileError) -> Verdict {
        verdict(&Err(error), Duration::from_secs(60))
    }

    #[test]
    fn each_end_of_a_reconcile_sets_its_condition_phase_and_warning() {
        let ok = verdict(&Ok(Converged::phase("Running")), Duration::from_secs(60));
        assert_eq!(ok.phase.as_deref(), Some("Running"));
        assert_eq!(
            ok.condition.map(|c| (c.0, c.1, c.2)),
            Some((API_CONDITION, "True", "Reachable"))
        );
        assert_eq!(ok.warning, None);

        let zone = verdict_of(connection_info_error(
            TenantError::Server {
                endpoint: "connection info",
                status: 400,
                code: None,
                message: "unknown zone".into(),
            },
            Some("nowhere"),
        ));
        let (type_, value, reason, message) = zone.condition.unwrap();
        assert_eq!(
            (type_, value, reason),
            (API_CONDITION, "False", "NetworkZoneRejected")
        );
        assert!(
            message.contains("\"nowhere\"") && message.contains("unknown zone"),
            "{message}"
        );
        assert_eq!(zone.phase.as_deref(), Some("Error"));
        assert_eq!(zone.warning, Some("NetworkZoneRejected"));

        let rejected = verdict_of(ReconcileError::Tenant(TenantError::Unauthorized {
            endpoint: "token lookup",
            status: 401,
            code: None,
            message: "bad token".into(),
        }));
        assert_eq!(
            rejected.condition.map(|c| (c.0, c.2)),
            Some((TOKENS_CONDITION, "TokenError"))
        );
        assert_eq!(rejected.warning, Some("TokenError"));

        let down = verdict_of(ReconcileError::Tenant(TenantError::Unavailable {
            endpoint: "versions",
        }));
        assert_eq!(down.phase, None, "an outage keeps the phase");
        let (_, _, reason, message) = down.condition.unwrap();
        assert_eq!(reason, "Unavailable");
        assert!(message.ends_with("retrying in 60 s"), "{message}");
        assert_eq!(down.warning, Some("DynatraceAPIUnavailable"));

        let other = connection_info_error(
            TenantError::Unavailable {
                endpoint: "connection info",
            },
            Some("z"),
        );
        assert!(
            matches!(other, ReconcileError::Tenant(_)),
            "only a 400 is the user's"
        );
    }
}
