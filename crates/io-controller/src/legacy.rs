//! The legacy `OneAgent` reconciler (`dynatrace.com/v1alpha1`, §7.4 of the reference): the same steps as
//! the DynaKube's (tenant client, token check, DaemonSet applied by template hash, events, metrics, requeue
//! without sleeping), with the legacy DaemonSet and status.
//!
//! Unlike the reference, nothing here waits: the reference deleted outdated pods one by one and polled
//! for up to `waitReadySeconds` per node inside the reconcile.

use std::collections::BTreeMap;
use std::sync::Arc;

use io_tenant_client::{AgentSelector, TenantClient, TenantError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource as _, ResourceExt as _};
use pure_api::oneagent::{OneAgent, OneAgentInstance, OneAgentStatus};
use pure_desired::legacy::{Token, TokenCheck, TokenCondition};
use serde_json::json;

use crate::dynakube::{
    Context, MISSING_PODS_RECHECK, Notes, Outcome, ReconcileError, TenantSettings, apply, apply_daemonset,
    build_tenant_client, cluster_id, daemonset_pods, kube_error, missing_pods, now, secret_data,
    upsert_condition,
};

/// Reconciles one legacy OneAgent resource and writes its status.
pub async fn reconcile(oneagent: Arc<OneAgent>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let mut status = oneagent.status.clone().unwrap_or_default();
    let mut notes = Notes::default();
    let result = converge(&oneagent, &ctx, &mut status, &mut notes).await;
    if let Err(error) = &result {
        tracing::info!(oneagent = %oneagent.name_any(), %error, "reconcile did not converge");
        // An outage keeps the phase: it is not the user's mistake.
        if !matches!(error, ReconcileError::Tenant(e) if e.is_transient()) {
            status.phase = Some("Error".to_owned());
        }
    }
    write_status(&oneagent, &ctx, status).await?;
    notes.publish(&ctx, &oneagent.object_ref(&())).await;
    let outcome = Outcome::of(result);
    ctx.metrics
        .observe("oneagent", Outcome::label(&outcome), started.elapsed());
    outcome.map(|outcome| outcome.action(&ctx.requeue))
}

/// Applies the status when it changed. This controller is the only writer of a OneAgent's status.
async fn write_status(
    oneagent: &OneAgent,
    ctx: &Context,
    status: OneAgentStatus,
) -> Result<(), ReconcileError> {
    let what = || {
        format!(
            "writing the status of OneAgent {}:{}",
            oneagent.namespace().unwrap_or_default(),
            oneagent.name_any()
        )
    };
    let took_over = crate::status::take_over_status(&ctx.client, oneagent, crate::status::ONEAGENT_MANAGER)
        .await
        .map_err(kube_error(what()))?;
    if oneagent.status.as_ref() == Some(&status) && !took_over {
        return Ok(());
    }
    crate::status::apply_status(&ctx.client, oneagent, crate::status::ONEAGENT_MANAGER, &status)
        .await
        .map_err(kube_error(what()))?;
    ctx.metrics.status_written("oneagent");
    Ok(())
}

/// Writes the token conditions; returns the messages of the failing ones.
fn set_token_conditions(
    status: &mut OneAgentStatus,
    oneagent: &OneAgent,
    conditions: &[TokenCondition],
    notes: &mut Notes,
) -> Vec<String> {
    let all = status.conditions.get_or_insert_with(Vec::new);
    let mut failing = Vec::new();
    for condition in conditions {
        let changed = upsert_condition(
            all,
            condition.type_,
            condition.status,
            condition.reason,
            &condition.message,
            oneagent.metadata.generation,
        );
        if condition.status != "True" {
            failing.push(condition.message.clone());
            if changed {
                notes.warning(condition.reason, condition.message.clone());
            }
        }
    }
    failing
}

