//! The fake tenant's configuration and the values its handle and admin API exchange.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Scope needed by the installer, connection-info, process-module-config and image endpoints.
pub const SCOPE_INSTALLER_DOWNLOAD: &str = "InstallerDownload";
/// Scope needed by the hosts and events endpoints.
pub const SCOPE_DATA_EXPORT: &str = "DataExport";
/// Scope that lets a token look up other tokens (a token may always look itself up).
pub const SCOPE_API_TOKENS_READ: &str = "apiTokens.read";

/// Largest `archivePayloadBytes` accepted: the archives are written without ZIP64, so every entry and
/// offset must stay below 4 GiB.
pub const MAX_PAYLOAD_BYTES: u64 = 3 << 30;

/// An API token the fake tenant accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenConfig {
    /// The token as sent in `Authorization: Api-Token <value>`.
    pub value: String,
    /// Its scopes, for example `InstallerDownload` or `DataExport`.
    pub scopes: Vec<String>,
}

/// What the fake tenant serves. As JSON (the binary's `--config`) the fields are camelCase and every field
/// is optional: a missing one keeps its [`Default`] value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TenantConfig {
    /// The environment id, for example `abc12345`; returned as `tenantUUID`.
    pub environment_id: String,
    /// The API tokens the tenant accepts.
    pub tokens: Vec<TokenConfig>,
    /// What connection info returns as `tenantToken`.
    pub tenant_token: String,
    /// The communication endpoints of the default network zone.
    pub communication_endpoints: Vec<String>,
    /// Network zone name to its communication endpoints.
    pub network_zones: BTreeMap<String, Vec<String>>,
    /// OneAgent versions such as `1.277.0.20230914-094321`, oldest first: the last one is the latest.
    pub versions: Vec<String>,
    /// Size of `agent/lib64/liboneagentproc.so` in every archive (at most [`MAX_PAYLOAD_BYTES`]).
    pub archive_payload_bytes: u64,
    /// Process module configuration properties as `(section, key, value)`; served as revision 1.
    pub process_module_config: Vec<(String, String, String)>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            environment_id: "abc12345".into(),
            tokens: vec![TokenConfig {
                value: "dt0c01.test".into(),
                scopes: [
                    SCOPE_INSTALLER_DOWNLOAD,
                    SCOPE_DATA_EXPORT,
                    "metrics.ingest",
                    "activeGateTokenManagement.create",
                    "entities.read",
                    "settings.read",
                    "settings.write",
                ]
                .map(String::from)
                .to_vec(),
            }],
            tenant_token: "tenant-token-abc".into(),
            communication_endpoints: vec![
                "https://abc12345.live.dynatrace.com:443/communication".into(),
                "https://10.0.0.1:9999/communication".into(),
            ],
            network_zones: BTreeMap::from([(
                "zone-a".into(),
                vec!["https://zone-a.example:443/communication".into()],
            )]),
            versions: vec!["1.276.0.20230901-120000".into(), "1.277.0.20230914-094321".into()],
            archive_payload_bytes: 64 * 1024,
            process_module_config: vec![
                (
                    "general".into(),
                    "storage".into(),
                    "/var/lib/dynatrace/oneagent".into(),
                ),
                ("general".into(), "hostGroup".into(), "fake".into()),
            ],
        }
    }
}

/// The endpoints of the fake tenant, for faults and the request log. As JSON: snake_case
/// (`"connection_info"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /api/v1/deployment/installer/agent/{os}/{type}/latest/metainfo`
    Metainfo,
    /// `GET /api/v1/deployment/installer/agent/versions/{os}/{type}`
    Versions,
    /// `GET /api/v1/deployment/installer/agent/{os}/{type}/latest` and `.../version/{version}`
    Download,
    /// `GET /api/v1/deployment/installer/agent/connectioninfo`
    ConnectionInfo,
    /// `GET /api/v1/deployment/installer/agent/processmoduleconfig`
    ProcessModuleConfig,
    /// `POST /api/v1/tokens/lookup`
    TokenLookup,
    /// `GET /api/v1/entity/infrastructure/hosts`
    Hosts,
    /// `POST /api/v1/events`
    Events,
    /// `GET /api/v1/deployment/image/agent/{oneAgent,codeModules}/latest`
    Images,
    /// `GET|HEAD /v2/`: the registry's version check.
    RegistryBase,
    /// `GET|HEAD /v2/<name>/manifests/<tag | digest>`
    RegistryManifests,
    /// `GET|HEAD /v2/<name>/blobs/<digest>`
    RegistryBlobs,
    /// `GET /v2/<name>/tags/list`
    RegistryTags,
    /// Everything under `/admin` (never faulted).
    Admin,
    /// Any other path, or a known path with the wrong method.
    Unknown,
}

