//! The HTTP API: routing, authentication, faults, the request log and every endpoint's answer.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, StreamExt as _};
use serde::Deserialize;
use serde_json::json;

use crate::archive::ArchiveKey;
use crate::images::ImageError;
use crate::lock;
use crate::model::{
    AgentVersion, Endpoint, Fault, Host, RequestRecord, SCOPE_API_TOKENS_READ, SCOPE_DATA_EXPORT,
    SCOPE_ENTITIES_READ, SCOPE_INSTALLER_DOWNLOAD, SCOPE_SETTINGS_READ, SCOPE_SETTINGS_WRITE, TokenConfig,
    check_version,
};
use crate::registry::{self, API_VERSION_HEADER, RegistryRequest, basic_credentials};
use crate::settings::{EntitySelector, NewObject};
use crate::state::Shared;

/// Header with the hex SHA-256 of a download's body (an extension of this fake).
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";
/// Largest request body read.
const MAX_BODY: usize = 1 << 20;
/// Operating systems the installer endpoints know.
const OS_TYPES: &[&str] = &["unix", "windows", "aix", "solaris", "zos"];
/// Installer types the installer endpoints know.
const INSTALLER_TYPES: &[&str] = &["default", "paas", "paas-sh"];
/// Current revision of the process module configuration.
const PROCESS_MODULE_CONFIG_REVISION: u64 = 1;
/// Flipped bytes in the middle of a corrupted download.
const CORRUPT_BYTES: u64 = 16;
/// Pause before a cut connection is dropped, so the bytes before the cut are flushed to the client.
const CUT_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// The router: every request goes through [`handle`].
pub(crate) fn router(state: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Metainfo {
        os: String,
        kind: String,
    },
    Versions {
        os: String,
        kind: String,
    },
    Download {
        os: String,
        kind: String,
        version: Option<String>,
    },
    ConnectionInfo,
    ProcessModuleConfig,
    TokenLookup {
        v2: bool,
    },
    Entities,
    SettingsObjects {
        create: bool,
    },
    SettingsEffectiveValues,
    Hosts,
    Events,
    Image {
        code_modules: bool,
    },
    Registry {
        request: RegistryRequest,
        head: bool,
    },
    AdminVersions,
    AdminSetFault,
    AdminClearFaults,
    AdminRequests,
    AdminClearRequests,
    AdminHosts,
    AdminEvents,
    AdminAddImage,
    AdminImages,
    AdminSettings,
    AdminNotFound,
    NotFound,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Self {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = method == Method::GET;
        let post = method == Method::POST;
        let owned = |s: &str| s.to_owned();
        match segments.as_slice() {
            ["api", "v1", "deployment", "installer", "agent", rest @ ..] => match rest {
                ["connectioninfo"] if get => Self::ConnectionInfo,
                ["processmoduleconfig"] if get => Self::ProcessModuleConfig,
                ["versions", os, kind] if get => Self::Versions {
                    os: owned(os),
                    kind: owned(kind),
                },
                [os, kind, "latest", "metainfo"] if get => Self::Metainfo {
                    os: owned(os),
                    kind: owned(kind),
                },
                [os, kind, "latest"] if get => Self::Download {
                    os: owned(os),
                    kind: owned(kind),
                    version: None,
                },
                [os, kind, "version", version] if get => Self::Download {
                    os: owned(os),
                    kind: owned(kind),
                    version: Some(owned(version)),
                },
                _ => Self::NotFound,
            },
            ["api", "v1", "deployment", "image", "agent", image, "latest"] if get => match *image {
                "oneAgent" => Self::Image { code_modules: false },
                "codeModules" => Self::Image { code_modules: true },
                _ => Self::NotFound,
            },
            ["api", "v1", "tokens", "lookup"] if post => Self::TokenLookup { v2: false },
            ["api", "v2", "apiTokens", "lookup"] if post => Self::TokenLookup { v2: true },
            ["api", "v2", "entities"] if get => Self::Entities,
            ["api", "v2", "settings", "objects"] if get || post => Self::SettingsObjects { create: post },
            ["api", "v2", "settings", "effectiveValues"] if get => Self::SettingsEffectiveValues,
            ["api", "v1", "entity", "infrastructure", "hosts"] if get => Self::Hosts,
            ["api", "v1", "events"] if post => Self::Events,
            ["v2", rest @ ..] => Self::Registry {
                request: RegistryRequest::parse(get || method == Method::HEAD, rest),
                head: method == Method::HEAD,
            },
            ["admin", rest @ ..] => match (rest, method.as_str()) {
                (["versions"], "POST") => Self::AdminVersions,
                (["faults"], "PUT") => Self::AdminSetFault,
                (["faults"], "DELETE") => Self::AdminClearFaults,
                (["requests"], "GET") => Self::AdminRequests,
                (["requests"], "DELETE") => Self::AdminClearRequests,
                (["hosts"], "POST") => Self::AdminHosts,
                (["events"], "GET") => Self::AdminEvents,
                (["images"], "POST") => Self::AdminAddImage,
                (["images"], "GET") => Self::AdminImages,
                (["settings"], "GET") => Self::AdminSettings,
                _ => Self::AdminNotFound,
            },
            _ => Self::NotFound,
        }
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            Self::Metainfo { .. } => Endpoint::Metainfo,
            Self::Versions { .. } => Endpoint::Versions,
            Self::Download { .. } => Endpoint::Download,
            Self::ConnectionInfo => Endpoint::ConnectionInfo,
            Self::ProcessModuleConfig => Endpoint::ProcessModuleConfig,
            Self::TokenLookup { v2: false } => Endpoint::TokenLookup,
            Self::TokenLookup { v2: true } => Endpoint::ApiTokensLookup,
            Self::Entities => Endpoint::Entities,
            Self::SettingsObjects { .. } => Endpoint::SettingsObjects,
            Self::SettingsEffectiveValues => Endpoint::SettingsEffectiveValues,
            Self::Hosts => Endpoint::Hosts,
            Self::Events => Endpoint::Events,
            Self::Image { .. } => Endpoint::Images,
            Self::Registry { request, .. } => request.endpoint(),
            Self::AdminVersions
            | Self::AdminSetFault
            | Self::AdminClearFaults
            | Self::AdminRequests
            | Self::AdminClearRequests
            | Self::AdminHosts
            | Self::AdminEvents
            | Self::AdminAddImage
            | Self::AdminImages
            | Self::AdminSettings
            | Self::AdminNotFound => Endpoint::Admin,
            Self::NotFound => Endpoint::Unknown,
        }
    }
}

