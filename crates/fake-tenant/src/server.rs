//! Accepting connections: plain HTTP or HTTPS (rustls with the ring provider), HTTP/1.1 and HTTP/2, with a
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Time a client gets for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to send request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight (downloads, mostly) may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A rustls server configuration for a PEM certificate chain and key: TLS 1.3 and 1.2, HTTP/2 and 1.1.
pub(crate) fn tls_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate PEM holds no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot build the TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the private key does not fit the certificate or is not supported: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in flight finish for a while.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
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
        let (tls, builder, router) = (tls.clone(), builder.clone(), router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(router);
            let result = match tls {
                None => serve_io(&builder, tcp, service, watcher).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => return tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    serve_io(&builder, stream, service, watcher).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests did not finish within {DRAIN_TIMEOUT:?} of shutdown");
    }
}

async fn serve_io<I>(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    watcher.watch(connection.into_owned()).await
}
