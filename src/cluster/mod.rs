//! Several workers on one prefix: tenants partitioned over them, one owner
//! per partition, through NATS primitives only.
//!
//! Owns the assignment of partitions to the fleet's members and the leases
//! that make an owner (a tenant's partition is [`crate::partition`]'s). It must never let
//! this worker serve a partition it does not hold the lease of, nor give a
//! lease up before the partition's requests, ingest and stores are settled.

pub mod assign;
pub mod fleet;
pub mod gate;

use std::sync::{Arc, RwLock};

use tokio::sync::watch;

pub use gate::{Entry, Gate};

/// A tenant's partition lives below every layer that needs it (the store's
/// shared layout files tenants by it too); the fleet names it here.
pub use crate::partition::partition_of;

/// Where a tenant's request goes, by its partition's owner.
pub enum Place {
    /// This worker serves it; the entry keeps the partition from being
    /// released until the request is answered.
    Local(Entry),
    /// Another worker owns it: forward the message there.
    Remote(String),
    /// Nobody serves it at this moment (a hand-over, or no worker yet):
    /// wait for the next change.
    Unowned,
}

/// The fleet as this worker sees it: who owns each partition, and the
/// gates of the partitions it serves itself. Read on every request, so a
/// read is a lock-free gate check and, for other workers' partitions, one
/// uncontended read lock.
pub struct Cluster {
    pub member: String,
    pub partitions: u32,
    prefix: String,
    owners: RwLock<Vec<Option<String>>>,
    gates: Vec<Arc<Gate>>,
    changed: watch::Sender<u64>,
}

impl Cluster {
    pub fn new(prefix: &str, member: String, partitions: u32) -> Self {
        Self {
            member,
            partitions,
            prefix: prefix.to_owned(),
            owners: RwLock::new(vec![None; partitions as usize]),
            gates: (0..partitions).map(|_| Arc::new(Gate::default())).collect(),
            changed: watch::channel(0).0,
        }
    }

    /// Where a request of the tenant whose token is `tenant` goes now.
    pub fn place(&self, tenant: &str) -> Place {
        let p = partition_of(tenant, self.partitions) as usize;
        if let Some(entry) = Gate::enter(&self.gates[p]) {
            return Place::Local(entry);
        }
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        match &owners[p] {
            Some(owner) if *owner != self.member => Place::Remote(owner.clone()),
            _ => Place::Unowned,
        }
    }

    /// Whether this worker serves `partition` now.
    pub fn serves(&self, partition: u32) -> bool {
        self.gates[partition as usize].is_open()
    }

    /// The partitions this worker serves, ascending.
    pub fn served(&self) -> Vec<u32> {
        (0..self.partitions).filter(|p| self.serves(*p)).collect()
    }

    /// Whether `member` owns the partition of `tenant`, as last read.
    pub fn is_owner(&self, tenant: &str, member: &str) -> bool {
        let p = partition_of(tenant, self.partitions) as usize;
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        owners[p].as_deref() == Some(member)
    }

    /// The owner of each partition as last read from the leases.
    pub fn owners(&self) -> Vec<Option<String>> {
        self.owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wakes whoever waits for a change of owners or gates.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set_owners(&self, owners: Vec<Option<String>>) {
        let mut current = self.owners.write().unwrap_or_else(|e| e.into_inner());
        if *current != owners {
            *current = owners;
            drop(current);
            self.bump();
        }
    }

    fn gate(&self, partition: u32) -> &Arc<Gate> {
        &self.gates[partition as usize]
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The subject a message for `owner` is forwarded on:
    /// `<p>._fwd.<owner>.<verb>.<tenant>`, from the original
    /// `<p>.<verb>.<tenant>`. Five tokens past the prefix's, so the
    /// request endpoint's `<p>.*.*` never takes it.
    pub fn forward_subject(&self, owner: &str, original: &str) -> String {
        let rest = original
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(original);
        format!("{}._fwd.{owner}.{rest}", self.prefix)
    }

    /// What this worker subscribes to for messages forwarded to it.
    pub fn forward_inbox(&self) -> String {
        format!("{}._fwd.{}.>", self.prefix, self.member)
    }

    /// The original subject of a message forwarded to this worker.
    pub fn original_subject(&self, forwarded: &str) -> Option<String> {
        let head = format!("{}._fwd.{}.", self.prefix, self.member);
        forwarded
            .strip_prefix(&head)
            .map(|rest| format!("{}.{rest}", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_subject_round_trips() {
        let c = Cluster::new("acme.vec", "w1".into(), 4);
        let f = c.forward_subject("w1", "acme.vec.search.alice");
        assert_eq!(f, "acme.vec._fwd.w1.search.alice");
        assert_eq!(
            c.original_subject(&f).as_deref(),
            Some("acme.vec.search.alice")
        );
        assert_eq!(c.original_subject("acme.vec._fwd.w2.search.alice"), None);
    }

    #[test]
    fn a_request_goes_where_the_partition_is_served() {
        let c = Cluster::new("t", "me".into(), 1);
        assert!(matches!(c.place("alice"), Place::Unowned));
        c.set_owners(vec![Some("other".into())]);
        assert!(matches!(c.place("alice"), Place::Remote(o) if o == "other"));
        c.set_owners(vec![Some("me".into())]);
        // Leased but not opened (or being released): nobody serves it.
        assert!(matches!(c.place("alice"), Place::Unowned));
        c.gate(0)
            .open(std::time::Instant::now() + std::time::Duration::from_secs(60));
        assert!(matches!(c.place("alice"), Place::Local(_)));
        assert_eq!(c.served(), vec![0]);
    }
}