/// An error answer: `{"error":{"code":<status>,"message":"..."}}`, with `Retry-After` when set.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.status.as_u16(), "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The error answer with `status` and `message`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
        retry_after: None,
    }
}

/// The token of an `Authorization: Api-Token <token>` header.
fn api_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Api-Token")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Parsed query parameters, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// Every request: route, fault, answer, log.
async fn handle(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    // The registry authenticates with Basic credentials whose password is the token.
    let token = api_token(request.headers())
        .or_else(|| basic_credentials(request.headers()).map(|(_, password)| password));
    let route = Route::parse(&method, &path);
    let endpoint = route.endpoint();
    let is_registry = matches!(route, Route::Registry { .. });

    let mut response = match state.take_fault(endpoint, false) {
        Some(Fault::Latency { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            answer(&state, route, &query, token.as_deref(), request).await
        }
        Some(fault) if is_registry => registry::fault_response(&state, &fault),
        Some(fault) => fault_response(&fault),
        None => answer(&state, route, &query, token.as_deref(), request).await,
    };
    if is_registry {
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    }

    let status = response.status().as_u16();
    tracing::info!(%method, %path, %query, %endpoint, status, "request");
    state.record(RequestRecord {
        endpoint,
        method: method.to_string(),
        path,
        query,
        status,
        token,
    });
    response
}

fn fault_response(fault: &Fault) -> Response {
    let with_retry_after = |status, seconds: u64, message: String| ApiError {
        retry_after: Some(seconds),
        ..error(status, message)
    };
    match fault {
        Fault::Throttle { retry_after_seconds } => with_retry_after(
            StatusCode::TOO_MANY_REQUESTS,
            *retry_after_seconds,
            format!(
                "Too many requests; retry after {retry_after_seconds} s (fault injected by the fake tenant)"
            ),
        ),
        Fault::Unavailable => with_retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            "The service is unavailable; retry after 1 s (fault injected by the fake tenant)".into(),
        ),
        Fault::BadRequest { message } => error(StatusCode::BAD_REQUEST, message.clone()),
        Fault::NotFound => error(
            StatusCode::NOT_FOUND,
            "Not found: this environment has no such endpoint (fault injected by the fake tenant)",
        ),
        // Latency and the download-only faults never get here; 401 is the remaining kind.
        _ => error(
            StatusCode::UNAUTHORIZED,
            "Token Authentication failed (fault injected by the fake tenant)",
        ),
    }
    .into_response()
}

