//! The directory of active tenants, which [`crate::router::Router`] consults.
//!
//! Owns the fast path of a request to a warm tenant: the transport finds the
//! tenant's actor here and hands it the request itself, with the use
//! recorded for the pool's LRU order, so a hit never waits on the supervisor.
//! Everything else (a miss, a tenant that is closing or waiting for room, a
//! `drop`) goes to the supervisor as before. It must never start or stop an
//! actor, never reorder two requests of a tenant, and never hand a request to
//! an actor that has been told to close.
//!
//! Why that holds:
//! * An address is published only by the supervisor, and only once no
//!   request of the tenant is on its way through the supervisor (the
//!   `in_transit` count): so a request that takes the fast path can never
//!   overtake an earlier one still queued in the supervisor's mailbox.
//! * The supervisor withdraws the address under the same lock before it
//!   tells the actor to close, and the fast path sends while holding that
//!   lock: every request sent directly is in the actor's mailbox before its
//!   `Close`, and one mailbox keeps order.
//!
//! One mutex rather than a concurrent map: the request path takes it once per
//! request from one task (the endpoint decodes in arrival order), the
//! supervisor on misses only, so it is uncontended; and both rules above need
//! the lookup and the send to be one step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::Addr;

use crate::command::{Command, Envelope};
use crate::metrics::Metrics;
use crate::tenant::TenantId;
use crate::tenant_actor::TenantActor;

#[derive(Default)]
struct Entry {
    /// The tenant's actor, once its requests may go to it directly.
    addr: Option<Addr<TenantActor>>,
    /// Requests of the tenant sent to the supervisor and not yet taken by it.
    in_transit: u32,
    /// Last use through the fast path, in nanoseconds since `epoch`.
    last_used: u64,
}

/// Active tenants' addresses, shared by the transport and the supervisor.
pub struct Directory {
    entries: Mutex<HashMap<TenantId, Entry>>,
    epoch: Instant,
    hits: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Directory {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            hits: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, Entry>> {
        // Nothing panics while holding the lock (a send never does), but a
        // poisoned map is still consistent: each change is one assignment.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests served through the fast path since the start.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The supervisor took one request that [`Directory::send_or_count`]
    /// gave back to be sent there.
    pub fn arrived(&self, tenant: &TenantId) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(tenant) {
            e.in_transit = e.in_transit.saturating_sub(1);
            if e.in_transit == 0 && e.addr.is_none() {
                entries.remove(tenant);
            }
        }
    }

    /// The tenant's actor takes requests directly from now on, unless some
    /// are still on their way through the supervisor (then the supervisor
    /// publishes again when it takes the last of them).
    pub fn publish(&self, tenant: &TenantId, addr: &Addr<TenantActor>) {
        let mut entries = self.lock();
        let e = entries.entry(tenant.clone()).or_default();
        if e.in_transit == 0 {
            e.addr = Some(addr.clone());
        }
    }

    /// No request goes to the tenant's actor directly after this returns.
    pub fn withdraw(&self, tenant: &TenantId) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(tenant) {
            e.addr = None;
            if e.in_transit == 0 {
                entries.remove(tenant);
            }
        }
    }

    /// When the tenant was last used through the fast path.
    pub fn last_used(&self, tenant: &TenantId) -> Option<Instant> {
        let entries = self.lock();
        let e = entries.get(tenant)?;
        (e.addr.is_some() && e.last_used > 0)
            .then(|| self.epoch + Duration::from_nanos(e.last_used))
    }

    /// Hand `env` to its tenant's actor when it may take the fast path (sent
    /// while the lock is held, see the module note); otherwise count it on
    /// its way through the supervisor and give it back, for the caller to
    /// send there. `drop` ends the actor too, which only the supervisor
    /// does, so it always comes back.
    pub fn send_or_count(&self, env: Envelope) -> Option<Envelope> {
        let mut entries = self.lock();
        let direct = !matches!(env.command, Command::Drop);
        let entry = entries.entry(env.tenant.clone()).or_default();
        match &entry.addr {
            Some(addr) if direct && entry.in_transit == 0 => {
                entry.last_used = self.now();
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.metrics.pool_hit();
                addr.do_send(env);
                None
            }
            _ => {
                // From here until the supervisor has taken this request, no
                // later one of the tenant may take the fast path.
                entry.in_transit += 1;
                entry.addr = None;
                Some(env)
            }
        }
    }

    /// Nanoseconds since `epoch`, never 0 (0 means "never used").
    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }
}
