//! The webhook certificate controller: keeps the Secret `dynatrace-webhook-certs` holding a CA and a serving
//! certificate for the webhook, and the `caBundle` of the webhook configurations and of the DynaKube CRD's
//! conversion webhook trusting that CA.
//!
//! It acts when the webhook Deployment `dynatrace-webhook` or a webhook configuration of that name exists (a
//! webhook registered by URL for a local run has no Deployment). The certificate rules are in the
//! `webhook-certificates` crate; this module reads and writes the objects.
//!
//! A new CA is published in every `caBundle` before the Secret holding it is written, and the Secret
//! follows after [`CertificateConfig::ca_propagation_delay`]: webhook servers switch to a certificate of the
//! new CA only once API servers trust it, so admission calls do not fail during a rotation. The previous CA
//! stays in the bundle (`ca.crt.old`) for servers that have not switched yet.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use pure_webhook_certificates::{CertificatePolicy, DYNAKUBE_CRD_NAME, SECRET_NAME, WEBHOOK_NAME};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Longest wait between two reconciles, as the reference's requeue.
pub const MAX_WAIT: Duration = Duration::from_secs(3 * 3600);
/// First retry after a failed reconcile; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry interval after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Watch events often come in bursts (our own writes, several objects); one reconcile covers a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Shortest wait, so that a renewal time in the past cannot make the loop spin.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// What the controller manages.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    /// The operator's namespace: where the webhook Deployment and the Secret live.
    pub namespace: String,
    /// Names and lifetimes of the certificates.
    pub policy: CertificatePolicy,
    /// How long a new CA sits in the caBundles before the Secret (and so the webhook servers) switch to
    /// it: API servers pick up webhook configuration and CRD changes asynchronously.
    pub ca_propagation_delay: Duration,
}

impl CertificateConfig {
    /// The reference's settings for an operator in `namespace`.
    pub fn for_namespace(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            policy: CertificatePolicy::for_namespace(namespace),
            ca_propagation_delay: Duration::from_secs(3),
        }
    }
}

/// What happened to the Secret in a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretChange {
    /// It did not exist and was created.
    Created,
    /// A certificate was renewed.
    Updated,
    /// Nothing needed renewal; nothing was written.
    Unchanged,
}

/// The result of one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Neither the webhook Deployment nor a webhook configuration exists: nothing to do.
    NoWebhook,
    /// The certificates and bundles are in place.
    Reconciled {
        /// What happened to the Secret.
        secret: SecretChange,
        /// A new CA was issued.
        ca_renewed: bool,
        /// A new serving certificate was issued.
        server_renewed: bool,
        /// The objects whose caBundle was written, e.g. `ValidatingWebhookConfiguration dynatrace-webhook`.
        bundles_written: Vec<String>,
        /// The DynaKube CRD does not exist (yet), so its conversion caBundle could not be set.
        crd_missing: bool,
        /// When the next certificate enters its renewal window.
        next_renewal: SystemTime,
    },
}

impl Outcome {
    /// Whether anything was written.
    pub fn wrote(&self) -> bool {
        match self {
            Self::NoWebhook => false,
            Self::Reconciled {
                secret,
                bundles_written,
                ..
            } => *secret != SecretChange::Unchanged || !bundles_written.is_empty(),
        }
    }
}

/// Why a reconcile failed (the controllers' one error model). It is retried with backoff.
pub use crate::error::ReconcileError as Error;
use crate::error::kube_error;
use crate::wake::{AbortOnDrop, spawn_trigger};