async fn answer(
    state: &Shared,
    route: Route,
    query: &str,
    token: Option<&str>,
    request: Request,
) -> Response {
    let query = Query::parse(query);
    let result = match route {
        Route::Metainfo { os, kind } => metainfo(state, token, &os, &kind),
        Route::Versions { os, kind } => versions(state, token, &os, &kind),
        Route::Download { os, kind, version } => download(state, token, &os, &kind, version, &query).await,
        Route::ConnectionInfo => connection_info(state, token, &query),
        Route::ProcessModuleConfig => process_module_config(state, token, &query),
        Route::TokenLookup { v2 } => token_lookup(state, token, request, v2).await,
        Route::Entities => entities(state, token, &query),
        Route::SettingsObjects { create: false } => settings_objects(state, token, &query),
        Route::SettingsObjects { create: true } => {
            create_settings_objects(state, token, &query, request).await
        }
        Route::SettingsEffectiveValues => effective_values(state, token, &query),
        Route::Hosts => hosts(state, token),
        Route::Events => events(state, token, request).await,
        Route::Image { code_modules } => image(state, token, code_modules),
        Route::Registry {
            request: registry_request,
            head,
        } => Ok(registry::answer(state, registry_request, head, request.headers()).await),
        Route::AdminVersions => admin_publish(state, request).await,
        Route::AdminSetFault => admin_set_fault(state, request).await,
        Route::AdminClearFaults => {
            state.clear_faults();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Route::AdminRequests => Ok(axum::Json(state.requests()).into_response()),
        Route::AdminClearRequests => {
            state.clear_requests();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Route::AdminHosts => admin_add_host(state, request).await,
        Route::AdminEvents => Ok(axum::Json(state.events()).into_response()),
        Route::AdminAddImage => admin_add_image(state, request).await,
        Route::AdminImages => Ok(axum::Json(state.images.images()).into_response()),
        Route::AdminSettings => Ok(axum::Json(lock(&state.settings).objects(&[], &[])).into_response()),
        Route::AdminNotFound => Err(error(
            StatusCode::NOT_FOUND,
            "No such admin endpoint; use POST /admin/versions, PUT or DELETE /admin/faults, GET or DELETE \
             /admin/requests, POST /admin/hosts, GET /admin/events, POST or GET /admin/images or GET \
             /admin/settings",
        )),
        Route::NotFound => Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "No endpoint for {} {}: the fake tenant serves the installer, connection info, process \
                 module config, token lookup, hosts, events, image, entities and settings endpoints under \
                 /api and a registry under /v2",
                request.method(),
                request.uri().path()
            ),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

type Answer = Result<Response, ApiError>;

/// Checks the token and its scope: 401 when it is missing or unknown, 403 when it lacks `scope`.
fn authorize<'a>(state: &'a Shared, token: Option<&str>, scope: &str) -> Result<&'a TokenConfig, ApiError> {
    let token = authenticate(state, token)?;
    if token.scopes.iter().any(|s| s == scope) {
        Ok(token)
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            format!("Token is missing required scope {scope}; grant it to the token or use another token"),
        ))
    }
}

