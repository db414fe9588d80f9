//! Thali's gRPC contracts, generated from `proto/` at build time.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

/// Encoded `FileDescriptorSet` of every Thali contract (with imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/thali_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("thali.common.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("thali.identity.v1");
    }
}

pub mod storefront {
    pub mod v1 {
        tonic::include_proto!("thali.storefront.v1");
    }
}
