//! The `jobworker.v1` wire contract, generated from `service.proto`.
//!
//! Nothing here is written by hand except this re-export: the server and the client
//! share exactly one definition of every message.

pub mod v1 {
    tonic::include_proto!("jobworker.v1");

    /// Encoded descriptor set of `service.proto`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("jobworker_descriptor");
}
