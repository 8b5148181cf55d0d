//! Compiles `proto/` with protox (pure Rust, no system protoc) and tonic.

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: &[&str] = &[
    "warden/policy/v1/policy.proto",
    "warden/audit/v1/audit.proto",
    "warden/approval/v1/approval.proto",
    "warden/alerting/v1/alerting.proto",
    "warden/deadletter/v1/deadletter.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    // Reflection serves this set, so grpcurl needs no .proto files.
    std::fs::write(out_dir.join("warden_descriptor.bin"), descriptors.encode_to_vec())?;
    // Every client and server decodes with `codec::SliceCodec`.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
