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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::command::{Command, Envelope, QueryInput, ReplyTo};
use crate::embed::{record, Embedder, Purpose};
use crate::policy::{RateLimiter, TenantDefaults, TenantPolicy};
use crate::protocol::{Doc, Reply, ServiceError};
use crate::store::{Record, SearchQuery, StoreFactory, TenantStore};
use crate::tenant::{TenantId, TenantPaths};

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

/// The tenant's limits a job applies.
struct JobLimits {
    /// `top_k` of a search that gives none.
    top_k: usize,
    /// The document quota.
    max_documents: Option<u64>,
}

/// What one job does on the blocking pool.
enum Work {
    Batch(Vec<Envelope>),
    Maintain,
    Close,
}

impl Work {
    fn apply(
        self,
        tenant: &TenantId,
        store: &mut dyn TenantStore,
        embedding: &Embedding,
        limits: &JobLimits,
    ) {
        match self {
            Work::Batch(batch) if batch[0].command.is_upsert() => {
                apply_upserts(tenant, store, embedding, batch, limits.max_documents)
            }
            Work::Batch(batch) => {
                for env in batch {
                    let _entered = env.span.enter();
                    let result = apply_one(store, embedding, env.command, limits.top_k);
                    env.reply.send(result);
                }
            }
            Work::Maintain => match store.maintain() {
                Ok(true) => tracing::info!(%tenant, "store optimized"),
                Ok(false) => {}
                Err(e) => tracing::warn!(%tenant, error = %e, "maintenance failed"),
            },
            Work::Close => {
                if let Err(e) = store.close() {
                    tracing::error!(%tenant, error = %e, "closing the store failed");
                }
            }
        }
    }
}

/// One request's documents inside a group commit, with where its outcome goes.
struct Write {
    docs: Vec<Doc>,
    reply: ReplyTo,
    span: tracing::Span,
    /// The ingest envelope it came from: a transient failure stops the
    /// later parts of the same envelope.
    chain: Option<usize>,
}

/// Split a batch of upsert and ingest envelopes into their writes, in order.
/// An ingest envelope's own reply gets the outcome of the whole write.
fn writes(batch: Vec<Envelope>) -> (Vec<Write>, Vec<ReplyTo>) {
    let mut writes = Vec::new();
    let mut envelope_replies = Vec::new();
    for (i, env) in batch.into_iter().enumerate() {
        match env.command {
            Command::Upsert(docs) => writes.push(Write {
                docs,
                reply: env.reply,
                span: env.span,
                chain: None,
            }),
            Command::Ingest(parts) => {
                for part in parts {
                    writes.push(Write {
                        docs: part.docs,
                        reply: part.reply,
                        span: env.span.clone(),
                        chain: Some(i),
                    });
                }
                envelope_replies.push(env.reply);
            }
            _ => env.fail(ServiceError::internal("not a write in a write batch")),
        }
    }
    (writes, envelope_replies)
}

