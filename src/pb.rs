//! Generated protobuf and gRPC code. Nothing hand-written lives here.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("stevedore.v1");

/// The encoded descriptor set of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stevedore_descriptor.bin"));
