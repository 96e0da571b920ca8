//! Compiles `service.proto` with protox (pure Rust), so no system `protoc` is needed,
//! and keeps the encoded descriptor set for gRPC server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=service.proto");
    let fds = protox::compile(["service.proto"], ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("jobworker_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Output bytes stay `Bytes`, so a record's data is shared, not copied, on its
        // way from the log file to the wire.
        .bytes(".jobworker.v1.OutputRecord.data")
        .compile_fds(fds)?;
    Ok(())
}