fn authenticate<'a>(state: &'a Shared, token: Option<&str>) -> Result<&'a TokenConfig, ApiError> {
    let Some(token) = token else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "Missing authorization: send the header 'Authorization: Api-Token <token>'",
        ));
    };
    state.token(token).ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            format!(
                "Token Authentication failed: the token is not valid for environment {}",
                state.config.environment_id
            ),
        )
    })
}

fn check_installer(os: &str, kind: &str) -> Result<(), ApiError> {
    if !OS_TYPES.contains(&os) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("Unsupported osType {os:?}; use one of {OS_TYPES:?}"),
        ));
    }
    if !INSTALLER_TYPES.contains(&kind) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("Unsupported installerType {kind:?}; use one of {INSTALLER_TYPES:?}"),
        ));
    }
    Ok(())
}

fn latest(state: &Shared) -> Result<String, ApiError> {
    state.latest_version().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "No OneAgent version is published; publish one with POST /admin/versions",
        )
    })
}

fn metainfo(state: &Shared, token: Option<&str>, os: &str, kind: &str) -> Answer {
    authorize(state, token, SCOPE_INSTALLER_DOWNLOAD)?;
    check_installer(os, kind)?;
    Ok(axum::Json(json!({"latestAgentVersion": latest(state)?})).into_response())
}

fn versions(state: &Shared, token: Option<&str>, os: &str, kind: &str) -> Answer {
    authorize(state, token, SCOPE_INSTALLER_DOWNLOAD)?;
    check_installer(os, kind)?;
    Ok(axum::Json(json!({"availableVersions": state.versions()})).into_response())
}

async fn download(
    state: &Shared,
    token: Option<&str>,
    os: &str,
    kind: &str,
    version: Option<String>,
    query: &Query,
) -> Answer {
    authorize(state, token, SCOPE_INSTALLER_DOWNLOAD)?;
    check_installer(os, kind)?;
    let version = match version {
        None => latest(state)?,
        Some(version) if state.versions().contains(&version) => version,
        Some(version) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!(
                    "OneAgent version {version} is not available; the available versions are {:?}",
                    state.versions()
                ),
            ));
        }
    };
    let key = ArchiveKey {
        os: os.to_owned(),
        installer_type: kind.to_owned(),
        arch: query.get("arch").unwrap_or("all").to_owned(),
        flavor: query.get("flavor").unwrap_or("default").to_owned(),
        technologies: query.all("include"),
        payload_bytes: state.config.archive_payload_bytes,
        agent_library: state.config.agent_library.clone(),
        version,
    };
    let fault = state.take_fault(Endpoint::Download, true);
    if let Some(Fault::Hostile { archive }) = fault {
        let bytes = crate::archive::hostile(archive, &key.version).map_err(|err| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot build the hostile archive: {err}"),
            )
        })?;
        let checksum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let mut response = Response::new(Body::from(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(checksum) = HeaderValue::from_str(&checksum) {
            response.headers_mut().insert(CHECKSUM_HEADER, checksum);
        }
        return Ok(response);
    }
    let archive = state.archives.get(&key).await.map_err(|err| {
        tracing::error!(%err, "cannot generate an archive");
        error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    })?;
    let file = tokio::fs::File::open(&archive.path).await.map_err(|err| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot open the archive {}: {err}", archive.path.display()),
        )
    })?;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).boxed();
    let body = match fault {
        Some(Fault::CutAfter { bytes }) => cut_after(body, bytes, archive.len),
        Some(Fault::Corrupt) => corrupt(body, archive.len),
        _ => body,
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(archive.len));
    if let Ok(checksum) = HeaderValue::from_str(&archive.sha256) {
        headers.insert(CHECKSUM_HEADER, checksum);
    }
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename=\"OneAgent-{os}-{}.zip\"",
        key.version
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

