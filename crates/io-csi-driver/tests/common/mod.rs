//! A kubelet-shaped harness for `csi-server`: a data directory prepared as the provisioner leaves it, the
//! requests the kubelet sends for an ephemeral inline volume, and a guard that unmounts everything below
//! the test's directory even when the test fails. Shared by `crates/io-csi-driver/tests` and the binary's
//! tests in `crates/cli/tests` (included there by path).

#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use io_csi_driver::proto::csi::{self, node_client::NodeClient};
use pure_csi::layout::{DynakubeRecord, Layout};
use sha2::Digest as _;
use tonic::transport::Channel;

/// The DynaKube of the prepared data dir.
pub const DYNAKUBE: &str = "dk";
/// Its version.
pub const VERSION: &str = "1.301.0.20250101-120000";
/// Its configuration layer.
pub const CONFIG: &str = "c0ffee";
/// Its tenant.
pub const TENANT: &str = "abc12345";
/// The agent library as the version has it.
pub const LIBRARY: &[u8] = b"\x7fELF the agent library";

/// A temporary directory whose mounts are all undone when it is dropped (innermost first, lazily if
/// busy), so a failing test leaks no mount.
pub struct MountedTempDir {
    pub dir: tempfile::TempDir,
}

impl MountedTempDir {
    pub fn new() -> Self {
        // Below the target directory's neighbour, on a real file system (overlayfs needs one for upper).
        Self {
            dir: tempfile::Builder::new().prefix("csi-test-").tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The mounts at or below this directory now.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let table = io_csi_driver::mounts::read().unwrap();
        let root = std::fs::canonicalize(self.path()).unwrap();
        table.under(&root).map(|m| m.mount_point.clone()).collect()
    }
}

impl Drop for MountedTempDir {
    fn drop(&mut self) {
        for _ in 0..8 {
            let mounts = self.mounts();
            if mounts.is_empty() {
                break;
            }
            for mount in mounts.iter().rev() {
                let _ = rustix::mount::unmount(mount, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// A data dir as the provisioner leaves it for [`DYNAKUBE`]: the record with version and configuration
/// set, the version's tree (library and its own `ruxitagentproc.conf`) and the configuration layer.
pub fn prepare_data_dir(data: &Path, max_failed_mount_attempts: u32) -> Layout {
    let layout = Layout::new(data);
    let version = layout.codemodule(VERSION).unwrap();
    std::fs::create_dir_all(version.join("agent/lib64")).unwrap();
    std::fs::create_dir_all(version.join("agent/conf")).unwrap();
    std::fs::write(version.join("agent/lib64/liboneagentproc.so"), LIBRARY).unwrap();
    std::fs::write(
        version.join("agent/conf/ruxitagentproc.conf"),
        "[general]\nfrom=version\n",
    )
    .unwrap();
    let config = layout.dynakube_config(DYNAKUBE, CONFIG).unwrap();
    std::fs::create_dir_all(config.join("agent/conf")).unwrap();
    std::fs::write(
        config.join("agent/conf/ruxitagentproc.conf"),
        "[general]\nfrom=config\ntenant=abc12345\n",
    )
    .unwrap();
    write_record(&layout, Some(VERSION), Some(CONFIG), max_failed_mount_attempts);
    layout
}

/// Writes the DynaKube record.
pub fn write_record(
    layout: &Layout,
    version: Option<&str>,
    config: Option<&str>,
    max_failed_mount_attempts: u32,
) {
    io_csi_driver::records::write(
        &layout.dynakube_record(DYNAKUBE).unwrap(),
        &DynakubeRecord {
            tenant_uuid: TENANT.to_owned(),
            version: version.map(str::to_owned),
            config: config.map(str::to_owned),
            max_failed_mount_attempts,
        },
    )
    .unwrap();
}

/// One pod's `oneagent-bin` volume as the kubelet names it.
#[derive(Debug, Clone)]
pub struct KubeletVolume {
    pub volume_id: String,
    pub target: PathBuf,
    pub context: HashMap<String, String>,
}

impl KubeletVolume {
    /// The volume of pod `pod_uid` below `kubelet_dir`, in `mode`.
    pub fn new(kubelet_dir: &Path, pod_uid: &str, mode: &str) -> Self {
        let name = "oneagent-bin";
        let volume_id = format!(
            "csi-{}",
            hex::encode(sha2::Sha256::digest(format!("{pod_uid}{name}")))
        );
        let target = kubelet_dir.join(format!("pods/{pod_uid}/volumes/kubernetes.io~csi/{name}/mount"));
        // The kubelet creates the parent; the driver the mount dir itself.
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let context = [
            ("mode", mode),
            ("dynakube", DYNAKUBE),
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.name", &format!("app-{pod_uid}")),
            ("csi.storage.k8s.io/pod.namespace", "shop"),
            ("csi.storage.k8s.io/pod.uid", pod_uid),
            ("csi.storage.k8s.io/serviceAccount.name", "default"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            volume_id,
            target,
            context,
        }
    }

    pub fn publish_request(&self) -> csi::NodePublishVolumeRequest {
        use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
        csi::NodePublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            target_path: self.target.display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }),
            readonly: false,
            volume_context: self.context.clone(),
            ..Default::default()
        }
    }

    pub async fn publish(&self, node: &mut NodeClient<Channel>) -> Result<(), tonic::Status> {
        node.node_publish_volume(self.publish_request()).await.map(|_| ())
    }

    pub async fn unpublish(&self, node: &mut NodeClient<Channel>) -> Result<(), tonic::Status> {
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            target_path: self.target.display().to_string(),
        })
        .await
        .map(|_| ())
    }
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let table = io_csi_driver::mounts::read().unwrap();
    table.is_mount_point(&std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()))
}

/// Waits until the socket accepts connections.
pub async fn connect(socket: &Path) -> Channel {
    for _ in 0..200 {
        if let Ok(channel) = io_csi_driver::server::connect(socket).await {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the CSI socket {} does not accept connections", socket.display());
}
