//! The `jobworker.v1` wire contract, generated from `service.proto`.
//!
//! Nothing here is written by hand except these re-exports: the server and the client
//! share exactly one definition of every message. Times and durations are protobuf's
//! well-known types, so that grpcurl and other generic tools show them as RFC 3339 times
//! and `1.5s` durations.

/// `google.protobuf.Timestamp` and `Duration`, with their conversions from and to `std`.
pub use prost_types::{Duration, Timestamp};

pub mod v1 {
    tonic::include_proto!("jobworker.v1");

    /// Encoded descriptor set of `service.proto`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("jobworker_descriptor");
}