pub(crate) type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The first `limit` bytes of `body`, then an error that makes the server drop the connection.
pub(crate) fn cut_after(body: ByteStream, limit: u64, len: u64) -> ByteStream {
    if limit >= len {
        return body;
    }
    futures::stream::unfold((body, 0u64, false), move |(mut body, sent, done)| async move {
        if done {
            return None;
        }
        if sent >= limit {
            tokio::time::sleep(CUT_FLUSH_DELAY).await;
            let cut = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("connection cut after {limit} bytes (fault injected by the fake tenant)"),
            );
            return Some((Err(cut), (body, sent, true)));
        }
        match body.next().await {
            Some(Ok(chunk)) => {
                let room = usize::try_from(limit - sent).unwrap_or(usize::MAX);
                let chunk = if chunk.len() > room {
                    chunk.slice(..room)
                } else {
                    chunk
                };
                let sent = sent + chunk.len() as u64;
                Some((Ok(chunk), (body, sent, false)))
            }
            Some(Err(err)) => Some((Err(err), (body, sent, true))),
            None => None,
        }
    })
    .boxed()
}

/// `body` (of `len` bytes) with [`CORRUPT_BYTES`] bytes in the middle inverted.
pub(crate) fn corrupt(body: ByteStream, len: u64) -> ByteStream {
    let start = len.saturating_sub(CORRUPT_BYTES) / 2;
    let end = start + CORRUPT_BYTES.min(len);
    let mut offset = 0u64;
    body.map(move |chunk| {
        let chunk = chunk?;
        let (chunk_start, chunk_end) = (offset, offset + chunk.len() as u64);
        offset = chunk_end;
        if chunk_end <= start || chunk_start >= end {
            return Ok(chunk);
        }
        let mut bytes = chunk.to_vec();
        let from = usize::try_from(start.saturating_sub(chunk_start)).unwrap_or(usize::MAX);
        let to = usize::try_from(end.min(chunk_end) - chunk_start).unwrap_or(usize::MAX);
        for byte in bytes.iter_mut().take(to).skip(from) {
            *byte = !*byte;
        }
        Ok(Bytes::from(bytes))
    })
    .boxed()
}

fn connection_info(state: &Shared, token: Option<&str>, query: &Query) -> Answer {
    authorize(state, token, SCOPE_INSTALLER_DOWNLOAD)?;
    let config = &state.config;
    let endpoints = match query
        .get("networkZone")
        .filter(|z| !z.is_empty() && *z != "default")
    {
        None => &config.communication_endpoints,
        Some(zone) => match config.network_zones.get(zone) {
            Some(endpoints) => endpoints,
            None if query.flag("defaultZoneFallback") => &config.communication_endpoints,
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Unknown network zone {zone:?}; known zones are {:?}; pass defaultZoneFallback=true \
                         to get the default zone's endpoints instead",
                        config.network_zones.keys().collect::<Vec<_>>()
                    ),
                ));
            }
        },
    };
    Ok(axum::Json(json!({
        "tenantUUID": config.environment_id,
        "tenantToken": config.tenant_token,
        "communicationEndpoints": endpoints,
        "formattedCommunicationEndpoints": endpoints.join(";"),
    }))
    .into_response())
}

fn process_module_config(state: &Shared, token: Option<&str>, query: &Query) -> Answer {
    authorize(state, token, SCOPE_INSTALLER_DOWNLOAD)?;
    if let Some(revision) = query.get("revision") {
        let revision: u64 = revision.parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("revision {revision:?} is not a non-negative integer"),
            )
        })?;
        if revision == PROCESS_MODULE_CONFIG_REVISION {
            return Ok(StatusCode::NOT_MODIFIED.into_response());
        }
    }
    let properties: Vec<_> = state
        .config
        .process_module_config
        .iter()
        .map(|(section, key, value)| json!({"section": section, "key": key, "value": value}))
        .collect();
    Ok(axum::Json(json!({
        "revision": PROCESS_MODULE_CONFIG_REVISION,
        "properties": properties,
    }))
    .into_response())
}

