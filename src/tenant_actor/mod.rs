//! The tenant actor: the one owner of a tenant's store while the tenant is
//! active.
//!
//! Owns the tenant's queue of jobs and applies them strictly in arrival order,
//! one job at a time: a quick read of an open store on the actor's own thread
//! (see [`INLINE_BUDGET`]), everything else on the blocking pool. Consecutive
//! upserts are applied as one write and one flush (group commit), each
//! request still getting its own reply. It must never run a write, an open or
//! a network call on its own thread, never reply before a write is durable,
//! and never stop with work in its queue: whatever it has not applied goes
//! back to the supervisor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::command::{Command, Envelope, QueryInput};
use crate::embed::{record, Embedder, Embedding};
use crate::policy::{RateLimiter, TenantDefaults, TenantPolicy};
use crate::protocol::ServiceError;
use crate::store::{StoreFactory, TenantStore};
use crate::tenant::{TenantId, TenantPaths};

mod jobs;

use jobs::{apply_one, JobLimits, Work};

/// Most documents applied in one group commit.
const MAX_GROUP_DOCS: usize = 8192;

/// A read runs on the actor's own thread while the tenant's reads have cost
/// less CPU than this on average; above it, on the blocking pool. A hop to
/// the blocking pool and back costs tens of microseconds, most of a warm
/// search's time, so cheap reads gain nothing from it; costly reads would
/// hold up the other tenants of the actor's thread, and go there.
///
/// Priced in the thread's CPU time, not wall time: on a busy machine a read
/// that is preempted takes long without being costly, and wall time would
/// send every tenant to the pool exactly when hops cost most.
const INLINE_BUDGET: Duration = Duration::from_micros(500);

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Sent by the supervisor: finish the queue, close the store, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

/// Sent to the supervisor when the actor has stopped and its store is closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Closed {
    pub tenant: TenantId,
    pub generation: u64,
    /// Requests that reached the actor after it was told to close.
    pub leftovers: Vec<Envelope>,
}

enum Job {
    Request(Envelope),
    Close,
}

/// What every tenant actor of a worker is started with.
pub struct TenantSetup {
    pub factory: Arc<dyn StoreFactory>,
    pub embedder: Arc<dyn Embedder>,
    /// Which embedder wrote each tenant's vectors.
    pub records: record::Records,
    /// Where tenant policy files live.
    pub paths: TenantPaths,
    pub defaults: TenantDefaults,
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// Where the pool's moves are recorded.
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub struct TenantActor {
    tenant: TenantId,
    generation: u64,
    setup: Arc<TenantSetup>,
    supervisor: Recipient<Closed>,
    /// The tenant's policy, read when the actor starts; an unreadable policy
    /// file fails every request (fail closed).
    policy: Result<TenantPolicy, ServiceError>,
    limiter: Option<RateLimiter>,
    /// `None` only while a job has it on the blocking pool.
    store: Option<Box<dyn TenantStore>>,
    queue: VecDeque<Job>,
    busy: bool,
    closing: bool,
    /// A write was applied since the last maintenance pass.
    wrote: bool,
    /// The tenant's reads' recent average duration (an exponentially
    /// weighted mean); decides where the next one runs.
    read_cost: Duration,
}

impl TenantActor {
    pub fn new(
        tenant: TenantId,
        generation: u64,
        setup: Arc<TenantSetup>,
        supervisor: Recipient<Closed>,
    ) -> Self {
        let store = setup.factory.open(&tenant);
        // A small file, read once per activation: not worth a trip to the
        // blocking pool before the actor can take its first request.
        let policy = TenantPolicy::load(&setup.paths, &tenant, &setup.defaults, setup.max_top_k);
        if let Err(e) = &policy {
            tracing::error!(%tenant, error = %e, "tenant policy unreadable; refusing its requests");
        }
        let limiter = policy
            .as_ref()
            .ok()
            .and_then(|p| p.max_rps)
            .map(|rate| RateLimiter::new(rate, Instant::now()));
        Self {
            tenant,
            generation,
            setup,
            supervisor,
            policy,
            limiter,
            store: Some(store),
            queue: VecDeque::new(),
            busy: false,
            closing: false,
            wrote: false,
            read_cost: Duration::ZERO,
        }
    }

