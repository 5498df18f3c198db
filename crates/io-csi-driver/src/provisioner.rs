//! `csi-provisioner`: per node, a controller over the DynaKubes of one namespace that need the CSI driver.
//! For each it writes the DynaKube's record as soon as the tenant is known, installs
//! `status.codeModules.version` once into `codemodules/<version>` (streamed through the shared installer
//! into `staging/`, then one rename), writes an immutable configuration layer named by the hash of its
//! content, and only then records version and layer, which is what `csi-server` publishes from. Without a
//! version, `status.codeModules.imageID` (`codeModulesImage`) is pulled from its registry into
//! `codemodules/sha256-<hex>` of its digest ([`io_code_module_installer::image`]) the same way, and that
//! name is the record's version.
//!
//! Concurrency and crashes:
//! - one download per version (or image digest): a per-name async lock; a second DynaKube wanting the version waits for
//!   the first install and then finds it complete;
//! - GC never sees a version or layer between its rename and the record that wants it: those steps hold
//!   a read guard that GC takes for writing;
//! - a crash (of an install or of GC, which deletes through `staging/` too) leaves at most an entry under
//!   `staging/`, never a version or layer that looks complete; the first GC run (at start) removes it.
//!
//! Failures requeue with a growing delay (never a sleep inside the reconcile) and a Warning event
//! `FailedInstallAgentVersion` on the DynaKube; a new version gives a Normal `InstallAgentVersion`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use io_code_module_installer::image::{ImageError, ImageSource, RegistrySettings};
use io_code_module_installer::{InstallError, InstallOptions, Source};
use io_tenant_client::{AgentSelector, DownloadRequest, TenantClient, TenantError};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource as _, ResourceExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use pure_api::dynakube::DynaKube;
use pure_code_module::proc_conf::{self, Property};
use pure_csi::gc::Policy;
use pure_csi::layout::{BadName, DynakubeRecord, Layout};
use sha2::{Digest as _, Sha256};

use crate::gc::{self, GcMetrics};
use crate::records::{self, RecordError};
use crate::status::NodeStatus;

/// How the advice on a failed Kubernetes call names the provisioner.
pub(crate) const CSI_DRIVER: &str = "the CSI driver (ServiceAccount dynatrace-oneagent-csi-driver)";
/// Event reason of a failed install.
pub const FAILED_INSTALL: &str = "FailedInstallAgentVersion";
/// Event reason of a new version on the node.
pub const INSTALLED: &str = "InstallAgentVersion";

/// How the provisioner runs.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// This node's name (`--node-id`).
    pub node_name: String,
    /// The DynaKubes' namespace (`POD_NAMESPACE`).
    pub namespace: String,
    /// The data directory (`--data-dir`).
    pub data_dir: PathBuf,
    /// Time between GC runs (`--gc-interval`).
    pub gc_interval: Duration,
    /// Unmounted app volumes at least this old are removed (`MAX_UNMOUNTED_VOLUME_AGE`).
    pub max_unmounted_volume_age: Duration,
    /// First retry delay after a failure; doubled per further failure.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Time between reconciles of a provisioned DynaKube (the process-module configuration may change).
    pub resync: Duration,
    /// Time between checks for records of DynaKubes that were deleted.
    pub sweep_interval: Duration,
    /// Attempts of one download for transient failures within a reconcile (each starts over).
    pub download_attempts: u32,
}

impl ProvisionerConfig {
    /// The defaults for `node_name`, `namespace` and `data_dir`.
    pub fn new(node_name: String, namespace: String, data_dir: PathBuf) -> Self {
        Self {
            node_name,
            namespace,
            data_dir,
            gc_interval: Duration::from_secs(300),
            max_unmounted_volume_age: Duration::from_secs(
                pure_csi::gc::DEFAULT_MAX_UNMOUNTED_VOLUME_AGE_DAYS as u64 * 86_400,
            ),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            resync: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(10),
            download_attempts: 2,
        }
    }
}

