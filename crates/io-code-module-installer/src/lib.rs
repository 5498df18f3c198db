//! Installs the OneAgent code module into a directory: downloads the PaaS zip from the environment (latest
//! or a version) or a plain URL (or, in [`image`], pulls a code-modules image from its registry), and
//! unpacks it **while it streams**, in constant memory (one chunk channel, one copy buffer, the central
//! directory), never holding the archive in memory or on disk.
//!
//! Safety: every entry passes [`pure_code_module::archive`]'s rules (no absolute paths, no `..`, no
//! duplicates, symlinks that stay inside even through each other, size, count and ratio limits); files are
//! created with `O_EXCL | O_NOFOLLOW`, and symlinks are created only after every file is written, so no
//! write passes through a link. The archive goes into a hidden staging directory inside the target and its
//! top-level entries are renamed into place only when everything (unpacking, length and checksum, the
//! `agent/bin/current` link, the configuration merge) succeeded; on any error the staging directory is
//! removed, so a failed install leaves no partial tree.
//!
//! The entries are read from their local headers ([`pure_code_module::archive::LocalHeader`]) as they
//! arrive: stored data by its size, deflated data through `flate2`'s decoder, which ends by itself, so
//! entries whose CRC and sizes follow in a data descriptor (what streaming zip writers such as Java's
//! produce) are read too; every entry's size and CRC-32 are checked. (`zip`'s `read_zipfile_from_stream`
//! refuses data descriptors; `async_zip`'s stream reader handles them but is async and would be a second
//! zip implementation in the tree.) Stored entries with a data descriptor cannot be delimited without the
//! central directory and are refused, naming the entry. The zip format keeps file types (symlink or not)
//! and permissions in the central directory at the end of the archive; a streaming reader sees them last.
//! Entries are therefore written as files first, and the central directory (parsed by
//! [`pure_code_module::archive::parse_central_directory`]) then turns the symlink entries into links and
//! sets the executable bits.

pub mod image;
mod unpack;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use io_tenant_client::{DownloadFailure, DownloadRequest, TenantClient, TenantError};
use pure_code_module::archive::{EntryError, Limits};
use pure_code_module::proc_conf::{self, Property};

pub use unpack::Unpacked;

/// Where the code module comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The environment's installer endpoint (latest when the request has no version).
    Tenant(DownloadRequest),
    /// A plain GET of this URL without the token (`INSTALLER_URL`).
    Url(String),
}

/// How to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Limits against bombs.
    pub limits: Limits,
    /// Attempts for transient failures (5xx, throttling, broken or stalled connections); each starts over.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Process-module properties to merge into `agent/conf/ruxitagentproc.conf`; `None` leaves it alone.
    pub process_module_config: Option<Vec<Property>>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            attempts: 3,
            backoff: Duration::from_secs(1),
            process_module_config: None,
        }
    }
}

/// A finished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The agent version directory under `agent/bin` (what `agent/bin/current` points to).
    pub version: String,
    /// Bytes downloaded.
    pub archive_bytes: u64,
    /// The archive's sha256, hex.
    pub sha256: String,
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes unpacked.
    pub unpacked_bytes: u64,
    /// Attempts it took.
    pub attempts: u32,
}

/// Why an install failed. Nothing of it is left in the target.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The download failed (the environment's answer, the connection, or the bytes).
    #[error("cannot download the code module: {0}")]
    Download(#[from] TenantError),
    /// The download broke off or did not match its announced length or checksum.
    #[error(
        "the code module download from {source_name} failed: {failure}; nothing was installed, try again"
    )]
    Transfer {
        /// The environment or the URL.
        source_name: String,
        /// What happened.
        failure: DownloadFailure,
    },
    /// An entry was refused.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The archive is not a zip this installer can read as it streams.
    #[error(
        "the code module archive is not usable: {0}; check the installer URL or the environment's download"
    )]
    Archive(String),
    /// The tree lacks what an agent needs.
    #[error("the code module is incomplete: {0}")]
    Incomplete(String),
    /// Writing to the target failed.
    #[error("cannot write {path}: {source}; check that the volume is writable and has space")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl InstallError {
    /// Whether starting over may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Download(error) => error.is_transient(),
            Self::Transfer { failure, .. } => !matches!(failure, DownloadFailure::ChecksumMismatch { .. }),
            _ => false,
        }
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Prefix of the hidden staging directories inside the target.
pub const STAGING_PREFIX: &str = ".install-";

