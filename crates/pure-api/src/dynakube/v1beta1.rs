//! `dynatrace.com/v1beta1` DynaKube: the storage version, and the internal model the rest of the operator
//! works with (other served versions convert to and from it, see [`super::conversion`]).
//!
//! Every optional field is an `Option`, so that what a user wrote (including an explicit `false` or an
//! empty list) survives a round trip through the API server and through conversion unchanged.
//!
//! The internal model holds the union of every served version: besides the reference's v1beta1 fields it
//! has the fields that v1beta2 to v1beta6 added (`oneAgent.hostGroup`, `metadataEnrichment`,
//! `dynatraceApiRequestThreshold`, `secCompProfile`, `storageHostPath`, `logMonitoring`, `kspm`,
//! `extensions`, `templates`, `telemetryIngest`). v1beta1 is also the storage version, so an object written
//! in any version is stored without loss; the price is that v1beta1 accepts these later fields too (a
//! superset of the reference's v1beta1). Later versions' per-mode `namespaceSelector` is the top-level
//! `namespaceSelector` here: at most one mode is set, so there is only ever one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DynaKube describes how Dynatrace monitors a Kubernetes cluster: which OneAgent mode runs on which
/// nodes, which namespaces get code modules injected, and how the operator reaches the Dynatrace
/// environment.
// Each printcolumn repeats `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "dynatrace.com",
    version = "v1beta1",
    kind = "DynaKube",
    plural = "dynakubes",
    singular = "dynakube",
    namespaced,
    status = "DynaKubeStatus",
    category = "dynatrace",
    shortname = "dk",
    printcolumn(name = "ApiUrl", type_ = "string", json_path = ".spec.apiUrl"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct DynaKubeSpec {
    /// URL of the Dynatrace environment's API, including the `/api` suffix. SaaS:
    /// `https://<environment-id>.live.dynatrace.com/api`; Managed: `https://<host>/e/<environment-id>/api`.
    // No `minLength`: an empty URL must reach the validating webhook, whose answer says what to set.
    pub api_url: String,

    /// Name of the Secret with the tokens (keys `apiToken`, optional `paasToken` and `dataIngestToken`).
    /// Defaults to the DynaKube's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,

    /// Disables TLS certificate verification for calls to the Dynatrace environment. Use `trustedCAs`
    /// instead where possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_cert_check: Option<bool>,

    /// Proxy for calls to the Dynatrace environment: a literal URL (`value`) or the name of a Secret whose
    /// key `proxy` holds it (`valueFrom`). `value` wins when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<DynaKubeProxy>,

    /// Name of a ConfigMap whose key `certs` holds PEM certificates of CAs to trust when calling the
    /// Dynatrace environment (and inside OneAgents and code modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "trustedCAs")]
    pub trusted_cas: Option<String>,

    /// Network zone for OneAgents and for the connection-info query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_zone: Option<String>,

    /// Pull secret to use instead of the generated `<dynakube>-pull-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_pull_secret: Option<String>,

    /// Creates Istio ServiceEntry and VirtualService objects so that agents can reach the environment
    /// from inside a mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio: Option<bool>,

    /// Namespaces whose pods get code modules injected (cloudNativeFullStack and applicationMonitoring).
    /// An empty selector selects every namespace except the ignored system ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// How OneAgent is deployed. Set exactly one mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_agent: Option<OneAgentSpec>,

    /// ActiveGate settings. Accepted and kept; this operator does not deploy ActiveGates yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_gate: Option<ActiveGateSpec>,

    /// Deprecated ActiveGate routing section. Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<LegacyActiveGateSpec>,

    /// Deprecated ActiveGate Kubernetes-monitoring section. Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_monitoring: Option<LegacyActiveGateSpec>,

    /// Minimum minutes between calls to the Dynatrace API for the same purpose (v1beta2 and later; the
    /// reference defaults it to 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynatrace_api_request_threshold: Option<u16>,

    /// Metadata enrichment of application pods (v1beta2 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_enrichment: Option<MetadataEnrichment>,

    /// Log monitoring settings (v1beta3 and later). Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_monitoring: Option<KeptSection>,

    /// Kubernetes security posture management settings (v1beta3 and later). Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kspm: Option<KeptSection>,

    /// Extensions settings (v1beta3 and later). Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<KeptSection>,

    /// Templates of the components other features deploy (v1beta3 and later). Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<KeptSection>,

    /// Telemetry ingest settings (v1beta4 and later). Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry_ingest: Option<KeptSection>,
}

/// Metadata enrichment: which namespaces' pods get Kubernetes metadata attached to their telemetry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataEnrichment {
    /// Whether metadata enrichment runs (the reference defaults it to true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Namespaces whose pods are enriched. Empty selects every namespace except the ignored ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// A section this operator accepts and keeps as written, without acting on it yet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct KeptSection {
    /// The section's fields, unchanged.
    #[serde(flatten)]
    #[schemars(skip)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// A proxy URL, given literally or through a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynaKubeProxy {
    /// The proxy URL, for example `http://user:password@proxy.example:3128`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Name of a Secret in the DynaKube's namespace whose key `proxy` holds the proxy URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<String>,
}

