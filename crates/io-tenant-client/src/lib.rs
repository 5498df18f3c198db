//! Client of the Dynatrace environment (tenant) API: the endpoints the operator, the CSI driver and the
//! init container need.
//!
//! - `Authorization: Api-Token <token>`; installer endpoints use the PaaS token and fall back to the API
//!   token when there is none.
//! - Proxy with a no-proxy list, trusted CAs (which replace the system roots, as in the reference),
//!   skip-cert-check, a connect timeout and a per-request timeout (downloads get an idle timeout instead
//!   of an overall one, so large archives are not cut off).
//! - Retries with exponential backoff and jitter on 429, 503, 502/504 and transport errors, honouring
//!   `Retry-After`; the last error comes back typed, with the server's code and message.
//! - Downloads stream to disk in constant memory and are verified before they appear under their name.

mod download;
mod error;
mod model;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

pub use download::DownloadStream;
pub use error::{DownloadFailure, TenantError};
pub use model::{
    AgentSelector, AttachRules, CommunicationHost, ConnectionInfo, DownloadRequest, DownloadedFile, Event,
    HostInfo, ImageComponent, LatestImage, MonitoredEntity, NewSettingsObject, ProcessModuleConfig,
    ProcessModuleProperty, Progress, SettingsObject, communication_hosts,
};

/// Hosts not seen for this long are ignored by [`TenantClient::hosts`].
const HOST_STALENESS: Duration = Duration::from_secs(30 * 60);

/// How the client reaches the environment.
#[derive(Clone)]
pub struct ClientConfig {
    /// The environment's API URL, ending in `/api`.
    pub api_url: String,
    /// The API token.
    pub api_token: String,
    /// The PaaS token; the API token is used where it is absent.
    pub paas_token: Option<String>,
    /// Proxy URL for every request.
    pub proxy: Option<String>,
    /// Comma-separated hosts, domains and CIDRs that bypass the proxy.
    pub no_proxy: Option<String>,
    /// PEM CA certificates to trust instead of the system's.
    pub trusted_cas_pem: Option<String>,
    /// Accept any server certificate.
    pub skip_cert_check: bool,
    /// Network zone for connection info and hosts.
    pub network_zone: Option<String>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole API call (not for downloads).
    pub request_timeout: Duration,
    /// Longest pause between two chunks of a download.
    pub download_idle_timeout: Duration,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Told about every HTTP attempt (for metrics); retries are separate attempts.
    pub observer: Option<Arc<dyn CallObserver>>,
}

/// Receives one report per HTTP attempt: the endpoint, how it ended and how long it took.
pub trait CallObserver: Send + Sync {
    /// One attempt at `endpoint` ended with `outcome` after `elapsed`.
    fn observe(&self, endpoint: &'static str, outcome: CallOutcome, elapsed: Duration);
}

/// How one HTTP attempt ended, coarse enough for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// A 2xx answer (or a status the endpoint accepts).
    Success,
    /// 401 or 403: the token is wrong or lacks a scope.
    Unauthorized,
    /// 429.
    Throttled,
    /// Another 4xx.
    ClientError,
    /// A 5xx.
    ServerError,
    /// No answer: connection, TLS or timeout.
    Transport,
}

impl CallOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Unauthorized => "unauthorized",
            Self::Throttled => "throttled",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Transport => "transport_error",
        }
    }

    fn of(result: &Result<Response, TenantError>) -> Self {
        let status = match result {
            Ok(_) => return Self::Success,
            Err(error) => error.status(),
        };
        match status {
            None => Self::Transport,
            Some(401 | 403) => Self::Unauthorized,
            Some(429) => Self::Throttled,
            Some(500..) => Self::ServerError,
            Some(_) => Self::ClientError,
        }
    }
}