/// Apply several upsert requests (and ingest messages) as one write: each
/// is checked on its own (a bad one, or one that would take the tenant over
/// its quota, fails alone), the good ones are written together, and every
/// request gets the outcome of that one write. The quota counts a request's
/// documents only once it has passed every other check, so a refused
/// request never uses up room a later one needs.
fn apply_upserts(
    tenant: &TenantId,
    store: &mut dyn TenantStore,
    embedding: &Embedding,
    batch: Vec<Envelope>,
    quota: Option<u64>,
) {
    let write_span = batch[0].span.clone();
    let (writes, envelope_replies) = writes(batch);
    let fail_all = |writes: Vec<Write>, replies: Vec<ReplyTo>, e: &ServiceError| {
        for w in writes {
            w.reply.send(Err(e.clone()));
        }
        for r in replies {
            r.send(Err(e.clone()));
        }
    };
    let dimension = match store.dimension() {
        Ok(d) => d,
        Err(e) => return fail_all(writes, envelope_replies, &e),
    };
    let mut quota = match quota.map(|q| Quota::new(tenant, store, q)).transpose() {
        Ok(q) => q,
        Err(e) => return fail_all(writes, envelope_replies, &e),
    };
    let mut records = Vec::new();
    let mut accepted = Vec::with_capacity(writes.len());
    // Ingest envelopes stopped by a transient failure, with that failure.
    let mut stopped: HashMap<usize, ServiceError> = HashMap::new();
    for w in writes {
        let _entered = w.span.enter();
        if let Some(e) = w.chain.and_then(|c| stopped.get(&c)) {
            w.reply.send(Err(ServiceError {
                code: e.code,
                message: format!(
                    "not applied: an earlier message failed first ({})",
                    e.message
                ),
            }));
            continue;
        }
        let n = w.docs.len();
        let checked = to_records(w.docs, dimension, embedding).and_then(|r| {
            if let Some(q) = quota.as_mut() {
                q.admit(store, &r)?;
            }
            Ok(r)
        });
        match checked {
            Ok(mut r) => {
                records.append(&mut r);
                accepted.push((w.reply, n));
            }
            Err(e) => {
                if let (Some(c), true) = (w.chain, e.code.is_transient()) {
                    stopped.insert(c, e.clone());
                }
                w.reply.send(Err(e));
            }
        }
    }
    // A doc_id written twice in one write: the last one wins.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        last.insert(r.doc_id.as_str(), i);
    }
    let records: Vec<Record> = if last.len() == records.len() {
        records
    } else {
        let keep: Vec<bool> = (0..records.len())
            .map(|i| last.get(records[i].doc_id.as_str()) == Some(&i))
            .collect();
        records
            .into_iter()
            .zip(keep)
            .filter_map(|(r, k)| k.then_some(r))
            .collect()
    };
    let outcome = write_span
        .in_scope(|| store.upsert(records))
        .and_then(|()| embedding.record());
    let mut total = 0;
    for (reply, n) in accepted {
        total += n;
        reply.send(outcome.clone().map(|()| Reply::Upserted { upserted: n }));
    }
    for reply in envelope_replies {
        reply.send(
            outcome
                .clone()
                .map(|()| Reply::Upserted { upserted: total }),
        );
    }
}

/// A tenant's document quota, counted across the requests of one write.
struct Quota {
    limit: u64,
    held: u64,
    /// doc_ids this write adds that the store does not hold yet.
    adding: std::collections::HashSet<String>,
    tenant: String,
}

impl Quota {
    fn new(
        tenant: &TenantId,
        store: &mut dyn TenantStore,
        limit: u64,
    ) -> Result<Self, ServiceError> {
        Ok(Self {
            limit,
            held: store.count(None)? as u64,
            adding: std::collections::HashSet::new(),
            tenant: tenant.to_string(),
        })
    }

    /// Count the request's new documents in, or refuse it whole.
    fn admit(&mut self, store: &mut dyn TenantStore, docs: &[Record]) -> Result<(), ServiceError> {
        let ids: Vec<String> = docs
            .iter()
            .map(|d| d.doc_id.clone())
            .filter(|id| !self.adding.contains(id))
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let existing: std::collections::HashSet<String> = store
            .get(&ids, false)?
            .into_iter()
            .map(|d| d.doc_id)
            .collect();
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !existing.contains(id))
            .collect();
        let after = self.held + self.adding.len() as u64 + new.len() as u64;
        if after > self.limit {
            return Err(ServiceError::quota_exceeded(format!(
                "tenant {} would hold {after} documents, its quota is {}",
                self.tenant, self.limit
            )));
        }
        self.adding.extend(new);
        Ok(())
    }
}

