//! The legacy `OneAgent` reconciler (`dynatrace.com/v1alpha1`, §7.4 of the reference): the same steps as
//! the DynaKube's (tenant client, token check, DaemonSet applied by template hash, events, metrics, requeue
//! without sleeping), with the legacy DaemonSet and status.
//!
//! Unlike the reference, nothing here waits: the reference deleted outdated pods one by one and polled
//! for up to `waitReadySeconds` per node inside the reconcile.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::oneagent::{OneAgent, OneAgentInstance, OneAgentStatus};
use desired::legacy::{LegacyProxy, LegacyToken, LegacyTokenCheck, LegacyTokenCondition};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;
use tenant_client::{AgentSelector, TenantClient, TenantError};

use crate::dynakube::{
    Context, Notes, ReconcileError, TenantSettings, apply, apply_daemonset, build_tenant_client, cluster_id,
    daemonset_pods, kube_error, now, secret_data, upsert_condition,
};

/// Reconciles one legacy OneAgent resource and writes its status.
pub async fn reconcile(oneagent: Arc<OneAgent>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let mut status = oneagent.status.clone().unwrap_or_default();
    let mut notes = Notes::default();
    let result = converge(&oneagent, &ctx, &mut status, &mut notes).await;
    let outcome = match &result {
        Ok(()) => "success",
        Err(ReconcileError::UserFixable(message)) => {
            tracing::info!(oneagent = %oneagent.name_any(), %message, "waiting for a fix");
            "user_error"
        }
        Err(ReconcileError::Tenant(e)) if e.is_transient() => "tenant_unavailable",
        Err(_) => "error",
    };
    // An outage keeps the phase: it is not the user's mistake.
    if matches!(outcome, "user_error" | "error") {
        status.phase = Some("Error".to_owned());
    }
    write_status(&oneagent, &ctx, status).await?;
    notes.publish(&ctx, &oneagent.object_ref(&())).await;
    ctx.metrics.observe("oneagent", outcome, started.elapsed());
    match result {
        Ok(()) => Ok(Action::requeue(ctx.requeue.resync)),
        Err(ReconcileError::UserFixable(_)) => Ok(Action::requeue(ctx.requeue.fix_backoff)),
        Err(ReconcileError::Tenant(e)) if e.is_transient() => Ok(Action::requeue(ctx.requeue.tenant_backoff)),
        Err(other) => Err(other),
    }
}

async fn write_status(
    oneagent: &OneAgent,
    ctx: &Context,
    status: OneAgentStatus,
) -> Result<(), ReconcileError> {
    if oneagent.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = oneagent.name_any();
    let namespace = oneagent.namespace().unwrap_or_default();
    Api::<OneAgent>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(kube_error(format!(
            "writing the status of OneAgent {namespace}:{name}"
        )))?;
    Ok(())
}

