//! A fake of the Dynatrace environment (tenant) API for tests, benchmarks and local runs.
//!
//! [`FakeTenant::start`] serves, over HTTP or HTTPS on 127.0.0.1, the endpoints the operator uses under
//! `/api`: installer metainfo, versions and downloads (real zip archives, generated once per request shape
//! into a temporary directory and streamed from there), connection info, process module configuration,
//! token lookup (`/api/v1/tokens/lookup` and the current `/api/v2/apiTokens/lookup`), hosts, events, image
//! information, and the v2 settings objects, effective values and entities (see [`SettingsObject`]). Requests need `Authorization: Api-Token <token>` with
//! the endpoint's scope; errors are `{"error":{"code":..,"message":".."}}`.
//!
//! Tests steer it through the handle ([`FakeTenant::set_fault`], [`FakeTenant::publish_version`],
//! [`FakeTenant::requests`], ...); the `fake-tenant` binary offers the same through an unauthenticated admin
//! API under `/admin`:
//!
//! | Request | Effect |
//! | --- | --- |
//! | `POST /admin/versions` `{"version":"1.278.0.20231001-000000"}` | publishes a version (it becomes the latest) |
//! | `PUT /admin/faults` `{"endpoint":"download","fault":{"kind":"throttle","retry_after_seconds":2},"count":3}` | sets a [`Fault`] (`count` optional: until cleared) |
//! | `DELETE /admin/faults` | clears every fault |
//! | `GET /admin/requests` | the request log as a JSON array of [`RequestRecord`] |
//! | `DELETE /admin/requests` | clears the request log |
//! | `POST /admin/hosts` `{"entity_id":"HOST-1","ip_addresses":["10.0.0.5"],"agent_version":"1.277.0.20230914-094321","network_zone":null}` | adds a [`Host`] (camelCase keys accepted too) |
//! | `GET /admin/events` | the event bodies posted to `/api/v1/events` |
//! | `POST /admin/images` `{"image":"linux/oneagent:1.277.0","path":"/images/oneagent.tar"}` | loads an image into the registry (201 with its [`ImageInfo`]) |
//! | `GET /admin/images` | the registry's images as a JSON array of [`ImageInfo`] |
//! | `GET /admin/settings` | the settings objects as a JSON array of [`SettingsObject`] |
//!
//! Admin requests are logged too, and never faulted. A download fault `{"kind":"hostile","archive":"zip_slip"}`
//! ([`Fault::Hostile`], [`HostileArchive`]) serves a hostile archive instead of the real one; a
//! [`TenantConfig::agent_library`] (the binary's `--agent-library`) is served as
//! `agent/lib64/liboneagentproc.so` in every archive.
//!
//! The environment is also the registry of its OneAgent images, as a real one is: a read-only OCI
//! distribution API under `/v2/` (version check, manifests and blobs by `GET` or `HEAD`, tag lists) on the
//! same listener. Clients authenticate with Basic credentials whose password is a token with
//! `InstallerDownload` (what the operator's pull Secret holds; the user name is not checked); without them
//! the answer is 401 with a `WWW-Authenticate: Basic` challenge. Images are loaded from OCI image layout
//! directories or OCI/docker archive tars ([`FakeTenant::add_image`], `POST /admin/images`, the binary's
//! `--image`). In [`ONEAGENT_REPOSITORY`] the tag `latest` names the image loaded for the tenant's latest
//! version (tagged with the full version or `major.minor.patch`), so publishing a version moves it. Faults
//! and the request log are keyed by [`Endpoint::RegistryBase`], [`Endpoint::RegistryManifests`],
//! [`Endpoint::RegistryBlobs`] and [`Endpoint::RegistryTags`].

mod api;
mod archive;
mod images;
mod model;
pub mod oci_layout;
mod registry;
mod server;
mod settings;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::CHECKSUM_HEADER;
pub use images::{ImageError, ImageInfo, ONEAGENT_REPOSITORY};
pub use model::{
    Endpoint, Fault, Host, HostileArchive, MAX_PAYLOAD_BYTES, RequestRecord, SCOPE_API_TOKENS_READ,
    SCOPE_DATA_EXPORT, SCOPE_ENTITIES_READ, SCOPE_INSTALLER_DOWNLOAD, SCOPE_SETTINGS_READ,
    SCOPE_SETTINGS_WRITE, TenantConfig, TokenConfig,
};
pub use settings::{
    ENVIRONMENT_SCOPE, KUBERNETES_CLUSTER, KUBERNETES_SCHEMA, MonitoredEntity, SettingsObject,
};

use crate::archive::ArchiveCache;
use crate::state::Shared;

/// How the fake tenant listens.
#[derive(Clone)]
pub enum Listen {
    /// Plain HTTP.
    Http,
    /// HTTPS with this certificate chain and private key (both PEM).
    Https {
        /// The certificate chain, leaf first (PEM).
        cert_pem: String,
        /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
        key_pem: String,
    },
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http => f.write_str("Http"),
            // The key stays out of logs.
            Self::Https { .. } => f.debug_struct("Https").finish_non_exhaustive(),
        }
    }
}

