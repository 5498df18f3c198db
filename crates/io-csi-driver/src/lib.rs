//! The CSI driver `csi.oneagent.dynatrace.com` on a node. The rules are in `pure-csi`; this crate does the
//! I/O:
//!
//! - [`records`]: reading and atomically writing the JSON records of the data directory;
//! - [`mounts`]: a fresh read of the kernel's mount table;
//! - [`provisioner`]: `csi-provisioner`, installing code-module versions and configuration layers;
//! - [`gc`]: its garbage collection;
//! - [`status`]: the node status it shows the operator.

pub mod gc;
pub mod mounts;
pub mod provisioner;
pub mod records;
pub mod status;