    /// Whether `env` is a read to answer here and now, on the actor's
    /// thread: a store that answers from memory, a search by vector (a
    /// text query may need the embedder's network round trip), and reads of
    /// this tenant that have been quick.
    fn answers_inline(&self, env: &Envelope) -> bool {
        let quick = self.read_cost < INLINE_BUDGET
            && self.store.as_ref().is_some_and(|s| s.answers_inline());
        quick
            && match &env.command {
                Command::Search(s) => matches!(s.input, QueryInput::Vector(_)),
                Command::Get { .. } | Command::Count(_) => true,
                _ => false,
            }
    }

    fn record_read(&mut self, took: Duration, inline: bool) {
        self.read_cost = (self.read_cost * 7 + took) / 8;
        tracing::trace!(tenant = %self.tenant, ?took, inline, cost = ?self.read_cost, "read");
    }

    /// Answer one read on this thread (see [`TenantActor::answers_inline`]).
    fn apply_inline(&mut self, env: Envelope) {
        let started = thread_cpu();
        let top_k = self.job_limits().top_k;
        let Some(store) = self.store.as_mut() else {
            return env.fail(ServiceError::internal("the tenant's store is not open"));
        };
        let _entered = env.span.enter();
        let embedding = Embedding::new(
            self.setup.embedder.as_ref(),
            &self.setup.records,
            &self.tenant,
        );
        // The engine's panics are contained inside the store; this is the
        // last line, so one bug cannot take the thread's other tenants down.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply_one(store.as_mut(), &embedding, env.command, top_k)
        }));
        match outcome {
            Ok(result) => env.reply.send(result),
            Err(_) => {
                // The reply was dropped while unwinding, which answers
                // `internal`; the store goes too and is reopened on demand.
                tracing::error!(tenant = %self.tenant, "tenant read panicked");
                self.store = None;
            }
        }
        drop(_entered);
        self.record_read(thread_cpu().saturating_sub(started), true);
    }

    fn job_limits(&self) -> JobLimits {
        JobLimits {
            top_k: self
                .policy
                .as_ref()
                .ok()
                .and_then(|p| p.top_k)
                .unwrap_or(self.setup.default_top_k),
            max_documents: self.policy.as_ref().ok().and_then(|p| p.max_documents),
        }
    }

    fn take_store(&mut self) -> Box<dyn TenantStore> {
        // After a job panicked its store is gone (and closed by unwinding);
        // a fresh handle reopens the data on its next job.
        self.store
            .take()
            .unwrap_or_else(|| self.setup.factory.open(&self.tenant))
    }

    /// Start the next job if none is running.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.closing {
            return;
        }
        while let Some(Job::Request(env)) = self.queue.front() {
            if !self.answers_inline(env) {
                break;
            }
            if let Some(Job::Request(env)) = self.queue.pop_front() {
                self.apply_inline(env);
            }
        }
        let Some(job) = self.queue.pop_front() else {
            if std::mem::take(&mut self.wrote) {
                self.run(ctx, Work::Maintain);
            }
            return;
        };
        match job {
            Job::Close => {
                self.closing = true;
                self.run(ctx, Work::Close);
            }
            Job::Request(first) => {
                let mut batch = vec![first];
                if batch[0].command.is_upsert() {
                    let mut docs = upsert_len(&batch[0]);
                    while let Some(Job::Request(next)) = self.queue.front() {
                        let n = upsert_len(next);
                        if !next.command.is_upsert() || docs + n > MAX_GROUP_DOCS {
                            break;
                        }
                        docs += n;
                        if let Some(Job::Request(next)) = self.queue.pop_front() {
                            batch.push(next);
                        }
                    }
                }
                self.wrote |= batch.iter().any(|e| {
                    matches!(
                        e.command,
                        Command::Upsert(_)
                            | Command::Ingest(_)
                            | Command::Delete(_)
                            | Command::Import(_)
                    )
                });
                self.run(ctx, Work::Batch(batch));
            }
        }
    }

    fn run(&mut self, ctx: &mut Context<Self>, work: Work) {
        self.busy = true;
        let mut store = self.take_store();
        let setup = self.setup.clone();
        let tenant = self.tenant.clone();
        let limits = self.job_limits();
        // A read that opens the store costs the open, not the read: only
        // reads of an open store price the next ones.
        let read =
            matches!(&work, Work::Batch(b) if !b[0].command.is_write()) && store.answers_inline();
        let job = tokio::task::spawn_blocking(move || {
            let started = thread_cpu();
            let close = matches!(work, Work::Close);
            let embedding = Embedding::new(setup.embedder.as_ref(), &setup.records, &tenant);
            work.apply(&tenant, store.as_mut(), &embedding, &limits);
            (store, close, thread_cpu().saturating_sub(started))
        });
        ctx.spawn(job.into_actor(self).map(move |outcome, act, ctx| {
            act.busy = false;
            match outcome {
                Ok((_, true, _)) => ctx.stop(),
                Ok((store, false, took)) => {
                    act.store = Some(store);
                    if read {
                        act.record_read(took, false);
                    }
                    act.pump(ctx);
                }
                Err(e) => {
                    // The replies of the failed batch were dropped with it,
                    // which the transport answers as `internal`.
                    tracing::error!(tenant = %act.tenant, error = %e, "tenant job panicked");
                    if act.closing {
                        ctx.stop();
                    } else {
                        act.pump(ctx);
                    }
                }
            }
        }));
    }
}