/// Brings the cluster to the desired state; returns when to look again if sooner than the resync.
async fn converge(
    oneagent: &OneAgent,
    ctx: &Context,
    status: &mut OneAgentStatus,
    notes: &mut Notes,
) -> Result<Option<std::time::Duration>, ReconcileError> {
    let namespace = oneagent.namespace().unwrap_or_default();
    let name = oneagent.name_any();
    let spec = &oneagent.spec;
    if spec.api_url.trim().is_empty() {
        return Err(ReconcileError::settings(
            "InvalidApiUrl",
            format!(
                "OneAgent {namespace}:{name} has an empty spec.apiUrl; set it to https://<environment>/api"
            ),
        ));
    }

    // Tokens: the Secret and both keys, before any tenant call.
    let secret_name = pure_desired::legacy::tokens_secret_name(oneagent);
    let secret_ref = pure_desired::tokens::secret_ref(&namespace, &secret_name);
    status.tokens = Some(secret_name.clone());
    status.use_immutable_image = Some(pure_desired::legacy::uses_immutable_image(oneagent));
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&secret_name)
        .await
        .map_err(kube_error(format!("reading the token Secret {secret_ref}")))?;
    let Some(secret) = secret else {
        let failing = set_token_conditions(
            status,
            oneagent,
            &pure_desired::legacy::secret_not_found_conditions(oneagent),
            notes,
        );
        return Err(ReconcileError::token(failing.join("; ")));
    };
    let (secret_version, data) = secret_data(secret);
    let mut tokens = BTreeMap::new();
    let mut unreadable = Vec::new();
    for token in Token::ALL {
        match pure_desired::legacy::token_from_secret(&data, token) {
            Ok(value) => {
                tokens.insert(token, value);
            }
            Err(check) => unreadable.push(pure_desired::legacy::token_condition(token, &check, &secret_ref)),
        }
    }
    if !unreadable.is_empty() {
        let failing = set_token_conditions(status, oneagent, &unreadable, notes);
        return Err(ReconcileError::token(failing.join("; ")));
    }
    let api_token = tokens.get(&Token::Api).cloned().unwrap_or_default();
    let paas_token = tokens.get(&Token::Paas).cloned().unwrap_or_default();
    let settings = TenantSettings::of_oneagent(oneagent, &namespace);
    let tenant = build_tenant_client(ctx, &settings, api_token.clone(), Some(paas_token.clone())).await?;

    // Tenant probes: tokens, environment id and the latest version, at most every few minutes per
    // OneAgent, or at once when the token Secret changed.
    let last_probe = status
        .last_update_probe_timestamp
        .as_ref()
        .map(pure_desired::throttle::unix_seconds);
    let check_key = format!("oneagent/{namespace}/{name}");
    let interval = i64::try_from(ctx.requeue.legacy_probe_interval.as_secs()).unwrap_or(i64::MAX);
    let probe_due = pure_desired::legacy::probe_due(last_probe, Timestamp::now().as_second(), interval);
    let probe = probe_due || ctx.secret_changed(&check_key, secret_version.as_deref());
    if probe {
        ctx.secret_checked(check_key, secret_version);
        let mut conditions = Vec::new();
        for token in Token::ALL {
            let value = tokens.get(&token).map(String::as_str).unwrap_or_default();
            let check = token_check(&tenant, token, value).await?;
            conditions.push(pure_desired::legacy::token_condition(token, &check, &secret_ref));
        }
        let failing = set_token_conditions(status, oneagent, &conditions, notes);
        if !failing.is_empty() {
            status.last_update_probe_timestamp = Some(now());
            return Err(ReconcileError::token(failing.join("; ")));
        }
        let info = tenant
            .connection_info()
            .await
            .map_err(|e| crate::dynakube::connection_info_error(e, settings.network_zone))?;
        status.environment_id = Some(info.tenant_uuid).filter(|id| !id.is_empty());
        resolve_version(oneagent, &tenant, status, notes).await?;
        status.last_update_probe_timestamp = Some(now());
    } else if let Some(message) = failing_token_message(status) {
        return Err(ReconcileError::token(message));
    }

    // Pull secret (immutable mode with the tenant's image).
    if let Some(pull_secret) =
        pure_desired::legacy::pull_secret(oneagent, status.environment_id.as_deref(), &paas_token)?
    {
        apply(ctx, &namespace, pull_secret).await?;
    }

    let facts = pure_desired::legacy::Facts {
        image: None,
        cluster_id: cluster_id(ctx).await?,
        operator_version: ctx.operator_version.clone(),
        image_version: status.image_version.clone(),
        openshift: crate::dynakube::is_openshift(ctx).await?,
    };
    let daemonset = pure_desired::legacy::daemonset(oneagent, &facts)?;
    let applied = apply_daemonset(
        ctx,
        &namespace,
        (daemonset, pure_desired::legacy::TEMPLATE_HASH_ANNOTATION),
        notes,
    )
    .await?;
    let labels = pure_desired::legacy::selector_labels(&name);
    let pods = daemonset_pods(ctx, &namespace, &labels).await?;
    let mut phase = pure_desired::rollout::daemonset_phase(&applied);
    let mut recheck = None;
    let updates =
        !spec.disable_agent_update.unwrap_or(false) && !pure_desired::legacy::uses_immutable_image(oneagent);
    let host_versions = match (status.version.clone(), updates) {
        (Some(target), true) => {
            let since = target_since(ctx, &applied, &target).await?;
            // The hosts API is asked at the probe interval, and on every step while an update runs.
            let updating = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == crate::dynakube::ROLLOUT_CONDITION && c.reason != "UpToDate");
            let versions = host_versions(&tenant, &pods, status, probe || updating).await?;
            let plan = update_step(
                ctx, oneagent, &pods, &versions, &target, since, &applied, notes, status,
            )
            .await?;
            if plan.blocked.is_some() || !plan.outdated.is_empty() {
                phase = pure_desired::legacy::PHASE_DEPLOYING;
            }
            recheck = plan
                .recheck_in
                .map(|seconds| std::time::Duration::from_secs(seconds.unsigned_abs() + 1));
            versions
        }
        _ => BTreeMap::new(),
    };
    if let Some(failure) = crate::dynakube::pods_not_created(ctx, &applied).await? {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if upsert_condition(
            conditions,
            crate::dynakube::ROLLOUT_CONDITION,
            "False",
            pure_desired::rollout::PODS_NOT_CREATED_REASON,
            &failure,
            oneagent.metadata.generation,
        ) {
            notes.warning("DaemonSetFailedCreate", failure);
        }
        phase = "Error";
    }
    if missing_pods(&applied) {
        recheck = Some(recheck.map_or(MISSING_PODS_RECHECK, |r: std::time::Duration| {
            r.min(MISSING_PODS_RECHECK)
        }));
    }
    status.instances = Some(
        pods.iter()
            .map(|pod| {
                let version = pod.host_ip.as_ref().and_then(|ip| host_versions.get(ip)).cloned();
                let instance = OneAgentInstance {
                    pod_name: Some(pod.name.clone()),
                    version: version.or_else(|| status.version.clone()),
                    ip_address: pod.host_ip.clone(),
                };
                (pod.node.clone(), instance)
            })
            .collect(),
    );
    if status.phase.as_deref() != Some(phase) && phase == pure_desired::legacy::PHASE_RUNNING {
        notes.normal("Running", format!("every OneAgent pod of {name} is ready"));
    }
    status.phase = Some(phase.to_owned());
    Ok(recheck)
}

