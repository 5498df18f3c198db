//! The gRPC side of `csi-server`: the CSI Identity and Node services on the driver's unix socket, the
//! kubelet's plugin-registration service on `<registration dir>/csi.oneagent.dynatrace.com-reg.sock` (the
//! node-driver-registrar sidecar, in-process), and `/healthz`, which calls `Probe` over the socket (the
//! livenessprobe sidecar, in-process).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use pure_csi::DRIVER_NAME;
use pure_csi::publish::{AccessType, PublishInput};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::proto::csi::{self, controller_server, identity_server, node_server};
use crate::proto::registration::{self as reg, registration_server};
use crate::publish::{Driver, PublishError};

/// The CSI versions the registration service offers the kubelet.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// A socket that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Removing a stale socket, creating its directory or binding failed.
    #[error(
        "cannot listen on the unix socket {path}: {source}; check that its directory is mounted and writable"
    )]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The endpoint is not `unix://<absolute path>` or an absolute path.
    #[error("endpoint {0:?} is not a unix socket (use unix:///path/csi.sock or /path/csi.sock)")]
    Endpoint(String),
}

/// The socket path of `unix:///path` or `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ServeError::Endpoint(endpoint.to_owned()))
    }
}

/// Binds a unix socket at `path`, first removing a stale socket file that a killed process left.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_error = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_error)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(bind_error(err)),
    }
    UnixListener::bind(path).map_err(bind_error)
}

/// A gRPC channel to the unix socket at `path` (the health check and tests).
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API and ignored: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// The CSI Identity service.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Our version (`vendor_version`).
    pub version: String,
}

#[tonic::async_trait]
impl identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_owned(),
            vendor_version: self.version.clone(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // No CONTROLLER_SERVICE: a node-only driver for ephemeral inline volumes.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse::default()))
    }

    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

/// A Controller service that only answers `ControllerGetCapabilities`, with the single capability
/// `UNKNOWN` (which grants nothing); every other call is `Unimplemented`. The driver does not advertise
/// `CONTROLLER_SERVICE`, so the kubelet and the CSI sidecars never call it. It exists because csi-sanity
/// (v5.4.0) asks for the controller's capabilities in the `BeforeEach` of every Node test, whether the
/// plugin advertises a controller or not, and fails on an error or on an empty list (Go decodes it as nil).
#[derive(Debug, Clone, Copy, Default)]
pub struct Controller;

#[tonic::async_trait]
impl controller_server::Controller for Controller {
    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::{Rpc, Type, rpc::Type as RpcType};
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![csi::ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: RpcType::Unknown as i32,
                })),
            }],
        }))
    }
}

/// The CSI Node service.
#[derive(Debug, Clone)]
pub struct Node {
    /// `NodeGetInfo`'s node id: the node's name.
    pub node_id: String,
    /// Publish and unpublish.
    pub driver: Arc<Driver>,
}

fn status(err: PublishError) -> Status {
    match err {
        PublishError::InvalidArgument(message) => Status::invalid_argument(message),
        PublishError::Unavailable(message) => Status::unavailable(message),
        PublishError::Internal(message) => Status::internal(message),
    }
}

fn unimplemented(call: &str) -> Status {
    Status::unimplemented(format!(
        "{call} is not implemented: {DRIVER_NAME} serves ephemeral inline volumes only"
    ))
}

