//! The names injection writes and reads: annotations, volumes, paths and environment variables (spec
//! §3.4–3.7). One place for each, so the webhook, the init container and the tests agree.

/// Pod annotation: whether metadata enrichment is injected (defaults to `automatic-injection`).
pub use pure_api::annotations::DATA_INGEST_INJECT as ANNOTATION_DATA_INGEST_INJECT;
/// Pod annotation set to `true` once metadata enrichment is injected.
pub use pure_api::annotations::DATA_INGEST_INJECTED as ANNOTATION_DATA_INGEST_INJECTED;
/// Pod annotation set to `true` on every pod the webhook changed.
pub use pure_api::annotations::DYNAKUBE_INJECTED as ANNOTATION_DYNAKUBE_INJECTED;
/// Pod annotation: `false` keeps the webhook away from the pod altogether.
pub use pure_api::annotations::INJECT as ANNOTATION_INJECT;
/// Pod annotation: whether the OneAgent code module is injected (defaults to the DynaKube's
/// `automatic-injection` flag).
pub use pure_api::annotations::ONEAGENT_INJECT as ANNOTATION_ONEAGENT_INJECT;
/// Pod annotation set to `true` once the code module is injected.
pub use pure_api::annotations::ONEAGENT_INJECTED as ANNOTATION_ONEAGENT_INJECTED;
/// Pod annotation: the code-module flavor (`default`, `musl`, `multidistro`); empty lets the init
/// container pick the architecture's default.
pub const ANNOTATION_FLAVOR: &str = "oneagent.dynatrace.com/flavor";
/// Pod annotation: the technologies to download (default `all`).
pub const ANNOTATION_TECHNOLOGIES: &str = "oneagent.dynatrace.com/technologies";
/// Pod annotation: where the code module appears in the application containers.
pub const ANNOTATION_INSTALL_PATH: &str = "oneagent.dynatrace.com/install-path";
/// Pod annotation: a URL the init container downloads the code module from instead of the tenant.
pub const ANNOTATION_INSTALLER_URL: &str = "oneagent.dynatrace.com/installer-url";
/// Pod annotation: `fail` or `silent`, overriding the DynaKube's `injection-failure-policy` flag.
pub const ANNOTATION_FAILURE_POLICY: &str = "oneagent.dynatrace.com/failure-policy";
/// Pod annotation of OpenShift debug pods (with [`ANNOTATION_OPENSHIFT_DEBUG_RESOURCE`]).
pub use pure_api::annotations::OPENSHIFT_DEBUG_CONTAINER as ANNOTATION_OPENSHIFT_DEBUG_CONTAINER;
/// Pod annotation of OpenShift debug pods (with [`ANNOTATION_OPENSHIFT_DEBUG_CONTAINER`]).
pub use pure_api::annotations::OPENSHIFT_DEBUG_RESOURCE as ANNOTATION_OPENSHIFT_DEBUG_RESOURCE;
/// Prefix of the namespace annotations that map `DT_RELEASE_*` variables to pod fields
/// (`mapping.release.dynatrace.com/version: metadata.labels['my-version']`).
pub const ANNOTATION_RELEASE_MAPPING_PREFIX: &str = "mapping.release.dynatrace.com/";

/// The init container's name (the reference's since v1.4).
pub const INIT_CONTAINER_NAME: &str = "dynatrace-operator";
/// The init container's name before v1.4; pods injected then are recognised by it.
pub const LEGACY_INIT_CONTAINER_NAME: &str = "install-oneagent";

/// Default install path of the code module in application containers.
pub const DEFAULT_INSTALL_PATH: &str = "/opt/dynatrace/oneagent-paas";
/// Default technologies.
pub const DEFAULT_TECHNOLOGIES: &str = "all";
/// The CSI driver that serves code modules.
pub const CSI_DRIVER: &str = "csi.oneagent.dynatrace.com";

/// Volume with the init Secret `dynatrace-dynakube-config`.
pub const VOLUME_INJECTION_CONFIG: &str = "injection-config";
/// Volume with the code module (CSI volume or emptyDir).
pub const VOLUME_ONEAGENT_BIN: &str = "oneagent-bin";
/// Volume the init container writes the per-container files into.
pub const VOLUME_ONEAGENT_SHARE: &str = "oneagent-share";
/// Read-only CSI only: the writable copy of the agent configuration.
pub const VOLUME_AGENT_CONF: &str = "oneagent-agent-conf";
/// Read-only CSI only: the agent's data storage.
pub const VOLUME_DATA_STORAGE: &str = "oneagent-data-storage";
/// Read-only CSI only: the agent's logs.
pub const VOLUME_LOG: &str = "oneagent-log";
/// Volume with the enrichment Secret `dynatrace-data-ingest-endpoint`.
pub const VOLUME_DATA_INGEST_ENDPOINT: &str = "data-ingest-endpoint";
/// Volume the init container writes the enrichment files into.
pub const VOLUME_DATA_INGEST_ENRICHMENT: &str = "data-ingest-enrichment";

/// Where the init container finds the code-module volume.
pub const INIT_BIN_PATH: &str = "/mnt/bin";
/// Where the init container writes the shared files.
pub const INIT_SHARE_PATH: &str = "/mnt/share";
/// Where the init container copies the agent configuration to (read-only CSI).
pub const INIT_AGENT_CONF_PATH: &str = "/mnt/agent-conf";
/// Where the init container reads the init Secret.
pub const INIT_CONFIG_PATH: &str = "/mnt/config";
/// Where the enrichment files are, in the init container and the application containers.
pub const ENRICHMENT_PATH: &str = "/var/lib/dynatrace/enrichment";
/// Where the enrichment endpoint Secret is mounted in application containers.
pub const ENRICHMENT_ENDPOINT_PATH: &str = "/var/lib/dynatrace/enrichment/endpoint";

/// The preload file in application containers.
pub const LD_SO_PRELOAD_PATH: &str = "/etc/ld.so.preload";
/// Its name in the share volume.
pub const LD_SO_PRELOAD_FILE: &str = "ld.so.preload";
/// Where each application container sees its own `container_<name>.conf`.
pub const CONTAINER_CONF_PATH: &str = "/var/lib/dynatrace/oneagent/agent/config/container.conf";
/// The ActiveGate's certificate in application containers.
pub const CUSTOM_PEM_PATH: &str = "/var/lib/dynatrace/oneagent/agent/customkeys/custom.pem";
/// Its name in the share volume.
pub const CUSTOM_PEM_FILE: &str = "custom.pem";
/// The curl options (initial connect retry) in application containers.
pub const CURL_OPTIONS_PATH: &str = "/var/lib/dynatrace/oneagent/agent/customkeys/curl_options.conf";
/// Its name in the share volume.
pub const CURL_OPTIONS_FILE: &str = "curl_options.conf";
/// The agent library, relative to the install path.
pub const AGENT_LIBRARY: &str = "agent/lib64/liboneagentproc.so";

/// The per-container configuration file in the share volume.
pub fn container_conf_file(container: &str) -> String {
    format!("container_{container}.conf")
}

/// Environment variables of the init container and the application containers: the contract between
/// the webhook and `dynatrace-operator init`, defined where `init` reads it.
pub use pure_code_module::init::env;
