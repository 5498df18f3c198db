//! The generated gRPC code of the vendored protos (`proto/`, compiled by `build.rs`).

/// CSI spec v1.9.0 (`csi.v1`): Identity, Controller and Node services and their messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin-registration API (`pluginregistration`, served by plugins, called by the kubelet).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}
