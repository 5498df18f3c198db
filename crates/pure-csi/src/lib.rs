//! The CSI driver `csi.oneagent.dynatrace.com` as pure logic, shared by `csi-server` (publish and
//! unpublish), `csi-provisioner` (downloads and garbage collection) and the operator:
//!
//! - [`layout`]: every path under the data directory, and the records kept there instead of a database;
//! - [`mountinfo`]: the kernel's mount table, the one truth about what is mounted;
//! - [`publish`]: the validation and decisions of `NodePublishVolume` / `NodeUnpublishVolume`.
//! - [`gc`]: what garbage collection deletes, and why;
//! - [`status`]: the per-node status the provisioner shows the operator.

pub mod gc;
pub mod layout;
pub mod mountinfo;
pub mod publish;
pub mod status;

/// The driver's name, as registered with the kubelet and in the `CSIDriver` object.
pub const DRIVER_NAME: &str = "csi.oneagent.dynatrace.com";