async fn read_json<T: serde::de::DeserializeOwned>(request: Request, what: &str) -> Result<T, ApiError> {
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|err| {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {err}"),
            )
        })?;
    serde_json::from_slice(&body).map_err(|err| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not {what}: {err}"),
        )
    })
}

/// The public part of a token (`dt0c01.ABC` of `dt0c01.ABC.SECRET`), as Dynatrace reports it as its id.
fn token_id(value: &str) -> String {
    value.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

/// `/api/v1/tokens/lookup` and `/api/v2/apiTokens/lookup`: the same rules; v2 answers with the token's
/// metadata as the current API does.
async fn token_lookup(state: &Shared, token: Option<&str>, request: Request, v2: bool) -> Answer {
    #[derive(Deserialize)]
    struct Lookup {
        token: String,
    }
    let caller = authenticate(state, token)?;
    let lookup: Lookup = read_json(request, r#"a JSON object {"token":"<token>"}"#).await?;
    let Some(index) = state.config.tokens.iter().position(|t| t.value == lookup.token) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "Token Authentication failed: the token in the request body is not valid for this environment",
        ));
    };
    let found = &state.config.tokens[index];
    if found.value != caller.value && !caller.scopes.iter().any(|s| s == SCOPE_API_TOKENS_READ) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "A token can only look itself up without scope {SCOPE_API_TOKENS_READ}; authenticate with \
                 the token you look up"
            ),
        ));
    }
    let mut answer = json!({
        "id": token_id(&found.value),
        "name": format!("fake-tenant token {}", index + 1),
        "scopes": found.scopes,
    });
    if v2 {
        answer["enabled"] = json!(true);
        answer["owner"] = json!("fake-tenant");
        answer["creationDate"] = json!("2026-01-01T00:00:00.000Z");
    }
    Ok(axum::Json(answer).into_response())
}

/// A comma-separated list parameter, from one or several occurrences.
fn list(query: &Query, name: &str) -> Vec<String> {
    query
        .all(name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

fn entities(state: &Shared, token: Option<&str>, query: &Query) -> Answer {
    authorize(state, token, SCOPE_ENTITIES_READ)?;
    let selector = query.get("entitySelector").ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "entitySelector is missing, for example type(KUBERNETES_CLUSTER),kubernetesClusterId(<uid>)",
        )
    })?;
    let selector = EntitySelector::parse(selector)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("entitySelector: {e}")))?;
    let entities: Vec<_> = lock(&state.settings)
        .entities(&selector)
        .into_iter()
        .map(|e| {
            json!({
                "entityId": e.entity_id, "type": e.kind, "displayName": e.display_name,
                "firstSeenTms": e.first_seen_tms, "lastSeenTms": now_millis(),
            })
        })
        .collect();
    Ok(
        axum::Json(json!({ "totalCount": entities.len(), "pageSize": 50, "entities": entities }))
            .into_response(),
    )
}

/// The `schemaIds` a settings call needs: at least one.
fn schema_ids(query: &Query) -> Result<Vec<String>, ApiError> {
    let schemas = list(query, "schemaIds");
    if schemas.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "schemaIds is missing; name at least one schema, for example builtin:cloud.kubernetes",
        ));
    }
    Ok(schemas)
}

fn settings_objects(state: &Shared, token: Option<&str>, query: &Query) -> Answer {
    authorize(state, token, SCOPE_SETTINGS_READ)?;
    let schemas = schema_ids(query)?;
    let items = lock(&state.settings).objects(&schemas, &list(query, "scopes"));
    Ok(axum::Json(json!({ "items": items, "totalCount": items.len(), "pageSize": 500 })).into_response())
}

