//! `dynatrace.com/v1alpha1` DynaKube: the first DynaKube version, still served for old manifests. It knows
//! only the classic full-stack mode; conversion ([`super::conversion`]) keeps everything it cannot express.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::v1beta1::{DynaKubeProxy, LegacyActiveGateSpec};

/// A DynaKube in its first API version: classic full-stack OneAgents and deprecated ActiveGate sections.
// Each printcolumn repeats `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "dynatrace.com",
    version = "v1alpha1",
    kind = "DynaKube",
    plural = "dynakubes",
    singular = "dynakube",
    namespaced,
    status = "DynaKubeStatus",
    category = "dynatrace",
    shortname = "dk",
    printcolumn(name = "ApiUrl", type_ = "string", json_path = ".spec.apiUrl"),
    printcolumn(name = "Tokens", type_ = "string", json_path = ".status.tokens"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct DynaKubeSpec {
    /// URL of the Dynatrace environment's API, including the `/api` suffix.
    // No `minLength`: an empty URL must reach the validating webhook, whose answer says what to set.
    pub api_url: String,
    /// Name of the Secret with the tokens. Defaults to the DynaKube's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,
    /// Disables TLS certificate verification for calls to the Dynatrace environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_cert_check: Option<bool>,
    /// Proxy for calls to the Dynatrace environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<DynaKubeProxy>,
    /// Name of a ConfigMap whose key `certs` holds PEM certificates of CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "trustedCAs")]
    pub trusted_cas: Option<String>,
    /// Network zone for OneAgents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_zone: Option<String>,
    /// Pull secret to use instead of the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_pull_secret: Option<String>,
    /// Creates Istio objects so that agents can reach the environment from inside a mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio: Option<bool>,
    /// OneAgent image and version settings, shared by the modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_agent: Option<OneAgentSpec>,
    /// Classic full-stack OneAgents on the selected nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classic_full_stack: Option<FullStackSpec>,
    /// Deprecated ActiveGate routing section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<LegacyActiveGateSpec>,
    /// Deprecated ActiveGate Kubernetes-monitoring section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_monitoring: Option<LegacyActiveGateSpec>,
    /// ActiveGate image settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_gate: Option<ActiveGateSpec>,
}

/// OneAgent image and version.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentSpec {
    /// OneAgent version to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Custom OneAgent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whether OneAgents are updated automatically (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update: Option<bool>,
}

/// Classic full-stack settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FullStackSpec {
    /// Deploys OneAgents when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Nodes that run a OneAgent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations for the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Seconds to wait for a recycled OneAgent pod to become ready (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ready_seconds: Option<u32>,
    /// Resources of the OneAgent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Arguments passed to the OneAgent installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables for the OneAgent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Priority class of the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// DNS policy of the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    /// Service account of the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Labels added to the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Run OneAgents with a capability list instead of privileged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_unprivileged_mode: Option<bool>,
    /// Use the immutable OneAgent image from the environment's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_immutable_image: Option<bool>,
}

/// ActiveGate image settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveGateSpec {
    /// Custom ActiveGate image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whether ActiveGates are updated automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update: Option<bool>,
}

/// What the operator observed, in the v1alpha1 shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynaKubeStatus {
    /// `Running`, `Deploying` or `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the operator last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_timestamp: Option<Time>,
    /// Name of the token Secret in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,
    /// UID of the `kube-system` namespace.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "kubeSystemUUID")]
    pub kube_system_uuid: Option<String>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // A list map keyed by type: each controller server-side applies its own conditions and never
    // removes another's.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// OneAgent version and instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_agent: Option<OneAgentStatus>,
    /// Running pods that the webhook did not inject (as in v1beta1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<super::v1beta1::InjectionStatus>,
}

/// OneAgent status in the v1alpha1 shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentStatus {
    /// The version in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// OneAgent pods by node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<BTreeMap<String, OneAgentInstance>>,
    /// When the version was last looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_probe_timestamp: Option<Time>,
    /// Whether the immutable image is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_immutable_image: Option<bool>,
}

/// One OneAgent pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentInstance {
    /// The pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The OneAgent version on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The IP of the pod's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}
