//! The per-tenant bound on request-reply work: how many requests of each
//! tenant are between their arrival and their reply.
//!
//! Owns the count per tenant and the slot that gives a request's place back
//! when its reply is out. It must never block, never look at a request's
//! body, and never keep an entry for a tenant with nothing in flight (the map
//! follows the active tenants, not every tenant ever seen).
//!
//! Why a count at the transport rather than a bounded mailbox in the tenant
//! actor: a request of a flooding tenant is refused here before its body is
//! decoded and before it takes one of the worker's `max_in_flight` slots, so
//! what it costs the others is one map lookup; and the count covers every
//! place a request can wait (the supervisor's parked and waiting queues, the
//! actor's queue, the running job), which a mailbox bound would not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::tenant::TenantId;

/// Requests in flight per tenant, at most `max` each.
#[derive(Debug)]
pub struct Backlog {
    max: usize,
    counts: HashMap<TenantId, usize>,
}

impl Backlog {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: HashMap::new(),
        }
    }

    /// Count one more request of `tenant`, unless it already has `max`.
    pub fn try_add(&mut self, tenant: &TenantId) -> bool {
        match self.counts.get_mut(tenant) {
            Some(n) if *n >= self.max => false,
            Some(n) => {
                *n += 1;
                true
            }
            None if self.max == 0 => false,
            None => {
                self.counts.insert(tenant.clone(), 1);
                true
            }
        }
    }

    /// One request of `tenant` was answered.
    pub fn remove(&mut self, tenant: &TenantId) {
        if let Some(n) = self.counts.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(tenant);
            }
        }
    }

    /// Requests of `tenant` in flight.
    pub fn of(&self, tenant: &TenantId) -> usize {
        self.counts.get(tenant).copied().unwrap_or(0)
    }

    /// Tenants with a request in flight.
    pub fn tenants(&self) -> usize {
        self.counts.len()
    }
}

/// A [`Backlog`] shared by the endpoint task and the reply tasks.
#[derive(Debug, Clone)]
pub struct SharedBacklog(Arc<Mutex<Backlog>>);

impl SharedBacklog {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Mutex::new(Backlog::new(max))))
    }

    /// A slot for one request of `tenant`, or `None` when it has its maximum.
    pub fn admit(&self, tenant: &TenantId) -> Option<Slot> {
        // A poisoned lock only means a panic elsewhere while it was held;
        // the counts are updated in one step, so they are still right.
        let mut backlog = self.0.lock().unwrap_or_else(|p| p.into_inner());
        backlog.try_add(tenant).then(|| Slot {
            backlog: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

/// One request's place in its tenant's backlog; given back on drop.
#[derive(Debug)]
pub struct Slot {
    backlog: SharedBacklog,
    tenant: TenantId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut backlog = self.backlog.0.lock().unwrap_or_else(|p| p.into_inner());
        backlog.remove(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    #[test]
    fn each_tenant_has_its_own_bound() {
        let mut b = Backlog::new(2);
        assert!(b.try_add(&t("flood")));
        assert!(b.try_add(&t("flood")));
        assert!(!b.try_add(&t("flood")), "the third is refused");
        assert!(b.try_add(&t("victim")), "another tenant is not");
        b.remove(&t("flood"));
        assert!(b.try_add(&t("flood")), "a slot given back can be taken");
        assert_eq!(b.of(&t("flood")), 2);
    }

    #[test]
    fn idle_tenants_leave_no_entry() {
        let mut b = Backlog::new(3);
        b.try_add(&t("a"));
        b.try_add(&t("b"));
        b.remove(&t("a"));
        b.remove(&t("a"));
        assert_eq!(b.tenants(), 1);
        b.remove(&t("b"));
        assert_eq!(b.tenants(), 0);
    }

    #[test]
    fn slots_give_their_place_back_on_drop() {
        let shared = SharedBacklog::new(1);
        let first = shared.admit(&t("a")).expect("room for one");
        assert!(shared.admit(&t("a")).is_none());
        drop(first);
        assert!(shared.admit(&t("a")).is_some());
    }
}