/// The provisioner's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Arc<Registry>,
    /// GC counters.
    pub gc: GcMetrics,
    /// Installs by result (`dynatrace_csi_driver_installs_total{result="success|failure"}`).
    pub installs: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// A registry with every metric of the provisioner.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let gc = GcMetrics::register(&mut registry);
        let installs = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "dynatrace_csi_driver_installs",
            "Code-module installs of the CSI provisioner by result",
            installs.clone(),
        );
        Self {
            registry: Arc::new(registry),
            gc,
            installs,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A name from the DynaKube cannot be a directory name.
    #[error(transparent)]
    Name(#[from] BadName),
    /// A record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The DynaKube's Secrets or settings are unusable.
    #[error(transparent)]
    Inputs(#[from] io_dynakube_inputs::Error),
    /// The API URL names no environment.
    #[error(
        "DynaKube {0}: spec.apiUrl names no environment (expected https://<id>.live.dynatrace.com/api or https://<host>/e/<id>/api)"
    )]
    NoTenant(String),
    /// The environment did not answer.
    #[error("cannot read the process-module configuration from the environment: {0}")]
    Tenant(#[from] TenantError),
    /// The install failed; nothing of it looks installed.
    #[error(
        "cannot install code-module version {version} on node {node}: {source}; the provisioner tries again \
         with a growing delay (check that the environment offers this version and is reachable from the node)"
    )]
    Install {
        /// The version.
        version: String,
        /// The node.
        node: String,
        /// Why (boxed: it is large and rare).
        source: Box<InstallError>,
    },
    /// The install from `codeModulesImage` failed; nothing of it looks installed.
    #[error("cannot install code modules image {image} on node {node}: {source}; {advice}")]
    Image {
        /// The image as the DynaKube names it.
        image: String,
        /// The node.
        node: String,
        /// Why (boxed: it is large and rare).
        source: Box<ImageError>,
        /// What to check.
        advice: String,
    },
    /// The pull Secret's `.dockerconfigjson` cannot be read.
    #[error(
        "the pull Secret {secret} cannot be used for image {image}: {reason}; fix its .dockerconfigjson \
         (type kubernetes.io/dockerconfigjson)"
    )]
    PullSecret {
        /// `<namespace>:<name>`.
        secret: String,
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing into the data directory failed.
    #[error("cannot write {path}: {source}; check that the CSI data directory is writable and has space")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Shared {
    client: Client,
    config: ProvisionerConfig,
    layout: Layout,
    inputs: io_dynakube_inputs::Reader,
    reporter: Reporter,
    metrics: Metrics,
    status: NodeStatus,
    /// One lock per version: one download per version per node.
    version_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held for reading from a rename into place until the record that wants it; GC holds it for writing.
    gc_guard: tokio::sync::RwLock<()>,
    /// Names under `staging/` in use by this process.
    active_staging: Arc<Mutex<BTreeSet<String>>>,
    /// Consecutive failures per DynaKube, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The last process-module configuration per API URL.
    process_module_configs: Mutex<HashMap<String, io_tenant_client::ProcessModuleConfig>>,
}

/// Runs the provisioner until `shutdown`: the controller, the GC loop and the sweep of records of
/// deleted DynaKubes.
pub async fn run(
    client: Client,
    config: ProvisionerConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let layout = Layout::new(&config.data_dir);
    let shared = Arc::new(Shared {
        status: NodeStatus::new(client.clone(), config.namespace.clone(), config.node_name.clone()),
        inputs: io_dynakube_inputs::Reader::new(client.clone()),
        reporter: Reporter {
            controller: "dynatrace-csi-provisioner".to_owned(),
            instance: Some(config.node_name.clone()),
        },
        client: client.clone(),
        layout,
        metrics,
        version_locks: Mutex::default(),
        gc_guard: tokio::sync::RwLock::default(),
        active_staging: Arc::default(),
        failures: Mutex::default(),
        process_module_configs: Mutex::default(),
        config,
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let dynakubes: Api<DynaKube> = Api::namespaced(client, &shared.config.namespace);
    let controller = Controller::new(dynakubes, watcher::Config::default());
    let store = controller.store();
    let gc_loop = tokio::spawn(gc_loop(shared.clone(), stop.clone()));
    let sweep_loop = tokio::spawn(sweep_loop(shared.clone(), store, stop.clone()));
    let cancel = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    controller
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, shared.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(dynakube = %object.name, "provisioned"),
                // The watch itself failed (denied, API server gone): nothing gets provisioned until it
                // works again, so say what to fix. Reconcile errors are logged by `error_policy`.
                Err(controller::Error::QueueError(error)) => tracing::warn!(
                    %error,
                    advice = %pure_install::rbac::advice(&error, CSI_DRIVER),
                    "watching DynaKubes failed; retrying"
                ),
                Err(error) => tracing::debug!(%error, "reconcile did not finish"),
            }
        })
        .await;
    stop.cancel();
    let _ = gc_loop.await;
    let _ = sweep_loop.await;
}

