//! The read-only OCI distribution registry under `/v2/`: a Dynatrace environment is also the registry of
//! its OneAgent images, pulled with the pull Secret's Basic credentials (user name the environment id,
//! password a PaaS or API token).

use std::io::{self, SeekFrom};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::api::{corrupt, cut_after};
use crate::images::{Blob, Lookup, ONEAGENT_REPOSITORY, valid_name};
use crate::model::{Endpoint, Fault, SCOPE_INSTALLER_DOWNLOAD};
use crate::state::Shared;

/// Sent with every registry answer: clients check it to know they talk to a v2 registry.
pub(crate) const API_VERSION_HEADER: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// The digest of a manifest or blob.
const DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");
/// Bytes per chunk when streaming a blob from disk.
const CHUNK: usize = 64 * 1024;

/// What a request under `/v2/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegistryRequest {
    /// `/v2/`: the version check.
    Base,
    /// `/v2/<name>/manifests/<tag | digest>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// A repository name that breaks the grammar.
    InvalidName { name: String },
    /// Any other path under `/v2/`.
    Unknown,
    /// A method other than GET or HEAD.
    ReadOnly,
}

impl RegistryRequest {
    /// Parses the path segments after `v2`.
    pub fn parse(read: bool, rest: &[&str]) -> Self {
        if !read {
            return Self::ReadOnly;
        }
        let name = |segments: &[&str]| segments.join("/");
        match rest {
            [] | [""] => Self::Base,
            [repository @ .., kind, last] if !repository.is_empty() => {
                let repository = name(repository);
                let known = matches!((*kind, *last), ("manifests" | "blobs", _) | ("tags", "list"));
                if known && !valid_name(&repository) {
                    return Self::InvalidName { name: repository };
                }
                match (*kind, *last) {
                    ("manifests", reference) if !reference.is_empty() => Self::Manifest {
                        name: repository,
                        reference: reference.to_owned(),
                    },
                    ("blobs", digest) if !digest.is_empty() => Self::Blob {
                        name: repository,
                        digest: digest.to_owned(),
                    },
                    ("tags", "list") => Self::Tags { name: repository },
                    _ => Self::Unknown,
                }
            }
            _ => Self::Unknown,
        }
    }

    /// The endpoint its faults and log entries are keyed by.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Base => Endpoint::RegistryBase,
            Self::Manifest { .. } => Endpoint::RegistryManifests,
            Self::Blob { .. } => Endpoint::RegistryBlobs,
            Self::Tags { .. } => Endpoint::RegistryTags,
            Self::InvalidName { .. } | Self::Unknown | Self::ReadOnly => Endpoint::Unknown,
        }
    }
}

/// A registry error answer: `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"...","detail":{}}]}`.
#[derive(Debug)]
pub(crate) struct RegistryError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    challenge: Option<String>,
}

fn registry_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> RegistryError {
    RegistryError {
        status,
        code,
        message: message.into(),
        retry_after: None,
        challenge: None,
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.code, "message": self.message, "detail": {}}]});
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The 401 answer with the Basic challenge that makes clients send the pull Secret's credentials.
fn unauthorized(state: &Shared, message: String) -> RegistryError {
    RegistryError {
        challenge: Some(format!(
            "Basic realm=\"fake-tenant registry {}\"",
            state.config.environment_id
        )),
        ..registry_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }
}

/// The user name and password of an `Authorization: Basic ...` header.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Checks the Basic credentials: the password must be a token of the environment with
/// `InstallerDownload` (a PaaS token, or an API token with that scope). The user name is not checked:
/// the operator derives it from the apiUrl's host, which for a local fake tenant is an IP address.
fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), RegistryError> {
    let environment = &state.config.environment_id;
    let Some((_, password)) = basic_credentials(headers) else {
        return Err(unauthorized(
            state,
            format!(
                "authentication required: send Basic credentials with the environment id ({environment}) as \
                 user name and a PaaS or API token of the environment as password (the DynaKube's pull Secret)"
            ),
        ));
    };
    let Some(token) = state.token(&password) else {
        return Err(unauthorized(
            state,
            format!(
                "authentication failed: the password is not a token of environment {environment}; use the \
                 PaaS or API token from the DynaKube's token Secret"
            ),
        ));
    };
    if !token.scopes.iter().any(|s| s == SCOPE_INSTALLER_DOWNLOAD) {
        return Err(registry_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "requested access to the resource is denied: the token lacks scope {SCOPE_INSTALLER_DOWNLOAD}; \
                 grant it or use a PaaS token"
            ),
        ));
    }
    Ok(())
}