async fn create_settings_objects(
    state: &Shared,
    token: Option<&str>,
    query: &Query,
    request: Request,
) -> Answer {
    authorize(state, token, SCOPE_SETTINGS_WRITE)?;
    let objects: Vec<NewObject> = read_json(
        request,
        r#"a JSON array of {"schemaId":"..","scope":"..","value":{..}}"#,
    )
    .await?;
    let validate_only = query.flag("validateOnly");
    let now = now_millis();
    let mut store = lock(&state.settings);
    let results: Vec<_> = objects
        .into_iter()
        .map(|object| match store.create(object, validate_only, now) {
            Ok(_) if validate_only => json!({ "code": 200 }),
            Ok(id) => json!({ "code": 200, "objectId": id }),
            Err(message) => json!({ "code": 400, "error": { "code": 400, "message": message } }),
        })
        .collect();
    // As the real API: 200 when every object was accepted, else 400 with the per-object results.
    let status = if results.iter().all(|r| r["code"] == 200) {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, axum::Json(results)).into_response())
}

fn effective_values(state: &Shared, token: Option<&str>, query: &Query) -> Answer {
    authorize(state, token, SCOPE_SETTINGS_READ)?;
    let schemas = schema_ids(query)?;
    let scope = query.get("scope").unwrap_or(crate::settings::ENVIRONMENT_SCOPE);
    let store = lock(&state.settings);
    let items: Vec<_> = schemas
        .iter()
        .map(|schema| store.effective(schema, scope))
        .collect();
    Ok(axum::Json(json!({ "items": items, "totalCount": items.len(), "pageSize": 500 })).into_response())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hosts(state: &Shared, token: Option<&str>) -> Answer {
    authorize(state, token, SCOPE_DATA_EXPORT)?;
    let now = now_millis();
    let hosts: Vec<_> = state
        .hosts()
        .into_iter()
        .map(|host| {
            json!({
                "entityId": host.entity_id,
                "ipAddresses": host.ip_addresses,
                "agentVersion": AgentVersion::parse_lenient(&host.agent_version),
                "networkZoneId": host.network_zone.as_deref().unwrap_or("default"),
                "lastSeenTimestamp": now,
            })
        })
        .collect();
    Ok(axum::Json(hosts).into_response())
}

async fn events(state: &Shared, token: Option<&str>, request: Request) -> Answer {
    authorize(state, token, SCOPE_DATA_EXPORT)?;
    let event: serde_json::Value = read_json(request, "JSON").await?;
    if !event.get("eventType").is_some_and(serde_json::Value::is_string) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the event must be a JSON object with a string eventType, for example \
             {\"eventType\":\"MARKED_FOR_TERMINATION\",\"attachRules\":{...}}",
        ));
    }
    let id = state.store_event(event);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"storedEventIds": [id.to_string()]})),
    )
        .into_response())
}

fn image(state: &Shared, token: Option<&str>, code_modules: bool) -> Answer {
    authorize(state, token, SCOPE_INSTALLER_DOWNLOAD)?;
    let repository = if code_modules { "codemodules" } else { "oneagent" };
    Ok(axum::Json(json!({
        "source": format!("{}.live.dynatrace.com/linux/{repository}", state.config.environment_id),
        "tag": latest(state)?,
    }))
    .into_response())
}

async fn admin_publish(state: &Shared, request: Request) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Publish {
        version: String,
    }
    let publish: Publish = read_json(request, r#"a JSON object {"version":"<version>"}"#).await?;
    check_version(&publish.version).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    state.publish_version(&publish.version);
    Ok(axum::Json(json!({
        "latestAgentVersion": publish.version,
        "availableVersions": state.versions(),
    }))
    .into_response())
}