async fn reconcile(dynakube: Arc<DynaKube>, shared: Arc<Shared>) -> Result<Action, ProvisionError> {
    let result = provision(&dynakube, &shared).await;
    shared.status.refresh(&shared.layout).await;
    if result.is_ok() {
        lock(&shared.failures).remove(&dynakube.name_any());
    }
    result
}

fn error_policy(dynakube: Arc<DynaKube>, error: &ProvisionError, shared: Arc<Shared>) -> Action {
    let failures = {
        let mut failures = lock(&shared.failures);
        let count = failures.entry(dynakube.name_any()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(failures, shared.config.min_backoff, shared.config.max_backoff);
    tracing::warn!(dynakube = %dynakube.name_any(), %error, failures, ?delay, "provisioning failed; retrying");
    Action::requeue(delay)
}

/// The delay after the `failures`-th consecutive failure: `min`, doubled per further failure, at most
/// `max`.
fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(max)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn provision(dynakube: &DynaKube, shared: &Shared) -> Result<Action, ProvisionError> {
    let name = dynakube.name_any();
    let layout = &shared.layout;
    let record_path = layout.dynakube_record(&name)?;
    if !dynakube.csi_driver_use().may_use() || dynakube.meta().deletion_timestamp.is_some() {
        // Its configuration layers stay until GC finds them unmounted.
        records::remove(&record_path)?;
        return Ok(Action::await_change());
    }
    let connection = dynakube
        .status
        .as_ref()
        .and_then(|s| s.one_agent.as_ref())
        .and_then(|o| o.connection_info_status.as_ref());
    let tenant_uuid = connection
        .and_then(|c| c.tenant_uuid.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| dynakube.tenant_uuid())
        .ok_or_else(|| ProvisionError::NoTenant(name.clone()))?;
    pure_csi::layout::component("tenant UUID", &tenant_uuid)?;
    let existing = read_own_record(&record_path)?;
    let mut record = DynakubeRecord {
        tenant_uuid: tenant_uuid.clone(),
        max_failed_mount_attempts: dynakube.feature_flags().max_csi_mount_attempts(),
        ..DynakubeRecord::default()
    };
    if let Some(existing) = &existing
        && existing.tenant_uuid == tenant_uuid
    {
        record.version.clone_from(&existing.version);
        record.config.clone_from(&existing.config);
    }
    if existing.as_ref() != Some(&record) {
        records::write(&record_path, &record)?;
    }
    if !dynakube.needs_app_injection() {
        return Ok(Action::requeue(Duration::from_secs(1800)));
    }
    let code_modules = dynakube.status.as_ref().and_then(|s| s.code_modules.as_ref());
    let wanted_version = code_modules
        .and_then(|c| c.version.clone())
        .filter(|v| !v.is_empty());
    let wanted_image = code_modules
        .and_then(|c| c.image_id.clone())
        .filter(|i| !i.trim().is_empty());
    if wanted_version.is_none() && wanted_image.is_none() {
        // The operator sets one of them; its status change triggers the next reconcile.
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    let namespace = dynakube.namespace().unwrap_or_default();
    let (_, tokens) = shared.inputs.dynakube_tokens(dynakube).await?;
    let settings = io_dynakube_inputs::TenantSettings::of_dynakube(dynakube, &namespace);
    let client = shared
        .inputs
        .tenant_client(
            &settings,
            tokens.api_token.clone(),
            tokens.paas_token.clone(),
            None,
        )
        .await?;
    let properties = properties(dynakube, shared, &client, &tenant_uuid).await?;

    // A version from the environment, else the image (`codeModulesImage`): installed under
    // `codemodules/sha256-<hex>` of the digest it resolves to.
    let (version, installed) = match wanted_version {
        Some(version) => {
            let version_dir = layout.codemodule(&version)?;
            let installed = ensure_version(shared, &version, &version_dir, |staging| {
                install_version(shared, &client, &version, staging)
            })
            .await
            .map(|(now, guard)| (now.then(|| format!("Code-module version {version}")), guard));
            (version, installed)
        }
        None => {
            let image = wanted_image.unwrap_or_default();
            match install_image(shared, dynakube, &image, &settings).await {
                Ok(done) => done,
                Err(error) => (String::new(), Err(error)),
            }
        }
    };
    let (installed_now, guard) = match installed {
        Ok(done) => done,
        Err(error) => {
            shared
                .metrics
                .installs
                .get_or_create(&vec![("result".into(), "failure".into())])
                .inc();
            publish(
                shared,
                dynakube,
                EventType::Warning,
                FAILED_INSTALL,
                format!("{error}"),
            )
            .await;
            return Err(error);
        }
    };
    let version_dir = layout.codemodule(&version)?;
    let config = write_config_layer(shared, &name, &version_dir, &properties)?;
    record.version = Some(version.clone());
    record.config = Some(config);
    if read_own_record(&record_path)?.as_ref() != Some(&record) {
        records::write(&record_path, &record)?;
    }
    drop(guard);
    if let Some(what) = installed_now {
        shared
            .metrics
            .installs
            .get_or_create(&vec![("result".into(), "success".into())])
            .inc();
        publish(
            shared,
            dynakube,
            EventType::Normal,
            INSTALLED,
            format!("{what} is installed on node {}", shared.config.node_name),
        )
        .await;
    }
    Ok(Action::requeue(shared.config.resync))
}

/// The DynaKube's record; one that is not valid JSON (damaged by hand) counts as missing: this process
/// is its writer and replaces it.
fn read_own_record(path: &Path) -> Result<Option<DynakubeRecord>, ProvisionError> {
    match records::read(path) {
        Err(RecordError::Corrupt { path, source }) => {
            tracing::warn!(path = %path.display(), %source, "replacing a record that is not valid");
            Ok(None)
        }
        other => Ok(other?),
    }
}

/// The properties merged into the version's `ruxitagentproc.conf` for this DynaKube: the environment's
/// process-module configuration, proxy and host group (as the init container merges them), and the
/// tenant, its token and the communication endpoints when the operator has found them.
async fn properties(
    dynakube: &DynaKube,
    shared: &Shared,
    client: &TenantClient,
    tenant_uuid: &str,
) -> Result<Vec<Property>, ProvisionError> {
    // The last answer per environment is kept: asked with its revision, the environment answers 304
    // while nothing changed, and the kept answer is used.
    let cached = lock(&shared.process_module_configs)
        .get(&dynakube.spec.api_url)
        .cloned();
    let revision = cached.as_ref().map_or(0, |c| c.revision);
    let config = match client.process_module_config(revision).await? {
        Some(fresh) => {
            lock(&shared.process_module_configs).insert(dynakube.spec.api_url.clone(), fresh.clone());
            Some(fresh)
        }
        None => cached,
    };
    let from_tenant: Vec<Property> = config
        .map(|c| {
            c.properties
                .into_iter()
                .map(|p| Property::new(&p.section, &p.key, &p.value))
                .collect()
        })
        .unwrap_or_default();
    let namespace = dynakube.namespace().unwrap_or_default();
    let proxy = shared
        .inputs
        .proxy(&namespace, dynakube.proxy())
        .await?
        .unwrap_or_default();
    let mut properties =
        proc_conf::init_properties(from_tenant, &proxy, dynakube.host_group().unwrap_or_default());
    properties.push(Property::new("general", "tenant", tenant_uuid));
    let token_secret = pure_api::dynakube::names::tenant_secret(&dynakube.name_any());
    match shared
        .inputs
        .secret_key(
            &namespace,
            &token_secret,
            "tenant-token",
            "the tenant token Secret",
        )
        .await
    {
        Ok(token) => properties.push(Property::new("general", "tenantToken", &token)),
        // The operator writes it after its first connection-info call; the layer is rewritten then.
        Err(io_dynakube_inputs::Error::Problem(_)) => {}
        Err(error) => return Err(error.into()),
    }
    if let Some(endpoints) = dynakube
        .status
        .as_ref()
        .and_then(|s| s.one_agent.as_ref())
        .and_then(|o| o.connection_info_status.as_ref())
        .and_then(|c| c.endpoints.as_deref())
        .filter(|e| !e.is_empty())
    {
        properties.push(Property::new(
            "general",
            "serverAddress",
            &format!("{{{endpoints}}}"),
        ));
    }
    Ok(properties)
}

/// The GC guard, held from a version's rename into place until the record names it.
type GcGuard<'a> = tokio::sync::RwLockReadGuard<'a, ()>;

/// Makes sure `codemodules/<id>` (`version_dir`) is complete, installing it once with `install` (into
/// the staging directory it is given); returns whether this call installed it, and the GC guard, held
/// until the record names it. One install per id per node: a second caller waits for the first and
/// finds it complete.
async fn ensure_version<'a, F, Fut>(
    shared: &'a Shared,
    id: &str,
    version_dir: &Path,
    install: F,
) -> Result<(bool, GcGuard<'a>), ProvisionError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), ProvisionError>>,
{
    let version_lock = lock(&shared.version_locks)
        .entry(id.to_owned())
        .or_default()
        .clone();
    let _one_download = version_lock.lock().await;
    let guard = shared.gc_guard.read().await;
    if tokio::fs::try_exists(version_dir).await.unwrap_or(false) {
        return Ok((false, guard));
    }
    drop(guard);

    let staging_name = format!(
        "{id}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let staging = Staging::register(shared, staging_name);
    install(staging.path.clone()).await?;
    let guard = shared.gc_guard.read().await;
    let parent = shared.layout.codemodules();
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(io_error(&parent))?;
    tokio::fs::rename(&staging.path, version_dir)
        .await
        .map_err(io_error(version_dir))?;
    Ok((true, guard))
}

/// Downloads `version` from the environment into `staging`.
async fn install_version(
    shared: &Shared,
    client: &TenantClient,
    version: &str,
    staging: PathBuf,
) -> Result<(), ProvisionError> {
    let request = DownloadRequest {
        agent: AgentSelector {
            arch: pure_code_module::init::installer_arch(std::env::consts::ARCH).into(),
            ..AgentSelector::code_modules()
        },
        version: Some(version.to_owned()),
        technologies: Vec::new(),
        skip_metadata: true,
        expected_sha256: None,
    };
    let options = InstallOptions {
        attempts: shared.config.download_attempts.max(1),
        process_module_config: None,
        ..InstallOptions::default()
    };
    let started = std::time::Instant::now();
    let installed = io_code_module_installer::install(client, &Source::Tenant(request), &staging, &options)
        .await
        .map_err(|source| ProvisionError::Install {
            version: version.to_owned(),
            node: shared.config.node_name.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(
        %version,
        archive_bytes = installed.archive_bytes,
        unpacked_bytes = installed.unpacked_bytes,
        entries = installed.entries,
        elapsed = ?started.elapsed(),
        "code-module version installed"
    );
    Ok(())
}

/// What [`install_image`] found: the id under `codemodules/`, and the install's outcome (a description
/// for the event when this call installed it, and the GC guard).
type ImageOutcome<'a> = (String, Result<(Option<String>, GcGuard<'a>), ProvisionError>);

/// Makes sure the code module of `image` (`status.codeModules.imageID`) is installed. The id is the
/// digest the image resolves to (`sha256-<hex>`): an image written with `@sha256:` needs no registry
/// call once installed; a tag is resolved on every reconcile (one HEAD of its manifest), so a tag that
/// moves is followed. The resolution is not remembered: while the registry is unreachable the record
/// keeps naming the last installed id, so pods keep mounting it.
async fn install_image<'a>(
    shared: &'a Shared,
    dynakube: &DynaKube,
    image: &str,
    settings: &io_dynakube_inputs::TenantSettings<'_>,
) -> Result<ImageOutcome<'a>, ProvisionError> {
    let namespace = dynakube.namespace().unwrap_or_default();
    let pull_secret = dynakube.pull_secret_name();
    let secret_ref = format!("{namespace}:{pull_secret}");
    let image_error = |source: ImageError| {
        let advice = if source.is_unauthorized() {
            format!(
                "check that the pull Secret {secret_ref} (spec.customPullSecret, else <dynakube>-pull-secret) \
                 holds valid credentials for this registry; the provisioner tries again with a growing delay"
            )
        } else {
            "the provisioner tries again with a growing delay (check the image, that the registry is reachable \
             from the node, spec.trustedCAs and the proxy)"
                .to_owned()
        };
        ProvisionError::Image {
            image: image.to_owned(),
            node: shared.config.node_name.clone(),
            source: Box::new(source),
            advice,
        }
    };
    let docker_config = match shared
        .inputs
        .secret_key(&namespace, &pull_secret, ".dockerconfigjson", "the pull Secret")
        .await
    {
        Ok(config) => Some(config),
        // No pull Secret (or not a dockerconfigjson one): an anonymous pull, as a container runtime does.
        Err(io_dynakube_inputs::Error::Problem(problem)) => {
            tracing::debug!(%problem, "no pull Secret; pulling the code modules image anonymously");
            None
        }
        Err(error) => return Err(error.into()),
    };
    let registry_host = ImageSource::registry_of(image).map_err(image_error)?;
    let credentials = match docker_config {
        Some(config) => pure_code_module::image::registry_credentials(config.as_bytes(), &registry_host)
            .map_err(|e| ProvisionError::PullSecret {
                secret: secret_ref.clone(),
                image: image.to_owned(),
                reason: e.0,
            })?,
        None => None,
    };
    let proxy = shared
        .inputs
        .proxy(&namespace, dynakube.proxy())
        .await?
        .filter(|p| !p.is_empty());
    let registry = RegistrySettings {
        credentials,
        trusted_cas_pem: shared
            .inputs
            .trusted_cas(&namespace, settings.trusted_cas)
            .await?,
        proxy,
        no_proxy: settings.no_proxy.clone(),
    };
    let source = ImageSource::new(image, registry).map_err(image_error)?;
    let digest = match source.resolve().await {
        Ok(digest) => digest,
        Err(error) => return Ok((String::new(), Err(image_error(error)))),
    };
    let Some(id) = pure_csi::layout::image_version_id(&digest) else {
        return Ok((
            String::new(),
            Err(image_error(ImageError::Registry {
                image: image.to_owned(),
                reason: format!("the registry named the digest {digest:?}, which is not <algorithm>:<hex>"),
            })),
        ));
    };
    let version_dir = shared.layout.codemodule(&id)?;
    let (source, digest_ref, image_error_ref) = (&source, &digest, &image_error);
    let installed = ensure_version(shared, &id, &version_dir, |staging| async move {
        let (digest, image_error) = (digest_ref, image_error_ref);
        let started = std::time::Instant::now();
        let installed = source
            .install(digest, &staging, pure_code_module::archive::Limits::default())
            .await
            .map_err(image_error)?;
        tracing::info!(
            %image,
            %digest,
            manifest = %installed.manifest_digest,
            agent_version = %installed.version,
            layers = installed.layers,
            downloaded_bytes = installed.downloaded_bytes,
            unpacked_bytes = installed.unpacked_bytes,
            entries = installed.entries,
            elapsed = ?started.elapsed(),
            "code modules image installed"
        );
        Ok(())
    })
    .await
    .map(|(now, guard)| {
        (
            now.then(|| format!("Code modules image {image} ({digest}, as {id})")),
            guard,
        )
    });
    Ok((id, installed))
}

/// A directory under `staging/` that GC leaves alone while it exists; removed when dropped (a rename
/// into place has moved it away by then).
struct Staging {
    path: PathBuf,
    name: String,
    active: Arc<Mutex<BTreeSet<String>>>,
}

impl Staging {
    fn register(shared: &Shared, name: String) -> Self {
        lock(&shared.active_staging).insert(name.clone());
        Self {
            path: shared.layout.staging().join(&name),
            name,
            active: shared.active_staging.clone(),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let (path, name, active) = (
            std::mem::take(&mut self.path),
            std::mem::take(&mut self.name),
            self.active.clone(),
        );
        // A failed install can leave a large tree: removed off the async workers. The name stays
        // active until the tree is gone, so GC does not race the removal.
        let remove = move || {
            if let Err(error) = std::fs::remove_dir_all(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove a staging directory; GC removes it");
            }
            lock(&active).remove(&name);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Writes the configuration layer `dynakubes/<dk>/config/<id>` for the version in `version_dir` (if
/// not there yet) and returns its id: the version's own `ruxitagentproc.conf` with `properties` merged
/// in; the id is a hash of the content, so a layer never changes once written.
fn write_config_layer(
    shared: &Shared,
    dynakube: &str,
    version_dir: &Path,
    properties: &[Property],
) -> Result<String, ProvisionError> {
    let source = version_dir.join(proc_conf::CONF_FILE);
    let original = std::fs::read_to_string(&source).map_err(io_error(&source))?;
    let merged = proc_conf::merge(&original, properties);
    let id = hex::encode(&Sha256::digest(merged.as_bytes())[..8]);
    let layer = shared.layout.dynakube_config(dynakube, &id)?;
    if layer.exists() {
        return Ok(id);
    }
    let staging = Staging::register(shared, format!("{dynakube}-config-{id}"));
    let file = staging.path.join(proc_conf::CONF_FILE);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    records::write_atomic(&file, merged.as_bytes()).map_err(io_error(&file))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).map_err(io_error(&file))?;
    }
    let configs = shared.layout.dynakube_configs(dynakube)?;
    std::fs::create_dir_all(&configs).map_err(io_error(&configs))?;
    std::fs::rename(&staging.path, &layer).map_err(io_error(&layer))?;
    Ok(id)
}

async fn publish(shared: &Shared, dynakube: &DynaKube, type_: EventType, reason: &str, note: String) {
    let reference: ObjectReference = dynakube.object_ref(&());
    let recorder = Recorder::new(shared.client.clone(), shared.reporter.clone());
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Provision".to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        tracing::warn!(
            %error,
            %reason,
            advice = %pure_install::rbac::advice(&error, CSI_DRIVER),
            "cannot publish an event"
        );
    }
}

/// GC at start (a crash's leftovers) and then every `gc_interval`.
async fn gc_loop(shared: Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    let mut interval = tokio::time::interval(shared.config.gc_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        run_gc(&shared).await;
    }
}

/// One GC run, with installs kept from racing it.
async fn run_gc(shared: &Arc<Shared>) {
    let _guard = shared.gc_guard.write().await;
    let policy = Policy {
        max_unmounted_volume_age: shared.config.max_unmounted_volume_age,
        active_staging: lock(&shared.active_staging).clone(),
    };
    let layout = shared.layout.clone();
    let metrics = shared.metrics.gc.clone();
    let active = shared.active_staging.clone();
    let staging_active = move |name: &str| lock(&active).contains(name);
    match tokio::task::spawn_blocking(move || gc::run_once(&layout, &policy, &staging_active, &metrics)).await
    {
        Ok(Ok(report)) => tracing::info!(
            removed = report.removed.len(),
            kept_in_use = report.kept_in_use.len(),
            reclaimed_bytes = report.reclaimed_bytes,
            "garbage collection done"
        ),
        Ok(Err(error)) => tracing::warn!(%error, "garbage collection failed"),
        Err(error) => tracing::warn!(%error, "the garbage collection task failed"),
    }
    shared.status.refresh(&shared.layout).await;
}

/// Removes the records of DynaKubes that no longer exist (deletions do not trigger a reconcile). A
/// record whose DynaKube is not in the controller's cache is confirmed with a GET before it goes, so a
/// cache that is still filling never costs a record.
async fn sweep_loop(
    shared: Arc<Shared>,
    store: kube::runtime::reflector::Store<DynaKube>,
    stop: tokio_util::sync::CancellationToken,
) {
    let api: Api<DynaKube> = Api::namespaced(shared.client.clone(), &shared.config.namespace);
    let mut interval = tokio::time::interval(shared.config.sweep_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let names: Vec<String> = std::fs::read_dir(shared.layout.dynakubes())
            .map(|read| {
                read.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut removed = false;
        for name in names {
            let object = ObjectRef::<DynaKube>::new(&name).within(&shared.config.namespace);
            let Ok(path) = shared.layout.dynakube_record(&name) else {
                continue;
            };
            if store.get(&object).is_some() || !path.exists() {
                continue;
            }
            match api.get_metadata_opt(&name).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, dynakube = %name, "cannot check whether the DynaKube exists");
                    continue;
                }
            }
            match records::remove(&path) {
                Ok(()) => {
                    tracing::info!(dynakube = %name, "DynaKube deleted; its record is removed");
                    removed = true;
                }
                Err(error) => tracing::warn!(%error, "cannot remove the record of a deleted DynaKube"),
            }
        }
        if removed {
            shared.status.refresh(&shared.layout).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n, min, max).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(0, min, max), min);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }
}