/// The answer to an injected fault, in the registry's error format.
pub(crate) fn fault_response(state: &Shared, fault: &Fault) -> Response {
    let with_retry_after = |status, code, seconds: u64, message: String| RegistryError {
        retry_after: Some(seconds),
        ..registry_error(status, code, message)
    };
    match fault {
        Fault::Throttle { retry_after_seconds } => with_retry_after(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            *retry_after_seconds,
            format!(
                "too many requests; retry after {retry_after_seconds} s (fault injected by the fake tenant)"
            ),
        ),
        Fault::Unavailable => with_retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            1,
            "the registry is unavailable; retry after 1 s (fault injected by the fake tenant)".into(),
        ),
        Fault::BadRequest { message } => {
            registry_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", message.clone())
        }
        Fault::NotFound => registry_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "not found (fault injected by the fake tenant)".to_owned(),
        ),
        // Latency and the body faults never get here; 401 is the remaining kind.
        _ => unauthorized(
            state,
            "authentication failed (fault injected by the fake tenant)".into(),
        ),
    }
    .into_response()
}

/// Answers a registry request (after faults).
pub(crate) async fn answer(
    state: &Shared,
    request: RegistryRequest,
    head: bool,
    headers: &HeaderMap,
) -> Response {
    let result = match authorize(state, headers) {
        Err(err) => Err(err),
        Ok(()) => match request {
            RegistryRequest::Base => Ok(axum::Json(json!({})).into_response()),
            RegistryRequest::Manifest { name, reference } => manifest(state, &name, &reference, head),
            RegistryRequest::Blob { name, digest } => blob(state, &name, &digest, head, headers).await,
            RegistryRequest::Tags { name } => tags(state, &name),
            RegistryRequest::InvalidName { name } => Err(registry_error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                format!(
                    "invalid repository name {name:?}: lowercase components of [a-z0-9._-] separated by /"
                ),
            )),
            RegistryRequest::Unknown => Err(registry_error(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                "the fake tenant's registry serves /v2/, /v2/<name>/manifests/<reference>, \
                 /v2/<name>/blobs/<digest> and /v2/<name>/tags/list",
            )),
            RegistryRequest::ReadOnly => Err(registry_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "the fake tenant's registry is read-only (GET and HEAD); load images with POST /admin/images \
                 or --image",
            )),
        },
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

type Answer = Result<Response, RegistryError>;

fn name_unknown(name: &str) -> RegistryError {
    registry_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        format!(
            "repository {name} is not known to the fake tenant's registry; load an image into it with \
             POST /admin/images or --image {name}:<tag>=<path>"
        ),
    )
}

/// The tag `latest` of the OneAgent repository stands for the image of the tenant's latest version: its
/// full version tag or its `major.minor.patch` tag.
fn resolve_reference(state: &Shared, name: &str, reference: &str) -> Result<String, RegistryError> {
    if name != ONEAGENT_REPOSITORY || reference != "latest" {
        return Ok(reference.to_owned());
    }
    let Some(version) = state.latest_version() else {
        return Err(registry_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "no OneAgent version is published, so linux/oneagent:latest names no image; publish one with \
             POST /admin/versions",
        ));
    };
    let short = version.split('.').take(3).collect::<Vec<_>>().join(".");
    [version.as_str(), short.as_str()]
        .into_iter()
        .find(|tag| state.images.has_tag(name, tag))
        .map(str::to_owned)
        .ok_or_else(|| {
            registry_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!(
                    "linux/oneagent:latest follows the latest OneAgent version {version}, and no image is \
                     loaded for it; load one as {name}:{short}"
                ),
            )
        })
}

fn manifest(state: &Shared, name: &str, reference: &str, head: bool) -> Answer {
    let resolved = resolve_reference(state, name, reference)?;
    let (digest, manifest) = match state.images.manifest(name, &resolved) {
        Lookup::Found(found) => found,
        Lookup::NoRepository => return Err(name_unknown(name)),
        Lookup::Missing => {
            return Err(registry_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!(
                    "manifest {reference} of {name} is not known; its tags are {:?}",
                    tag_list(state, name)
                ),
            ));
        }
    };
    let len = manifest.bytes.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    if let Ok(media_type) = HeaderValue::from_str(&manifest.media_type) {
        headers.insert(header::CONTENT_TYPE, media_type);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    insert_digest(headers, &digest);
    Ok(response)
}

fn insert_digest(headers: &mut HeaderMap, digest: &str) {
    if let Ok(value) = HeaderValue::from_str(digest) {
        headers.insert(DIGEST_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, value);
    }
}

