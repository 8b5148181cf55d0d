//! Generated gRPC and protobuf code for Warden's contracts in `proto/`.
//!
//! Only generated code lives here, and the codec it is generated with
//! ([`codec`]): no logic, no conversions with behaviour. Every service and
//! client depends on this crate; it depends on nothing of Warden's.

pub mod codec;

/// `warden.policy.v1`: the policy engine's contract.
pub mod policy {
    pub mod v1 {
        tonic::include_proto!("warden.policy.v1");
    }
}

/// `warden.audit.v1`: the audit log's contract.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("warden.audit.v1");
    }
}

/// `warden.approval.v1`: the approval service's contract.
pub mod approval {
    pub mod v1 {
        tonic::include_proto!("warden.approval.v1");
    }
}

/// `warden.alerting.v1`: the alerting service's contract.
pub mod alerting {
    pub mod v1 {
        tonic::include_proto!("warden.alerting.v1");
    }
}

/// `warden.deadletter.v1`: what a service could not deliver, for every
/// service that delivers.
pub mod deadletter {
    pub mod v1 {
        tonic::include_proto!("warden.deadletter.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Warden proto, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("warden_descriptor");
