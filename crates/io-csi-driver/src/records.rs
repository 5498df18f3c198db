//! The data directory's records (`pure_csi::layout`): read as JSON, written atomically so that a crash at
//! any point leaves either the old or the new record, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A record that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file system refused.
    #[error("cannot {action} {path}: {source}; check that the CSI data directory is writable and has space")]
    Io {
        /// "read", "write", ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not the record it should be (e.g. written by hand).
    #[error("{path} is not a valid record ({source}); remove it and the driver writes it again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// Reads the record at `path`; `Ok(None)` when there is none.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RecordError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecordError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RecordError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Writes `record` to `path` atomically (creating the parent directories).
pub fn write<T: Serialize>(path: &Path, record: &T) -> Result<(), RecordError> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| RecordError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes).map_err(|source| RecordError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

/// Like [`write`], without syncing to disk: atomic for readers and against the writer's crash (`kill -9`:
/// the page cache survives the process), not against the node's power loss. For records that a reboot
/// makes moot anyway, on the latency-critical publish path: a volume's record (every mount is gone after a
/// reboot, and a torn volume record is read as none).
pub fn write_unsynced<T: Serialize>(path: &Path, record: &T) -> Result<(), RecordError> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| RecordError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    write_atomic_with(path, &bytes, false).map_err(|source| RecordError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced before the rename, so
/// that readers and a crash see either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, true)
}

fn write_atomic_with(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = parent.join(format!(".{name}.{}.partial", std::process::id()));
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&partial, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

/// Removes the record at `path`; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), RecordError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use pure_csi::layout::{DynakubeRecord, Layout};

    use super::*;

    #[test]
    fn write_then_read_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let path = layout.dynakube_record("dk").unwrap();
        assert_eq!(read::<DynakubeRecord>(&path).unwrap(), None);
        let record = DynakubeRecord {
            tenant_uuid: "abc".into(),
            version: Some("1.2.3.4-5".into()),
            config: None,
            max_failed_mount_attempts: 3,
        };
        write(&path, &record).unwrap();
        assert_eq!(read::<DynakubeRecord>(&path).unwrap(), Some(record));
        // No temporary file is left next to it.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read::<DynakubeRecord>(&path).unwrap(), None);
    }

    #[test]
    fn an_unsynced_write_is_atomic_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = Layout::new(dir.path()).app_mount("csi-1").unwrap().record();
        let record = pure_csi::layout::AppVolumeRecord {
            dynakube: "dk".into(),
            failed_attempts: 2,
            ..Default::default()
        };
        write_unsynced(&path, &record).unwrap();
        assert_eq!(
            read::<pure_csi::layout::AppVolumeRecord>(&path).unwrap(),
            Some(record)
        );
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_record_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynakube.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = read::<DynakubeRecord>(&path).unwrap_err();
        assert!(err.to_string().contains("remove it"), "{err}");
    }
}
