//! The fake tenant's mutable state, shared by the handlers and the [`crate::FakeTenant`] handle.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::archive::ArchiveCache;
use crate::images::{ImageError, ImageInfo, ImageStore};
use crate::lock;
use crate::model::{Endpoint, Fault, Host, RequestRecord, TenantConfig, TokenConfig};
use crate::settings::SettingsStore;

/// Records kept in the request log; older ones are dropped (the per-endpoint counts stay exact).
pub(crate) const MAX_LOGGED_REQUESTS: usize = 100_000;

#[derive(Debug)]
struct ActiveFault {
    fault: Fault,
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
struct RequestLog {
    records: VecDeque<RequestRecord>,
    counts: HashMap<Endpoint, usize>,
}

/// Everything the handlers read and change.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration; its `versions` is only the initial list, see [`Shared::versions`].
    pub config: TenantConfig,
    versions: Mutex<Vec<String>>,
    faults: Mutex<HashMap<Endpoint, ActiveFault>>,
    log: Mutex<RequestLog>,
    hosts: Mutex<Vec<Host>>,
    events: Mutex<Vec<serde_json::Value>>,
    next_event_id: AtomicU64,
    /// Settings objects and the entities they created.
    pub settings: Mutex<SettingsStore>,
    /// The generated archives.
    pub archives: ArchiveCache,
    /// The registry's images.
    pub images: Arc<ImageStore>,
}

impl Shared {
    /// State for a checked configuration.
    pub fn new(config: TenantConfig, archives: ArchiveCache) -> Self {
        Self {
            versions: Mutex::new(config.versions.clone()),
            config,
            faults: Mutex::new(HashMap::new()),
            log: Mutex::new(RequestLog::default()),
            hosts: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            next_event_id: AtomicU64::new(1),
            settings: Mutex::default(),
            archives,
            images: Arc::default(),
        }
    }

    /// Loads an image into the registry (see [`ImageStore::load`]); archives are unpacked into the
    /// archive cache, so shutdown removes them.
    pub async fn load_image(&self, reference: String, source: PathBuf) -> Result<ImageInfo, ImageError> {
        let images = self.images.clone();
        let extract_dir = self.archives.path().join("images");
        let path = source.clone();
        tokio::task::spawn_blocking(move || images.load(&reference, &path, &extract_dir))
            .await
            .unwrap_or_else(|err| {
                Err(ImageError::Io {
                    path: source,
                    source: std::io::Error::other(format!("the loading task failed: {err}")),
                })
            })
    }

    /// The configured token with this value.
    pub fn token(&self, value: &str) -> Option<&TokenConfig> {
        self.config.tokens.iter().find(|t| t.value == value)
    }

    /// All versions, oldest first.
    pub fn versions(&self) -> Vec<String> {
        lock(&self.versions).clone()
    }

    /// The latest version.
    pub fn latest_version(&self) -> Option<String> {
        lock(&self.versions).last().cloned()
    }

    /// Makes `version` the latest (moving it to the end when it is already known).
    pub fn publish_version(&self, version: &str) {
        let mut versions = lock(&self.versions);
        versions.retain(|v| v != version);
        versions.push(version.to_owned());
    }

    /// Installs a fault for `endpoint`, replacing its previous one. `Some(0)` removes it.
    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault, count: Option<u32>) {
        let mut faults = lock(&self.faults);
        if count == Some(0) {
            faults.remove(&endpoint);
        } else {
            faults.insert(
                endpoint,
                ActiveFault {
                    fault,
                    remaining: count,
                },
            );
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Takes one use of the fault of `endpoint` when it is of the requested family: download-only faults
    /// when `download_body` is set, the others when it is not.
    pub fn take_fault(&self, endpoint: Endpoint, download_body: bool) -> Option<Fault> {
        if endpoint == Endpoint::Admin {
            return None;
        }
        let mut faults = lock(&self.faults);
        let active = faults.get_mut(&endpoint)?;
        if active.fault.is_download_only() != download_body {
            return None;
        }
        let fault = active.fault.clone();
        if let Some(remaining) = &mut active.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                faults.remove(&endpoint);
            }
        }
        Some(fault)
    }

    /// Appends to the request log.
    pub fn record(&self, record: RequestRecord) {
        let mut log = lock(&self.log);
        *log.counts.entry(record.endpoint).or_default() += 1;
        if log.records.len() >= MAX_LOGGED_REQUESTS {
            log.records.pop_front();
        }
        log.records.push_back(record);
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).records.iter().cloned().collect()
    }

    /// Requests answered for `endpoint` since the log was last cleared.
    pub fn request_count(&self, endpoint: Endpoint) -> usize {
        lock(&self.log).counts.get(&endpoint).copied().unwrap_or(0)
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        *lock(&self.log) = RequestLog::default();
    }

    /// Adds (or, with the same entity id, replaces) a host.
    pub fn add_host(&self, host: Host) {
        let mut hosts = lock(&self.hosts);
        hosts.retain(|h| h.entity_id != host.entity_id);
        hosts.push(host);
    }

    /// The hosts.
    pub fn hosts(&self) -> Vec<Host> {
        lock(&self.hosts).clone()
    }

    /// Stores an event body and returns its id.
    pub fn store_event(&self, event: serde_json::Value) -> u64 {
        let id = self.next_event_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.events).push(event);
        id
    }

    /// The stored event bodies, oldest first.
    pub fn events(&self) -> Vec<serde_json::Value> {
        lock(&self.events).clone()
    }
}
