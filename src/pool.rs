//! The pool's bookkeeping: which tenants are active, in what order they were
//! last used, and which have been idle too long.
//!
//! Owns the LRU order and idle clocks, nothing else: it holds whatever value
//! the supervisor gives it per tenant and never starts, stops or messages an
//! actor. Keeping it free of actors makes the eviction policy testable alone.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::tenant::TenantId;

struct Entry<V> {
    value: V,
    /// Position in the LRU order: larger is more recent.
    tick: u64,
    last_used: Instant,
}

/// Active tenants in least-recently-used order.
///
/// A map for lookup plus a `BTreeMap` keyed by a use counter for order: both
/// touch and finding the LRU tenant are O(log n), so a pool of thousands of
/// tenants costs no more per request than a pool of ten.
pub struct Pool<V> {
    entries: HashMap<TenantId, Entry<V>>,
    order: BTreeMap<u64, TenantId>,
    tick: u64,
    capacity: usize,
}

impl<V> Pool<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// The tenant's value, marking it as just used.
    pub fn touch(&mut self, tenant: &TenantId, now: Instant) -> Option<&V> {
        self.tick += 1;
        let entry = self.entries.get_mut(tenant)?;
        self.order.remove(&entry.tick);
        entry.tick = self.tick;
        entry.last_used = now;
        self.order.insert(self.tick, tenant.clone());
        Some(&entry.value)
    }

    pub fn get(&self, tenant: &TenantId) -> Option<&V> {
        self.entries.get(tenant).map(|e| &e.value)
    }

    /// Add a tenant as the most recently used. The caller makes room first.
    pub fn insert(&mut self, tenant: TenantId, value: V, now: Instant) {
        self.remove(&tenant);
        self.tick += 1;
        self.order.insert(self.tick, tenant.clone());
        self.entries.insert(
            tenant,
            Entry {
                value,
                tick: self.tick,
                last_used: now,
            },
        );
    }

    pub fn remove(&mut self, tenant: &TenantId) -> Option<V> {
        let entry = self.entries.remove(tenant)?;
        self.order.remove(&entry.tick);
        Some(entry.value)
    }

    /// The least recently used tenant.
    pub fn lru(&self) -> Option<&TenantId> {
        self.order.values().next()
    }

    /// Tenants idle for `ttl` or longer at `now`, least recently used first.
    pub fn expired(&self, now: Instant, ttl: Duration) -> Vec<TenantId> {
        self.order
            .values()
            .take_while(|t| {
                self.entries
                    .get(*t)
                    .is_some_and(|e| now.saturating_duration_since(e.last_used) >= ttl)
            })
            .cloned()
            .collect()
    }

    /// Every tenant, sorted by id.
    pub fn keys(&self) -> Vec<TenantId> {
        let mut keys: Vec<_> = self.entries.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn lru_follows_use() {
        let now = Instant::now();
        let mut pool = Pool::new(3);
        pool.insert(t("a"), 1, now);
        pool.insert(t("b"), 2, now);
        pool.insert(t("c"), 3, now);
        assert!(pool.is_full());
        assert_eq!(pool.lru(), Some(&t("a")));
        pool.touch(&t("a"), now);
        assert_eq!(pool.lru(), Some(&t("b")));
        assert_eq!(pool.remove(&t("b")), Some(2));
        assert_eq!(pool.lru(), Some(&t("c")));
        assert_eq!(pool.keys(), vec![t("a"), t("c")]);
    }

    #[test]
    fn expiry_counts_idle_time() {
        let start = Instant::now();
        let mut pool = Pool::new(10);
        pool.insert(t("old"), (), start);
        pool.insert(t("new"), (), start + Duration::from_secs(5));
        let later = start + Duration::from_secs(10);
        assert_eq!(pool.expired(later, Duration::from_secs(8)), vec![t("old")]);
        assert_eq!(pool.expired(later, Duration::from_secs(4)).len(), 2);
        pool.touch(&t("old"), later);
        assert_eq!(pool.expired(later, Duration::from_secs(4)), vec![t("new")]);
    }
}