impl Endpoint {
    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metainfo => "metainfo",
            Self::Versions => "versions",
            Self::Download => "download",
            Self::ConnectionInfo => "connection_info",
            Self::ProcessModuleConfig => "process_module_config",
            Self::TokenLookup => "token_lookup",
            Self::Hosts => "hosts",
            Self::Events => "events",
            Self::Images => "images",
            Self::RegistryBase => "registry_base",
            Self::RegistryManifests => "registry_manifests",
            Self::RegistryBlobs => "registry_blobs",
            Self::RegistryTags => "registry_tags",
            Self::Admin => "admin",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault injected into the answers of one endpoint. As JSON: `{"kind":"throttle","retry_after_seconds":2}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Latency {
        /// The delay in milliseconds.
        millis: u64,
    },
    /// 429 with `Retry-After: N` and the error JSON.
    Throttle {
        /// The `Retry-After` value in seconds.
        retry_after_seconds: u64,
    },
    /// 503 with `Retry-After: 1` and the error JSON.
    Unavailable,
    /// 401 as for a wrong token.
    Unauthorized,
    /// 400 with this message, as the environment answers a request it rejects (for example a network
    /// zone it does not accept).
    BadRequest {
        /// The error message.
        message: String,
    },
    /// Downloads and registry blobs only: the headers (with the full `Content-Length`) and this many body
    /// bytes, then the connection is dropped.
    CutAfter {
        /// Body bytes sent before the connection is dropped.
        bytes: u64,
    },
    /// Downloads and registry blobs only: the good body's length and checksum headers
    /// (`x-checksum-sha256`, `Docker-Content-Digest`), but bytes in the middle of the body are flipped.
    Corrupt,
}

impl Fault {
    /// Whether the fault changes a body (and so applies to successful downloads and blob pulls only).
    pub fn is_download_only(&self) -> bool {
        matches!(self, Self::CutAfter { .. } | Self::Corrupt)
    }
}

/// One request the fake tenant answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The endpoint it was routed to.
    pub endpoint: Endpoint,
    /// The HTTP method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string without `?` (empty when there was none).
    pub query: String,
    /// The status code of the answer.
    pub status: u16,
    /// The token of an `Authorization: Api-Token <token>` header, without the prefix.
    pub token: Option<String>,
}

/// A host monitored by the tenant, served by the hosts endpoint. As JSON (`POST /admin/hosts`) the fields
/// are snake_case; camelCase (`entityId`, `ipAddresses`, `agentVersion`, `networkZone`) is accepted too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// The entity id, for example `HOST-42`.
    #[serde(alias = "entityId")]
    pub entity_id: String,
    /// The host's IP addresses.
    #[serde(alias = "ipAddresses")]
    pub ip_addresses: Vec<String>,
    /// The OneAgent version on it, for example `1.277.0.20230914-094321`.
    #[serde(alias = "agentVersion")]
    pub agent_version: String,
    /// Its network zone; `None` is the default zone.
    #[serde(default, alias = "networkZone")]
    pub network_zone: Option<String>,
}

/// A OneAgent version split as the hosts endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct AgentVersion {
    pub major: u64,
    pub minor: u64,
    pub revision: u64,
    pub timestamp: String,
}

impl AgentVersion {
    /// Parses `1.277.0.20230914-094321`; `None` when it has another form.
    pub fn parse(version: &str) -> Option<Self> {
        let mut parts = version.splitn(4, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let revision = parts.next()?.parse().ok()?;
        let timestamp = parts.next()?;
        let (date, time) = timestamp.split_once('-')?;
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(date, 8) || !digits(time, 6) {
            return None;
        }
        Some(Self {
            major,
            minor,
            revision,
            timestamp: timestamp.to_owned(),
        })
    }

    /// Like [`AgentVersion::parse`], but a part that does not parse becomes 0 (or an empty timestamp).
    pub fn parse_lenient(version: &str) -> Self {
        Self::parse(version).unwrap_or_else(|| {
            let mut parts = version.splitn(4, '.');
            let mut number = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let (major, minor, revision) = (number(), number(), number());
            Self {
                major,
                minor,
                revision,
                timestamp: version.splitn(4, '.').nth(3).unwrap_or_default().to_owned(),
            }
        })
    }
}

/// Why a version string cannot be served: it must be usable as a path segment and as a directory name in
/// the archive.
pub(crate) fn check_version(version: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if version.is_empty() || version.len() > 64 || version == "." || version == ".." {
        return Err(format!(
            "version {version:?} must be 1 to 64 characters and not \".\" or \"..\", like 1.277.0.20230914-094321"
        ));
    }
    if !version.chars().all(allowed) {
        return Err(format!(
            "version {version:?} may only hold ASCII letters, digits, '.', '-' and '_', like 1.277.0.20230914-094321"
        ));
    }
    Ok(())
}

impl TenantConfig {
    /// Checks what the server relies on; the error says which field is wrong and how.
    pub(crate) fn check(&self) -> Result<(), String> {
        for version in &self.versions {
            check_version(version).map_err(|e| format!("versions: {e}"))?;
        }
        if self.archive_payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "archivePayloadBytes is {}, more than the {MAX_PAYLOAD_BYTES} bytes an archive without ZIP64 \
                 can hold; choose a smaller payload",
                self.archive_payload_bytes
            ));
        }
        if let Some(token) = self.tokens.iter().find(|t| t.value.trim().is_empty()) {
            return Err(format!(
                "tokens: a token has an empty value (scopes {:?}); give every token a value",
                token.scopes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_versions() {
        let v = AgentVersion::parse("1.277.0.20230914-094321").unwrap();
        assert_eq!((v.major, v.minor, v.revision), (1, 277, 0));
        assert_eq!(v.timestamp, "20230914-094321");
        assert_eq!(AgentVersion::parse("1.277.0"), None);
        assert_eq!(AgentVersion::parse("1.277.0.2023-09"), None);
        let lenient = AgentVersion::parse_lenient("1.2");
        assert_eq!((lenient.major, lenient.minor, lenient.revision), (1, 2, 0));
    }

    #[test]
    fn checks_versions_for_path_safety() {
        assert!(check_version("1.277.0.20230914-094321").is_ok());
        assert!(check_version("..").is_err());
        assert!(check_version("1/2").is_err());
        assert!(check_version("").is_err());
    }

    #[test]
    fn config_json_is_camel_case_and_partial() {
        let config: TenantConfig =
            serde_json::from_str(r#"{"environmentId":"xyz","archivePayloadBytes":10}"#).unwrap();
        assert_eq!(config.environment_id, "xyz");
        assert_eq!(config.archive_payload_bytes, 10);
        assert_eq!(config.versions, TenantConfig::default().versions);
        assert!(serde_json::from_str::<TenantConfig>(r#"{"environment_id":"xyz"}"#).is_err());
    }

    #[test]
    fn fault_json_is_tagged() {
        let fault: Fault = serde_json::from_str(r#"{"kind":"throttle","retry_after_seconds":2}"#).unwrap();
        assert_eq!(
            fault,
            Fault::Throttle {
                retry_after_seconds: 2
            }
        );
        let fault: Fault = serde_json::from_str(r#"{"kind":"cut_after","bytes":5}"#).unwrap();
        assert!(fault.is_download_only());
    }
}