/// The OneAgent deployment mode. Exactly one of the fields may be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentSpec {
    /// OneAgent on every selected node, injecting into every process of the host (including containers)
    /// through the container runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classic_full_stack: Option<HostInjectSpec>,

    /// OneAgent on every selected node for host metrics, plus code modules injected into application pods
    /// by the webhook, cached per node by the CSI driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_native_full_stack: Option<CloudNativeFullStackSpec>,

    /// Only code modules injected into application pods by the webhook; no OneAgent on the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_monitoring: Option<ApplicationMonitoringSpec>,

    /// OneAgent on every selected node for infrastructure monitoring only; no injection into processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_monitoring: Option<HostInjectSpec>,

    /// Host group of the OneAgents (v1beta2 and later); wins over a `--set-host-group` argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_group: Option<String>,
}

/// Settings of a OneAgent that runs on nodes (a DaemonSet).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostInjectSpec {
    /// OneAgent version to run, for example `1.277.0.20230914-094321`. Without it the environment's latest
    /// version is used and kept up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Custom OneAgent image. Overrides the image from the environment's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Tolerations for the OneAgent pods, to run on tainted nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Whether OneAgents are updated automatically to the environment's latest version (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update: Option<bool>,

    /// DNS policy of the OneAgent pods (default `ClusterFirstWithHostNet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,

    /// Annotations added to the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Labels added to the OneAgent DaemonSet and its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Environment variables for the OneAgent container; they win over the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Arguments passed to the OneAgent installer, for example `--set-host-group=prod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub args: Option<Vec<String>>,

    /// Nodes that run a OneAgent. Empty selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Priority class of the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Resources of the OneAgent container. A CPU request of 100m is added when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_agent_resources: Option<ResourceRequirements>,

    /// Name of a seccomp profile on the nodes for the OneAgent container (v1beta2 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sec_comp_profile: Option<String>,

    /// Host directory where OneAgents keep their data (v1beta4 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_host_path: Option<String>,
}

/// Settings of code-module injection into application pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppInjectionSpec {
    /// Image that holds the code modules, used by the CSI driver instead of downloading them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_modules_image: Option<String>,

    /// Resources of the init container injected into application pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_resources: Option<ResourceRequirements>,
}

/// cloudNativeFullStack: a host OneAgent plus code-module injection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudNativeFullStackSpec {
    /// Settings of the OneAgent on the nodes.
    #[serde(flatten)]
    pub host: HostInjectSpec,
    /// Settings of the injection into application pods.
    #[serde(flatten)]
    pub app: AppInjectionSpec,
}

/// applicationMonitoring: code-module injection only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationMonitoringSpec {
    /// Settings of the injection into application pods.
    #[serde(flatten)]
    pub app: AppInjectionSpec,

    /// Code-module version to inject. Without it the environment's latest version is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Whether code modules come from the CSI driver's per-node cache: true requires the driver, false
    /// never uses it (each pod downloads them in its init container), unset uses it when it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "useCSIDriver")]
    pub use_csi_driver: Option<bool>,
}

