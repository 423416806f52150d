//! Several workers on one prefix: tenants partitioned over them, one owner
//! per partition, through NATS primitives only.
//!
//! Owns the partition of a tenant, the assignment of partitions to the
//! fleet's members, and the leases that make an owner. It must never let
//! this worker serve a partition it does not hold the lease of, nor give a
//! lease up before the partition's requests, ingest and stores are settled.

pub mod partition;

pub use partition::partition_of;
