//! The supervisor: starts, finds and stops tenant actors.
//!
//! Owns the registry of active tenants (through [`Pool`]), the pool's
//! statistics, the TTL sweep, the hand-over when a tenant is closing
//! (requests for it wait here, in order, until its actor has closed the
//! store, and only then does a new actor open it), and the bound on actors
//! that hold a store: at most [`max_holders`] serving or closing, so a burst
//! over cold tenants cannot leave an open store behind per tenant; a request
//! that would start one more waits here, in order, until one has closed. It
//! must never touch a store itself, never let two actors of one tenant live
//! at once, never reorder two requests of a tenant, and never drop a
//! request: each one is forwarded, parked, or answered.
//!
//! [`Pool`]: crate::pool::Pool

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use crate::command::{Command, Envelope};
use crate::directory::Directory;
use crate::pool::{max_holders, Waiting};
use crate::protocol::{PoolStats, ServiceError};
use crate::registry::TenantRecord;
use crate::tenant::TenantId;
use crate::tenant_actor::{Close, Closed, Reconfigure, TenantActor, TenantSetup};

/// Forward a request to its tenant's actor, starting one if needed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    pub env: Envelope,
    /// Sent by [`crate::router::Router`], which the directory counted in transit.
    pub via_directory: bool,
}

/// `admin.stats`.
#[derive(Message)]
#[rtype(result = "PoolStats")]
pub struct GetStats;

/// `admin.cleanup`: stop every actor idle for longer than the TTL now;
/// answers with how many, once they are closed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Cleanup;

/// `admin.evict`: stop one tenant's actor, or all; answers with how many,
/// once they are closed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Evict(pub Option<TenantId>);

/// Stop the actors of every tenant `.0` picks (a partition's, when it is
/// handed over); answers with how many, once they are closed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct EvictWhere(pub Box<dyn Fn(&TenantId) -> bool + Send>);

/// Stop every actor and refuse new requests; resolves when all are closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The tenants whose actors have not closed yet (serving or closing), for
/// the log of a shutdown that ran out of time.
#[derive(Message)]
#[rtype(result = "Vec<TenantId>")]
pub struct Unfinished;

/// A tenant's registry record changed: its actor, when active here, takes
/// the new settings before this is answered (`true` then).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct NewRecord(pub TenantRecord);

/// Which of these tenants have an actor in the pool now.
#[derive(Message)]
#[rtype(result = "Vec<TenantId>")]
pub struct ActiveAmong(pub Vec<TenantId>);

/// Why an actor is told to stop; decides which counter moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// The pool was full and this was the least recently used (`evictions`).
    Evicted,
    /// Idle longer than the TTL (`expirations`).
    Expired,
    /// `admin.evict`, `drop` or shutdown: counted nowhere.
    Requested,
}

struct Active {
    addr: Addr<TenantActor>,
    generation: u64,
}

/// A tenant whose actor was told to stop and has not reported yet.
struct Closing {
    generation: u64,
    /// Requests that arrived meanwhile, in arrival order.
    parked: Vec<Envelope>,
    /// Told when the actor has closed its store.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Counters {
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
}

pub struct Supervisor {
    pool: crate::pool::Pool<Active>,
    closing: HashMap<TenantId, Closing>,
    /// Requests of tenants that are neither active nor closing, while
    /// [`max_holders`] actors hold a store.
    waiting: Waiting<Envelope>,
    ttl: Duration,
    sweep_every: Duration,
    setup: Arc<TenantSetup>,
    counters: Counters,
    next_generation: u64,
    shutting_down: bool,
    /// Where warm tenants' addresses are published for the fast path.
    directory: Arc<Directory>,
    /// Tenants that got requests in the current handler: their addresses
    /// are published once it has forwarded everything it holds of them.
    touched: Vec<TenantId>,
    /// Tenant actors are spread over these threads, round robin.
    arbiters: Vec<Arbiter>,
}

