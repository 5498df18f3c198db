//! Agent downloads: streamed to disk in constant memory, verified, then renamed into place. A failed or
//! interrupted download leaves nothing under the destination's name.

use std::path::{Path, PathBuf};

use backon::Retryable as _;
use futures::StreamExt as _;
use reqwest::Method;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::{
    DownloadFailure, DownloadRequest, DownloadedFile, Progress, TenantClient, TenantError, Token, error_from,
    transport,
};

/// Header in which a server may announce the sha256 of a download (the fake tenant does).
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";
const ENDPOINT: &str = "agent download";
/// Write buffer; the only per-download memory besides the hasher.
const WRITE_BUFFER: usize = 256 * 1024;

impl TenantClient {
    /// Downloads the agent archive `request` describes to `destination`, retrying transient failures
    /// (throttling, unavailability, broken or stalled connections) with backoff. `progress` is called as
    /// bytes arrive. The file appears under `destination` only once its length and (when known) checksum
    /// are verified; until then it is a hidden `.partial` file next to it, removed on failure.
    pub async fn download_agent(
        &self,
        request: &DownloadRequest,
        destination: &Path,
        progress: impl FnMut(Progress),
    ) -> Result<DownloadedFile, TenantError> {
        let progress = std::sync::Mutex::new(progress);
        let attempt = || async {
            let mut report = |p: Progress| {
                if let Ok(mut callback) = progress.lock() {
                    callback(p);
                }
            };
            self.download_once(request, destination, &mut report).await
        };
        attempt
            .retry(self.retry.backoff())
            .when(TenantError::is_transient)
            .adjust(|error, backoff| self.retry.adjust(error, backoff))
            .notify(|error, wait| tracing::info!(%error, ?wait, "retrying the download"))
            .await
    }

    async fn download_once(
        &self,
        request: &DownloadRequest,
        destination: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DownloadedFile, TenantError> {
        let (path, query) = installer_path(request);
        // No overall timeout: a large archive may take long; stalls are caught per chunk below.
        let started = std::time::Instant::now();
        let response = match self
            .request(Method::GET, &path, Token::Paas)
            .query(&query)
            .send()
            .await
        {
            Err(e) => Err(transport(ENDPOINT, &e)),
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => Err(error_from(ENDPOINT, response).await),
        };
        // The outcome of the request itself; a broken body is reported by the error below.
        self.report(ENDPOINT, &response, started);
        let response = response?;
        let total = response.content_length();
        let expected_sha256 = request.expected_sha256.clone().or_else(|| {
            response
                .headers()
                .get(CHECKSUM_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_lowercase())
        });
        let what = request
            .version
            .clone()
            .unwrap_or_else(|| "the latest agent".to_owned());
        let partial = partial_path(destination);
        let result = self.stream_to(response, &partial, total, progress).await;
        let finished = match result {
            Ok((size, sha256)) => {
                verify(&what, size, total, &sha256, expected_sha256.as_deref()).map(|()| (size, sha256))
            }
            Err(error) => Err(error),
        };
        let (size, sha256) = match finished {
            Ok(done) => done,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(match error {
                    StreamError::Io(source) => TenantError::Io {
                        path: partial,
                        source,
                    },
                    StreamError::Failed(reason) => TenantError::Download { what, reason },
                });
            }
        };
        tokio::fs::rename(&partial, destination)
            .await
            .map_err(|source| TenantError::Io {
                path: destination.to_owned(),
                source,
            })?;
        Ok(DownloadedFile {
            path: destination.to_owned(),
            size,
            sha256,
        })
    }

    async fn stream_to(
        &self,
        response: reqwest::Response,
        partial: &Path,
        total: Option<u64>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(u64, String), StreamError> {
        let file = tokio::fs::File::create(partial).await.map_err(StreamError::Io)?;
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut body = response.bytes_stream();
        loop {
            let next = tokio::time::timeout(self.download_idle_timeout, body.next()).await;
            let chunk = match next {
                Err(_) => {
                    return Err(StreamError::Failed(DownloadFailure::Stalled(
                        self.download_idle_timeout,
                        received,
                    )));
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    return Err(StreamError::Failed(DownloadFailure::Interrupted {
                        received,
                        reason: error.to_string(),
                    }));
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(StreamError::Io)?;
            received += chunk.len() as u64;
            progress(Progress { received, total });
        }
        file.flush().await.map_err(StreamError::Io)?;
        // On disk before it gets its final name: a crash cannot leave a complete-looking but empty file.
        file.get_ref().sync_all().await.map_err(StreamError::Io)?;
        Ok((received, hex::encode(hasher.finalize())))
    }
}

/// An agent archive arriving over the network, for callers that consume it as it streams (the code-module
/// installer unpacks it on the fly). Each chunk comes within the client's download idle timeout or the
/// stream ends with [`DownloadFailure::Stalled`].
pub struct DownloadStream {
    /// Bytes announced by the server.
    pub total: Option<u64>,
    /// The sha256 the server announced (or the caller expects), hex lowercase.
    pub expected_sha256: Option<String>,
    /// The body.
    pub body: futures::stream::BoxStream<'static, Result<bytes::Bytes, DownloadFailure>>,
}

impl std::fmt::Debug for DownloadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadStream")
            .field("total", &self.total)
            .field("expected_sha256", &self.expected_sha256)
            .finish_non_exhaustive()
    }
}

impl TenantClient {
    /// Starts downloading the agent archive `request` describes and returns its body as a stream, without
    /// retrying (a caller that consumes the stream retries from the start itself). The wait for the answer
    /// is bounded by the download idle timeout too.
    pub async fn agent_stream(&self, request: &DownloadRequest) -> Result<DownloadStream, TenantError> {
        let (path, query) = installer_path(request);
        let builder = self.request(Method::GET, &path, Token::Paas).query(&query);
        let mut stream = self.open_stream(builder).await?;
        if request.expected_sha256.is_some() {
            stream.expected_sha256.clone_from(&request.expected_sha256);
        }
        Ok(stream)
    }