/// Runs the controller until `shutdown` completes: reconciles, then waits for the next renewal (at most
/// [`MAX_WAIT`]), a change of the webhook Deployment, the Secret, either webhook configuration or the
/// DynaKube CRD (so a tampered caBundle is repaired within a second), or shutdown. Failures are logged and
/// retried with a backoff of up to a minute.
pub async fn run(client: Client, config: CertificateConfig, shutdown: impl Future<Output = ()>) {
    let trigger = Arc::new(Notify::new());
    let name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let watches = [
        spawn_trigger(
            Api::<PartialObjectMeta<Deployment>>::namespaced(client.clone(), &config.namespace),
            name(WEBHOOK_NAME),
            "Deployment",
            "webhook certificates",
            trigger.clone(),
        ),
        spawn_trigger(
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &config.namespace),
            name(SECRET_NAME),
            "Secret",
            "webhook certificates",
            trigger.clone(),
        ),
        spawn_trigger(
            Api::<PartialObjectMeta<ValidatingWebhookConfiguration>>::all(client.clone()),
            name(WEBHOOK_NAME),
            "ValidatingWebhookConfiguration",
            "webhook certificates",
            trigger.clone(),
        ),
        spawn_trigger(
            Api::<PartialObjectMeta<MutatingWebhookConfiguration>>::all(client.clone()),
            name(WEBHOOK_NAME),
            "MutatingWebhookConfiguration",
            "webhook certificates",
            trigger.clone(),
        ),
        spawn_trigger(
            Api::<PartialObjectMeta<CustomResourceDefinition>>::all(client.clone()),
            name(DYNAKUBE_CRD_NAME),
            "CustomResourceDefinition",
            "webhook certificates",
            trigger.clone(),
        ),
    ];
    let _abort_watches: AbortOnDrop = watches.into_iter().collect();

    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    loop {
        let result = tokio::select! {
            () = &mut shutdown => break,
            result = reconcile_once(&client, &config) => result,
        };
        let wait = match result {
            Ok(outcome) => {
                backoff = MIN_BACKOFF;
                log_outcome(&config, &outcome);
                match outcome {
                    Outcome::NoWebhook => MAX_WAIT,
                    Outcome::Reconciled { next_renewal, .. } => next_renewal
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .clamp(MIN_WAIT, MAX_WAIT),
                }
            }
            Err(err) => {
                tracing::error!(namespace = %config.namespace, "webhook certificates: {err}");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        if !crate::wake::next_pass(&mut shutdown, &trigger, wait, DEBOUNCE).await {
            break;
        }
    }
    tracing::info!("webhook certificate controller stopped");
}

fn log_outcome(config: &CertificateConfig, outcome: &Outcome) {
    match outcome {
        Outcome::NoWebhook => tracing::debug!(
            namespace = %config.namespace,
            "no webhook Deployment or webhook configuration named {WEBHOOK_NAME}; no certificates needed"
        ),
        Outcome::Reconciled {
            secret,
            ca_renewed,
            server_renewed,
            bundles_written,
            crd_missing,
            next_renewal,
        } => {
            let next = seconds_until(*next_renewal);
            if *crd_missing {
                tracing::info!(
                    "the CRD {DYNAKUBE_CRD_NAME} does not exist; its conversion caBundle is set when it appears"
                );
            }
            if outcome.wrote() {
                tracing::info!(
                    namespace = %config.namespace,
                    ?secret,
                    ca_renewed,
                    server_renewed,
                    ?bundles_written,
                    next_renewal_in_seconds = next,
                    "webhook certificates reconciled"
                );
            } else {
                tracing::debug!(
                    next_renewal_in_seconds = next,
                    "webhook certificates are up to date"
                );
            }
        }
    }
}

fn seconds_until(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs()
}

/// One reconcile: brings the Secret and every caBundle in line with the policy at the current time.
pub async fn reconcile_once(client: &Client, config: &CertificateConfig) -> Result<Outcome, Error> {
    let namespace = &config.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());

    let deployment = deployments
        .get_opt(WEBHOOK_NAME)
        .await
        .map_err(kube_error(format!("read Deployment {namespace}/{WEBHOOK_NAME}")))?;
    let validating_config = validating
        .get_opt(WEBHOOK_NAME)
        .await
        .map_err(kube_error(format!(
            "read ValidatingWebhookConfiguration {WEBHOOK_NAME}"
        )))?;
    let mutating_config = mutating.get_opt(WEBHOOK_NAME).await.map_err(kube_error(format!(
        "read MutatingWebhookConfiguration {WEBHOOK_NAME}"
    )))?;
    if deployment.is_none() && validating_config.is_none() && mutating_config.is_none() {
        return Ok(Outcome::NoWebhook);
    }
    let crd = crds.get_opt(DYNAKUBE_CRD_NAME).await.map_err(kube_error(format!(
        "read CustomResourceDefinition {DYNAKUBE_CRD_NAME}"
    )))?;

    let secret = secrets
        .get_opt(SECRET_NAME)
        .await
        .map_err(kube_error(format!("read Secret {namespace}/{SECRET_NAME}")))?;
    let existing: BTreeMap<String, Vec<u8>> = secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|data| data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let plan = pure_webhook_certificates::plan(&existing, SystemTime::now(), &config.policy)?;
    for reason in &plan.reasons {
        tracing::info!(secret = %format!("{namespace}/{SECRET_NAME}"), "{reason}");
    }
    let bundle = ByteString(pure_webhook_certificates::ca_bundle(&plan.data));

    // Bundles first: a webhook server may serve a certificate of the new CA as soon as the Secret holds it.
    let mut bundles_written = Vec::new();
    if let Some(configuration) = &validating_config {
        let webhooks = configuration.webhooks.iter().flatten();
        let ops = bundle_ops(webhooks.map(|w| (w.name.as_str(), &w.client_config)), &bundle);
        if patch_bundle(&validating, WEBHOOK_NAME, ops).await? {
            bundles_written.push(format!("ValidatingWebhookConfiguration {WEBHOOK_NAME}"));
        }
    }
    if let Some(configuration) = &mutating_config {
        let webhooks = configuration.webhooks.iter().flatten();
        let ops = bundle_ops(webhooks.map(|w| (w.name.as_str(), &w.client_config)), &bundle);
        if patch_bundle(&mutating, WEBHOOK_NAME, ops).await? {
            bundles_written.push(format!("MutatingWebhookConfiguration {WEBHOOK_NAME}"));
        }
    }
    if let Some(crd) = &crd {
        let conversion = crd.spec.conversion.as_ref();
        let current = conversion
            .filter(|c| c.strategy == "Webhook")
            .and_then(|c| c.webhook.as_ref())
            .and_then(|w| w.client_config.as_ref());
        if let Some(client_config) = current
            && client_config.ca_bundle.as_ref() != Some(&bundle)
        {
            let ops = vec![
                json!({ "op": "test", "path": "/spec/conversion/strategy", "value": "Webhook" }),
                json!({ "op": "add", "path": "/spec/conversion/webhook/clientConfig/caBundle", "value": bundle }),
            ];
            if patch_bundle(&crds, DYNAKUBE_CRD_NAME, ops).await? {
                bundles_written.push(format!("CustomResourceDefinition {DYNAKUBE_CRD_NAME}"));
            }
        }
    }

    let had_ca = existing.contains_key(pure_webhook_certificates::CA_CERT);
    if plan.ca_renewed && had_ca && !bundles_written.is_empty() {
        tokio::time::sleep(config.ca_propagation_delay).await;
    }
    let secret_change = match secret {
        None => {
            let owner = deployment.as_ref().and_then(|d| {
                Some(OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: WEBHOOK_NAME.into(),
                    uid: d.metadata.uid.clone()?,
                    ..Default::default()
                })
            });
            let new = Secret {
                metadata: ObjectMeta {
                    name: Some(SECRET_NAME.into()),
                    namespace: Some(namespace.clone()),
                    owner_references: owner.map(|o| vec![o]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(to_secret_data(plan.data)),
                ..Default::default()
            };
            secrets
                .create(&PostParams::default(), &new)
                .await
                .map_err(kube_error(format!("create Secret {namespace}/{SECRET_NAME}")))?;
            SecretChange::Created
        }
        Some(mut secret) if plan.changed() => {
            // The resourceVersion read above makes this fail rather than overwrite a concurrent change.
            secret.data = Some(to_secret_data(plan.data));
            secrets
                .replace(SECRET_NAME, &PostParams::default(), &secret)
                .await
                .map_err(kube_error(format!("update Secret {namespace}/{SECRET_NAME}")))?;
            SecretChange::Updated
        }
        Some(_) => SecretChange::Unchanged,
    };

    Ok(Outcome::Reconciled {
        secret: secret_change,
        ca_renewed: plan.ca_renewed,
        server_renewed: plan.server_renewed,
        bundles_written,
        crd_missing: crd.is_none(),
        next_renewal: plan.next_renewal,
    })
}

fn to_secret_data(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, ByteString> {
    data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()
}

/// JSON patch operations setting `caBundle` in every webhook that lacks it. Each index is guarded by a
/// `test` of the webhook's name, so a list changed in the meantime fails the patch instead of corrupting it.
fn bundle_ops<'a>(
    webhooks: impl Iterator<Item = (&'a str, &'a WebhookClientConfig)>,
    bundle: &ByteString,
) -> Vec<Value> {
    let mut ops = Vec::new();
    for (index, (name, client_config)) in webhooks.enumerate() {
        if client_config.ca_bundle.as_ref() != Some(bundle) {
            ops.push(json!({ "op": "test", "path": format!("/webhooks/{index}/name"), "value": name }));
            ops.push(json!({
                "op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": bundle,
            }));
        }
    }
    ops
}

/// Applies `ops` to the object `name`, if there are any. Returns whether it wrote.
async fn patch_bundle<K>(api: &Api<K>, name: &str, ops: Vec<Value>) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    if ops.is_empty() {
        return Ok(false);
    }
    let kind = K::kind(&Default::default()).into_owned();
    let action = format!("set the caBundle of {kind} {name}");
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).map_err(|e| Error::Kube {
        what: action.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(kube_error(action))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bundle_ops_guard_each_index_by_name_and_skip_webhooks_that_trust_the_bundle() {
        let bundle = ByteString(b"pem".to_vec());
        let trusting = WebhookClientConfig {
            ca_bundle: Some(bundle.clone()),
            ..Default::default()
        };
        let stale = WebhookClientConfig::default();
        let ops = bundle_ops([("a", &trusting), ("b", &stale)].into_iter(), &bundle);
        assert_eq!(
            Value::Array(ops),
            json!([
                { "op": "test", "path": "/webhooks/1/name", "value": "b" },
                { "op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "cGVt" },
            ])
        );
        assert!(bundle_ops([("a", &trusting)].into_iter(), &bundle).is_empty());
    }

    #[test]
    fn outcome_reports_writes() {
        let quiet = Outcome::Reconciled {
            secret: SecretChange::Unchanged,
            ca_renewed: false,
            server_renewed: false,
            bundles_written: Vec::new(),
            crd_missing: false,
            next_renewal: SystemTime::now(),
        };
        assert!(!quiet.wrote());
        assert!(!Outcome::NoWebhook.wrote());
        let Outcome::Reconciled { next_renewal, .. } = quiet else {
            unreachable!()
        };
        let written = Outcome::Reconciled {
            secret: SecretChange::Unchanged,
            ca_renewed: false,
            server_renewed: false,
            bundles_written: vec!["CustomResourceDefinition x".into()],
            crd_missing: false,
            next_renewal,
        };
        assert!(written.wrote());
    }
}
