//! The webhook server: validates DynaKube and OneAgent objects, converts DynaKubes between API versions,
//! injects the OneAgent code module into pods and labels namespaces for their DynaKube, and reports health
//! and Prometheus metrics.
//!
//! HTTPS with rustls (TLS 1.2 minimum, 1.3 preferred); the certificate is re-read from its files when it
//! changes, or taken from the operator's certificate Secret on every change of it. Metrics (`/metrics`) and
//! plain-HTTP probes are served on a separate port.

pub mod budget;
pub mod cluster;
pub mod events;
pub mod handlers;
pub mod inject;
pub mod metrics;
pub mod registration;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cluster::ClusterCache;
pub use handlers::AppState;
pub use inject::Injection;
pub use metrics::Metrics;

/// Default HTTPS port, as in the reference's Helm chart.
pub const DEFAULT_PORT: u16 = 8443;
/// Default metrics port.
pub const DEFAULT_METRICS_PORT: u16 = 8383;
/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of the HTTPS server: [`io_serving::ServeOptions`]' production defaults (1,024 connections;
/// connections without a request closed after 10 s, idle HTTP/1.1 ones after 10 s, idle HTTP/2 ones after
/// 120 s).
pub fn serve_options() -> io_serving::ServeOptions {
    io_serving::ServeOptions {
        drain_timeout: DRAIN_TIMEOUT,
        ..Default::default()
    }
}

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTPS address.
    pub bind: SocketAddr,
    /// Plain-HTTP address of `/metrics`, `/livez` and `/readyz`.
    pub metrics_bind: SocketAddr,
    /// Where `tls.crt` and `tls.key` come from.
    pub certificate_source: CertificateSource,
}

/// Where the serving certificate comes from.
#[derive(Clone)]
pub enum CertificateSource {
    /// A directory with `tls.crt` and `tls.key`, checked for changes every
    /// [`tls::RELOAD_INTERVAL`]. Missing or broken files stop the start.
    Dir(PathBuf),
    /// The keys `tls.crt` and `tls.key` of a Secret (the operator's `dynatrace-webhook-certs`), watched so
    /// that a new certificate is served as soon as it is written. The server starts at once; until the
    /// Secret holds a usable pair, TLS handshakes fail and the plain-HTTP `/readyz` answers 503.
    Secret {
        /// Client that reads the Secret.
        client: kube::Client,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

impl std::fmt::Debug for CertificateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            Self::Secret { namespace, name, .. } => f
                .debug_struct("Secret")
                .field("namespace", namespace)
                .field("name", name)
                .finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Display for CertificateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "directory {}", dir.display()),
            Self::Secret { namespace, name, .. } => write!(f, "Secret {namespace}/{name}"),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificate could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// rustls rejected the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}; choose another port or stop what uses it")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A started server.
pub struct RunningServer {
    /// The HTTPS address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The metrics address actually bound.
    pub metrics_addr: SocketAddr,
    certificate: Arc<tls::ReloadingCertificate>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Whether a certificate is being served (with a Secret source, not before the Secret held one).
    pub fn certificate_loaded(&self) -> bool {
        self.certificate.is_loaded()
    }

    /// Stops accepting, lets in-flight requests finish (up to 10 s), and returns when everything stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Returns when the server has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Starts the HTTPS server and the metrics server. `shutdown` stops both.
pub async fn start(
    config: &ServerConfig,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<RunningServer, StartError> {
    start_with(config, state, shutdown, serve_options()).await
}

/// [`start`] with other connection limits and timeouts for the HTTPS server.
pub async fn start_with(
    config: &ServerConfig,
    state: AppState,
    shutdown: CancellationToken,
    options: io_serving::ServeOptions,
) -> Result<RunningServer, StartError> {
    let certificate = match &config.certificate_source {
        CertificateSource::Dir(dir) => tls::ReloadingCertificate::load(dir)?,
        source @ CertificateSource::Secret { .. } => tls::ReloadingCertificate::pending(source.to_string()),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certificate.server_config()?));
    let listener = bind(config.bind).await?;
    let metrics_listener = bind(config.metrics_bind).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let metrics_addr = metrics_listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.metrics_bind,
        source,
    })?;

    let reload = match &config.certificate_source {
        CertificateSource::Dir(_) => tokio::spawn(certificate.clone().watch(shutdown.clone())),
        CertificateSource::Secret {
            client,
            namespace,
            name,
        } => tokio::spawn(certificate.clone().watch_secret(
            client.clone(),
            namespace.clone(),
            name.clone(),
            shutdown.clone(),
        )),
    };
    let connections = io_serving::Connections::new(options.max_connections);
    let router = handlers::router(state.clone());
    let https = tokio::spawn(io_serving::serve_with(
        listener,
        Some(acceptor),
        router,
        shutdown.clone(),
        options,
        connections.clone(),
    ));
    let metrics = tokio::spawn(serve_metrics(
        metrics_listener,
        state,
        Readiness {
            certificate: certificate.clone(),
            connections,
        },
        shutdown.clone(),
    ));
    tracing::info!(%addr, %metrics_addr, certs = %config.certificate_source, "webhook server listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        certificate,
        shutdown,
        tasks: vec![https, metrics, reload],
    })
}

/// What `/readyz` looks at besides the cluster caches.
#[derive(Clone)]
struct Readiness {
    certificate: Arc<tls::ReloadingCertificate>,
    connections: io_serving::Connections,
}

impl Readiness {
    /// Why the HTTPS server cannot take a request now, if it cannot.
    fn not_ready(&self) -> Option<String> {
        if !self.certificate.is_loaded() {
            return Some("waiting for the serving certificate".to_owned());
        }
        if self.connections.is_full() {
            return Some(format!(
                "all {} connection slots are in use; new connections are refused until idle ones are closed",
                self.connections.max()
            ));
        }
        None
    }
}

async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let router = io_serving::probes::probes_and_metrics(state.metrics.registry(), move || {
        // Not ready while there is no certificate to serve (a Secret source before its first write) or
        // while every connection slot is taken.
        if let Some(reason) = readiness.not_ready() {
            return Err(reason.into());
        }
        state.readiness()
    });
    io_serving::serve(
        listener,
        None,
        router,
        shutdown,
        io_serving::ServeOptions::default(),
    )
    .await;
}
