//! Errors of the tenant client. Each names the endpoint; none contains a token.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to the Dynatrace environment.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The client configuration is unusable.
    #[error("invalid Dynatrace API client configuration: {field}: {reason}")]
    Config {
        /// The setting, e.g. `apiUrl` or `proxy`.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The token was rejected (401) or lacks a permission (403).
    #[error(
        "the Dynatrace API rejected the token for {endpoint} (HTTP {status}{}): {message}; check the token \
         Secret and the token's scopes",
        code.map(|c| format!(", code {c}")).unwrap_or_default()
    )]
    Unauthorized {
        /// Which call.
        endpoint: &'static str,
        /// 401 or 403.
        status: u16,
        /// The server's error code, when it sent one.
        code: Option<i64>,
        /// The server's message.
        message: String,
    },
    /// The server kept answering 429 Too Many Requests.
    #[error(
        "the Dynatrace API throttled {endpoint} (HTTP 429){}; try again later",
        retry_after.map(|d| format!(", asked to retry after {}s", d.as_secs())).unwrap_or_default()
    )]
    Throttled {
        /// Which call.
        endpoint: &'static str,
        /// The server's Retry-After, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The server kept answering 503 Service Unavailable.
    #[error("the Dynatrace API is unavailable for {endpoint} (HTTP 503); try again later")]
    Unavailable {
        /// Which call.
        endpoint: &'static str,
    },
    /// Any other error answer.
    #[error(
        "dynatrace server error for {endpoint}: HTTP {status}{}: {message}",
        code.map(|c| format!(", code {c}")).unwrap_or_default()
    )]
    Server {
        /// Which call.
        endpoint: &'static str,
        /// HTTP status.
        status: u16,
        /// The server's error code, when it sent one.
        code: Option<i64>,
        /// The server's message, or the start of its body.
        message: String,
    },
    /// The request did not get an answer: DNS, connection, TLS, proxy or timeout.
    #[error(
        "cannot reach the Dynatrace API for {endpoint}: {reason}; check apiUrl, proxy, trusted CAs and the network"
    )]
    Transport {
        /// Which call.
        endpoint: &'static str,
        /// What failed (without the URL's credentials).
        reason: String,
        /// Whether it timed out.
        timeout: bool,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the Dynatrace API for {endpoint}: {reason}")]
    Decode {
        /// Which call.
        endpoint: &'static str,
        /// What did not parse.
        reason: String,
    },
    /// A download ended early or differs from what was announced.
    #[error("the download of {what} failed: {reason}; nothing was kept, try again")]
    Download {
        /// What was downloaded.
        what: String,
        /// Why it was rejected.
        reason: DownloadFailure,
    },
    /// Writing the download to disk failed.
    #[error("cannot write the download to {path}: {source}; check free space and permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a downloaded file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadFailure {
    /// The connection ended before the announced length.
    #[error("received {received} of {expected} bytes")]
    Incomplete {
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The bytes do not match the expected checksum.
    #[error("sha256 is {actual}, expected {expected} (corrupted in transit or on the server)")]
    ChecksumMismatch {
        /// Expected hex sha256.
        expected: String,
        /// Computed hex sha256.
        actual: String,
    },
    /// The connection broke mid-way.
    #[error("the connection broke after {received} bytes: {reason}")]
    Interrupted {
        /// Bytes received before the break.
        received: u64,
        /// What the transport said.
        reason: String,
    },
    /// No data arrived for too long.
    #[error("no data for {0:?} after {1} bytes")]
    Stalled(Duration, u64),
}

impl TenantError {
    /// Whether trying again may help: throttling, unavailability, transport failures, broken downloads.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Throttled { .. } | Self::Unavailable { .. } | Self::Transport { .. } => true,
            Self::Download { reason, .. } => !matches!(reason, DownloadFailure::ChecksumMismatch { .. }),
            Self::Server { status, .. } => matches!(status, 502 | 504),
            Self::Config { .. } | Self::Unauthorized { .. } | Self::Decode { .. } | Self::Io { .. } => false,
        }
    }

    /// How long the server asked to wait, for 429 answers.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { status, .. } | Self::Server { status, .. } => Some(*status),
            Self::Throttled { .. } => Some(429),
            Self::Unavailable { .. } => Some(503),
            _ => None,
        }
    }
}
