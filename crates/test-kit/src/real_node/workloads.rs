//! Checks of what runs on the real node, shared by the end-to-end tests and `cargo xtask run --real-node`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::storage::v1::CSINode;
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

/// What the sample application (`test-image-programs`' `sample-app`) prints first, followed by a JSON report
/// with the OneAgent libraries mapped into its process.
pub const SAMPLE_APP_STARTED: &str = "sample-app started: ";

/// The sample application's report in `logs` (the JSON after [`SAMPLE_APP_STARTED`]); `Null` when it has
/// not printed one.
pub fn sample_app_report(logs: &str) -> serde_json::Value {
    logs.lines()
        .find_map(|line| line.split_once(SAMPLE_APP_STARTED).map(|(_, json)| json))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// The OneAgent libraries the sample application's process has mapped, from its report in `logs`.
pub fn loaded_agent_libraries(logs: &str) -> Vec<String> {
    agent_libraries(&sample_app_report(logs))
}

/// The OneAgent libraries in the sample application's `report` (see [`sample_app_report`]).
pub fn agent_libraries(report: &serde_json::Value) -> Vec<String> {
    report["oneagent_libraries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

/// The CSI driver's pod (DaemonSet `dynatrace-oneagent-csi-driver` in `namespace`) on the real node once
/// both its containers are ready; `None` before.
pub async fn ready_csi_driver_pod(client: &Client, namespace: &str) -> anyhow::Result<Option<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "internal.dynatrace.com/app={}",
        pure_api::dynakube::names::CSI_DAEMONSET
    );
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list.items.into_iter().find(|pod| {
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME);
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        on_node && statuses.len() == 2 && statuses.iter().all(|s| s.ready)
    }))
}

/// The node id under which the kubelet registered our CSI driver (the real node's CSINode lists it);
/// `None` before.
pub async fn csi_driver_node_id(client: &Client) -> anyhow::Result<Option<String>> {
    let node = Api::<CSINode>::all(client.clone()).get_opt(NODE_NAME).await?;
    Ok(node.and_then(|n| {
        n.spec
            .drivers
            .into_iter()
            .find(|d| d.name == pure_csi::DRIVER_NAME)
            .map(|d| d.node_id)
    }))
}

/// What the real node's CSI provisioner reports in its node status ConfigMap (`dynatrace-csi-<node>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiNodeStatus {
    /// The ConfigMap's name.
    pub config_map: String,
    /// The complete code-module versions in the node's cache.
    pub versions: Vec<String>,
    /// Per DynaKube: `tenantUUID`, `version`, `config`, `ready`.
    pub dynakubes: serde_json::Value,
}

impl CsiNodeStatus {
    /// The version the node holds for `dynakube` once a publish for it mounts the agent (`ready`).
    pub fn ready_version(&self, dynakube: &str) -> Option<&str> {
        let state = &self.dynakubes[dynakube];
        let version = state["version"].as_str()?;
        (state["ready"] == true && self.versions.iter().any(|v| v == version)).then_some(version)
    }
}

/// The real node's CSI status ConfigMap in `namespace`; `None` while the provisioner has not written it.
pub async fn csi_node_status(client: &Client, namespace: &str) -> anyhow::Result<Option<CsiNodeStatus>> {
    let name = pure_csi::status::config_map_name(NODE_NAME);
    let Some(config_map) = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&name)
        .await?
    else {
        return Ok(None);
    };
    let data = config_map.data.unwrap_or_default();
    let json = |key: &str| -> anyhow::Result<serde_json::Value> {
        let text = data.get(key).map_or("null", String::as_str);
        serde_json::from_str(text)
            .with_context(|| format!("ConfigMap {namespace}/{name} has no JSON under {key:?}: {text:?}"))
    };
    let versions = serde_json::from_value(json(pure_csi::status::VERSIONS_KEY)?).unwrap_or_default();
    Ok(Some(CsiNodeStatus {
        config_map: name.clone(),
        versions,
        dynakubes: json(pure_csi::status::DYNAKUBES_KEY)?,
    }))
}

/// Where the kubelet has the CSI driver publish `volume` of the pod with `pod_uid` on the real node.
pub fn csi_target_path(pod_uid: &str, volume: &str) -> PathBuf {
    Path::new(super::KUBELET_DIR)
        .join("pods")
        .join(pod_uid)
        .join("volumes/kubernetes.io~csi")
        .join(volume)
        .join("mount")
}

/// The mount at `path` in this process's mount table (the host's, for the real node's kubelet dir), the
/// last one when several are stacked; `None` when nothing is mounted there.
pub fn mount_at(path: &Path) -> anyhow::Result<Option<pure_csi::mountinfo::Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let table = pure_csi::mountinfo::MountTable::parse(&text)?;
    Ok(table.at(path).last().cloned())
}
