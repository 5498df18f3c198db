//! What the endpoints return, and the requests that need more than a path.

use serde::{Deserialize, Serialize};

/// Which installer to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSelector {
    /// `unix`, `windows`, ...
    pub os: String,
    /// `default` (host OneAgent), `paas` (code modules), `paas-sh`.
    pub installer_type: String,
    /// `x86`, `arm`, `s390`, `ppcle`.
    pub arch: String,
    /// `default`, `musl`, `multidistro`.
    pub flavor: String,
}

impl AgentSelector {
    /// The code modules for Linux on x86-64 (what the CSI driver and init container download).
    pub fn code_modules() -> Self {
        Self {
            os: "unix".into(),
            installer_type: "paas".into(),
            arch: "x86".into(),
            flavor: "default".into(),
        }
    }

    /// The host OneAgent installer for Linux on x86-64.
    pub fn host_agent() -> Self {
        Self {
            os: "unix".into(),
            installer_type: "default".into(),
            arch: "x86".into(),
            flavor: "default".into(),
        }
    }
}

/// An agent archive to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// Which installer.
    pub agent: AgentSelector,
    /// A version like `1.277.0.20230914-094321`, or `None` for the latest.
    pub version: Option<String>,
    /// Code-module technologies to include (`java`, `nodejs`, ...); empty means all.
    pub technologies: Vec<String>,
    /// Leave out the installer metadata.
    pub skip_metadata: bool,
    /// A sha256 the archive must have, when the caller knows it.
    pub expected_sha256: Option<String>,
}

/// A finished, verified download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedFile {
    /// Where it is.
    pub path: std::path::PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, hex.
    pub sha256: String,
}

/// Download progress, reported as bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes received so far in this attempt.
    pub received: u64,
    /// Bytes announced, when the server said.
    pub total: Option<u64>,
}

/// How OneAgents connect to the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The environment's UUID.
    pub tenant_uuid: String,
    /// The token agents authenticate with.
    pub tenant_token: String,
    /// The endpoints formatted as agents take them (`a;b`).
    pub formatted_endpoints: String,
    /// The endpoints, parsed and deduplicated.
    pub communication_hosts: Vec<CommunicationHost>,
}

/// A host agents talk to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommunicationHost {
    /// `http` or `https`.
    pub protocol: String,
    /// Host name or IP.
    pub host: String,
    /// Port (80 or 443 when the endpoint names none).
    pub port: u16,
}

/// Parses communication endpoints into hosts: default ports, duplicates and unparsable entries dropped.
pub fn communication_hosts<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> Vec<CommunicationHost> {
    let mut hosts: Vec<CommunicationHost> = Vec::new();
    for endpoint in endpoints {
        let Ok(url) = url::Url::parse(endpoint.trim()) else {
            continue;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            continue;
        };
        let parsed = CommunicationHost {
            protocol: url.scheme().to_owned(),
            host: host.to_owned(),
            port,
        };
        if !hosts.contains(&parsed) {
            hosts.push(parsed);
        }
    }
    hosts
}

/// The agent's process-module configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessModuleConfig {
    /// Revision; send it back to get `None` while nothing changed.
    pub revision: u64,
    /// The settings.
    pub properties: Vec<ProcessModuleProperty>,
}

/// One process-module setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessModuleProperty {
    /// Section of `ruxitagentproc.conf`.
    pub section: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A host the environment knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Entity id, e.g. `HOST-1234`.
    pub entity_id: String,
    /// Its IP addresses.
    pub ip_addresses: Vec<String>,
    /// Its OneAgent version, `major.minor.revision.timestamp`.
    pub agent_version: Option<String>,
    /// Its network zone (`default` when none).
    pub network_zone: String,
    /// When it was last seen, ms since the epoch.
    pub last_seen_ms: i64,
}

/// An event to send to the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// For example `MARKED_FOR_TERMINATION`.
    pub event_type: String,
    /// Start, ms since the epoch.
    pub start: i64,
    /// End, ms since the epoch.
    pub end: i64,
    /// Free text.
    pub description: String,
    /// Entities the event is about.
    pub attach_rules: AttachRules,
    /// Who sends it.
    pub source: String,
}

/// Entities an event is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachRules {
    /// Entity ids.
    pub entity_ids: Vec<String>,
}

/// The latest image of a component in the environment's registry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LatestImage {
    /// Repository, e.g. `<host>/linux/oneagent`.
    pub source: String,
    /// Tag.
    pub tag: String,
}

/// Components with images in the environment's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageComponent {
    /// The host OneAgent.
    OneAgent,
    /// The code modules.
    CodeModules,
    /// The ActiveGate.
    ActiveGate,
}

impl ImageComponent {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::OneAgent => "/v1/deployment/image/agent/oneAgent/latest",
            Self::CodeModules => "/v1/deployment/image/agent/codeModules/latest",
            Self::ActiveGate => "/v1/deployment/image/gateway/latest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communication_hosts_get_default_ports_and_are_deduplicated() {
        let hosts = communication_hosts([
            "https://a.example/communication",
            "http://b.example/communication",
            "https://a.example:443/communication",
            "https://10.0.0.1:9999/communication",
            "not a url",
        ]);
        let expected = [
            ("https", "a.example", 443),
            ("http", "b.example", 80),
            ("https", "10.0.0.1", 9999),
        ];
        let got: Vec<_> = hosts
            .iter()
            .map(|h| (h.protocol.as_str(), h.host.as_str(), h.port))
            .collect();
        assert_eq!(got, expected);
    }
}

/// A monitored entity of the environment (`/v2/entities`), for example the cluster's
/// `KUBERNETES_CLUSTER`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitoredEntity {
    /// For example `KUBERNETES_CLUSTER-0A1B2C3D4E5F6071`.
    pub entity_id: String,
    /// The name the environment shows.
    #[serde(default)]
    pub display_name: String,
    /// When the environment last saw it, in ms since the epoch.
    #[serde(default)]
    pub last_seen_tms: Option<i64>,
}

/// A stored settings 2.0 object (`/v2/settings/objects`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsObject {
    /// Its id.
    pub object_id: String,
    /// Its schema, for example `builtin:cloud.kubernetes`.
    #[serde(default)]
    pub schema_id: String,
    /// Its scope: `environment` or an entity id.
    #[serde(default)]
    pub scope: String,
    /// Its value.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// A settings 2.0 object to create.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSettingsObject {
    /// Its schema, for example `builtin:cloud.kubernetes`.
    pub schema_id: String,
    /// Its scope: `environment` or an entity id.
    pub scope: String,
    /// Its value, as the schema defines it.
    pub value: serde_json::Value,
}