impl Supervisor {
    /// Must be called inside an actix system: it starts `actor_threads`
    /// arbiters for the tenant actors.
    pub fn new(
        pool_size: usize,
        ttl: Duration,
        sweep_every: Duration,
        setup: Arc<TenantSetup>,
        directory: Arc<Directory>,
        actor_threads: usize,
    ) -> Self {
        Self {
            pool: crate::pool::Pool::new(pool_size),
            closing: HashMap::new(),
            waiting: Waiting::default(),
            ttl,
            sweep_every,
            setup,
            counters: Counters::default(),
            next_generation: 0,
            shutting_down: false,
            directory,
            touched: Vec::new(),
            arbiters: (0..actor_threads.max(1)).map(|_| Arbiter::new()).collect(),
        }
    }

    /// Publish the addresses of the active tenants this handler forwarded
    /// requests to; called last in every handler that forwards.
    fn publish_touched(&mut self) {
        for tenant in std::mem::take(&mut self.touched) {
            if let Some(active) = self.pool.get(&tenant) {
                self.directory.publish(&tenant, &active.addr);
            }
        }
    }

    /// The least recently used tenant, counting uses of the fast path.
    fn lru(&mut self) -> Option<TenantId> {
        loop {
            let tenant = self.pool.lru()?.clone();
            match self.directory.last_used(&tenant) {
                Some(seen) if Some(seen) > self.pool.last_used(&tenant) => {
                    self.pool.touch_at(&tenant, seen)
                }
                _ => return Some(tenant),
            }
        }
    }

    fn route(&mut self, env: Envelope, ctx: &mut Context<Self>) {
        if self.shutting_down {
            env.fail(ServiceError::unavailable("the worker is shutting down"));
            return;
        }
        if let Some(closing) = self.closing.get_mut(&env.tenant) {
            closing.parked.push(env);
            return;
        }
        if let Some(active) = self.pool.touch(&env.tenant, Instant::now()) {
            self.counters.hits += 1;
            self.touched.push(env.tenant.clone());
            self.setup.metrics.pool_hit();
            let addr = active.addr.clone();
            self.forward(&addr, env);
            return;
        }
        // A miss. Behind anyone already waiting (a tenant with waiting
        // requests is always among them, so its order holds), or when a new
        // actor would be one store too many: wait for a close.
        if !self.waiting.is_empty() || !self.has_room() {
            self.waiting.push(env.tenant.clone(), env);
            return;
        }
        self.activate(env, ctx);
    }

    /// Whether one more actor may open a store: fewer than [`max_holders`]
    /// are serving or closing. A full pool makes room by evicting its least
    /// recently used, which keeps its store until it has closed, hence the
    /// count of both.
    fn has_room(&self) -> bool {
        self.pool.len() + self.closing.len() < max_holders(self.pool.capacity())
    }

    /// Start an actor for `env`'s tenant (a miss, with room) and give it `env`.
    fn activate(&mut self, env: Envelope, ctx: &mut Context<Self>) {
        self.counters.misses += 1;
        self.setup.metrics.pool_miss();
        if self.pool.is_full() {
            if let Some(lru) = self.lru() {
                self.stop(&lru, StopReason::Evicted);
            }
        }
        let addr = self.start_actor(&env.tenant, ctx);
        self.touched.push(env.tenant.clone());
        self.forward(&addr, env);
    }

    fn forward(&mut self, addr: &Addr<TenantActor>, env: Envelope) {
        let tenant = env.tenant.clone();
        let is_drop = matches!(env.command, Command::Drop);
        addr.do_send(env);
        if is_drop {
            // `drop` ends the actor too: its queue ends with the drop, then
            // the close; whatever comes next starts from nothing.
            self.stop(&tenant, StopReason::Requested);
        }
    }

    /// Start waiting tenants, longest waiting first, while there is room.
    fn admit_waiting(&mut self, ctx: &mut Context<Self>) {
        while self.has_room() {
            let Some((_, envs)) = self.waiting.pop() else {
                return;
            };
            let mut envs = envs.into_iter();
            if let Some(first) = envs.next() {
                self.activate(first, ctx);
            }
            // The tenant is active now (or closing, after a drop), so the
            // rest follow the first in order, as hits or parked.
            for env in envs {
                self.route(env, ctx);
            }
        }
    }

