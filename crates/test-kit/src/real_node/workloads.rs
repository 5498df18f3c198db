//! Checks of what runs on the real node, shared by the end-to-end tests and `cargo xtask run --real-node`.

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt as _};

use super::NODE_NAME;

/// The operator's and the webhook's Deployments, and the webhook configuration (names of the installation).
const OPERATOR: &str = "dynatrace-operator";
const WEBHOOK: &str = "dynatrace-webhook";
/// What the fake OneAgent prints first, followed by a JSON report of how it was started.
pub const FAKE_ONEAGENT_STARTED: &str = "fake-oneagent started: ";

/// Whether the installed operator and webhook each have an available pod and the webhook configuration
/// carries the caBundle the operator writes; the reason as the error otherwise (for
/// [`crate::eventually`]).
pub async fn installation_available(client: &Client, namespace: &str) -> anyhow::Result<Option<()>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for name in [OPERATOR, WEBHOOK] {
        let status = deployments.get(name).await?.status.unwrap_or_default();
        if status.available_replicas.unwrap_or(0) < 1 {
            anyhow::bail!("Deployment {namespace}/{name} has no available pod yet");
        }
    }
    let configuration = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(WEBHOOK)
        .await?;
    let has_bundle = configuration
        .webhooks
        .unwrap_or_default()
        .first()
        .is_some_and(|w| w.client_config.ca_bundle.is_some());
    if !has_bundle {
        anyhow::bail!(
            "the operator has not written the caBundle of ValidatingWebhookConfiguration {WEBHOOK} yet"
        );
    }
    Ok(Some(()))
}

/// A Ready OneAgent pod on the real node running the fake OneAgent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeOneAgent {
    /// The pod's name.
    pub pod: String,
    /// The OneAgent version the process reported.
    pub version: String,
    /// The JSON the process printed after [`FAKE_ONEAGENT_STARTED`].
    pub report: String,
}

/// The first Ready, not terminating OneAgent pod (`app.kubernetes.io/name=oneagent`) in `namespace` on the
/// real node, with what its process reported; `None` while there is none.
pub async fn ready_fake_oneagent(client: &Client, namespace: &str) -> anyhow::Result<Option<FakeOneAgent>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=oneagent"))
        .await?;
    for pod in list.items {
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME);
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.ready));
        if !on_node || !ready || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let logs = pods.logs(&pod.name_any(), &LogParams::default()).await?;
        let report = logs
            .lines()
            .find_map(|l| l.split_once(FAKE_ONEAGENT_STARTED).map(|(_, json)| json.trim()))
            .unwrap_or_default()
            .to_owned();
        let version = serde_json::from_str::<serde_json::Value>(&report)
            .ok()
            .and_then(|r| r["version"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Ok(Some(FakeOneAgent {
            pod: pod.name_any(),
            version,
            report,
        }));
    }
    Ok(None)
}
