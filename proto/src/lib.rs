//! fedval's wire API, package `fedval.v1`: the generated message types and the
//! `Coordinator` (client-facing) and `Admin` (operator-facing) services.
//!
//! The `.proto` files live in `proto/proto/fedval/v1/`; any gRPC language can
//! generate a client from them. This crate holds no logic beyond [`convert`], the
//! conversions between wire messages and fedval-core's domain types.

pub mod convert;

/// Generated code for package `fedval.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fedval.v1");

    /// Encoded file descriptor set, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fedval_descriptor");
}