fn upsert_len(env: &Envelope) -> usize {
    match &env.command {
        Command::Upsert(docs) => docs.len(),
        Command::Ingest(parts) => parts.iter().map(|p| p.docs.len()).sum(),
        _ => 0,
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(tenant = %self.tenant, generation = self.generation, "tenant actor started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let leftovers = self
            .queue
            .drain(..)
            .filter_map(|job| match job {
                Job::Request(env) => Some(env),
                Job::Close => None,
            })
            .collect();
        // Dropping the store (if a panic left one) closes it before we report.
        self.store = None;
        tracing::debug!(tenant = %self.tenant, generation = self.generation, "tenant actor stopped");
        self.supervisor.do_send(Closed {
            tenant: self.tenant.clone(),
            generation: self.generation,
            leftovers,
        });
    }
}

impl Handler<Envelope> for TenantActor {
    type Result = ();

    fn handle(&mut self, env: Envelope, ctx: &mut Self::Context) {
        if let Err(e) = &self.policy {
            env.fail(e.clone());
            return;
        }
        let mut env = env;
        if let Some(limiter) = self.limiter.as_mut() {
            let rate = limiter.rate();
            let limited = || {
                ServiceError::rate_limited(format!(
                    "tenant {} sends more than {rate} requests per second",
                    self.tenant,
                ))
            };
            let now = Instant::now();
            if let Command::Ingest(parts) = &mut env.command {
                // Each message is a request; the ones the bucket admits go
                // on, and the first refused one stops the rest, so what
                // is retried later is always a tail of the stream.
                let admitted = parts
                    .iter()
                    .take_while(|_| limiter.try_acquire(now))
                    .count();
                let limited = limited();
                for part in parts.drain(admitted..) {
                    part.reply.send(Err(limited.clone()));
                }
                if parts.is_empty() {
                    env.reply.send(Err(limited));
                    return;
                }
            } else if !limiter.try_acquire(now) {
                env.reply.send(Err(limited()));
                return;
            }
        }
        self.queue.push_back(Job::Request(env));
        self.pump(ctx);
    }
}

impl Handler<Close> for TenantActor {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Self::Context) {
        self.queue.push_back(Job::Close);
        self.pump(ctx);
    }
}
