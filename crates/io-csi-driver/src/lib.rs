//! The CSI driver `csi.oneagent.dynatrace.com` on a node. The rules are in `pure-csi`; this crate does the
//! I/O:
//!
//! - [`records`]: reading and atomically writing the JSON records of the data directory;
//! - [`mounts`]: a fresh read of the kernel's mount table;
//! - `csi-server`: [`server`] (gRPC Identity, Node and the kubelet's plugin registration on unix sockets,
//!   `/healthz`), [`publish`] (publish and unpublish on the node), [`mount`] (the system calls),
//!   [`metrics`] and [`events`].
//! - [`provisioner`]: `csi-provisioner`, installing code-module versions and configuration layers;
//! - [`gc`]: its garbage collection;
//! - [`status`]: the node status it shows the operator.

pub mod events;
pub mod gc;
pub mod metrics;
pub mod mount;
pub mod mounts;
pub mod proto;
pub mod provisioner;
pub mod publish;
pub mod records;
pub mod server;
pub mod status;
