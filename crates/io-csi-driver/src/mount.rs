//! The mount system calls of publish and unpublish (overlay, bind, unmount), with errors that name the
//! paths.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// A mount or unmount the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {target}: {source}{hint}")]
pub struct MountError {
    /// "mount the overlay on", "bind-mount onto", "unmount".
    pub action: &'static str,
    /// The mount point.
    pub target: PathBuf,
    /// The error.
    pub source: std::io::Error,
    hint: &'static str,
}

fn error(action: &'static str, target: &Path, source: rustix::io::Errno) -> MountError {
    let hint = match source {
        rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => {
            "; the CSI server must run privileged (CAP_SYS_ADMIN) with the data and pods directories mounted \
             Bidirectional"
        }
        _ => "",
    };
    MountError {
        action,
        target: target.to_owned(),
        source: source.into(),
        hint,
    }
}

/// Mounts an overlay on `target` with `options` (`lowerdir=..,upperdir=..,workdir=..`).
pub fn overlay(options: &str, target: &Path) -> Result<(), MountError> {
    let data = CString::new(options).map_err(|_| MountError {
        action: "mount the overlay on",
        target: target.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the options"),
        hint: "",
    })?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), data.as_c_str())
        .map_err(|errno| error("mount the overlay on", target, errno))
}

/// Bind-mounts `source` onto `target`.
pub fn bind(source: &Path, target: &Path) -> Result<(), MountError> {
    rustix::mount::mount_bind(source, target).map_err(|errno| error("bind-mount onto", target, errno))
}

/// Bind-mounts `source` onto `target` read-only: a bind mount takes `MS_RDONLY` only on a remount of
/// itself.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), MountError> {
    bind(source, target)?;
    rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "").map_err(|errno| {
        // Never leave a writable mount where a read-only one was asked for.
        let _ = rustix::mount::unmount(target, UnmountFlags::empty());
        error("remount read-only", target, errno)
    })
}

/// Binds `source` onto `target`, read-only when `read_only`.
pub fn bind_mode(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    if read_only {
        bind_read_only(source, target)
    } else {
        bind(source, target)
    }
}

/// Unmounts `target`. When the kernel answers `EBUSY`, detaches it lazily instead: by the time the kubelet
/// unpublishes, the pod's containers are gone, so what still holds the mount is a stray open file (a
/// `kubectl exec`-ed shell, a log shipper) whose owner would keep the pod stuck in Terminating forever;
/// detaching removes the mount from the tree now and frees it when the last reference closes.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            tracing::warn!(target = %target.display(), "mount busy; detaching it lazily");
            rustix::mount::unmount(target, UnmountFlags::DETACH)
                .map_err(|errno| error("unmount", target, errno))
        }
        Err(errno) => Err(error("unmount", target, errno)),
    }
}