/// Annotations on the legacy DaemonSet that record which version the per-node update brings the pods to,
/// and since when: pods created after that already run it. Kept in the cluster, so a restarted operator
/// resumes without recycling a node twice.
const TARGET_VERSION_ANNOTATION: &str = "internal.oneagent.dynatrace.com/target-version";
const TARGET_SINCE_ANNOTATION: &str = "internal.oneagent.dynatrace.com/target-since";

/// When `target` was adopted (unix seconds), recording it on the DaemonSet the first time.
async fn target_since(ctx: &Context, daemonset: &DaemonSet, target: &str) -> Result<i64, ReconcileError> {
    let annotations = daemonset.annotations();
    if annotations.get(TARGET_VERSION_ANNOTATION).map(String::as_str) == Some(target)
        && let Some(since) = annotations
            .get(TARGET_SINCE_ANNOTATION)
            .and_then(|s| s.parse().ok())
    {
        return Ok(since);
    }
    let now = Timestamp::now().as_second();
    let namespace = daemonset.namespace().unwrap_or_default();
    let name = daemonset.name_any();
    // A merge patch under another field manager: the server-side apply of the DaemonSet leaves it alone.
    let patch = json!({ "metadata": { "annotations": {
        TARGET_VERSION_ANNOTATION: target,
        TARGET_SINCE_ANNOTATION: now.to_string(),
    } } });
    Api::<DaemonSet>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::apply("dynatrace-operator-updates"),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(kube_error(format!(
            "recording the target version on DaemonSet {namespace}:{name}"
        )))?;
    Ok(now)
}