    fn start_actor(&mut self, tenant: &TenantId, ctx: &mut Context<Self>) -> Addr<TenantActor> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let actor = TenantActor::new(
            tenant.clone(),
            generation,
            self.setup.clone(),
            ctx.address().recipient(),
        );
        let arbiter = &self.arbiters[generation as usize % self.arbiters.len()];
        let addr = TenantActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        self.pool.insert(
            tenant.clone(),
            Active {
                addr: addr.clone(),
                generation,
            },
            Instant::now(),
        );
        self.setup
            .metrics
            .pool_sizes(self.pool.len(), self.closing.len());
        addr
    }

    /// Tell a tenant's actor to stop; the returned receiver fires once its
    /// store is closed. `None` when the tenant is neither active nor closing.
    fn stop(&mut self, tenant: &TenantId, reason: StopReason) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        if let Some(active) = self.pool.remove(tenant) {
            match reason {
                StopReason::Evicted => {
                    self.counters.evictions += 1;
                    self.setup.metrics.pool_evicted();
                }
                StopReason::Expired => {
                    self.counters.expirations += 1;
                    self.setup.metrics.pool_expired();
                }
                StopReason::Requested => {}
            }
            tracing::debug!(%tenant, ?reason, "stopping tenant actor");
            // First no request may reach the actor directly, then `Close`:
            // whatever the fast path sent is ahead of it in the mailbox.
            self.directory.withdraw(tenant);
            active.addr.do_send(Close);
            self.closing.insert(
                tenant.clone(),
                Closing {
                    generation: active.generation,
                    parked: Vec::new(),
                    waiters: vec![tx],
                },
            );
            self.setup
                .metrics
                .pool_sizes(self.pool.len(), self.closing.len());
            Some(rx)
        } else if let Some(closing) = self.closing.get_mut(tenant) {
            closing.waiters.push(tx);
            Some(rx)
        } else {
            None
        }
    }

    /// Stop `targets`' actors, as asked for; resolves to how many, once
    /// they are closed.
    fn stop_all(&mut self, targets: &[TenantId]) -> ResponseFuture<usize> {
        let waits: Vec<_> = targets
            .iter()
            .filter_map(|t| self.stop(t, StopReason::Requested))
            .collect();
        let n = waits.len();
        Box::pin(async move {
            join_all(waits).await;
            n
        })
    }

    fn expire(&mut self) -> Vec<oneshot::Receiver<()>> {
        let now = Instant::now();
        // Uses through the fast path count: merge them in first.
        for tenant in self.pool.expired(now, self.ttl) {
            if let Some(seen) = self.directory.last_used(&tenant) {
                self.pool.touch_at(&tenant, seen);
            }
        }
        let expired = self.pool.expired(now, self.ttl);
        expired
            .iter()
            .filter_map(|t| self.stop(t, StopReason::Expired))
            .collect()
    }

    fn stats(&self) -> PoolStats {
        let hits = self.counters.hits + self.directory.hits();
        let total = hits + self.counters.misses;
        PoolStats {
            hits,
            misses: self.counters.misses,
            evictions: self.counters.evictions,
            expirations: self.counters.expirations,
            size: self.pool.len(),
            max_size: self.pool.capacity(),
            ttl_seconds: self.ttl.as_secs_f64(),
            keys: self.pool.keys().iter().map(|t| t.to_string()).collect(),
            hit_rate: if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            },
            closing: self.closing.len(),
            waiting: self.waiting.len(),
            backend: self.setup.factory.backend().to_owned(),
            embedding_model: self.setup.embedder.name().to_owned(),
            dimension: self.setup.embedder.dimension(),
            ingest: None,
            errors: Default::default(),
            cluster: None,
            registry: None,
            regions: None,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_every, |act, _ctx| {
            let n = act.expire().len();
            if n > 0 {
                tracing::debug!(expired = n, "idle tenant actors stopped");
            }
        });
    }
}

impl Handler<Route> for Supervisor {
    type Result = ();

    fn handle(&mut self, route: Route, ctx: &mut Self::Context) {
        if route.via_directory {
            self.directory.arrived(&route.env.tenant);
        }
        self.route(route.env, ctx);
        self.publish_touched();
    }
}

