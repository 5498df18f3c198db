//! The CSI driver `csi.oneagent.dynatrace.com` on a node. The rules are in `pure-csi`; this crate does the
//! I/O:
//!
//! - [`records`]: reading and atomically writing the JSON records of the data directory;
//! - [`mounts`]: a fresh read of the kernel's mount table;
//! - `csi-server`: [`server`] (gRPC Identity, Node and the kubelet's plugin registration on unix sockets,
//!   `/healthz`), [`publish`] (publish and unpublish on the node), [`mount`] (the system calls),
//!   [`metrics`] and [`events`].

pub mod events;
pub mod metrics;
pub mod mount;
pub mod mounts;
pub mod proto;
pub mod publish;
pub mod records;
pub mod server;
