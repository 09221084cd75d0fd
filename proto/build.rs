//! Generates the fedval.v1 code with protox (a pure-Rust protobuf compiler), so no
//! machine needs `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/fedval/v1/common.proto",
        "proto/fedval/v1/coordinator.proto",
        "proto/fedval/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The reflection service serves this encoded descriptor set.
    std::fs::write(out.join("fedval_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
