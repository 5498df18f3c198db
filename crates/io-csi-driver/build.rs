//! Compiles the vendored CSI and kubelet plugin-registration protos into tonic servers and clients. The
//! protos are parsed by `protox` (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/csi.proto", "proto/pluginregistration.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Services we serve in part (the Controller's capabilities only) answer Unimplemented for the rest.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
