//! The pool's bookkeeping: which tenants are active, in what order they were
//! last used, which have been idle too long, and which wait for room.
//!
//! Owns the LRU order, idle clocks, the bound on actors that hold a store,
//! and the queue of requests waiting for room, nothing else: it holds
//! whatever values the supervisor gives it per tenant and never starts,
//! stops or messages an actor. Keeping it free of actors makes the eviction
//! policy testable alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::tenant::TenantId;

struct Entry<V> {
    value: V,
    /// Position in the LRU order.
    key: (Instant, u64),
}

/// Active tenants in least-recently-used order.
///
/// A map for lookup plus a `BTreeMap` keyed by (last use, a counter for
/// ties) for order: both touch and finding the LRU tenant are O(log n), so a
/// pool of thousands of tenants costs no more per request than a pool of
/// ten. Ordered by the time of use rather than by a counter alone so that
/// uses recorded elsewhere (the directory's fast path) can be merged in
/// later, at the time they happened ([`Pool::touch_at`]).
pub struct Pool<V> {
    entries: HashMap<TenantId, Entry<V>>,
    order: BTreeMap<(Instant, u64), TenantId>,
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
        self.touch_at(tenant, now);
        self.entries.get(tenant).map(|e| &e.value)
    }

    /// Record a use of the tenant at `at`, unless a later one is recorded.
    pub fn touch_at(&mut self, tenant: &TenantId, at: Instant) {
        self.tick += 1;
        let Some(entry) = self.entries.get_mut(tenant) else {
            return;
        };
        if at < entry.key.0 {
            return;
        }
        self.order.remove(&entry.key);
        entry.key = (at, self.tick);
        self.order.insert(entry.key, tenant.clone());
    }

    /// When the tenant was last used, as far as the pool knows.
    pub fn last_used(&self, tenant: &TenantId) -> Option<Instant> {
        self.entries.get(tenant).map(|e| e.key.0)
    }

    pub fn get(&self, tenant: &TenantId) -> Option<&V> {
        self.entries.get(tenant).map(|e| &e.value)
    }

    /// Add a tenant as used at `now`. The caller makes room first.
    pub fn insert(&mut self, tenant: TenantId, value: V, now: Instant) {
        self.remove(&tenant);
        self.tick += 1;
        let key = (now, self.tick);
        self.order.insert(key, tenant.clone());
        self.entries.insert(tenant, Entry { value, key });
    }

    pub fn remove(&mut self, tenant: &TenantId) -> Option<V> {
        let entry = self.entries.remove(tenant)?;
        self.order.remove(&entry.key);
        Some(entry.value)
    }

    /// The least recently used tenant.
    pub fn lru(&self) -> Option<&TenantId> {
        self.order.values().next()
    }

    /// Tenants idle for `ttl` or longer at `now`, least recently used first.
    pub fn expired(&self, now: Instant, ttl: Duration) -> Vec<TenantId> {
        self.order
            .iter()
            .take_while(|((used, _), _)| now.saturating_duration_since(*used) >= ttl)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Every tenant, sorted by id.
    pub fn keys(&self) -> Vec<TenantId> {
        let mut keys: Vec<_> = self.entries.keys().cloned().collect();
        keys.sort();
        keys
    }
}

/// Most actors that may hold a store at once, serving or closing, for a pool
/// of `capacity`: `capacity` serving plus up to as many closing.
///
/// Why twice the pool rather than a setting of its own: an actor told to stop
/// keeps its store open until it has worked off its queue, so without a bound
/// a burst over cold tenants leaves one open store (shard files, locks,
/// mmaps) per tenant touched. The pool size is what an operator sizes for
/// memory and file descriptors, so the worst case stays a fixed multiple of
/// it; as many closing as serving slots means a closing actor (a few ms)
/// rarely holds up a cold start, and a separate knob would only trade that
/// wait against the worst case, which this multiple already keeps small.
pub fn max_holders(capacity: usize) -> usize {
    capacity.saturating_mul(2)
}

/// Requests of tenants that are neither active nor closing and wait for
/// room: tenants are served in the order of their first waiting request
/// (FIFO, so none starves), each tenant's requests in arrival order.
pub struct Waiting<E> {
    order: VecDeque<TenantId>,
    items: HashMap<TenantId, Vec<E>>,
    len: usize,
}

impl<E> Default for Waiting<E> {
    fn default() -> Self {
        Self {
            order: VecDeque::new(),
            items: HashMap::new(),
            len: 0,
        }
    }
}

impl<E> Waiting<E> {
    /// Requests waiting, over all tenants.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add a request behind the tenant's earlier ones.
    pub fn push(&mut self, tenant: TenantId, item: E) {
        self.len += 1;
        match self.items.get_mut(&tenant) {
            Some(items) => items.push(item),
            None => {
                self.order.push_back(tenant.clone());
                self.items.insert(tenant, vec![item]);
            }
        }
    }

    /// The tenant that has waited longest, with all its requests in order.
    pub fn pop(&mut self) -> Option<(TenantId, Vec<E>)> {
        let tenant = self.order.pop_front()?;
        let items = self.items.remove(&tenant).unwrap_or_default();
        self.len -= items.len();
        Some((tenant, items))
    }

    /// Every waiting request, tenant by tenant in [`Waiting::pop`] order.
    pub fn take_all(&mut self) -> Vec<E> {
        std::iter::from_fn(|| self.pop())
            .flat_map(|(_, items)| items)
            .collect()
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

    /// A use recorded elsewhere and merged in later counts at its own time:
    /// it can move a tenant forward, never back.
    #[test]
    fn uses_merged_later_count_at_their_time() {
        let start = Instant::now();
        let s = |n| start + Duration::from_secs(n);
        let mut pool = Pool::new(3);
        pool.insert(t("a"), (), s(0));
        pool.insert(t("b"), (), s(2));
        pool.insert(t("c"), (), s(4));
        pool.touch_at(&t("a"), s(3));
        assert_eq!(pool.lru(), Some(&t("b")));
        assert_eq!(pool.last_used(&t("a")), Some(s(3)));
        // Older than what the pool knows: ignored.
        pool.touch_at(&t("c"), s(1));
        assert_eq!(pool.last_used(&t("c")), Some(s(4)));
        assert_eq!(
            pool.expired(s(5), Duration::from_secs(2)),
            vec![t("b"), t("a")]
        );
        pool.touch_at(&t("missing"), s(9));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn waiting_keeps_tenant_order_and_request_order() {
        let mut w = Waiting::default();
        assert!(w.is_empty());
        w.push(t("b"), 1);
        w.push(t("a"), 2);
        w.push(t("b"), 3);
        w.push(t("c"), 4);
        w.push(t("a"), 5);
        assert_eq!(w.len(), 5);
        assert_eq!(w.pop(), Some((t("b"), vec![1, 3])));
        assert_eq!(w.len(), 3);
        // A tenant that comes back after being served queues at the end.
        w.push(t("b"), 6);
        assert_eq!(w.pop(), Some((t("a"), vec![2, 5])));
        assert_eq!(w.take_all(), vec![4, 6]);
        assert!(w.is_empty());
        assert_eq!(w.pop(), None);
    }

    #[test]
    fn holders_are_bounded_by_twice_the_pool() {
        assert_eq!(max_holders(1), 2);
        assert_eq!(max_holders(10), 20);
        assert_eq!(max_holders(usize::MAX), usize::MAX);
    }
}
