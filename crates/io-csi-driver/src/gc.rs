//! Garbage collection on the node: lists the data directory, asks `pure_csi::gc` for the plan, and
//! deletes each planned directory only if a mount table read right before that deletion still allows it.
//! A directory is first renamed into `staging/` (one atomic step) and deleted there: a kill during the
//! deletion leaves a staging leftover, which nothing reads as installed and the next run removes, never a
//! half-deleted version, layer or volume directory under its own name.
//! It runs on its own interval in the provisioner (never inside a reconcile); the provisioner keeps
//! installs from racing it (see `provisioner`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use pure_csi::gc::{DynakubeDir, Entry, Listing, Policy, Reason, Removal};
use pure_csi::layout::{DynakubeRecord, Layout};

use crate::{mounts, records};

/// The GC's counters.
#[derive(Debug, Clone, Default)]
pub struct GcMetrics {
    /// Runs (`dynatrace_csi_driver_gc_runs_total`).
    pub runs: Counter,
    /// Directories removed (`dynatrace_csi_driver_gc_folders_removed_total`).
    pub folders_removed: Counter,
    /// Bytes of the files removed (`dynatrace_csi_driver_gc_reclaimed_bytes_total`).
    pub reclaimed_bytes: Counter,
}

impl GcMetrics {
    /// Counters registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "dynatrace_csi_driver_gc_runs",
            "Garbage-collection runs of the CSI provisioner",
            metrics.runs.clone(),
        );
        registry.register(
            "dynatrace_csi_driver_gc_folders_removed",
            "Directories the CSI garbage collection removed",
            metrics.folders_removed.clone(),
        );
        registry.register(
            "dynatrace_csi_driver_gc_reclaimed_bytes",
            "Bytes of files the CSI garbage collection removed",
            metrics.reclaimed_bytes.clone(),
        );
        metrics
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// What was removed.
    pub removed: Vec<Removal>,
    /// Planned removals a fresh mount table stopped.
    pub kept_in_use: Vec<Removal>,
    /// Bytes of the removed files.
    pub reclaimed_bytes: u64,
}

/// Why a run could not even plan.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The mount table cannot be read: nothing is deleted without it.
    #[error("garbage collection skipped: {0}")]
    Mounts(#[from] mounts::MountTableError),
    /// The data directory cannot be listed.
    #[error("garbage collection skipped: cannot list {path}: {source}; check the data directory mount")]
    List {
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One run (blocking: call it from `spawn_blocking`). A removal that fails is logged and the run goes on.
/// `staging_active` is asked again right before a staging entry is removed: an install registers its
/// staging name before it creates the directory, so an entry listed here and not active at deletion time
/// is a leftover.
pub fn run_once(
    layout: &Layout,
    policy: &Policy,
    staging_active: &dyn Fn(&str) -> bool,
    metrics: &GcMetrics,
) -> Result<GcReport, GcError> {
    metrics.runs.inc();
    // The mount table names real paths: a data dir given through a symlink or relatively would make
    // every mounted version look unmounted.
    let layout = &match std::fs::canonicalize(layout.root()) {
        Ok(root) => Layout::new(root),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(GcReport::default()),
        Err(source) => {
            return Err(GcError::List {
                path: layout.root().to_owned(),
                source,
            });
        }
    };
    let listing = listing(layout)?;
    let plan = pure_csi::gc::plan(layout, &listing, &mounts::read()?, policy);
    let mut report = GcReport::default();
    for (index, removal) in plan.into_iter().enumerate() {
        if removal.reason == Reason::StaleStaging
            && removal
                .path
                .file_name()
                .is_some_and(|name| staging_active(&name.to_string_lossy()))
        {
            continue;
        }
        // The truth at deletion time, not the one the plan saw.
        if !removal.still_safe(&mounts::read()?) {
            tracing::info!(path = %removal.path.display(), "kept: mounted since the plan was made");
            report.kept_in_use.push(removal);
            continue;
        }
        let doomed = if removal.reason == Reason::StaleStaging {
            removal.path.clone()
        } else {
            match move_to_staging(layout, &removal.path, index) {
                Ok(doomed) => doomed,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(
                        path = %removal.path.display(),
                        %error,
                        "cannot move into staging/ for removal (it must be on the data directory's \
                         filesystem); trying again at the next run"
                    );
                    continue;
                }
            }
        };
        let bytes = size(&doomed);
        match remove_tree(&doomed, &format!("gc-remove-{}", removal.reason.label())) {
            Ok(()) => {
                tracing::info!(
                    path = %removal.path.display(),
                    removed_as = %doomed.display(),
                    reason = removal.reason.label(),
                    bytes,
                    "removed"
                );
                metrics.folders_removed.inc();
                metrics.reclaimed_bytes.inc_by(bytes);
                report.reclaimed_bytes += bytes;
                report.removed.push(removal);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                path = %removal.path.display(),
                removed_as = %doomed.display(),
                %error,
                "cannot remove; the next run removes what is left"
            ),
        }
    }
    Ok(report)
}

/// Renames `path` to a new name under `staging/` and returns that name. The name is not one an install
/// registers, and the rename never replaces an existing entry.
fn move_to_staging(layout: &Layout, path: &Path, index: usize) -> std::io::Result<PathBuf> {
    let staging = layout.staging();
    std::fs::create_dir_all(&staging)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let doomed = staging.join(format!("gc-{}-{nanos}-{index}", std::process::id()));
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        path,
        rustix::fs::CWD,
        &doomed,
        rustix::fs::RenameFlags::NOREPLACE,
    )?;
    Ok(doomed)
}

/// Removes `dir` and everything below it, one child at a time: the crash tests stop a deletion half
/// way with `crash_step` (see [`crate::publish::crash_point`]).
fn remove_tree(dir: &Path, crash_step: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        crate::publish::crash_point(crash_step);
    }
    std::fs::remove_dir(dir)
}

/// The data directory's entries with their ages.
pub fn listing(layout: &Layout) -> Result<Listing, GcError> {
    let mut dynakubes = BTreeMap::new();
    for entry in entries(&layout.dynakubes())? {
        let dir = layout.dynakubes().join(&entry.name);
        let record = match records::read::<DynakubeRecord>(&dir.join("dynakube.json")) {
            Ok(record) => record,
            Err(error) => {
                // An unreadable record still counts as a record: nothing of its DynaKube is collected.
                tracing::warn!(%error, "cannot read a DynaKube record");
                Some(DynakubeRecord::default())
            }
        };
        let configs = entries(&dir.join("config"))?;
        dynakubes.insert(entry.name, DynakubeDir { record, configs });
    }
    Ok(Listing {
        codemodules: entries(&layout.codemodules())?,
        staging: entries(&layout.staging())?,
        dynakubes,
        app_mounts: entries(&layout.app_mounts())?,
    })
}

/// The directories in `dir` (none when it does not exist), with the time since their modification.
fn entries(dir: &Path) -> Result<Vec<Entry>, GcError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(GcError::List {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let now = SystemTime::now();
    Ok(read
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_dir().then(|| {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or(Duration::ZERO);
                Entry::new(entry.file_name().to_string_lossy(), age)
            })
        })
        .collect())
}

/// Bytes of the regular files at or below `path` (links not followed).
pub fn size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|read| read.filter_map(Result::ok).map(|e| size(&e.path())).sum())
        .unwrap_or(0)
}