/// The agent version of each pod's host, by IP: from the hosts API when `ask`, else (and when the API
/// fails with something other than throttling) the versions last written in the status.
async fn host_versions(
    tenant: &TenantClient,
    pods: &[crate::dynakube::NodePod],
    status: &OneAgentStatus,
    ask: bool,
) -> Result<BTreeMap<String, String>, ReconcileError> {
    let known: BTreeMap<String, String> = status
        .instances
        .iter()
        .flatten()
        .filter_map(|(_, i)| Some((i.ip_address.clone()?, i.version.clone()?)))
        .collect();
    if !ask {
        return Ok(known);
    }
    match tenant.hosts().await {
        Ok(hosts) => {
            let mut versions = BTreeMap::new();
            for pod in pods {
                let Some(ip) = &pod.host_ip else { continue };
                let reported = hosts
                    .iter()
                    .find(|h| h.ip_addresses.iter().any(|a| a == ip))
                    .and_then(|h| h.agent_version.clone());
                if let Some(version) = reported.or_else(|| known.get(ip).cloned()) {
                    versions.insert(ip.clone(), version);
                }
            }
            Ok(versions)
        }
        Err(error) if error.status() == Some(429) => Err(error.into()),
        Err(error) => {
            tracing::warn!(%error, "the hosts API failed; using the host versions last seen");
            Ok(known)
        }
    }
}

