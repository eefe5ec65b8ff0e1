//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/containerd/types/mount.proto",
        "proto/containerd/types/descriptor.proto",
        "proto/containerd/services/content/v1/content.proto",
        "proto/containerd/services/snapshots/v1/snapshots.proto",
        "proto/containerd/services/leases/v1/leases.proto",
        "proto/strata/v1/admin.proto",
        "proto/strata/v1/images.proto",
        "proto/strata/v1/containers.proto",
        "proto/k8s/cri/v1/cri.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Blob data as `Bytes`: decoded without a copy out of the receive buffer.
        .bytes(".containerd.services.content.v1")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