/// ActiveGate settings, kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ActiveGateSpec {
    /// ActiveGate capabilities: `routing`, `kubernetes-monitoring`, `metrics-ingest`, `dynatrace-api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Every other ActiveGate field (image, resources, tlsSecretName, ...), kept unchanged.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A deprecated ActiveGate section (`routing`, `kubernetesMonitoring`), kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct LegacyActiveGateSpec {
    /// Whether the capability is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Every other field (replicas, image, resources, ...), kept unchanged.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynaKubeStatus {
    /// `Running`, `Deploying` or `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// When the operator last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_timestamp: Option<Time>,

    /// Deprecated: see `dynatraceApi.lastTokenScopeRequest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_probe_timestamp: Option<Time>,

    /// UID of the `kube-system` namespace, used as the cluster's id.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "kubeSystemUUID")]
    pub kube_system_uuid: Option<String>,

    /// Conditions, for example `Tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // A list map keyed by type: each controller server-side applies its own conditions and never
    // removes another's.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,

    /// OneAgent version, instances and connection info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_agent: Option<OneAgentStatus>,

    /// Code-module version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_modules: Option<VersionStatus>,

    /// ActiveGate version and connection info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_gate: Option<ActiveGateStatus>,

    /// Throttling state of calls to the Dynatrace API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynatrace_api: Option<DynatraceApiStatus>,

    /// Running pods in the namespaces this DynaKube injects into that the webhook did not inject (written
    /// by the operator's missed-injection check; only for cloudNativeFullStack and applicationMonitoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionStatus>,
}

/// Running pods that should have the code module and do not: created while the webhook was unavailable,
/// or before their namespace was mapped to the DynaKube.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    /// How many running pods of the mapped namespaces were not injected (pods that opted out, OpenShift
    /// debug pods and the OneAgent's own pods do not count).
    pub pods_not_injected: i64,
    /// A few of them, as `namespace/name`, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<Vec<String>>,
    /// When a check found this result. The status is rewritten when the result changes, and otherwise at
    /// most once an hour to show that the checks still run (they run every 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
}

/// Which version of a component runs, and where it came from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// `tenant-registry`, `custom-image`, `custom-version` or `public-registry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The image reference in use.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    /// The version in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the version was last looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_timestamp: Option<Time>,
}

/// OneAgent status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentStatus {
    /// Version information.
    #[serde(flatten)]
    pub version: VersionStatus,
    /// OneAgent pods by node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<BTreeMap<String, OneAgentInstance>>,
    /// When `instances` was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_instance_status_update: Option<Time>,
    /// How OneAgents connect to the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_info_status: Option<ConnectionInfoStatus>,
    /// The OneAgent image's health check, as found in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub healthcheck: Option<serde_json::Value>,
    /// Progress of bringing every OneAgent pod to the current DaemonSet spec (a new version, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Progress of a OneAgent rollout: how many nodes run the current spec, and where it is stuck.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The OneAgent version being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Nodes whose OneAgent pod runs the current spec and is ready.
    pub nodes_done: i32,
    /// Nodes still waiting for it.
    pub nodes_pending: i32,
    /// The node whose new pod did not become ready in time: the rollout waits there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_node: Option<String>,
    /// What is happening, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One OneAgent pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentInstance {
    /// The pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The IP of the pod's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

/// Connection information of the environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfoStatus {
    /// The environment's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "tenantUUID")]
    pub tenant_uuid: Option<String>,
    /// Communication endpoints, formatted as the agents expect them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<String>,
    /// When the connection info was last requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<Time>,
    /// The communication hosts, parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication_hosts: Option<Vec<CommunicationHost>>,
}

/// A host agents talk to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationHost {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host name or IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// ActiveGate status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveGateStatus {
    /// Version information.
    #[serde(flatten)]
    pub version: VersionStatus,
    /// How ActiveGates connect to the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_info_status: Option<ConnectionInfoStatus>,
}

/// Throttling state of calls to the Dynatrace API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynatraceApiStatus {
    /// When the token scopes were last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_scope_request: Option<Time>,
}