/// One step of the per-node update: deletes at most one outdated pod, and reports progress or the node
/// that blocks it in the condition `OneAgentRollout`.
#[allow(clippy::too_many_arguments)]
async fn update_step(
    ctx: &Context,
    oneagent: &OneAgent,
    pods: &[crate::dynakube::NodePod],
    versions: &BTreeMap<String, String>,
    target: &str,
    since: i64,
    daemonset: &DaemonSet,
    notes: &mut Notes,
    status: &mut OneAgentStatus,
) -> Result<pure_desired::recycle::RecyclePlan, ReconcileError> {
    let namespace = oneagent.namespace().unwrap_or_default();
    let view: Vec<pure_desired::recycle::NodeAgentPod> = pods
        .iter()
        .map(|p| pure_desired::recycle::NodeAgentPod {
            name: p.name.clone(),
            node: p.node.clone(),
            host_ip: p.host_ip.clone(),
            ready: p.rollout.ready,
            terminating: p.rollout.terminating,
            created: p.rollout.created,
        })
        .collect();
    let desired_nodes = daemonset
        .status
        .as_ref()
        .map_or(0, |s| s.desired_number_scheduled);
    let wait = i64::from(
        oneagent
            .spec
            .wait_ready_seconds
            .unwrap_or(pure_api::oneagent::DEFAULT_WAIT_READY_SECONDS),
    );
    let now = Timestamp::now().as_second();
    let plan = pure_desired::recycle::recycle_plan(&view, versions, target, since, desired_nodes, now, wait);
    if let Some(pod) = &plan.delete {
        let node = pods
            .iter()
            .find(|p| &p.name == pod)
            .map(|p| p.node.clone())
            .unwrap_or_default();
        match Api::<k8s_openapi::api::core::v1::Pod>::namespaced(ctx.client.clone(), &namespace)
            .delete(pod, &Default::default())
            .await
        {
            Ok(_) => notes.normal(
                "PodRecycled",
                format!("deleted OneAgent pod {pod} on node {node} so that it comes back with {target}"),
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_error(format!("deleting OneAgent pod {namespace}:{pod}"))(e)),
        }
    }
    let done = view.len().saturating_sub(plan.outdated.len());
    let (value, reason, message) = match (&plan.blocked, plan.outdated.is_empty()) {
        (Some((node, waited)), _) => (
            "False",
            "Blocked",
            format!(
                "blocked on node {node}: its new OneAgent pod has not become ready for {waited} s \
                 (waitReadySeconds {wait}); {} of {} nodes are outdated. Look at the pod's events and logs",
                plan.outdated.len(),
                view.len()
            ),
        ),
        // Nodes the DaemonSet wants a pod on but that have none are not up to date.
        (None, true) if usize::try_from(desired_nodes).unwrap_or(0) > view.len() => (
            "False",
            "Progressing",
            format!(
                "{} of {desired_nodes} nodes have a OneAgent pod; all of them run {target}",
                view.len()
            ),
        ),
        (None, true) => ("True", "UpToDate", format!("all {done} nodes run {target}")),
        (None, false) => (
            "False",
            "Progressing",
            format!(
                "{} of {} nodes still run an older OneAgent than {target}",
                plan.outdated.len(),
                view.len()
            ),
        ),
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if upsert_condition(
        conditions,
        crate::dynakube::ROLLOUT_CONDITION,
        value,
        reason,
        &message,
        oneagent.metadata.generation,
    ) && reason == "Blocked"
    {
        notes.warning("RolloutBlocked", message);
    }
    Ok(plan)
}

/// Checks one token's scopes at the tenant. Transient failures end the reconcile (it is requeued);
/// anything else becomes the token's condition.
async fn token_check(tenant: &TenantClient, token: Token, value: &str) -> Result<TokenCheck, ReconcileError> {
    match tenant.token_scopes(value).await {
        Ok(scopes) if scopes.iter().any(|s| s == token.scope()) => Ok(TokenCheck::Ready),
        Ok(_) => Ok(TokenCheck::ScopeMissing),
        Err(TenantError::Unauthorized { .. }) => Ok(TokenCheck::Unauthorized),
        Err(error) if error.is_transient() => Err(error.into()),
        Err(error) => Ok(TokenCheck::Error(error.to_string())),
    }
}

/// The failing token conditions' messages, when the last probe failed.
fn failing_token_message(status: &OneAgentStatus) -> Option<String> {
    let failing: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| matches!(c.type_.as_str(), "APIToken" | "PaaSToken") && c.status == "False")
        .map(|c| c.message.clone())
        .collect();
    (!failing.is_empty()).then(|| failing.join("; "))
}

/// The version to deploy: `agentVersion` or the tenant's latest, never an automatic downgrade.
async fn resolve_version(
    oneagent: &OneAgent,
    tenant: &TenantClient,
    status: &mut OneAgentStatus,
    notes: &mut Notes,
) -> Result<(), ReconcileError> {
    let pinned = oneagent.spec.agent_version.clone().filter(|v| !v.is_empty());
    let target = match &pinned {
        Some(version) => version.clone(),
        None => tenant.latest_agent_version(&AgentSelector::host_agent()).await?,
    };
    if status.version.as_deref() == Some(target.as_str()) {
        return Ok(());
    }
    if pinned.is_none()
        && let Err(rejected) = pure_desired::versions::accept_version(status.version.as_deref(), &target)
    {
        notes.warning("DowngradeRefused", rejected.to_string());
        return Ok(());
    }
    notes.normal("OneAgentVersion", format!("OneAgent version {target}"));
    status.version = Some(target);
    Ok(())
}
