//! OneAgent installer archives: generated once per request shape to a file in a cache directory, then
//! streamed from there. An archive is never held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest as _, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::lock;
use crate::model::HostileArchive;

/// Buffer size for writing and hashing archives.
const BUFFER: usize = 1 << 20;

/// What distinguishes one archive from another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ArchiveKey {
    pub version: String,
    pub os: String,
    pub installer_type: String,
    pub arch: String,
    pub flavor: String,
    pub technologies: Vec<String>,
    pub payload_bytes: u64,
    pub agent_library: Option<PathBuf>,
}

/// A generated archive.
#[derive(Debug)]
pub(crate) struct Archive {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// The hex SHA-256 of the whole file.
    pub sha256: String,
}

/// Why an archive could not be generated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    /// Writing or reading the file failed.
    #[error("cannot write the archive {path}: {source}; check the space in the temporary directory")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The zip writer failed.
    #[error("cannot build the archive {path}: {source}")]
    Zip {
        /// The file.
        path: PathBuf,
        /// The zip error.
        source: zip::result::ZipError,
    },
    /// The cache directory is gone (the tenant shut down).
    #[error("the archive cache was removed because the fake tenant is shutting down")]
    Closed,
    /// Generation failed (the message of one of the other variants, shared by every waiting request).
    #[error("{0}")]
    Generate(String),
}

/// A generation in progress or done, awaited by every request for its key. It runs in its own blocking
/// task, so a client that goes away while waiting neither stops it nor makes the next request start a
/// second one.
type Pending = Shared<BoxFuture<'static, Result<Arc<Archive>, String>>>;

/// The archives generated so far, in a temporary directory removed by [`ArchiveCache::close`] or on drop.
#[derive(Debug)]
pub(crate) struct ArchiveCache {
    dir: Mutex<Option<tempfile::TempDir>>,
    path: PathBuf,
    pending: Mutex<HashMap<ArchiveKey, Pending>>,
}

impl ArchiveCache {
    /// Creates the cache directory under the system's temporary directory.
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fake-tenant-archives-")
            .tempdir()?;
        Ok(Self {
            path: dir.path().to_owned(),
            dir: Mutex::new(Some(dir)),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The cache directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive for `key`, generated on first use; concurrent requests wait for that one generation.
    /// A failed generation is forgotten, so the next request tries again.
    pub async fn get(&self, key: &ArchiveKey) -> Result<Arc<Archive>, ArchiveError> {
        let pending = {
            if lock(&self.dir).is_none() {
                return Err(ArchiveError::Closed);
            }
            let mut pending = lock(&self.pending);
            pending
                .entry(key.clone())
                .or_insert_with(|| self.start_generation(key))
                .clone()
        };
        match pending.clone().await {
            Ok(archive) => Ok(archive),
            Err(message) => {
                let mut all = lock(&self.pending);
                if all.get(key).is_some_and(|current| current.ptr_eq(&pending)) {
                    all.remove(key);
                }
                Err(ArchiveError::Generate(message))
            }
        }
    }

    fn start_generation(&self, key: &ArchiveKey) -> Pending {
        let (dir, key) = (self.path.clone(), key.clone());
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let archive = generate(&dir, &key)?;
            tracing::debug!(
                path = %archive.path.display(),
                bytes = archive.len,
                elapsed = ?started.elapsed(),
                "generated an archive"
            );
            Ok::<_, ArchiveError>(archive)
        });
        async move {
            match task.await {
                Ok(Ok(archive)) => Ok(Arc::new(archive)),
                Ok(Err(err)) => Err(err.to_string()),
                Err(err) => Err(format!("the generating task failed: {err}")),
            }
        }
        .boxed()
        .shared()
    }

    /// Removes the cache directory and everything in it.
    pub fn close(&self) {
        if let Some(dir) = lock(&self.dir).take()
            && let Err(err) = dir.close()
        {
            tracing::warn!(path = %self.path.display(), %err, "cannot remove the archive cache");
        }
    }
}

/// Deterministic pseudo-random bytes derived from a seed string: xorshift64* seeded by SHA-256 of it.
pub(crate) struct Payload {
    state: u64,
}