/// Why the fake tenant could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be served.
    #[error("invalid fake tenant configuration: {0}")]
    Config(String),
    /// The certificate or key cannot be used.
    #[error("cannot serve HTTPS: {0}")]
    Tls(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}; choose another address or port")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The archive cache directory could not be created.
    #[error(
        "cannot create the archive cache directory in {}: {source}; check TMPDIR and its free space",
        std::env::temp_dir().display()
    )]
    CacheDir {
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running fake tenant. [`FakeTenant::shutdown`] stops it and removes its archive cache; dropping the
/// handle stops it too, without waiting.
#[derive(Debug)]
pub struct FakeTenant {
    state: Arc<Shared>,
    addr: SocketAddr,
    https: bool,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeTenant {
    /// Starts a fake tenant on a free port of 127.0.0.1.
    pub async fn start(config: TenantConfig, listen: Listen) -> Result<FakeTenant, StartError> {
        Self::start_on(config, listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a fake tenant on `addr` (port 0 picks a free port).
    pub async fn start_on(
        config: TenantConfig,
        listen: Listen,
        addr: SocketAddr,
    ) -> Result<FakeTenant, StartError> {
        config.check().map_err(StartError::Config)?;
        let tls = match &listen {
            Listen::Http => None,
            Listen::Https { cert_pem, key_pem } => {
                let config = server::tls_config(cert_pem, key_pem).map_err(StartError::Tls)?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let archives = ArchiveCache::new().map_err(|source| StartError::CacheDir { source })?;
        let state = Arc::new(Shared::new(config, archives));
        let shutdown = CancellationToken::new();
        let options = io_serving::ServeOptions {
            drain_timeout: server::DRAIN_TIMEOUT,
            ..Default::default()
        };
        let task = tokio::spawn(io_serving::serve(
            listener,
            tls.clone(),
            api::router(state.clone()),
            shutdown.clone(),
            options,
        ));
        let tenant = FakeTenant {
            state,
            addr,
            https: tls.is_some(),
            shutdown,
            task: Some(task),
        };
        tracing::info!(
            url = %tenant.api_url(),
            cache = %tenant.state.archives.path().display(),
            "fake tenant listening"
        );
        Ok(tenant)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding the generated archives; removed by [`FakeTenant::shutdown`].
    pub fn cache_dir(&self) -> &std::path::Path {
        self.state.archives.path()
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// [`FakeTenant::base_url`] + `/api`: what a DynaKube's `spec.apiUrl` would be.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url())
    }

    /// Makes `version` the latest (it is moved to the end when already known). A version that is not a
    /// safe path segment (ASCII letters, digits, `.`, `-`, `_`; at most 64 characters) is logged and ignored.
    pub fn publish_version(&self, version: &str) {
        match model::check_version(version) {
            Ok(()) => self.state.publish_version(version),
            Err(err) => tracing::error!("not publishing: {err}"),
        }
    }

    /// Makes requests of `endpoint` fail with `fault`, replacing the endpoint's previous fault: the next
    /// `count` requests it affects, or every one until [`FakeTenant::clear_faults`] when `None`
    /// (`Some(0)` removes the endpoint's fault). [`Fault::CutAfter`] and [`Fault::Corrupt`] affect only
    /// successful downloads and registry blobs; set on another endpoint they do nothing. [`Endpoint::Admin`] is never faulted.
    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault, count: Option<u32>) {
        self.state.set_fault(endpoint, fault, count);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// The request log, oldest first, each with its final status (the last 100 000 requests).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests()
    }

    /// Requests of `endpoint` since the log was last cleared.
    pub fn request_count(&self, endpoint: Endpoint) -> usize {
        self.state.request_count(endpoint)
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.state.clear_requests();
    }

    /// Adds a host to the hosts endpoint (replacing one with the same entity id).
    pub fn add_host(&self, host: Host) {
        self.state.add_host(host);
    }

    /// Loads the image at `source` into the registry as `reference` (`<name>:<tag>`, like
    /// `linux/oneagent:1.277.0`), replacing an image with that tag. `source` is an OCI image layout
    /// directory (served in place: keep it unchanged) or an OCI or docker archive tar (unpacked into the
    /// cache directory). When it holds several images, the one named with the tag is taken. Every blob is
    /// checked against its digest. `linux/oneagent:latest` cannot be loaded: it follows the latest version.
    pub async fn add_image(
        &self,
        reference: &str,
        source: impl Into<std::path::PathBuf>,
    ) -> Result<ImageInfo, ImageError> {
        self.state.load_image(reference.to_owned(), source.into()).await
    }

    /// The images the registry serves, by repository and tag.
    pub fn images(&self) -> Vec<ImageInfo> {
        self.state.images.images()
    }

    /// The bodies POSTed to `/api/v1/events`, oldest first.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.state.events()
    }

    /// The settings objects posted to `/api/v2/settings/objects`, in the scopes they ended up in.
    pub fn settings_objects(&self) -> Vec<SettingsObject> {
        lock(&self.state.settings).objects(&[], &[])
    }

    /// Stops accepting, lets requests in flight finish (up to 5 s), and removes the archive cache.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            tracing::warn!(%err, "the fake tenant's server task failed");
        }
        self.state.archives.close();
        tracing::info!(url = %self.api_url(), "fake tenant stopped");
    }
}

impl Drop for FakeTenant {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Locks a mutex; a poisoned lock is used anyway (the state stays consistent between statements).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