    /// Like [`TenantClient::agent_stream`] for a plain URL (`INSTALLER_URL`): a GET without the token,
    /// through the client's proxy and trusted CAs.
    pub async fn url_stream(&self, url: &str) -> Result<DownloadStream, TenantError> {
        let parsed = url::Url::parse(url).map_err(|e| TenantError::Config {
            field: "installer URL",
            reason: format!("{url:?} is not a URL ({e})"),
        })?;
        self.open_stream(self.http.get(parsed)).await
    }

    async fn open_stream(&self, builder: reqwest::RequestBuilder) -> Result<DownloadStream, TenantError> {
        let started = std::time::Instant::now();
        let response = match tokio::time::timeout(self.download_idle_timeout, builder.send()).await {
            Err(_) => Err(TenantError::Transport {
                endpoint: ENDPOINT,
                reason: format!("no answer within {:?}", self.download_idle_timeout),
                timeout: true,
            }),
            Ok(Err(e)) => Err(transport(ENDPOINT, &e)),
            Ok(Ok(response)) if response.status().is_success() => Ok(response),
            Ok(Ok(response)) => Err(error_from(ENDPOINT, response).await),
        };
        self.report(ENDPOINT, &response, started);
        let response = response?;
        let total = response.content_length();
        let expected_sha256 = response
            .headers()
            .get(CHECKSUM_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_lowercase());
        let idle = self.download_idle_timeout;
        let body = response.bytes_stream();
        let body = futures::stream::unfold(
            (body, 0u64, false),
            move |(mut body, received, done)| async move {
                if done {
                    return None;
                }
                match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => Some((
                        Err(DownloadFailure::Stalled(idle, received)),
                        (body, received, true),
                    )),
                    Ok(None) => None,
                    Ok(Some(Err(error))) => Some((
                        Err(DownloadFailure::Interrupted {
                            received,
                            reason: error.to_string(),
                        }),
                        (body, received, true),
                    )),
                    Ok(Some(Ok(chunk))) => {
                        let received = received + chunk.len() as u64;
                        Some((Ok(chunk), (body, received, false)))
                    }
                }
            },
        )
        .boxed();
        Ok(DownloadStream {
            total,
            expected_sha256,
            body,
        })
    }
}

/// The installer endpoint's path and query for `request`.
fn installer_path(request: &DownloadRequest) -> (String, Vec<(&'static str, String)>) {
    let agent = &request.agent;
    let path = match &request.version {
        Some(version) => format!(
            "/v1/deployment/installer/agent/{}/{}/version/{version}",
            agent.os, agent.installer_type
        ),
        None => format!(
            "/v1/deployment/installer/agent/{}/{}/latest",
            agent.os, agent.installer_type
        ),
    };
    let mut query = vec![
        ("bitness", "64".to_owned()),
        ("flavor", agent.flavor.clone()),
        ("arch", agent.arch.clone()),
        ("skipMetadata", request.skip_metadata.to_string()),
    ];
    query.extend(request.technologies.iter().map(|t| ("include", t.clone())));
    (path, query)
}

enum StreamError {
    Io(std::io::Error),
    Failed(DownloadFailure),
}

fn verify(
    _what: &str,
    size: u64,
    total: Option<u64>,
    sha256: &str,
    expected_sha256: Option<&str>,
) -> Result<(), StreamError> {
    if let Some(expected) = total
        && size != expected
    {
        return Err(StreamError::Failed(DownloadFailure::Incomplete {
            expected,
            received: size,
        }));
    }
    if let Some(expected) = expected_sha256
        && !expected.eq_ignore_ascii_case(sha256)
    {
        return Err(StreamError::Failed(DownloadFailure::ChecksumMismatch {
            expected: expected.to_owned(),
            actual: sha256.to_owned(),
        }));
    }
    Ok(())
}

/// `dir/.name.partial`: hidden, next to the destination so the rename stays on one file system.
fn partial_path(destination: &Path) -> PathBuf {
    let name = destination
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    destination.with_file_name(format!(".{name}.partial"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_are_hidden_next_to_the_destination() {
        assert_eq!(
            partial_path(Path::new("/data/agent.zip")),
            PathBuf::from("/data/.agent.zip.partial")
        );
    }

    #[test]
    fn verification_checks_length_then_checksum() {
        assert!(verify("x", 10, Some(10), "ab", Some("AB")).is_ok());
        assert!(verify("x", 10, None, "ab", None).is_ok());
        assert!(matches!(
            verify("x", 5, Some(10), "ab", None),
            Err(StreamError::Failed(DownloadFailure::Incomplete {
                expected: 10,
                received: 5
            }))
        ));
        assert!(matches!(
            verify("x", 10, Some(10), "ab", Some("cd")),
            Err(StreamError::Failed(DownloadFailure::ChecksumMismatch { .. }))
        ));
    }
}