/// Tokens and proxy credentials stay out of logs.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api_url", &self.api_url)
            .field("api_token", &"<redacted>")
            .field("paas_token", &self.paas_token.as_ref().map(|_| "<redacted>"))
            .field("proxy", &self.proxy.as_ref().map(|_| "<redacted>"))
            .field("no_proxy", &self.no_proxy)
            .field("trusted_cas", &self.trusted_cas_pem.is_some())
            .field("skip_cert_check", &self.skip_cert_check)
            .field("network_zone", &self.network_zone)
            .field("retry", &self.retry)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration with the default timeouts and retry policy.
    pub fn new(api_url: impl Into<String>, api_token: impl Into<String>) -> Self {
        Self {
            api_url: api_url.into(),
            api_token: api_token.into(),
            paas_token: None,
            proxy: None,
            no_proxy: None,
            trusted_cas_pem: None,
            skip_cert_check: false,
            network_zone: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            download_idle_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            observer: None,
        }
    }
}

/// When and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff.
    pub min_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this ends the retries (the caller should come back later).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }

    /// The wait before the next attempt: the server's Retry-After when it sent one (if not too long),
    /// else the backoff.
    fn adjust(&self, error: &TenantError, backoff: Option<Duration>) -> Option<Duration> {
        let backoff = backoff?;
        match error.retry_after() {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => Some(asked.max(backoff)),
            None => Some(backoff),
        }
    }
}

/// A client of one Dynatrace environment.
#[derive(Clone)]
pub struct TenantClient {
    http: reqwest::Client,
    base: String,
    api_token: String,
    paas_token: String,
    network_zone: Option<String>,
    retry: RetryPolicy,
    download_idle_timeout: Duration,
    request_timeout: Duration,
    observer: Option<Arc<dyn CallObserver>>,
    /// Set once the environment answered 404 to `/v2/apiTokens/lookup`.
    token_lookup_v1_only: Arc<AtomicBool>,
}

impl fmt::Debug for TenantClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Which token an endpoint wants.
#[derive(Clone, Copy)]
enum Token {
    Api,
    Paas,
}

