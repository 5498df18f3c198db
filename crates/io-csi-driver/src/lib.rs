//! The CSI driver `csi.oneagent.dynatrace.com` on a node. The rules are in `pure-csi`; this crate does the
//! I/O:
//!
//! - [`records`]: reading and atomically writing the JSON records of the data directory;
//! - [`mounts`]: a fresh read of the kernel's mount table.

pub mod mounts;
pub mod proto;
pub mod records;