async fn admin_set_fault(state: &Shared, request: Request) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetFault {
        endpoint: Endpoint,
        fault: Fault,
        #[serde(default)]
        count: Option<u32>,
    }
    let set: SetFault = read_json(
        request,
        r#"a fault like {"endpoint":"download","fault":{"kind":"throttle","retry_after_seconds":2},"count":3}"#,
    )
    .await?;
    if set.endpoint == Endpoint::Admin {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the admin endpoints cannot be faulted; choose another endpoint",
        ));
    }
    if set.fault.is_download_only() && !matches!(set.endpoint, Endpoint::Download | Endpoint::RegistryBlobs) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "fault {:?} only applies to the download and registry_blobs endpoints, not to {}",
                set.fault, set.endpoint
            ),
        ));
    }
    state.set_fault(set.endpoint, set.fault, set.count);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_add_host(state: &Shared, request: Request) -> Answer {
    let host: Host = read_json(
        request,
        r#"a host like {"entity_id":"HOST-1","ip_addresses":["10.0.0.5"],"agent_version":"1.277.0.20230914-094321","network_zone":null}"#,
    )
    .await?;
    if AgentVersion::parse(&host.agent_version).is_none() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "agent_version {:?} is not like 1.277.0.20230914-094321",
                host.agent_version
            ),
        ));
    }
    state.add_host(host);
    Ok(StatusCode::CREATED.into_response())
}

async fn admin_add_image(state: &Shared, request: Request) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddImage {
        image: String,
        path: std::path::PathBuf,
    }
    let add: AddImage = read_json(
        request,
        r#"an image like {"image":"linux/oneagent:1.277.0","path":"/path/to/oci-layout-or-archive.tar"}"#,
    )
    .await?;
    match state.load_image(add.image, add.path).await {
        Ok(info) => Ok((StatusCode::CREATED, axum::Json(info)).into_response()),
        Err(err @ (ImageError::Reference(_) | ImageError::OneAgentLatest | ImageError::Invalid { .. })) => {
            Err(error(StatusCode::BAD_REQUEST, err.to_string()))
        }
        Err(err @ ImageError::Io { .. }) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_installer_paths() {
        let route = |m: &Method, p: &str| Route::parse(m, p);
        let get = Method::GET;
        assert_eq!(
            route(
                &get,
                "/api/v1/deployment/installer/agent/unix/paas/latest/metainfo"
            )
            .endpoint(),
            Endpoint::Metainfo
        );
        assert_eq!(
            route(&get, "/api/v1/deployment/installer/agent/versions/unix/paas"),
            Route::Versions {
                os: "unix".into(),
                kind: "paas".into()
            }
        );
        assert_eq!(
            route(&get, "/api/v1/deployment/installer/agent/unix/paas/version/1.2.3"),
            Route::Download {
                os: "unix".into(),
                kind: "paas".into(),
                version: Some("1.2.3".into())
            }
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/deployment/installer/agent/connectioninfo"),
            Route::NotFound
        );
        assert_eq!(route(&get, "/admin/nope").endpoint(), Endpoint::Admin);
        assert_eq!(route(&get, "/").endpoint(), Endpoint::Unknown);
    }

    #[test]
    fn reads_api_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(api_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Api-Token dt0c01.x"),
        );
        assert_eq!(api_token(&headers).as_deref(), Some("dt0c01.x"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer dt0c01.x"));
        assert_eq!(api_token(&headers), None);
    }

    #[test]
    fn token_ids_are_the_public_part() {
        assert_eq!(token_id("dt0c01.ABC.SECRET"), "dt0c01.ABC");
        assert_eq!(token_id("dt0c01.test"), "dt0c01.test");
    }

    #[test]
    fn query_keeps_repeated_values() {
        let query = Query::parse("include=java&include=nodejs&flavor=musl&skipMetadata=TRUE");
        assert_eq!(query.all("include"), ["java", "nodejs"]);
        assert_eq!(query.get("flavor"), Some("musl"));
        assert!(query.flag("skipMetadata"));
    }
}