impl TenantClient {
    /// Builds a client. Fails, naming the setting, on an empty or invalid URL, missing tokens, an invalid
    /// proxy or unusable CA certificates.
    pub fn new(config: ClientConfig) -> Result<Self, TenantError> {
        let config_error = |field, reason: String| TenantError::Config { field, reason };
        let base = config.api_url.trim().trim_end_matches('/').to_owned();
        let url = url::Url::parse(&base).map_err(|e| {
            config_error(
                "apiUrl",
                format!("{base:?} is not a URL ({e}); use https://<environment>/api"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error(
                "apiUrl",
                format!("{base:?} must be an http or https URL"),
            ));
        }
        let api_token = config.api_token.trim().to_owned();
        if api_token.is_empty() {
            return Err(config_error(
                "apiToken",
                "the API token is empty; put it in the token Secret".into(),
            ));
        }
        let paas_token = config
            .paas_token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());

        // One crypto provider for the whole process (kube-rs uses ring too).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("dynatrace-operator/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(config.skip_cert_check);
        builder = match config.proxy.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(proxy) => {
                let no_proxy = config.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string);
                let proxy = reqwest::Proxy::all(proxy)
                    .map_err(|e| config_error("proxy", format!("the proxy URL is invalid: {e}")))?
                    .no_proxy(no_proxy);
                builder.proxy(proxy)
            }
            // Without a configured proxy, the environment's *_PROXY variables do not apply either.
            None => builder.no_proxy(),
        };
        if let Some(pem) = config.trusted_cas_pem.as_deref().filter(|p| !p.trim().is_empty()) {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                config_error(
                    "trustedCAs",
                    format!("the CA certificates do not parse as PEM: {e}"),
                )
            })?;
            if certs.is_empty() {
                return Err(config_error(
                    "trustedCAs",
                    "no CERTIFICATE block found in the PEM".into(),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| config_error("tls", format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            paas_token: paas_token.unwrap_or_else(|| api_token.clone()),
            api_token,
            base,
            network_zone: config.network_zone.filter(|z| !z.is_empty()),
            retry: config.retry,
            download_idle_timeout: config.download_idle_timeout,
            request_timeout: config.request_timeout,
            observer: config.observer,
            token_lookup_v1_only: Arc::default(),
        })
    }

    fn request(&self, method: Method, path: &str, token: Token) -> RequestBuilder {
        let token = match token {
            Token::Api => &self.api_token,
            Token::Paas => &self.paas_token,
        };
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, format!("Api-Token {token}"))
    }

    /// Tells the observer, if any, how one attempt ended.
    fn report(
        &self,
        endpoint: &'static str,
        result: &Result<Response, TenantError>,
        started: std::time::Instant,
    ) {
        if let Some(observer) = &self.observer {
            observer.observe(endpoint, CallOutcome::of(result), started.elapsed());
        }
    }

    /// Sends a request built by `build`, retrying transient failures; returns the first answer that is
    /// not an error.
    async fn send(
        &self,
        endpoint: &'static str,
        build: impl Fn() -> RequestBuilder,
        accept: &[StatusCode],
    ) -> Result<Response, TenantError> {
        let attempt = || async {
            let started = std::time::Instant::now();
            let result = match build().send().await {
                Err(e) => Err(transport(endpoint, &e)),
                Ok(response) if response.status().is_success() || accept.contains(&response.status()) => {
                    Ok(response)
                }
                Ok(response) => Err(error_from(endpoint, response).await),
            };
            self.report(endpoint, &result, started);
            result
        };
        attempt
            .retry(self.retry.backoff())
            .when(TenantError::is_transient)
            .adjust(|error, backoff| self.retry.adjust(error, backoff))
            .notify(|error, wait| tracing::debug!(endpoint, %error, ?wait, "retrying"))
            .await
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        token: Token,
        query: &[(&str, String)],
    ) -> Result<T, TenantError> {
        let response = self
            .send(
                endpoint,
                || {
                    self.request(Method::GET, path, token)
                        .query(query)
                        .timeout(self.request_timeout)
                },
                &[],
            )
            .await?;
        decode(endpoint, response).await
    }

    /// The newest agent version of `agent`.
    pub async fn latest_agent_version(&self, agent: &AgentSelector) -> Result<String, TenantError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Metainfo {
            latest_agent_version: String,
        }
        let path = format!(
            "/v1/deployment/installer/agent/{}/{}/latest/metainfo",
            agent.os, agent.installer_type
        );
        let query = [
            ("bitness", "64".to_owned()),
            ("flavor", agent.flavor.clone()),
            ("arch", agent.arch.clone()),
        ];
        let info: Metainfo = self
            .get_json("latest agent version", &path, Token::Paas, &query)
            .await?;
        Ok(info.latest_agent_version)
    }

    /// Every agent version of `agent` the environment offers.
    pub async fn available_versions(&self, agent: &AgentSelector) -> Result<Vec<String>, TenantError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Versions {
            available_versions: Vec<String>,
        }
        let path = format!(
            "/v1/deployment/installer/agent/versions/{}/{}",
            agent.os, agent.installer_type
        );
        let query = [("flavor", agent.flavor.clone()), ("arch", agent.arch.clone())];
        let versions: Versions = self
            .get_json("available versions", &path, Token::Paas, &query)
            .await?;
        Ok(versions.available_versions)
    }

    /// How OneAgents connect: tenant UUID, tenant token and communication endpoints, for the configured
    /// network zone (falling back to the default zone). An HTTP 400 (for example a network zone the
    /// environment rejects) is a [`TenantError::Server`] with status 400 and the server's message: the
    /// reference returned empty information instead, which left the user without a hint.
    pub async fn connection_info(&self) -> Result<ConnectionInfo, TenantError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            #[serde(rename = "tenantUUID")]
            tenant_uuid: String,
            tenant_token: String,
            #[serde(default)]
            communication_endpoints: Vec<String>,
            #[serde(default)]
            formatted_communication_endpoints: String,
        }
        const ENDPOINT: &str = "connection info";
        let mut query = Vec::new();
        if let Some(zone) = &self.network_zone {
            query.push(("networkZone", zone.clone()));
            query.push(("defaultZoneFallback", "true".to_owned()));
        }
        let path = "/v1/deployment/installer/agent/connectioninfo";
        let build = || {
            self.request(Method::GET, path, Token::Paas)
                .query(&query)
                .timeout(self.request_timeout)
        };
        let response = self.send(ENDPOINT, build, &[]).await?;
        let raw: Raw = decode(ENDPOINT, response).await?;
        Ok(ConnectionInfo {
            communication_hosts: communication_hosts(raw.communication_endpoints.iter().map(String::as_str)),
            tenant_uuid: raw.tenant_uuid,
            tenant_token: raw.tenant_token,
            formatted_endpoints: raw.formatted_communication_endpoints,
        })
    }

    /// The process-module configuration, or `None` when it has not changed since `revision` (304) or does
    /// not exist (404). An empty property list is an error.
    pub async fn process_module_config(
        &self,
        revision: u64,
    ) -> Result<Option<ProcessModuleConfig>, TenantError> {
        const ENDPOINT: &str = "process module config";
        let path = "/v1/deployment/installer/agent/processmoduleconfig";
        let build = || {
            self.request(Method::GET, path, Token::Paas)
                .query(&[("revision", revision.to_string())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(self.request_timeout)
        };
        let response = self
            .send(
                ENDPOINT,
                build,
                &[StatusCode::NOT_MODIFIED, StatusCode::NOT_FOUND],
            )
            .await?;
        if matches!(
            response.status(),
            StatusCode::NOT_MODIFIED | StatusCode::NOT_FOUND
        ) {
            return Ok(None);
        }
        let config: ProcessModuleConfig = decode(ENDPOINT, response).await?;
        if config.properties.is_empty() {
            return Err(TenantError::Decode {
                endpoint: ENDPOINT,
                reason: "the configuration has no properties".into(),
            });
        }
        Ok(Some(config))
    }

    /// The scopes of `token`, looked up with that token itself: with the current
    /// `/v2/apiTokens/lookup`, or with `/v1/tokens/lookup` where the environment does not have it (404,
    /// older Dynatrace Managed versions). After one 404 this client asks v1 directly.
    pub async fn token_scopes(&self, token: &str) -> Result<Vec<String>, TenantError> {
        #[derive(serde::Deserialize)]
        struct Lookup {
            scopes: Vec<String>,
        }
        const ENDPOINT_V2: &str = "token lookup";
        const ENDPOINT_V1: &str = "token lookup (v1)";
        let body = serde_json::json!({ "token": token });
        let lookup = |path: &'static str| {
            let body = &body;
            move || {
                self.http
                    .post(format!("{}{path}", self.base))
                    .header(reqwest::header::AUTHORIZATION, format!("Api-Token {token}"))
                    .json(body)
                    .timeout(self.request_timeout)
            }
        };
        if !self.token_lookup_v1_only.load(Ordering::Relaxed) {
            let response = self
                .send(
                    ENDPOINT_V2,
                    lookup("/v2/apiTokens/lookup"),
                    &[StatusCode::NOT_FOUND],
                )
                .await?;
            if response.status() != StatusCode::NOT_FOUND {
                let lookup: Lookup = decode(ENDPOINT_V2, response).await?;
                return Ok(lookup.scopes);
            }
            tracing::info!(
                base = %self.base,
                "the environment has no /v2/apiTokens/lookup; looking tokens up with /v1/tokens/lookup"
            );
            self.token_lookup_v1_only.store(true, Ordering::Relaxed);
        }
        let response = self.send(ENDPOINT_V1, lookup("/v1/tokens/lookup"), &[]).await?;
        let lookup: Lookup = decode(ENDPOINT_V1, response).await?;
        Ok(lookup.scopes)
    }

    /// The `KUBERNETES_CLUSTER` entity of the cluster whose kube-system namespace has `cluster_uid`, if
    /// the environment monitors it (needs `entities.read`).
    pub async fn kubernetes_cluster_entity(
        &self,
        cluster_uid: &str,
    ) -> Result<Option<MonitoredEntity>, TenantError> {
        #[derive(serde::Deserialize)]
        struct Entities {
            #[serde(default)]
            entities: Vec<MonitoredEntity>,
        }
        let query = [
            (
                "entitySelector",
                format!("type(KUBERNETES_CLUSTER),kubernetesClusterId({cluster_uid})"),
            ),
            ("from", "-365d".to_owned()),
            ("fields", "+lastSeenTms".to_owned()),
        ];
        let found: Entities = self
            .get_json("entities", "/v2/entities", Token::Api, &query)
            .await?;
        Ok(found.entities.into_iter().next())
    }

    /// The settings objects of `schema_id` in `scope` (needs `settings.read`).
    pub async fn settings_objects(
        &self,
        schema_id: &str,
        scope: &str,
    ) -> Result<Vec<SettingsObject>, TenantError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            items: Vec<SettingsObject>,
        }
        let query = [
            ("schemaIds", schema_id.to_owned()),
            ("scopes", scope.to_owned()),
            ("fields", "objectId,schemaId,schemaVersion,scope,value".to_owned()),
        ];
        let page: Page = self
            .get_json("settings objects", "/v2/settings/objects", Token::Api, &query)
            .await?;
        Ok(page.items)
    }

    /// The value of `schema_id` in effect at `scope` (the object there, inherited or the schema's
    /// default; needs `settings.read`).
    pub async fn effective_settings(
        &self,
        schema_id: &str,
        scope: &str,
    ) -> Result<Option<serde_json::Value>, TenantError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            items: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            value: serde_json::Value,
        }
        let query = [("schemaIds", schema_id.to_owned()), ("scope", scope.to_owned())];
        let page: Page = self
            .get_json(
                "settings effective values",
                "/v2/settings/effectiveValues",
                Token::Api,
                &query,
            )
            .await?;
        Ok(page.items.into_iter().next().map(|item| item.value))
    }

    /// Creates a settings object and returns its id (needs `settings.write`). A refused object comes
    /// back as [`TenantError::Server`] with the environment's reason.
    pub async fn create_settings_object(&self, object: &NewSettingsObject) -> Result<String, TenantError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Outcome {
            code: u16,
            object_id: Option<String>,
            error: Option<Refusal>,
        }
        #[derive(serde::Deserialize)]
        struct Refusal {
            message: Option<String>,
        }
        const ENDPOINT: &str = "settings objects";
        let body = [object];
        let build = || {
            self.request(Method::POST, "/v2/settings/objects", Token::Api)
                .json(&body)
                .timeout(self.request_timeout)
        };
        // A refused object is a 400 whose body lists each object's result, not the usual error body.
        let response = self.send(ENDPOINT, build, &[StatusCode::BAD_REQUEST]).await?;
        let status = response.status();
        let results: Vec<Outcome> = decode(ENDPOINT, response).await?;
        let Some(result) = results.into_iter().next() else {
            return Err(TenantError::Decode {
                endpoint: ENDPOINT,
                reason: "the answer lists no result".into(),
            });
        };
        match result.object_id {
            Some(id) if status.is_success() => Ok(id),
            _ => Err(TenantError::Server {
                endpoint: ENDPOINT,
                status: status.as_u16(),
                code: Some(i64::from(result.code)),
                message: result
                    .error
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| "the object was refused without a reason".into()),
            }),
        }
    }

    /// Hosts seen in the last 30 minutes in the configured network zone (or the default zone).
    pub async fn hosts(&self) -> Result<Vec<HostInfo>, TenantError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawVersion {
            major: u32,
            minor: u32,
            revision: u32,
            timestamp: String,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawHost {
            entity_id: String,
            #[serde(default)]
            ip_addresses: Vec<String>,
            agent_version: Option<RawVersion>,
            network_zone_id: Option<String>,
            #[serde(default)]
            last_seen_timestamp: i64,
        }
        let query = [("includeDetails", "false".to_owned())];
        let raw: Vec<RawHost> = self
            .get_json("hosts", "/v1/entity/infrastructure/hosts", Token::Api, &query)
            .await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let oldest = now_ms - i64::try_from(HOST_STALENESS.as_millis()).unwrap_or(i64::MAX);
        let zone = self.network_zone.clone().unwrap_or_else(|| "default".to_owned());
        Ok(raw
            .into_iter()
            .filter(|h| h.last_seen_timestamp >= oldest)
            .map(|h| HostInfo {
                agent_version: h
                    .agent_version
                    .map(|v| format!("{}.{}.{}.{}", v.major, v.minor, v.revision, v.timestamp)),
                network_zone: h
                    .network_zone_id
                    .filter(|z| !z.is_empty())
                    .unwrap_or_else(|| "default".into()),
                entity_id: h.entity_id,
                ip_addresses: h.ip_addresses,
                last_seen_ms: h.last_seen_timestamp,
            })
            .filter(|h| h.network_zone == zone)
            .collect())
    }

    /// Sends an event.
    pub async fn send_event(&self, event: &Event) -> Result<(), TenantError> {
        let build = || {
            self.request(Method::POST, "/v1/events", Token::Api)
                .json(event)
                .timeout(self.request_timeout)
        };
        self.send("events", build, &[]).await.map(drop)
    }

    /// The latest image of a component in the environment's registry.
    pub async fn latest_image(&self, component: ImageComponent) -> Result<LatestImage, TenantError> {
        let path = component.path();
        let build = || {
            self.request(Method::GET, path, Token::Api)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(self.request_timeout)
        };
        decode("latest image", self.send("latest image", build, &[]).await?).await
    }
}