fn tag_list(state: &Shared, name: &str) -> Vec<String> {
    let Lookup::Found(mut tags) = state.images.tags(name) else {
        return Vec::new();
    };
    if name == ONEAGENT_REPOSITORY && resolve_reference(state, name, "latest").is_ok() {
        tags.push("latest".into());
        tags.sort();
    }
    tags
}

fn tags(state: &Shared, name: &str) -> Answer {
    if matches!(state.images.tags(name), Lookup::NoRepository) {
        return Err(name_unknown(name));
    }
    Ok(axum::Json(json!({"name": name, "tags": tag_list(state, name)})).into_response())
}

/// A single `Range: bytes=a-b` or `bytes=a-` of a blob of `len` bytes: `Ok(None)` without a range header,
/// `Err` when it cannot be satisfied.
fn byte_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let spec = value.to_str().map_err(drop)?.trim();
    let (start, end) = spec
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or(())?;
    let start: u64 = start.trim().parse().map_err(drop)?;
    let end = match end.trim() {
        "" => len.saturating_sub(1),
        end => end.parse::<u64>().map_err(drop)?.min(len.saturating_sub(1)),
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn blob(state: &Shared, name: &str, digest: &str, head: bool, headers: &HeaderMap) -> Answer {
    let Blob { path, len } = match state.images.blob(name, digest) {
        Lookup::Found(blob) => blob,
        Lookup::NoRepository => return Err(name_unknown(name)),
        Lookup::Missing => {
            return Err(registry_error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob {digest} is not in repository {name}"),
            ));
        }
    };
    let range = byte_range(headers, len).map_err(|()| {
        registry_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UNKNOWN",
            format!(
                "the requested range is not within the blob's {len} bytes; ask for bytes=<start>-[<end>]"
            ),
        )
    })?;
    let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
    let served = if len == 0 { 0 } else { end - start + 1 };
    let mut response = if head {
        Response::new(Body::empty())
    } else {
        let open_error = |err: io::Error| {
            registry_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                format!("cannot read blob {digest} from {}: {err}", path.display()),
            )
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(open_error)?;
        file.seek(SeekFrom::Start(start)).await.map_err(open_error)?;
        let body = tokio_util::io::ReaderStream::with_capacity(file.take(served), CHUNK).boxed();
        let body = match state.take_fault(Endpoint::RegistryBlobs, true) {
            Some(Fault::CutAfter { bytes }) => cut_after(body, bytes, served),
            Some(Fault::Corrupt) => corrupt(body, served),
            _ => body,
        };
        Response::new(Body::from_stream(body))
    };
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(served));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert_digest(response_headers, digest);
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_paths() {
        let parse = |p: &str| RegistryRequest::parse(true, &p.split('/').collect::<Vec<_>>());
        assert_eq!(RegistryRequest::parse(true, &[""]), RegistryRequest::Base);
        assert_eq!(RegistryRequest::parse(true, &[]), RegistryRequest::Base);
        assert_eq!(
            parse("linux/oneagent/manifests/latest"),
            RegistryRequest::Manifest {
                name: "linux/oneagent".into(),
                reference: "latest".into()
            }
        );
        assert_eq!(
            parse("a/b/c/blobs/sha256:00"),
            RegistryRequest::Blob {
                name: "a/b/c".into(),
                digest: "sha256:00".into()
            }
        );
        assert_eq!(parse("x/tags/list"), RegistryRequest::Tags { name: "x".into() });
        assert_eq!(
            parse("X/manifests/1"),
            RegistryRequest::InvalidName { name: "X".into() }
        );
        assert_eq!(parse("x/other/1"), RegistryRequest::Unknown);
        assert_eq!(parse("manifests/1"), RegistryRequest::Unknown);
        assert_eq!(RegistryRequest::parse(false, &[""]), RegistryRequest::ReadOnly);
    }

    #[test]
    fn reads_basic_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWJjMTIzNDU6ZHQwYzAxLnRlc3Q="),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("abc12345".into(), "dt0c01.test".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Api-Token x"));
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn parses_byte_ranges() {
        let mut headers = HeaderMap::new();
        assert_eq!(byte_range(&headers, 10), Ok(None));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=2-"));
        assert_eq!(byte_range(&headers, 10), Ok(Some((2, 9))));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        assert_eq!(byte_range(&headers, 10), Ok(Some((2, 4))));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        assert_eq!(byte_range(&headers, 10), Err(()));
    }
}
