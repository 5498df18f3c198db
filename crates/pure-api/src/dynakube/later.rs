//! The pieces shared by the DynaKube versions v1beta2 to v1beta6, which differ from each other in a few
//! fields only. Where a field exists in some of them, the type takes a flattened extension: the field's own
//! struct where the version has it, [`Nothing`] where it does not, so that every version's schema (and so
//! `kubectl explain` and pruning) has exactly the reference's fields.
//!
//! Each version module calls [`dynakube_version!`] for its top-level types. Conversion to and from the
//! internal model is in [`super::conversion`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The extension of a version that lacks the field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Nothing {}

/// `storageHostPath` (v1beta4 and later).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageHostPath {
    /// Host directory where OneAgents keep their data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_host_path: Option<String>,
}

/// `useCSIDriver` (v1beta2 only; later versions use the CSI driver whenever it is installed).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct UseCsiDriver {
    /// Whether code modules come from the CSI driver's per-node cache (default false: each pod downloads
    /// them in its init container).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "useCSIDriver")]
    #[schemars(extend("default" = false))]
    pub use_csi_driver: Option<bool>,
}

/// Settings of a OneAgent that runs on nodes (a DaemonSet).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostInjectSpec<S> {
    /// OneAgent version to run, for example `1.277.0.20230914-094321`. Without it the environment's latest
    /// version is used.
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
    /// Arguments passed to the OneAgent installer, for example `--set-host-property=team=a`.
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
    /// Name of a seccomp profile on the nodes for the OneAgent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sec_comp_profile: Option<String>,
    /// The fields only some versions have.
    #[serde(flatten)]
    pub extension: S,
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
    /// Namespaces whose pods get code modules injected. Empty selects every namespace except the ignored
    /// system ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// cloudNativeFullStack: a host OneAgent plus code-module injection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudNativeFullStackSpec<S> {
    /// Settings of the OneAgent on the nodes.
    #[serde(flatten)]
    pub host: HostInjectSpec<S>,
    /// Settings of the injection into application pods.
    #[serde(flatten)]
    pub app: AppInjectionSpec,
}

/// applicationMonitoring: code-module injection only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationMonitoringSpec<C> {
    /// Settings of the injection into application pods.
    #[serde(flatten)]
    pub app: AppInjectionSpec,
    /// Code-module version to inject. Without it the environment's latest version is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The fields only some versions have.
    #[serde(flatten)]
    pub extension: C,
}

/// The OneAgent deployment mode. Exactly one mode may be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneAgentSpec<S, C> {
    /// OneAgent on every selected node, injecting into every process of the host (including containers)
    /// through the container runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classic_full_stack: Option<HostInjectSpec<S>>,
    /// OneAgent on every selected node for host metrics, plus code modules injected into application pods
    /// by the webhook, cached per node by the CSI driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_native_full_stack: Option<CloudNativeFullStackSpec<S>>,
    /// Only code modules injected into application pods by the webhook; no OneAgent on the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_monitoring: Option<ApplicationMonitoringSpec<C>>,
    /// OneAgent on every selected node for infrastructure monitoring only; no injection into processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_monitoring: Option<HostInjectSpec<S>>,
    /// Host group of the OneAgents; wins over a `--set-host-group` argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_group: Option<String>,
}

/// Metadata enrichment: which namespaces' pods get Kubernetes metadata attached to their telemetry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataEnrichment {
    /// Whether metadata enrichment runs (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// Namespaces whose pods are enriched. Empty selects every namespace except the ignored ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// The sections v1beta3 added (`logMonitoring`, `kspm`, `extensions`, `templates`), accepted and kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1beta3Sections {
    /// Log monitoring settings. Accepted and kept; this operator does not deploy log monitoring yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_monitoring: Option<super::v1beta1::KeptSection>,
    /// Kubernetes security posture management settings. Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kspm: Option<super::v1beta1::KeptSection>,
    /// Extensions settings. Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<super::v1beta1::KeptSection>,
    /// Templates of the components that other features deploy. Accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<super::v1beta1::KeptSection>,
}

/// The sections of v1beta4 and later: those of v1beta3 and `telemetryIngest`, accepted and kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1beta4Sections {
    /// The sections v1beta3 added.
    #[serde(flatten)]
    pub v1beta3: V1beta3Sections,
    /// Telemetry ingest settings. Accepted and kept; this operator does not deploy it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry_ingest: Option<super::v1beta1::KeptSection>,
}

/// Defines `DynaKube` and `DynaKubeSpec` of one version from v1beta2 on: the fields every such version
/// has, with the version's OneAgent type and its flattened extra sections.
macro_rules! dynakube_version {
    (version = $version:tt, one_agent = $one_agent:ty, sections = $sections:ty) => {
        pub use $crate::dynakube::v1beta1::{ActiveGateSpec, DynaKubeProxy, DynaKubeStatus};

        /// A DynaKube describes how Dynatrace monitors a Kubernetes cluster: which OneAgent mode runs on
        /// which nodes, which namespaces get code modules injected, and how the operator reaches the
        /// Dynatrace environment.
        // Each printcolumn repeats `type_ = "string"`, which clippy mistakes for a duplicated attribute.
        #[allow(clippy::duplicated_attributes)]
        #[derive(
            kube::CustomResource,
            serde::Serialize,
            serde::Deserialize,
            Clone,
            Debug,
            Default,
            PartialEq,
            schemars::JsonSchema,
        )]
        #[kube(
            group = "dynatrace.com",
            version = $version,
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
            /// `https://<environment-id>.live.dynatrace.com/api`; Managed:
            /// `https://<host>/e/<environment-id>/api`.
            // No `minLength`: an empty URL must reach the validating webhook, whose answer says what to set.
            pub api_url: String,
            /// Name of the Secret with the tokens (keys `apiToken`, optional `dataIngestToken`). Defaults to
            /// the DynaKube's own name.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub tokens: Option<String>,
            /// Disables TLS certificate verification for calls to the Dynatrace environment. Use
            /// `trustedCAs` instead where possible.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub skip_cert_check: Option<bool>,
            /// Proxy for calls to the Dynatrace environment: a literal URL (`value`) or the name of a Secret
            /// whose key `proxy` holds it (`valueFrom`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub proxy: Option<DynaKubeProxy>,
            /// Name of a ConfigMap whose key `certs` holds PEM certificates of CAs to trust when calling the
            /// Dynatrace environment (and inside OneAgents and code modules).
            #[serde(default, skip_serializing_if = "Option::is_none", rename = "trustedCAs")]
            pub trusted_cas: Option<String>,
            /// Network zone for OneAgents and for the connection-info query.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub network_zone: Option<String>,
            /// Pull secret to use instead of the generated `<dynakube>-pull-secret`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub custom_pull_secret: Option<String>,
            /// Creates Istio ServiceEntry and VirtualService objects so that agents can reach the
            /// environment from inside a mesh.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub enable_istio: Option<bool>,
            /// Minimum minutes between calls to the Dynatrace API for the same purpose (default 15).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(extend("default" = 15))]
            pub dynatrace_api_request_threshold: Option<u16>,
            /// How OneAgent is deployed. Set exactly one mode.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub one_agent: Option<$one_agent>,
            /// Metadata enrichment of application pods.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub metadata_enrichment: Option<$crate::dynakube::later::MetadataEnrichment>,
            /// ActiveGate settings. Accepted and kept; this operator does not deploy ActiveGates yet.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub active_gate: Option<ActiveGateSpec>,
            /// The sections only some versions have.
            #[serde(flatten)]
            pub sections: $sections,
        }
    };
}
pub(crate) use dynakube_version;