impl Payload {
    /// The generator for a version.
    pub fn new(seed: &str) -> Self {
        let digest = Sha256::digest(seed.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let state = u64::from_le_bytes(first);
        Self {
            state: if state == 0 { 0x9E37_79B9_7F4A_7C15 } else { state },
        }
    }

    /// Fills `buf` with the next bytes of the sequence (whole 8-byte words; a partial last word is cut).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

fn generate(dir: &Path, key: &ArchiveKey) -> Result<Archive, ArchiveError> {
    let name = hex::encode(&Sha256::digest(format!("{key:?}").as_bytes())[..16]);
    let path = dir.join(format!("{name}.zip"));
    let partial = dir.join(format!("{name}.zip.partial"));
    let io_error = |source| ArchiveError::Io {
        path: partial.clone(),
        source,
    };
    let zip_error = |source| ArchiveError::Zip {
        path: partial.clone(),
        source,
    };

    let file = File::create(&partial).map_err(io_error)?;
    let mut zip = ZipWriter::new(BufWriter::with_capacity(BUFFER, file));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    let executable = options.unix_permissions(0o755);
    let version = &key.version;

    let manifest = serde_json::json!({
        "version": version,
        "os": key.os,
        "type": key.installer_type,
        "arch": key.arch,
        "flavor": key.flavor,
        "technologies": key.technologies,
    });
    zip.start_file("manifest.json", options).map_err(zip_error)?;
    zip.write_all(manifest.to_string().as_bytes()).map_err(io_error)?;
    zip.add_directory(format!("agent/bin/{version}/"), executable)
        .map_err(zip_error)?;
    zip.start_file(format!("agent/bin/{version}/oneagentutil"), executable)
        .map_err(zip_error)?;
    zip.write_all(format!("#!/bin/sh\necho \"fake oneagentutil {version}\"\n").as_bytes())
        .map_err(io_error)?;
    zip.start_file("agent/conf/ruxitagentproc.conf", options)
        .map_err(zip_error)?;
    zip.write_all(format!("[general]\nversion {version}\n").as_bytes())
        .map_err(io_error)?;
    if let Some(library) = &key.agent_library {
        let library_error = |source| ArchiveError::Io {
            path: library.clone(),
            source,
        };
        let mut file = File::open(library).map_err(library_error)?;
        zip.start_file("agent/lib64/liboneagentproc.so", executable)
            .map_err(zip_error)?;
        io::copy(&mut file, &mut zip).map_err(library_error)?;
        zip.start_file("agent/lib64/payload.bin", options)
            .map_err(zip_error)?;
    } else {
        zip.start_file("agent/lib64/liboneagentproc.so", executable)
            .map_err(zip_error)?;
    }
    let mut payload = Payload::new(version);
    let mut buf = vec![0u8; BUFFER];
    let mut left = key.payload_bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(BUFFER, |left| left.min(BUFFER));
        payload.fill(&mut buf[..n]);
        zip.write_all(&buf[..n]).map_err(io_error)?;
        left -= n as u64;
    }
    let writer = zip.finish().map_err(zip_error)?;
    writer
        .into_inner()
        .map_err(|e| io_error(e.into_error()))?
        .sync_all()
        .map_err(io_error)?;

    // The zip writer seeks back to fill in sizes and checksums, so the digest is taken from the finished
    // file, again with one buffer.
    let mut file = File::open(&partial).map_err(io_error)?;
    let (mut hasher, mut len) = (Sha256::new(), 0u64);
    loop {
        let n = file.read(&mut buf).map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    std::fs::rename(&partial, &path).map_err(io_error)?;
    Ok(Archive {
        path,
        len,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// A hostile archive (see [`HostileArchive`]): a small agent tree for `version`, then the bad entry.
pub(crate) fn hostile(kind: HostileArchive, version: &str) -> Result<Vec<u8>, zip::result::ZipError> {
    let mut zip = ZipWriter::new(io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    zip.add_directory(format!("agent/bin/{version}/"), options.unix_permissions(0o755))?;
    zip.start_file(
        format!("agent/bin/{version}/oneagentutil"),
        options.unix_permissions(0o755),
    )?;
    zip.write_all(b"#!/bin/sh\n")?;
    zip.start_file("agent/conf/ruxitagentproc.conf", options)?;
    zip.write_all(b"[general]\n")?;
    zip.start_file("agent/lib64/liboneagentproc.so", options)?;
    zip.write_all(&[0x7f, b'E', b'L', b'F'])?;
    match kind {
        HostileArchive::ZipSlip | HostileArchive::AbsolutePath | HostileArchive::Duplicate => {
            zip.start_file(kind.bad_entry(), options)?;
            zip.write_all(b"written outside the target by a hostile archive\n")?;
        }
        HostileArchive::SymlinkEscape => {
            zip.add_symlink(kind.bad_entry(), "../../../../../../../../../etc", options)?;
        }
        HostileArchive::Bomb => {
            zip.start_file(
                kind.bad_entry(),
                options.compression_method(CompressionMethod::Deflated),
            )?;
            let zeros = vec![0u8; BUFFER];
            for _ in 0..64 {
                zip.write_all(&zeros)?;
            }
        }
    }
    Ok(zip.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_version_dependent() {
        let (mut a, mut b, mut c) = ([0u8; 37], [0u8; 37], [0u8; 37]);
        Payload::new("1.2.3").fill(&mut a);
        Payload::new("1.2.3").fill(&mut b);
        Payload::new("1.2.4").fill(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().any(|&x| x != 0));
    }

    #[test]
    fn payload_does_not_depend_on_chunking() {
        let mut whole = [0u8; 64];
        Payload::new("v").fill(&mut whole);
        let mut parts = [0u8; 64];
        let mut generator = Payload::new("v");
        generator.fill(&mut parts[..24]);
        generator.fill(&mut parts[24..]);
        assert_eq!(whole, parts);
    }
}
