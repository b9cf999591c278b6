//! Compiles `proto/` with protox (no system protoc) and generates the tonic
//! services with tonic-prost-build. The encoded descriptor set is written to
//! `OUT_DIR` for server reflection.
//!
//! The Subscriber service's server is generated a second time with
//! tonic-build's manual builder, from the same descriptor: identical routes
//! and request types, but `Subscribe` answers with
//! `crate::api::SubscribeFrame` through its own codec, which writes stored
//! events' bytes into responses without decoding them. Clients (and the
//! reflection descriptors) keep the plain `SubscribeResponse`. The file is
//! included by `src/api/subscribe/spliced.rs`, beside the codec it names, so
//! `pb` stays a leaf that names nothing else in the crate.

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
        // Holds a client secret: its `Debug` (src/delivery/oauth/mod.rs)
        // redacts it, so no `{:?}` of an endpoint can print it.
        .skip_debug([".stevedore.v1.OAuth2"])
        .compile_fds(fds.clone())?;
    subscriber_server(&fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// The proto package every service and message is in.
const PACKAGE: &str = "stevedore.v1";

/// Generates `stevedore.v1.Subscriber.rs`: the Subscriber server, with
/// every method as declared in the proto but `Subscribe`'s responses.
fn subscriber_server(
    fds: &prost_types::FileDescriptorSet,
) -> Result<(), Box<dyn std::error::Error>> {
    let service = fds
        .file
        .iter()
        .filter(|f| f.package() == PACKAGE)
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Subscriber")
        .ok_or("no stevedore.v1.Subscriber service in proto/")?;
    let rust_type = |proto: &str| -> Result<String, String> {
        proto
            .strip_prefix(&format!(".{PACKAGE}."))
            .map(|name| format!("crate::pb::{name}"))
            .ok_or_else(|| format!("{proto} is outside {PACKAGE}"))
    };
    let mut builder = tonic_build::manual::Service::builder()
        .name(service.name())
        .package(PACKAGE);
    for m in &service.method {
        let spliced = m.name() == "Subscribe";
        let mut method = tonic_build::manual::Method::builder()
            .name(snake_case(m.name()))
            .route_name(m.name())
            .input_type(rust_type(m.input_type())?)
            .output_type(if spliced {
                "crate::api::SubscribeFrame".to_owned()
            } else {
                rust_type(m.output_type())?
            })
            .codec_path(if spliced {
                "crate::api::SubscribeCodec"
            } else {
                "tonic_prost::ProstCodec"
            });
        if m.client_streaming() {
            method = method.client_streaming();
        }
        if m.server_streaming() {
            method = method.server_streaming();
        }
        builder = builder.method(method.build());
    }
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[builder.build()]);
    Ok(())
}

/// `GetEvent` → `get_event`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
