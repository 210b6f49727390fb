//! Generated protobuf and tonic code (`proto/rapport/v1/*.proto`, compiled by build.rs).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `rapport.v1`.
pub mod rapport {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("rapport.v1");
    }
}

pub use rapport::v1::*;

/// The encoded descriptor set of our protos (imports included), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rapport_descriptor.bin"));
