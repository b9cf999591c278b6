//! Compiles `proto/` with protox (no system protoc) and generates the tonic
//! services with tonic-prost-build. The encoded descriptor set is written to
//! `OUT_DIR` for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/stevedore/v1/events.proto",
    "proto/stevedore/v1/publisher.proto",
    "proto/stevedore/v1/subscriber.proto",
    "proto/stevedore/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    fs::write(
        out_dir.join("stevedore_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