/// Writes the token conditions; returns the messages of the failing ones.
fn set_token_conditions(
    status: &mut OneAgentStatus,
    oneagent: &OneAgent,
    conditions: &[LegacyTokenCondition],
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

async fn converge(
    oneagent: &OneAgent,
    ctx: &Context,
    status: &mut OneAgentStatus,
    notes: &mut Notes,
) -> Result<(), ReconcileError> {
    let namespace = oneagent.namespace().unwrap_or_default();
    let name = oneagent.name_any();
    let spec = &oneagent.spec;
    if spec.api_url.trim().is_empty() {
        return Err(ReconcileError::UserFixable(format!(
            "OneAgent {namespace}:{name} has an empty spec.apiUrl; set it to https://<environment>/api"
        )));
    }

    // Tokens: the Secret and both keys, before any tenant call.
    let secret_name = desired::legacy_tokens_secret_name(oneagent);
    let secret_ref = desired::secret_ref(&namespace, &secret_name);
    status.tokens = Some(secret_name.clone());
    status.use_immutable_image = Some(desired::legacy_uses_immutable_image(oneagent));
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&secret_name)
        .await
        .map_err(kube_error(format!("reading the token Secret {secret_ref}")))?;
    let Some(secret) = secret else {
        let failing = set_token_conditions(
            status,
            oneagent,
            &desired::legacy_secret_not_found_conditions(oneagent),
            notes,
        );
        return Err(ReconcileError::UserFixable(failing.join("; ")));
    };
    let (secret_version, data) = secret_data(secret);
    let mut tokens = BTreeMap::new();
    let mut unreadable = Vec::new();
    for token in LegacyToken::ALL {
        match desired::legacy_token_from_secret(&data, token) {
            Ok(value) => {
                tokens.insert(token, value);
            }
            Err(check) => unreadable.push(desired::legacy_token_condition(token, &check, &secret_ref)),
        }
    }
    if !unreadable.is_empty() {
        let failing = set_token_conditions(status, oneagent, &unreadable, notes);
        return Err(ReconcileError::UserFixable(failing.join("; ")));
    }
    let api_token = tokens.get(&LegacyToken::Api).cloned().unwrap_or_default();
    let paas_token = tokens.get(&LegacyToken::Paas).cloned().unwrap_or_default();
    let proxy = desired::legacy_proxy(oneagent);
    let settings = TenantSettings {
        namespace: &namespace,
        api_url: &spec.api_url,
        skip_cert_check: spec.skip_cert_check.unwrap_or(false),
        network_zone: spec.network_zone.as_deref().filter(|z| !z.is_empty()),
        no_proxy: None,
        proxy_value: match proxy {
            Some(LegacyProxy::Value(value)) => Some(value),
            _ => None,
        },
        proxy_secret: match proxy {
            Some(LegacyProxy::Secret(secret)) => Some(secret),
            _ => None,
        },
        trusted_cas: spec.trusted_cas.as_deref().filter(|n| !n.is_empty()),
    };
    let tenant = build_tenant_client(ctx, &settings, api_token.clone(), Some(paas_token.clone())).await?;

    // Tenant probes: tokens, environment id and the latest version, at most every few minutes per
    // OneAgent, or at once when the token Secret changed.
    let last_probe = status
        .last_update_probe_timestamp
        .as_ref()
        .map(desired::unix_seconds);
    let check_key = format!("oneagent/{namespace}/{name}");
    if desired::legacy_token_probe_due(last_probe, Timestamp::now().as_second())
        || ctx.secret_changed(&check_key, secret_version.as_deref())
    {
        ctx.secret_checked(check_key, secret_version);
        let mut conditions = Vec::new();
        for token in LegacyToken::ALL {
            let value = tokens.get(&token).map(String::as_str).unwrap_or_default();
            let check = token_check(&tenant, token, value).await?;
            conditions.push(desired::legacy_token_condition(token, &check, &secret_ref));
        }
        let failing = set_token_conditions(status, oneagent, &conditions, notes);
        if !failing.is_empty() {
            status.last_update_probe_timestamp = Some(now());
            return Err(ReconcileError::UserFixable(failing.join("; ")));
        }
        let info = tenant.connection_info().await?;
        if !info.tenant_uuid.is_empty() {
            status.environment_id = Some(info.tenant_uuid);
        }
        resolve_version(oneagent, &tenant, status, notes).await?;
        status.last_update_probe_timestamp = Some(now());
    } else if let Some(message) = failing_token_message(status) {
        return Err(ReconcileError::UserFixable(message));
    }

    // Pull secret (immutable mode with the tenant's image).
    let owner = oneagent.controller_owner_ref(&());
    if let Some(mut pull_secret) =
        desired::legacy_pull_secret(oneagent, status.environment_id.as_deref(), &paas_token)?
    {
        pull_secret.metadata.owner_references = owner.clone().map(|o| vec![o]);
        apply(ctx, &namespace, pull_secret).await?;
    }

    let facts = desired::LegacyFacts {
        image: None,
        cluster_id: cluster_id(ctx).await?,
        operator_version: ctx.operator_version.clone(),
        image_version: status.image_version.clone(),
        openshift: false,
    };
    let daemonset = desired::legacy_oneagent_daemonset(oneagent, &facts)?;
    let applied = apply_daemonset(
        ctx,
        &namespace,
        owner,
        (daemonset, desired::LEGACY_TEMPLATE_HASH_ANNOTATION),
        notes,
    )
    .await?;
    status.instances = Some(instances(ctx, oneagent, status.version.as_deref()).await?);
    let phase = desired::legacy_phase(&applied);
    if status.phase.as_deref() != Some(phase) && phase == desired::legacy::LEGACY_PHASE_RUNNING {
        notes.normal("Running", format!("every OneAgent pod of {name} is ready"));
    }
    status.phase = Some(phase.to_owned());
    Ok(())
}

/// Checks one token's scopes at the tenant. Transient failures end the reconcile (it is requeued);
/// anything else becomes the token's condition.
async fn token_check(
    tenant: &TenantClient,
    token: LegacyToken,
    value: &str,
) -> Result<LegacyTokenCheck, ReconcileError> {
    match tenant.token_scopes(value).await {
        Ok(scopes) if scopes.iter().any(|s| s == token.scope()) => Ok(LegacyTokenCheck::Ready),
        Ok(_) => Ok(LegacyTokenCheck::ScopeMissing),
        Err(TenantError::Unauthorized { .. }) => Ok(LegacyTokenCheck::Unauthorized),
        Err(error) if error.is_transient() => Err(error.into()),
        Err(error) => Ok(LegacyTokenCheck::Error(error.to_string())),
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
        && let Err(rejected) = desired::accept_version(status.version.as_deref(), &target)
    {
        notes.warning("DowngradeRefused", rejected.to_string());
        return Ok(());
    }
    notes.normal("OneAgentVersion", format!("OneAgent version {target}"));
    status.version = Some(target);
    Ok(())
}

/// The DaemonSet's pods by node: pod name, the version they are meant to run, and the node's address.
async fn instances(
    ctx: &Context,
    oneagent: &OneAgent,
    version: Option<&str>,
) -> Result<BTreeMap<String, OneAgentInstance>, ReconcileError> {
    let namespace = oneagent.namespace().unwrap_or_default();
    let labels = desired::legacy_selector_labels(&oneagent.name_any());
    Ok(daemonset_pods(ctx, &namespace, &labels)
        .await?
        .into_iter()
        .map(|pod| {
            let instance = OneAgentInstance {
                pod_name: Some(pod.name),
                version: version.map(str::to_owned),
                ip_address: pod.host_ip,
            };
            (pod.node, instance)
        })
        .collect())
}
