//! The legacy `OneAgent` custom resource (`dynatrace.com/v1alpha1`) of the original OneAgent Operator:
//! classic full-stack OneAgents on the selected nodes, kept so that existing manifests keep working.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::dynakube::v1beta1::DynaKubeProxy as OneAgentProxy;

/// Default for `waitReadySeconds`.
pub const DEFAULT_WAIT_READY_SECONDS: u32 = 300;

/// A OneAgent deployment: OneAgent pods on the nodes picked by `nodeSelector` and `tolerations`, kept on
/// the environment's latest version.
// Each printcolumn repeats `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "dynatrace.com",
    version = "v1alpha1",
    kind = "OneAgent",
    plural = "oneagents",
    singular = "oneagent",
    namespaced,
    status = "OneAgentStatus",
    category = "dynatrace",
    shortname = "oa",
    printcolumn(name = "ApiUrl", type_ = "string", json_path = ".spec.apiUrl"),
    printcolumn(name = "Tokens", type_ = "string", json_path = ".status.tokens"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentSpec {
    /// URL of the Dynatrace environment's API, including the `/api` suffix.
    // No `minLength`: an empty URL must reach the validating webhook, whose answer says what to set.
    pub api_url: String,
    /// Name of the Secret with `apiToken` and `paasToken`. Defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,
    /// Disables TLS certificate verification for calls to the Dynatrace environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_cert_check: Option<bool>,
    /// Creates Istio objects so that agents can reach the environment from inside a mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio: Option<bool>,
    /// Proxy for calls to the Dynatrace environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<OneAgentProxy>,
    /// Name of a ConfigMap whose key `certs` holds PEM certificates of CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "trustedCAs")]
    pub trusted_cas: Option<String>,
    /// Network zone for OneAgents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_zone: Option<String>,
    /// Use the immutable OneAgent image from the environment's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_immutable_image: Option<bool>,
    /// Nodes that run a OneAgent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations for the OneAgent pods, to run on tainted nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Seconds to wait for a recycled OneAgent pod to become ready (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ready_seconds: Option<u32>,
    /// Custom OneAgent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// OneAgent version to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Pull secret to use instead of the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_pull_secret: Option<String>,
    /// Resources of the OneAgent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// OneAgents do not inject into containers (application injection happens through the webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_injection: Option<bool>,
    /// Arguments passed to the OneAgent installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables for the OneAgent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Priority class of the OneAgent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Turns off automatic OneAgent updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_agent_update: Option<bool>,
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
}

impl OneAgent {
    /// The proxy: `spec.proxy.valueFrom` wins over `value`, as in the old operator's client and DaemonSet
    /// (the DynaKube prefers `value`).
    pub fn proxy(&self) -> Option<crate::dynakube::ProxySource<'_>> {
        self.spec.proxy.as_ref()?.source(false)
    }

    /// The ConfigMap whose key `certs` holds CAs to trust (`spec.trustedCAs`).
    pub fn trusted_cas_config_map(&self) -> Option<&str> {
        self.spec.trusted_cas.as_deref().filter(|n| !n.is_empty())
    }
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentStatus {
    /// `Deploying`, `Running` or `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The desired OneAgent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// OneAgent pods by node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<BTreeMap<String, OneAgentInstance>>,
    /// When the operator last checked for a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_probe_timestamp: Option<Time>,
    /// Digest of the image in use (immutable mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_hash: Option<String>,
    /// Version of the image in use (immutable mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// When the image version was last looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_image_version_probe_timestamp: Option<Time>,
    /// Conditions, for example `APIToken` and `PaaSToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // A list map keyed by type: each controller server-side applies its own conditions and never
    // removes another's.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// The environment's id.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "environmentID")]
    pub environment_id: Option<String>,
    /// Name of the token Secret in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,
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
