//! `NodePublishVolume` and `NodeUnpublishVolume` on the node: the rules of `pure_csi::publish` applied to
//! the data directory, the records and the kernel's mount table.
//!
//! The mount table is the truth ("is the target a mount point?", "is `mapped` mounted, and with which
//! layers?"); records only say what was meant. Every step is ordered so that a `kill -9` between any two
//! of them, then the kubelet's retry of the same call, converges:
//!
//! - app publish: record (what is meant) → overlay on `mapped` (reused when a crashed attempt left the
//!   same layers mounted) → bind `mapped` onto the target. A crash leaves at most an overlay without a
//!   bind, which the retried publish reuses or the unpublish removes.
//! - unpublish: unmount the target → unmount `mapped` → remove the record. Each step is skipped when the
//!   mount table says it is done, so a retry finishes what a crash interrupted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pure_csi::layout::{AppVolumeRecord, DynakubeRecord, HostVolumeRecord, Layout};
use pure_csi::mountinfo::MountTable;
use pure_csi::publish::{self as rules, AppDecision, Mode, PublishInput, PublishRequest};

use crate::events::{PodEvents, PodWarning};
use crate::metrics::Metrics;
use crate::{mount, mounts, records};

/// Environment variable that makes the server kill itself with SIGKILL right after a named step (crash
/// tests only; see [`crash_point`]).
pub const CRASH_AT_ENV: &str = "DTO_CSI_CRASH_AT";

/// How publish or unpublish failed, mapped to a gRPC status by the server.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request is wrong (gRPC `InvalidArgument`).
    #[error("{0}")]
    InvalidArgument(String),
    /// Not ready yet; the kubelet retries (gRPC `Unavailable`).
    #[error("{0}")]
    Unavailable(String),
    /// The node failed (gRPC `Internal`).
    #[error("{0}")]
    Internal(String),
}