/// The documents as records: vectors checked, and made for those that came
/// with text only, all of a request's texts in one call to the embedder.
fn to_records(
    docs: Vec<Doc>,
    dimension: usize,
    embedding: &Embedding,
) -> Result<Vec<Record>, ServiceError> {
    if let Some(doc) = docs.iter().find(|d| d.vector.is_none() && d.text.is_none()) {
        return Err(ServiceError::bad_request(format!(
            "document {:?} has neither text nor vector",
            doc.doc_id
        )));
    }
    let texts: Vec<&str> = docs
        .iter()
        .filter(|d| d.vector.is_none())
        .filter_map(|d| d.text.as_deref())
        .collect();
    let mut made = if texts.is_empty() {
        Vec::new()
    } else {
        embedding.documents(&texts, dimension)?
    }
    .into_iter();
    docs.into_iter()
        .map(|doc| {
            let vector = match doc.vector {
                Some(v) => v,
                None => made
                    .next()
                    .ok_or_else(|| ServiceError::internal("the embedder made too few vectors"))?,
            };
            if vector.len() != dimension {
                return Err(ServiceError::dimension_mismatch(format!(
                    "document {:?}: vector has {} dimensions, the tenant's store has {dimension}",
                    doc.doc_id,
                    vector.len()
                )));
            }
            Ok(Record {
                doc_id: doc.doc_id,
                text: doc.text,
                metadata: doc.metadata,
                vector,
            })
        })
        .collect()
}

/// The embedder as one job of one tenant uses it: the dimension and the
/// tenant's embedder record checked before any text is sent, the record
/// written after the first write of vectors it made.
pub struct Embedding<'a> {
    embedder: &'a dyn Embedder,
    records: &'a record::Records,
    tenant: &'a TenantId,
    /// Vectors were made for a tenant that has no record yet.
    unrecorded: std::cell::Cell<bool>,
}

impl<'a> Embedding<'a> {
    pub fn new(
        embedder: &'a dyn Embedder,
        records: &'a record::Records,
        tenant: &'a TenantId,
    ) -> Self {
        Self {
            embedder,
            records,
            tenant,
            unrecorded: std::cell::Cell::new(false),
        }
    }

    fn check(&self, dimension: usize) -> Result<(), ServiceError> {
        if self.embedder.dimension() != dimension {
            return Err(ServiceError::dimension_mismatch(format!(
                "the embedder makes {} dimensions, the tenant's store has {dimension}; send vectors",
                self.embedder.dimension()
            )));
        }
        if !self.records.check(self.tenant, self.embedder)? {
            self.unrecorded.set(true);
        }
        Ok(())
    }