impl Handler<Closed> for Supervisor {
    type Result = ();

    fn handle(&mut self, closed: Closed, ctx: &mut Self::Context) {
        let tenant = closed.tenant;
        let mut parked = closed.leftovers;
        match self.closing.get(&tenant) {
            Some(c) if c.generation == closed.generation => {
                if let Some(c) = self.closing.remove(&tenant) {
                    for w in c.waiters {
                        let _ = w.send(());
                    }
                    parked.extend(c.parked);
                }
            }
            _ => {
                // An actor that stopped without being told to (it cannot
                // today, but the registry must not keep a dead address).
                if self
                    .pool
                    .get(&tenant)
                    .is_some_and(|a| a.generation == closed.generation)
                {
                    self.directory.withdraw(&tenant);
                    self.pool.remove(&tenant);
                }
            }
        }
        self.setup
            .metrics
            .pool_sizes(self.pool.len(), self.closing.len());
        // The closed actor's place is free: its own leftovers and parked
        // requests queue behind those already waiting, then the longest
        // waiting go first.
        for env in parked {
            self.route(env, ctx);
        }
        self.admit_waiting(ctx);
        self.publish_touched();
    }
}

impl Handler<GetStats> for Supervisor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl Handler<Cleanup> for Supervisor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: Cleanup, _ctx: &mut Self::Context) -> Self::Result {
        let waits = self.expire();
        let n = waits.len();
        Box::pin(async move {
            join_all(waits).await;
            n
        })
    }
}

impl Handler<Evict> for Supervisor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, Evict(tenant): Evict, _ctx: &mut Self::Context) -> Self::Result {
        let targets = match tenant {
            Some(t) if self.pool.get(&t).is_some() => vec![t],
            Some(_) => Vec::new(),
            None => self.pool.keys(),
        };
        self.stop_all(&targets)
    }
}

impl Handler<EvictWhere> for Supervisor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, EvictWhere(which): EvictWhere, _ctx: &mut Self::Context) -> Self::Result {
        let mut targets: Vec<TenantId> = self.pool.keys();
        targets.extend(self.closing.keys().cloned());
        targets.retain(|t| which(t));
        self.stop_all(&targets)
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        for env in self.waiting.take_all() {
            env.fail(ServiceError::unavailable("the worker is shutting down"));
        }
        let mut tenants: Vec<TenantId> = self.closing.keys().cloned().collect();
        tenants.extend(self.pool.keys());
        let waits: Vec<_> = tenants
            .iter()
            .filter_map(|t| self.stop(t, StopReason::Requested))
            .collect();
        tracing::info!(actors = waits.len(), "closing every tenant store");
        let arbiters: Vec<ArbiterHandle> = self.arbiters.iter().map(|a| a.handle()).collect();
        Box::pin(async move {
            join_all(waits).await;
            for arbiter in arbiters {
                arbiter.stop();
            }
        })
    }
}

impl Handler<Unfinished> for Supervisor {
    type Result = MessageResult<Unfinished>;

    fn handle(&mut self, _: Unfinished, _ctx: &mut Self::Context) -> Self::Result {
        let mut tenants: Vec<TenantId> = self.closing.keys().cloned().collect();
        tenants.extend(self.pool.keys());
        tenants.sort();
        MessageResult(tenants)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Their actors are gone by now (each holds the supervisor's address).
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

impl Handler<NewRecord> for Supervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, NewRecord(record): NewRecord, _ctx: &mut Self::Context) -> Self::Result {
        let active = TenantId::parse(&record.id)
            .ok()
            .and_then(|t| self.pool.get(&t))
            .map(|a| a.addr.clone());
        Box::pin(async move {
            match active {
                Some(addr) => addr.send(Reconfigure(record)).await.is_ok(),
                None => false,
            }
        })
    }
}

impl Handler<ActiveAmong> for Supervisor {
    type Result = MessageResult<ActiveAmong>;

    fn handle(
        &mut self,
        ActiveAmong(tenants): ActiveAmong,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        MessageResult(
            tenants
                .into_iter()
                .filter(|t| self.pool.get(t).is_some())
                .collect(),
        )
    }
}