/// Downloads the code module from `source` through `client` and installs it into `target` (created if
/// needed), retrying transient failures from the start. Entries already in `target` with the names of the
/// archive's top-level entries are replaced; others are left alone.
pub async fn install(
    client: &TenantClient,
    source: &Source,
    target: &Path,
    options: &InstallOptions,
) -> Result<Installed, InstallError> {
    tokio::fs::create_dir_all(target)
        .await
        .map_err(io_error(target))?;
    remove_stale_staging(target).await;
    let mut attempt = 1;
    loop {
        match install_once(client, source, target, options).await {
            Ok(mut installed) => {
                installed.attempts = attempt;
                return Ok(installed);
            }
            Err(error) if error.is_transient() && attempt < options.attempts => {
                let wait = options.backoff * 2u32.saturating_pow(attempt - 1);
                tracing::warn!(%error, attempt, ?wait, "code module install failed; trying again");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn remove_stale_staging(target: &Path) {
    let Ok(mut dir) = tokio::fs::read_dir(target).await else {
        return;
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
}

async fn install_once(
    client: &TenantClient,
    source: &Source,
    target: &Path,
    options: &InstallOptions,
) -> Result<Installed, InstallError> {
    let (stream, source_name) = match source {
        Source::Tenant(request) => (
            client.agent_stream(request).await?,
            format!(
                "the environment ({})",
                request.version.as_deref().unwrap_or("latest version")
            ),
        ),
        Source::Url(url) => (client.url_stream(url).await?, url.clone()),
    };
    let staging = target.join(format!(
        "{STAGING_PREFIX}{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    tokio::fs::create_dir(&staging)
        .await
        .map_err(io_error(&staging))?;
    let result = fill_staging(stream, &staging, options, &source_name).await;
    let result = match result {
        Ok(installed) => move_into_place(&staging, target).await.map(|()| installed),
        Err(error) => Err(error),
    };
    if let Err(error) = tokio::fs::remove_dir_all(&staging).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %staging.display(), %error, "cannot remove the staging directory");
    }
    result
}

/// Channel depth between the network and the unpacking thread: with the client's chunks (up to a few
/// 10 KiB) this bounds the memory in flight.
const CHANNEL_CHUNKS: usize = 16;

async fn fill_staging(
    stream: io_tenant_client::DownloadStream,
    staging: &Path,
    options: &InstallOptions,
    source_name: &str,
) -> Result<Installed, InstallError> {
    let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
    let dir = staging.to_owned();
    let limits = options.limits;
    let total = stream.total;
    let expected = stream.expected_sha256.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        unpack::unpack(unpack::ChannelReader::new(receiver), &dir, limits)
    });
    let mut body = stream.body;
    // Feeds the unpacker until the body ends or the unpacker stops reading (it failed or finished early).
    while let Some(chunk) = body.next().await {
        let failed = chunk.is_err();
        if sender.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(sender);
    let unpacked = unpacker
        .await
        .map_err(|e| InstallError::Archive(format!("the unpacking task failed: {e}")))?;
    let unpacked = match unpacked {
        Ok(unpacked) => unpacked,
        Err(unpack::Failure::Transfer(failure)) => {
            return Err(InstallError::Transfer {
                source_name: source_name.to_owned(),
                failure,
            });
        }
        Err(unpack::Failure::Install(error)) => return Err(error),
    };
    if let Some(expected) = total
        && unpacked.archive_bytes != expected
    {
        return Err(InstallError::Transfer {
            source_name: source_name.to_owned(),
            failure: DownloadFailure::Incomplete {
                expected,
                received: unpacked.archive_bytes,
            },
        });
    }
    if let Some(expected) = expected
        && !expected.eq_ignore_ascii_case(&unpacked.sha256)
    {
        return Err(InstallError::Transfer {
            source_name: source_name.to_owned(),
            failure: DownloadFailure::ChecksumMismatch {
                expected,
                actual: unpacked.sha256.clone(),
            },
        });
    }
    let dir = staging.to_owned();
    let properties = options.process_module_config.clone();
    let version = tokio::task::spawn_blocking(move || finish_tree(&dir, properties.as_deref()))
        .await
        .map_err(|e| InstallError::Archive(format!("the finishing task failed: {e}")))??;
    Ok(Installed {
        version,
        archive_bytes: unpacked.archive_bytes,
        sha256: unpacked.sha256,
        entries: unpacked.entries,
        unpacked_bytes: unpacked.unpacked_bytes,
        attempts: 1,
    })
}

/// `agent/bin/current` → the version directory, and the configuration merge; returns the version.
pub(crate) fn finish_tree(root: &Path, properties: Option<&[Property]>) -> Result<String, InstallError> {
    let bin = root.join("agent/bin");
    let mut versions: Vec<String> = std::fs::read_dir(&bin)
        .map_err(|_| InstallError::Incomplete("it has no agent/bin directory".into()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| pure_code_module::version_dir(name))
        .collect();
    versions.sort();
    let Some(version) = versions.pop() else {
        return Err(InstallError::Incomplete(
            "agent/bin holds no version directory like 1.277.0.20230914-094321".into(),
        ));
    };
    let current = bin.join("current");
    match std::fs::symlink_metadata(&current) {
        Ok(_) => std::fs::remove_file(&current).map_err(io_error(&current))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(&current)(error)),
    }
    std::os::unix::fs::symlink(&version, &current).map_err(io_error(&current))?;
    if let Some(properties) = properties {
        merge_process_module_config(root, properties)?;
    }
    Ok(version)
}

/// Merges `properties` into `<root>/agent/conf/ruxitagentproc.conf`, starting from the pristine copy
/// `_ruxitagentproc.conf` (made from the file on the first merge). The file gets mode 0666 as everything
/// under `agent/conf`.
pub fn merge_process_module_config(root: &Path, properties: &[Property]) -> Result<(), InstallError> {
    let conf = root.join(proc_conf::CONF_FILE);
    let original = root.join(proc_conf::ORIGINAL_FILE);
    if !original.exists() {
        match std::fs::copy(&conf, &original) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(InstallError::Incomplete(format!(
                    "it has no {}",
                    proc_conf::CONF_FILE
                )));
            }
            Err(error) => return Err(io_error(&original)(error)),
        }
    }
    let text = std::fs::read_to_string(&original).map_err(io_error(&original))?;
    let merged = proc_conf::merge(&text, properties);
    // Replaced, not rewritten in place: a hard link or a reader of the old file is not affected.
    let partial = conf.with_extension("conf.partial");
    std::fs::write(&partial, merged).map_err(io_error(&partial))?;
    set_mode(&partial, 0o666)?;
    set_mode(&original, 0o666)?;
    std::fs::rename(&partial, &conf).map_err(io_error(&conf))
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

/// Renames each top-level entry of `staging` into `target`, replacing what is there under that name.
async fn move_into_place(staging: &Path, target: &Path) -> Result<(), InstallError> {
    let mut dir = tokio::fs::read_dir(staging).await.map_err(io_error(staging))?;
    while let Some(entry) = dir.next_entry().await.map_err(io_error(staging))? {
        let destination = target.join(entry.file_name());
        match tokio::fs::symlink_metadata(&destination).await {
            Ok(meta) if meta.is_dir() => tokio::fs::remove_dir_all(&destination)
                .await
                .map_err(io_error(&destination))?,
            Ok(_) => tokio::fs::remove_file(&destination)
                .await
                .map_err(io_error(&destination))?,
            Err(_) => {}
        }
        tokio::fs::rename(entry.path(), &destination)
            .await
            .map_err(io_error(&destination))?;
    }
    Ok(())
}