    fn documents(&self, texts: &[&str], dimension: usize) -> Result<Vec<Vec<f32>>, ServiceError> {
        self.check(dimension)?;
        let vectors = self.embedder.embed(texts, Purpose::Document)?;
        if vectors.len() != texts.len() {
            return Err(ServiceError::internal(format!(
                "the embedder made {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    fn query(&self, text: &str, dimension: usize) -> Result<Vec<f32>, ServiceError> {
        self.check(dimension)?;
        self.embedder
            .embed(&[text], Purpose::Query)?
            .pop()
            .ok_or_else(|| ServiceError::internal("the embedder made no vector"))
    }

    /// The embedder, where its records are, and the tenant (for `crate::backup`).
    pub fn parts(&self) -> (&'a dyn Embedder, &'a record::Records, &'a TenantId) {
        (self.embedder, self.records, self.tenant)
    }

    /// The tenant was dropped: its vectors and their record are gone.
    fn forget(&self) -> Result<(), ServiceError> {
        self.records.remove(self.tenant)
    }

    /// After a successful write: record the embedder if this job made the
    /// tenant's first vectors.
    fn record(&self) -> Result<(), ServiceError> {
        if self.unrecorded.replace(false) {
            self.records.write(self.tenant, self.embedder)?;
        }
        Ok(())
    }
}

fn apply_one(
    store: &mut dyn TenantStore,
    embedding: &Embedding,
    command: Command,
    default_top_k: usize,
) -> Result<Reply, ServiceError> {
    match command {
        Command::Upsert(_) | Command::Ingest(_) => {
            Err(ServiceError::internal("a write outside a write batch"))
        }
        Command::Search(s) => {
            let vector = match s.input {
                QueryInput::Vector(v) => v,
                QueryInput::Text(text) => embedding.query(&text, store.dimension()?)?,
            };
            let query = SearchQuery {
                vector,
                top_k: s.top_k.unwrap_or(default_top_k),
                filter: s.filter,
                with_vectors: s.with_vectors,
            };
            Ok(Reply::Results {
                results: store.search(&query)?,
            })
        }
        Command::Get {
            doc_ids,
            with_vectors,
            ..
        } => Ok(Reply::Documents {
            documents: store.get(&doc_ids, with_vectors)?,
        }),
        Command::Delete(selector) => Ok(Reply::Deleted {
            deleted: store.delete(&selector)?,
        }),
        Command::Count(filter) => Ok(Reply::Count {
            count: store.count(filter.as_ref())?,
        }),
        Command::Drop => {
            store.drop_tenant()?;
            embedding.forget()?;
            Ok(Reply::Dropped { dropped: true })
        }
        Command::Export(request) => crate::backup::export(store, embedding, request),
        Command::Import(request) => crate::backup::import(store, embedding, request),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::IngestPart;
    use crate::config::Settings;
    use crate::embed::HashingEmbedder;
    use crate::store::StoreFactory;
    use serde_json::Map;

    const DIM: usize = 8;

    fn doc(id: &str, dim: usize) -> Doc {
        Doc {
            doc_id: id.into(),
            text: None,
            metadata: Map::new(),
            vector: Some(vec![0.5; dim]),
        }
    }

    fn envelope(
        tenant: &TenantId,
        command: Command,
    ) -> (Envelope, tokio::sync::oneshot::Receiver<ReplyOutcome>) {
        let (reply, outcome) = ReplyTo::channel();
        let env = Envelope {
            tenant: tenant.clone(),
            command,
            reply,
            span: tracing::Span::none(),
        };
        (env, outcome)
    }

    type ReplyOutcome = Result<Reply, ServiceError>;

    /// A document the store holds before the write under test.
    fn old_record() -> Record {
        Record {
            doc_id: "old".into(),
            text: None,
            metadata: Map::new(),
            vector: vec![0.5; DIM],
        }
    }

    fn store(dir: &std::path::Path, tenant: &TenantId) -> Box<dyn TenantStore> {
        let mut settings = Settings::defaults();
        settings.store.folder = dir.to_owned();
        settings.store.dimension = DIM;
        crate::store::edge::EdgeFactory::new(&settings)
            .unwrap()
            .open(tenant)
    }

    /// The embedder records of tenants under `dir` (the per-tenant layout's).
    fn records(dir: &std::path::Path) -> record::Records {
        record::Records::new(TenantPaths::new(dir), true)
    }

    /// A request refused for a bad vector reserves nothing: a valid request
    /// in the same group commit still fits the quota.
    #[test]
    fn a_refused_request_takes_no_quota() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::parse("q").unwrap();
        let mut store = store(dir.path(), &tenant);
        store.upsert(vec![old_record()]).unwrap();
        let (bad, bad_reply) = envelope(&tenant, Command::Upsert(vec![doc("new-bad", DIM + 1)]));
        let (good, good_reply) = envelope(&tenant, Command::Upsert(vec![doc("new-good", DIM)]));
        let embedder = HashingEmbedder::new(DIM);
        let records = records(dir.path());
        let embedding = Embedding::new(&embedder, &records, &tenant);
        apply_upserts(
            &tenant,
            store.as_mut(),
            &embedding,
            vec![bad, good],
            Some(2),
        );
        let bad = bad_reply.blocking_recv().unwrap().unwrap_err();
        assert_eq!(bad.code, crate::protocol::ErrorCode::DimensionMismatch);
        assert!(good_reply.blocking_recv().unwrap().is_ok());
        assert_eq!(store.count(None).unwrap(), 2);
    }

    /// The hashing embedder, except that the text "down" finds it
    /// unavailable, as a remote embedder in an outage would be.
    struct Outage(HashingEmbedder);

    impl Embedder for Outage {
        fn name(&self) -> &str {
            "outage"
        }
        fn dimension(&self) -> usize {
            self.0.dimension()
        }
        fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
            if texts.contains(&"down") {
                return Err(ServiceError::unavailable("the embedder is down"));
            }
            self.0.embed(texts, purpose)
        }
    }

    /// Inside an ingest command, a part that fails for a reason that may pass
    /// stops the parts after it (not written, answered with the same code);
    /// a permanent failure stops nothing.
    #[test]
    fn an_ingest_part_failing_transiently_stops_the_later_parts() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::parse("i").unwrap();
        let mut store = store(dir.path(), &tenant);
        let with_text = |id: &str, text: Option<&str>| Doc {
            text: text.map(str::to_owned),
            vector: None,
            ..doc(id, DIM)
        };
        let mut replies = Vec::new();
        let mut parts = Vec::new();
        for docs in [
            vec![doc("a", DIM)],
            vec![with_text("b", None)],
            vec![doc("c", DIM)],
            vec![with_text("d", Some("down"))],
            vec![doc("e", DIM)],
        ] {
            let (reply, outcome) = ReplyTo::channel();
            parts.push(IngestPart { docs, reply });
            replies.push(outcome);
        }
        let (env, _) = envelope(&tenant, Command::Ingest(parts));
        let embedder = Outage(HashingEmbedder::new(DIM));
        let records = records(dir.path());
        let embedding = Embedding::new(&embedder, &records, &tenant);
        apply_upserts(&tenant, store.as_mut(), &embedding, vec![env], None);
        use crate::protocol::ErrorCode;
        let codes: Vec<Option<ErrorCode>> = replies
            .into_iter()
            .map(|r| r.blocking_recv().unwrap().err().map(|e| e.code))
            .collect();
        assert_eq!(
            codes,
            vec![
                None,
                Some(ErrorCode::BadRequest),
                None,
                Some(ErrorCode::Unavailable),
                Some(ErrorCode::Unavailable),
            ]
        );
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let stored: Vec<String> = store
            .get(&ids, false)
            .unwrap()
            .into_iter()
            .map(|d| d.doc_id)
            .collect();
        assert_eq!(stored, vec!["a", "c"]);
    }

    mod over_memory {
        //! The job logic against [`MemoryStore`]: group commit, last write
        //! wins, the quota and the embedder, without shards on disk.

        use super::*;
        use crate::command::SearchCommand;
        use crate::filter::Filter;
        use crate::store::memory::MemoryStore;
        use crate::store::Selector;

        fn text_doc(id: &str, text: &str) -> Doc {
            Doc {
                doc_id: id.into(),
                text: Some(text.into()),
                metadata: Map::new(),
                vector: None,
            }
        }

        /// A data folder (kept while the test runs), a tenant, the hashing
        /// embedder and the folder's embedder records.
        fn setup() -> (
            tempfile::TempDir,
            TenantId,
            HashingEmbedder,
            record::Records,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let records = records(dir.path());
            (
                dir,
                TenantId::parse("m").unwrap(),
                HashingEmbedder::new(DIM),
                records,
            )
        }

        /// Three upserts become one write; each gets its own count, and a
        /// doc_id written twice keeps the later version.
        #[test]
        fn upserts_are_one_write_and_the_last_version_wins() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let (a, ra) = envelope(&tenant, Command::Upsert(vec![text_doc("x", "first")]));
            let (b, rb) = envelope(
                &tenant,
                Command::Upsert(vec![text_doc("y", "other"), text_doc("x", "second")]),
            );
            let (c, rc) = envelope(&tenant, Command::Upsert(vec![doc("z", DIM)]));
            apply_upserts(&tenant, &mut store, &embedding, vec![a, b, c], None);
            let upserted = |r: tokio::sync::oneshot::Receiver<ReplyOutcome>| match r
                .blocking_recv()
                .unwrap()
                .unwrap()
            {
                Reply::Upserted { upserted } => upserted,
                other => panic!("{other:?}"),
            };
            assert_eq!((upserted(ra), upserted(rb), upserted(rc)), (1, 2, 1));
            assert_eq!(store.writes, 1, "one group commit");
            let got = store.get(&["x".into()], false).unwrap();
            assert_eq!(got[0].text.as_deref(), Some("second"));
            assert_eq!(store.count(None).unwrap(), 3);
            // The embedder made the text documents' vectors and is recorded.
            assert_eq!(records.read(&tenant).unwrap().unwrap().model, "hashing");
        }

        /// The quota counts new documents only, across the requests of one
        /// write: the request that would pass it fails alone.
        #[test]
        fn the_quota_refuses_only_the_request_past_it() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            store.upsert(vec![old_record()]).unwrap();
            let (a, ra) = envelope(
                &tenant,
                Command::Upsert(vec![doc("old", DIM), doc("n1", DIM)]),
            );
            let (b, rb) = envelope(&tenant, Command::Upsert(vec![doc("n2", DIM)]));
            let (c, rc) = envelope(&tenant, Command::Upsert(vec![doc("n1", DIM)]));
            apply_upserts(&tenant, &mut store, &embedding, vec![a, b, c], Some(2));
            assert!(ra.blocking_recv().unwrap().is_ok());
            let refused = rb.blocking_recv().unwrap().unwrap_err();
            assert_eq!(refused.code, crate::protocol::ErrorCode::QuotaExceeded);
            assert!(rc.blocking_recv().unwrap().is_ok(), "n1 is not new");
            assert_eq!(store.count(None).unwrap(), 2);
        }

        /// Reads and deletes through `apply_one`: the tenant's default
        /// top_k, filters, text queries through the embedder.
        #[test]
        fn reads_and_deletes_apply_the_tenant_s_defaults() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let docs: Vec<Doc> = (0..5)
                .map(|i| {
                    let mut d = text_doc(&format!("d{i}"), &format!("note number {i}"));
                    d.metadata.insert("even".into(), (i % 2 == 0).into());
                    d
                })
                .collect();
            let (env, _) = envelope(&tenant, Command::Upsert(docs));
            apply_upserts(&tenant, &mut store, &embedding, vec![env], None);
            let search = |input, filter: Option<Filter>| {
                Command::Search(SearchCommand {
                    input,
                    top_k: None,
                    filter,
                    with_vectors: false,
                    encoding: Default::default(),
                })
            };
            let results = |reply| match reply {
                Ok(Reply::Results { results }) => results,
                other => panic!("{other:?}"),
            };
            let text = QueryInput::Text("note number 3".into());
            let hits = results(apply_one(&mut store, &embedding, search(text, None), 2));
            assert_eq!(hits.len(), 2, "the tenant's default top_k");
            assert_eq!(hits[0].doc_id, "d3");
            let even = Filter::parse(&serde_json::json!({"even": true})).unwrap();
            let vector = QueryInput::Vector(embedder.vector("note number 3").unwrap());
            let hits = results(apply_one(
                &mut store,
                &embedding,
                search(vector, Some(even.clone())),
                10,
            ));
            assert_eq!(hits.len(), 3);
            assert!(hits.iter().all(|h| h.metadata["even"] == true));
            let deleted = apply_one(
                &mut store,
                &embedding,
                Command::Delete(Selector::Filter(even)),
                5,
            );
            assert_eq!(deleted, Ok(Reply::Deleted { deleted: 3 }));
            assert_eq!(
                apply_one(&mut store, &embedding, Command::Count(None), 5),
                Ok(Reply::Count { count: 2 })
            );
        }
    }
}