impl From<mount::MountError> for PublishError {
    fn from(err: mount::MountError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl From<records::RecordError> for PublishError {
    fn from(err: records::RecordError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl From<mounts::MountTableError> for PublishError {
    fn from(err: mounts::MountTableError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl From<pure_csi::layout::BadName> for PublishError {
    fn from(err: pure_csi::layout::BadName) -> Self {
        Self::InvalidArgument(err.to_string())
    }
}

fn io_error(action: &str, path: &Path, err: std::io::Error) -> PublishError {
    PublishError::Internal(format!(
        "cannot {action} {}: {err}; check that the CSI data directory and the kubelet's pods directory are \
         writable by the CSI server",
        path.display()
    ))
}

/// What a successful publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Mounted now.
    Mounted,
    /// The target was mounted already (a retry).
    AlreadyMounted,
    /// Published as an empty directory: the pod runs unmonitored.
    Empty,
}

/// Options of the node driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// `--max-mount-wait`.
    pub max_mount_wait: Duration,
}

/// Number of lock stripes: calls for different volumes rarely share one, calls for the same volume always do.
const STRIPES: usize = 64;

/// The node driver: publish and unpublish, synchronous (the gRPC server runs them on blocking threads).
#[derive(Debug)]
pub struct Driver {
    layout: Layout,
    max_mount_wait: Duration,
    metrics: Metrics,
    events: PodEvents,
    /// Serializes calls for the same volume id (the kubelet should not overlap them, but a retry after a
    /// timeout can overlap the call that is still running).
    locks: Vec<Mutex<()>>,
}

impl Driver {
    /// A driver over `config.data_dir`. The gauge of mounted versions starts from the mount table, so it
    /// is right after a restart.
    pub fn new(config: DriverConfig, metrics: Metrics, events: PodEvents) -> Self {
        // The mount table shows resolved paths: compare it with a resolved data dir.
        if let Err(err) = std::fs::create_dir_all(&config.data_dir) {
            tracing::warn!(%err, data_dir = %config.data_dir.display(), "cannot create the data directory");
        }
        let root = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir);
        let driver = Self {
            layout: Layout::new(root),
            max_mount_wait: config.max_mount_wait,
            metrics,
            events,
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        };
        match mounts::read() {
            Ok(table) => {
                for version in driver.mounted_versions(&table) {
                    driver.metrics.version_mounted(&version);
                }
            }
            Err(err) => tracing::warn!(%err, "cannot count the mounted code-module versions"),
        }
        driver
    }

    /// The data directory's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn mounted_versions(&self, table: &MountTable) -> Vec<String> {
        let app_mounts = self.layout.app_mounts();
        let codemodules = self.layout.codemodules();
        table
            .under(&app_mounts)
            .filter(|m| m.mount_point.file_name().is_some_and(|n| n == "mapped"))
            .filter_map(|m| rules::version_of_overlay(&m.overlay_lower_dirs(), &codemodules))
            .collect()
    }

    fn lock(&self, volume_id: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        volume_id.hash(&mut hasher);
        let stripe = &self.locks[(hasher.finish() as usize) % STRIPES];
        stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `NodePublishVolume`.
    pub fn publish(&self, input: PublishInput<'_>) -> Result<Published, PublishError> {
        let request = match rules::validate_publish(input) {
            Ok(request) => request,
            Err(err) => {
                self.metrics.publish("unknown", "invalid");
                return Err(PublishError::InvalidArgument(err.0));
            }
        };
        let mode = match request.mode {
            Mode::App => "app",
            Mode::Host => "host",
        };
        let pod_uid = input.volume_context.get(rules::POD_UID_KEY).cloned();
        let _guard = self.lock(&request.volume_id);
        let result = self.publish_locked(&request, pod_uid);
        let outcome = match &result {
            Ok(Published::Mounted) => "mounted",
            Ok(Published::AlreadyMounted) => "already_mounted",
            Ok(Published::Empty) => "empty",
            Err(PublishError::Unavailable(_)) => "retry",
            Err(PublishError::InvalidArgument(_)) => "invalid",
            Err(PublishError::Internal(_)) => "error",
        };
        self.metrics.publish(mode, outcome);
        result
    }

    fn publish_locked(
        &self,
        request: &PublishRequest,
        pod_uid: Option<String>,
    ) -> Result<Published, PublishError> {
        ensure_dir(&request.target).map_err(|e| io_error("create the target", &request.target, e))?;
        let target = canonical(&request.target);
        let table = mounts::read()?;
        if table.is_mount_point(&target) {
            return Ok(Published::AlreadyMounted);
        }
        match request.mode {
            Mode::App => self.publish_app(request, &target, &table, pod_uid),
            Mode::Host => self.publish_host(request, &target),
        }
    }

    fn publish_app(
        &self,
        request: &PublishRequest,
        target: &Path,
        table: &MountTable,
        pod_uid: Option<String>,
    ) -> Result<Published, PublishError> {
        let app = self.layout.app_mount(&request.volume_id)?;
        // A torn DynaKube record counts as "not ready": the attempts then end in an empty volume instead
        // of an Internal error the kubelet would retry forever.
        let mut dynakube: Option<DynakubeRecord> = match records::read(
            &self.layout.dynakube_record(&request.dynakube)?,
        ) {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!(%err, dynakube = %request.dynakube, "treating the DynaKube as not set up yet");
                None
            }
        };
        let previous: Option<AppVolumeRecord> = match records::read(&app.record()) {
            Ok(previous) => previous,
            Err(err) => {
                // Our own record, torn by something outside our control: start the volume afresh.
                tracing::warn!(%err, "ignoring the volume's record");
                None
            }
        };
        // A record that names layers that are gone (removed by hand) is treated as "not ready", so the
        // attempt counts towards the empty volume instead of failing forever.
        if let Some(dk) = dynakube.as_mut()
            && let (Some(version), Some(config)) = (&dk.version, &dk.config)
            && !(self.layout.codemodule(version)?.is_dir()
                && self.layout.dynakube_config(&request.dynakube, config)?.is_dir())
        {
            tracing::warn!(dynakube = %request.dynakube, %version, %config,
                "the DynaKube's record names a code module or configuration layer that is not on this node");
            dk.version = None;
        }
        match rules::decide_app(
            request,
            dynakube.as_ref(),
            previous.as_ref(),
            now_unix(),
            self.max_mount_wait,
        ) {
            AppDecision::Retry { reason, record } => {
                records::write_unsynced(&app.record(), &record)?;
                Err(PublishError::Unavailable(reason))
            }
            AppDecision::Empty {
                reason,
                record,
                first,
            } => {
                let mapped = app.mapped();
                ensure_dir(&mapped).map_err(|e| io_error("create", &mapped, e))?;
                // An overlay left by a crashed attempt before the volume turned empty.
                self.unmount_overlays(table, &mapped)?;
                records::write_unsynced(&app.record(), &record)?;
                crash_point("publish-record");
                mount::bind_mode(&mapped, target, request.readonly)?;
                if first {
                    self.metrics.empty_volume();
                    self.events.warn(PodWarning {
                        pod: request.pod.name.clone(),
                        namespace: request.pod.namespace.clone(),
                        uid: pod_uid,
                        reason: "OneAgentVolumeEmpty".to_owned(),
                        message: format!(
                            "{reason}. Check the CSI provisioner's logs on this node; restart the pod once the \
                             code module is installed"
                        ),
                    });
                }
                tracing::warn!(volume = %request.volume_id, pod = %request.pod.name,
                    namespace = %request.pod.namespace, "published an empty volume: {reason}");
                Ok(Published::Empty)
            }
            AppDecision::Mount {
                version,
                config,
                record,
            } => {
                let version_dir = self.layout.codemodule(&version)?;
                let config_dir = self.layout.dynakube_config(&request.dynakube, &config)?;
                let (mapped, upper, work) = (app.mapped(), app.upper(), app.work());
                for dir in [&mapped, &upper, &work] {
                    ensure_dir(dir).map_err(|e| io_error("create", dir, e))?;
                }
                records::write_unsynced(&app.record(), &record)?;
                crash_point("publish-record");
                let wanted = [config_dir.clone(), version_dir.clone()];
                let current: Vec<_> = table.at(&mapped).collect();
                let reuse = current.len() == 1 && current[0].overlay_lower_dirs() == wanted;
                if !reuse {
                    self.unmount_overlays(table, &mapped)?;
                    mount::overlay(
                        &rules::overlay_options(&config_dir, &version_dir, &upper, &work),
                        &mapped,
                    )?;
                    self.metrics.version_mounted(&version);
                }
                crash_point("publish-overlay");
                if let Err(err) = mount::bind_mode(&mapped, target, request.readonly) {
                    if let Err(undo) = mount::unmount(&mapped) {
                        tracing::warn!(%undo, "cannot undo the overlay after the failed bind");
                    } else {
                        self.metrics.version_unmounted(&version);
                    }
                    return Err(err.into());
                }
                crash_point("publish-bind");
                tracing::debug!(volume = %request.volume_id, %version, %config, "published");
                Ok(Published::Mounted)
            }
        }
    }

    /// Unmounts whatever `table` shows on a volume's `mapped` (newest first), counting the versions down.
    fn unmount_overlays(&self, table: &MountTable, mapped: &Path) -> Result<(), PublishError> {
        let overlays: Vec<_> = table.at(mapped).collect();
        for overlay in overlays.iter().rev() {
            mount::unmount(mapped)?;
            if let Some(version) =
                rules::version_of_overlay(&overlay.overlay_lower_dirs(), &self.layout.codemodules())
            {
                self.metrics.version_unmounted(&version);
            }
        }
        Ok(())
    }

    fn publish_host(&self, request: &PublishRequest, target: &Path) -> Result<Published, PublishError> {
        let dynakube: Option<DynakubeRecord> =
            records::read(&self.layout.dynakube_record(&request.dynakube)?)?;
        let Some(dynakube) = dynakube.filter(|dk| !dk.tenant_uuid.is_empty()) else {
            return Err(PublishError::Unavailable(format!(
                "the CSI provisioner has not set up DynaKube {:?} on this node yet (no tenant in dynakube.json); \
                 the kubelet retries",
                request.dynakube
            )));
        };
        let storage = self.layout.host_storage(&dynakube.tenant_uuid)?;
        ensure_dir(&storage).map_err(|e| io_error("create", &storage, e))?;
        records::write_unsynced(
            &self.layout.host_mount_record(&request.volume_id)?,
            &HostVolumeRecord {
                dynakube: request.dynakube.clone(),
                tenant_uuid: dynakube.tenant_uuid,
            },
        )?;
        crash_point("publish-record");
        mount::bind_mode(&storage, target, request.readonly)?;
        crash_point("publish-bind");
        Ok(Published::Mounted)
    }

    /// `NodeUnpublishVolume`: unmounts the target and the volume's overlay, removes its record and the
    /// target directory. A volume this driver does not know gets a best-effort unmount of the target.
    /// The volume's upper dir stays for the provisioner's garbage collection.
    pub fn unpublish(&self, volume_id: &str, target_path: &str) -> Result<(), PublishError> {
        let target = match rules::volume_and_target(volume_id, target_path) {
            Ok(target) => target,
            Err(err) => {
                self.metrics.unpublish("unknown", "invalid");
                return Err(PublishError::InvalidArgument(err.0));
            }
        };
        let _guard = self.lock(volume_id);
        let app = self.layout.app_mount(volume_id)?;
        let host_record = self.layout.host_mount_record(volume_id)?;
        let mode = if app.dir().exists() {
            "app"
        } else if host_record.exists() {
            "host"
        } else {
            "unknown"
        };
        let result = self.unpublish_locked(&target, &app.mapped(), &app.record(), &host_record);
        self.metrics
            .unpublish(mode, if result.is_ok() { "unmounted" } else { "error" });
        result
    }

    fn unpublish_locked(
        &self,
        target: &Path,
        mapped: &Path,
        app_record: &Path,
        host_record: &Path,
    ) -> Result<(), PublishError> {
        let target = canonical(target);
        let table = mounts::read()?;
        for _ in table.at(&target) {
            mount::unmount(&target)?;
        }
        crash_point("unpublish-target");
        self.unmount_overlays(&table, mapped)?;
        crash_point("unpublish-mapped");
        records::remove(app_record)?;
        records::remove(host_record)?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::debug!(%err, target = %target.display(), "target directory not removed"),
        }
        Ok(())
    }
}

/// Creates `dir` with one `mkdir` when its parent exists (the usual case on the publish path), else with
/// its parents.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir),
        Err(err) => Err(err),
    }
}

/// The path as the mount table shows it (symlinks resolved), or as given when it does not exist.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Kills this process with SIGKILL when [`CRASH_AT_ENV`] names `step`: the crash tests' way to stop the
/// server between two steps of publish or unpublish exactly as `kill -9` would (no destructors, no
/// cleanup). Steps: `publish-record`, `publish-overlay`, `publish-bind`, `unpublish-target`,
/// `unpublish-mapped`, and the provisioner's GC after the first entry of a deletion,
/// `gc-remove-<reason>` (`unused_version`, `unused_config_layer`, `unmounted_volume`, ...). Unset in production; reading it costs one lookup in a map built once.
pub fn crash_point(step: &str) {
    static CRASH_AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = CRASH_AT.get_or_init(|| std::env::var(CRASH_AT_ENV).ok());
    if at.as_deref() == Some(step) {
        tracing::error!(step, "{CRASH_AT_ENV}: killing this process");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