#[tonic::async_trait]
impl node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(unimplemented("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(unimplemented("NodeUnstageVolume"))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let driver = self.driver.clone();
        // Mount system calls block: run them off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            use csi::volume_capability::AccessType as Access;
            let access_type =
                request
                    .volume_capability
                    .as_ref()
                    .map(|capability| match capability.access_type {
                        Some(Access::Mount(_)) => AccessType::Mount,
                        Some(Access::Block(_)) => AccessType::Block,
                        None => AccessType::Unset,
                    });
            let result = driver.publish(PublishInput {
                volume_id: &request.volume_id,
                target_path: &request.target_path,
                access_type,
                volume_context: &request.volume_context,
                readonly: request.readonly,
            });
            (request.volume_id, result)
        })
        .await
        .map_err(|err| Status::internal(format!("the publish task failed: {err}")))?;
        match result {
            (volume, Ok(published)) => {
                tracing::info!(%volume, ?published, "NodePublishVolume");
                Ok(Response::new(csi::NodePublishVolumeResponse {}))
            }
            (volume, Err(err)) => {
                tracing::info!(%volume, %err, "NodePublishVolume refused");
                Err(status(err))
            }
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let driver = self.driver.clone();
        let result = tokio::task::spawn_blocking(move || {
            driver
                .unpublish(&request.volume_id, &request.target_path)
                .map(|()| request.volume_id)
        })
        .await
        .map_err(|err| Status::internal(format!("the unpublish task failed: {err}")))?;
        match result {
            Ok(volume) => {
                tracing::info!(%volume, "NodeUnpublishVolume");
                Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
            }
            Err(err) => {
                tracing::info!(%err, "NodeUnpublishVolume failed");
                Err(status(err))
            }
        }
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(unimplemented("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(unimplemented("NodeExpandVolume"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse::default()))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            ..Default::default()
        }))
    }
}

/// What the kubelet last said about the registration (`NotifyRegistrationStatus`), for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct RegistrationState(Arc<Mutex<Option<Result<(), String>>>>);

impl RegistrationState {
    /// `None` until the kubelet has answered, then whether it registered the driver.
    pub fn get(&self) -> Option<Result<(), String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, value: Result<(), String>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
    }
}

/// The kubelet's plugin-registration service.
#[derive(Debug, Clone)]
pub struct Registrar {
    /// The driver's socket as the kubelet sees it on the host (`--kubelet-registration-path`).
    pub kubelet_endpoint: String,
    /// What the kubelet answered.
    pub state: RegistrationState,
}

