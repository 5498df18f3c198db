//! Serving an axum router on a TCP listener, in plain text or with rustls: HTTP/1.1 and HTTP/2, timeouts
//! for the TLS handshake and the request headers, a cap on open connections, and a graceful shutdown that
//! lets requests in flight finish. Shared by the webhook server and the fake tenant.
//!
//! Also the rest of the plumbing every subcommand shares: [`logging`] set-up and the [`probes`] router
//! (`/livez`, `/readyz`, `/metrics`).

pub mod logging;
pub mod probes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Limits of a server.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client gets for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client gets to send request headers.
    pub header_timeout: Duration,
    /// Connections served at once; more are refused until one ends.
    pub max_connections: usize,
    /// How long requests in flight may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}; choose another address or port, or stop what uses it")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why binding failed.
    pub source: std::io::Error,
}

/// Binds `addr` and serves `router` there in plain HTTP with the default [`ServeOptions`] until
/// `shutdown`: a subcommand's probes and metrics in one call. Returns the bound address (useful with port
/// 0) and the serving task.
pub async fn spawn_plain(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let task = tokio::spawn(serve(listener, None, router, shutdown, ServeOptions::default()));
    Ok((bound, task))
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`, then waits up to
/// `options.drain_timeout` for requests in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::warn!(%err, "accepting a connection failed");
                    // Out of file descriptors, for example: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many open connections; refusing one");
            continue;
        };
        let (tls, builder, router) = (tls.clone(), builder.clone(), router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(router);
            let result = match tls {
                None => serve_io(&builder, tcp, service, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_io(&builder, stream, service, watcher).await,
                        Ok(Err(err)) => return tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "some requests did not finish within {:?} of shutdown",
            options.drain_timeout
        );
    }
}

async fn serve_io<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    watcher.watch(connection.into_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn serves_plain_http_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "hello" }));
        let server = tokio::spawn(serve(
            listener,
            None,
            router,
            shutdown.clone(),
            ServeOptions::default(),
        ));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        shutdown.cancel();
        server.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