fn transport(endpoint: &'static str, error: &reqwest::Error) -> TenantError {
    // Source chains name the cause (refused, certificate, proxy); the URL carries no credentials.
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    TenantError::Transport {
        endpoint,
        reason,
        timeout: error.is_timeout(),
    }
}

/// Turns an error answer into a typed error with the server's code and message.
async fn error_from(endpoint: &'static str, response: Response) -> TenantError {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: Option<i64>,
        message: Option<String>,
    }
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<Body>(&text) {
        Ok(body) => (body.error.code, body.error.message.unwrap_or_default()),
        Err(_) => (None, text.chars().take(200).collect()),
    };
    match status.as_u16() {
        401 | 403 => TenantError::Unauthorized {
            endpoint,
            status: status.as_u16(),
            code,
            message,
        },
        429 => TenantError::Throttled {
            endpoint,
            retry_after,
        },
        503 => TenantError::Unavailable { endpoint },
        other => TenantError::Server {
            endpoint,
            status: other,
            code,
            message,
        },
    }
}

async fn decode<T: DeserializeOwned>(endpoint: &'static str, response: Response) -> Result<T, TenantError> {
    let bytes = response.bytes().await.map_err(|e| transport(endpoint, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| TenantError::Decode {
        endpoint,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_names_the_bad_setting() {
        let err = TenantClient::new(ClientConfig::new("not a url", "t")).unwrap_err();
        assert!(err.to_string().contains("apiUrl"), "{err}");
        let err = TenantClient::new(ClientConfig::new("https://a.example/api", "  ")).unwrap_err();
        assert!(err.to_string().contains("apiToken"), "{err}");
        let mut config = ClientConfig::new("https://a.example/api", "t");
        config.trusted_cas_pem = Some("garbage".into());
        let err = TenantClient::new(config).unwrap_err();
        assert!(err.to_string().contains("trustedCAs"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let mut config = ClientConfig::new("https://a.example/api", "dt0c01.SECRET");
        config.paas_token = Some("dt0c01.PAAS".into());
        config.proxy = Some("http://user:pw@proxy:3128".into());
        let text = format!("{config:?} {:?}", TenantClient::new(config.clone()).unwrap());
        for secret in ["SECRET", "PAAS", "pw@"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff_unless_too_long() {
        let policy = RetryPolicy::default();
        let throttled = |secs| TenantError::Throttled {
            endpoint: "x",
            retry_after: Some(Duration::from_secs(secs)),
        };
        let backoff = Some(Duration::from_millis(700));
        assert_eq!(
            policy.adjust(&throttled(3), backoff),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            policy.adjust(&throttled(600), backoff),
            None,
            "too long: give up and let the caller requeue"
        );
        assert_eq!(
            policy.adjust(&TenantError::Unavailable { endpoint: "x" }, backoff),
            backoff
        );
        assert_eq!(policy.adjust(&throttled(3), None), None, "retries exhausted");
    }
}