#[tonic::async_trait]
impl registration_server::Registration for Registrar {
    async fn get_info(&self, _: Request<reg::InfoRequest>) -> Result<Response<reg::PluginInfo>, Status> {
        tracing::info!("the kubelet asked for the plugin's registration info");
        Ok(Response::new(reg::PluginInfo {
            r#type: "CSIPlugin".to_owned(),
            name: DRIVER_NAME.to_owned(),
            endpoint: self.kubelet_endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("the kubelet registered the CSI driver");
            self.state.set(Ok(()));
        } else {
            tracing::error!(error = %status.error,
                "the kubelet did not register the CSI driver; check --kubelet-registration-path against the kubelet's directory");
            self.state.set(Err(status.error));
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// The registration socket's name in the kubelet's `plugins_registry` directory.
pub fn registration_socket(registration_dir: &Path) -> PathBuf {
    registration_dir.join(format!("{DRIVER_NAME}-reg.sock"))
}

/// Serves Identity, Node (and the capabilities-only [`Controller`]) on `listener` until `shutdown`.
pub async fn serve_csi(
    listener: UnixListener,
    identity: Identity,
    node: Node,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(identity_server::IdentityServer::new(identity))
        .add_service(node_server::NodeServer::new(node))
        .add_service(controller_server::ControllerServer::new(Controller))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled_owned())
        .await
}

/// Serves the registration service on `listener` until `shutdown`.
pub async fn serve_registration(
    listener: UnixListener,
    registrar: Registrar,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(registration_server::RegistrationServer::new(registrar))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled_owned())
        .await
}

/// Calls `Probe` on the driver's socket: what `/healthz` answers (the kubelet's liveness probe).
pub async fn probe(socket: &Path) -> Result<(), String> {
    let channel = connect(socket)
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", socket.display()))?;
    let mut client = csi::identity_client::IdentityClient::new(channel);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.probe(csi::ProbeRequest {}),
    )
    .await
    .map_err(|_| "Probe did not answer within 5 s".to_owned())?
    .map_err(|err| format!("Probe failed: {err}"))?;
    match answer.into_inner().ready {
        Some(false) => Err("Probe says not ready".to_owned()),
        _ => Ok(()),
    }
}

/// Everything `csi-server` serves.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--endpoint` (`unix:///csi/csi.sock`).
    pub endpoint: String,
    /// `--node-id`.
    pub node_id: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--registration-dir`; `None` disables the in-process registrar.
    pub registration_dir: Option<PathBuf>,
    /// `--kubelet-registration-path`: the driver's socket as the kubelet sees it.
    pub kubelet_registration_path: String,
    /// `--health-probe-bind-address`.
    pub health_address: std::net::SocketAddr,
    /// `--max-mount-wait`.
    pub max_mount_wait: std::time::Duration,
    /// `GetPluginInfo`'s vendor version.
    pub version: String,
}

/// A running `csi-server`.
#[derive(Debug)]
pub struct Running {
    /// Where `/healthz`, `/livez`, `/readyz` and `/metrics` are served (useful with port 0).
    pub health_address: std::net::SocketAddr,
    /// The driver (for tests: its metrics and layout).
    pub driver: Arc<Driver>,
    tasks: tokio::task::JoinSet<Result<(), String>>,
}

impl Running {
    /// Waits until every server stopped (after the shutdown token), returning the first failure.
    pub async fn wait(mut self) -> Result<(), String> {
        let mut first = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let result = done.map_err(|err| err.to_string()).and_then(|r| r);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// Starts the CSI socket, the registration socket and the health server; they stop on `shutdown`.
/// `events` writes the warnings of empty volumes (see [`crate::events::PodEvents`]).
pub async fn start(
    options: Options,
    metrics: crate::metrics::Metrics,
    events: crate::events::PodEvents,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let socket = socket_path(&options.endpoint)?;
    let driver = Arc::new(Driver::new(
        crate::publish::DriverConfig {
            data_dir: options.data_dir.clone(),
            max_mount_wait: options.max_mount_wait,
        },
        metrics.clone(),
        events,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let listener = bind_unix(&socket)?;
    let identity = Identity {
        version: options.version.clone(),
    };
    let node = Node {
        node_id: options.node_id.clone(),
        driver: driver.clone(),
    };
    tasks.spawn(named(
        serve_csi(listener, identity, node, shutdown.clone()),
        format!("the CSI socket {} failed", socket.display()),
    ));
    let state = RegistrationState::default();
    let registrar_enabled = options.registration_dir.is_some();
    if let Some(dir) = &options.registration_dir {
        let path = registration_socket(dir);
        let listener = bind_unix(&path)?;
        let registrar = Registrar {
            kubelet_endpoint: options.kubelet_registration_path.clone(),
            state: state.clone(),
        };
        tasks.spawn(named(
            serve_registration(listener, registrar, shutdown.clone()),
            format!("the registration socket {} failed", path.display()),
        ));
    }
    let readiness = move || -> io_serving::probes::Readiness {
        if !registrar_enabled {
            return Ok(());
        }
        match state.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(format!("the kubelet refused the registration: {error}").into()),
            None => Err(
                "waiting for the kubelet to register the driver (GetInfo, NotifyRegistrationStatus)".into(),
            ),
        }
    };
    let probe_socket = socket.clone();
    let router = io_serving::probes::probes_and_metrics(metrics.registry(), readiness).route(
        "/healthz",
        axum::routing::get(move || {
            let socket = probe_socket.clone();
            async move {
                match probe(&socket).await {
                    Ok(()) => (axum::http::StatusCode::OK, "ok".to_owned()),
                    Err(reason) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }
        }),
    );
    let (health_address, health) =
        io_serving::spawn_plain(options.health_address, router, shutdown.clone()).await?;
    tasks.spawn(async move {
        health
            .await
            .map_err(|err| format!("the health server failed: {err}"))
    });
    tracing::info!(socket = %socket.display(), node = %options.node_id, data_dir = %options.data_dir.display(),
        health = %health_address, registrar = registrar_enabled, "csi-server started");
    Ok(Running {
        health_address,
        driver,
        tasks,
    })
}

/// `csi-server` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket.
    #[error(transparent)]
    Socket(#[from] ServeError),
    /// The health address.
    #[error(transparent)]
    Health(#[from] io_serving::BindError),
}

/// Awaits a server, naming it in its error.
async fn named(
    server: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    context: String,
) -> Result<(), String> {
    server.await.map_err(|err| format!("{context}: {err}"))
}
