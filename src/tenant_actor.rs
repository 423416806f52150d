//! The tenant actor: the one owner of a tenant's store while the tenant is
//! active.
//!
//! Owns the tenant's queue of jobs and applies them strictly in arrival order,
//! one job at a time, each on the blocking pool. Consecutive upserts are
//! applied as one write and one flush (group commit), each request still
//! getting its own reply. It must never run engine work on an async thread,
//! never reply before a write is durable, and never stop with work in its
//! queue: whatever it has not applied goes back to the supervisor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use std::time::Instant;

use crate::embed::Embedder;
use crate::filter::Filter;
use crate::policy::{RateLimiter, TenantDefaults, TenantPolicy};
use crate::protocol::{Doc, Reply, ServiceError};
use crate::store::{Record, SearchQuery, Selector, StoreFactory, TenantStore};
use crate::tenant::{TenantId, TenantPaths};

/// Most documents applied in one group commit.
const MAX_GROUP_DOCS: usize = 8192;

/// Where a request's outcome goes; the transport waits on the other end.
pub type ReplyTo = oneshot::Sender<Result<Reply, ServiceError>>;

/// A validated request for one tenant.
#[derive(Debug)]
pub enum Command {
    Upsert(Vec<Doc>),
    Search(SearchCommand),
    Get {
        doc_ids: Vec<String>,
        with_vectors: bool,
    },
    Delete(Selector),
    Count(Option<Filter>),
    Drop,
}

impl Command {
    pub fn is_upsert(&self) -> bool {
        matches!(self, Command::Upsert(_))
    }
}

#[derive(Debug)]
pub enum QueryInput {
    Text(String),
    Vector(Vec<f32>),
}

#[derive(Debug)]
pub struct SearchCommand {
    pub input: QueryInput,
    /// `None`: the tenant's default, else the worker's.
    pub top_k: Option<usize>,
    pub filter: Option<Filter>,
    pub with_vectors: bool,
}

/// A command on its way to a tenant, with the channel for its reply.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Envelope {
    pub tenant: TenantId,
    pub command: Command,
    pub reply: ReplyTo,
    /// The request's span (tenant and request id): entered while the job
    /// works on it, so whatever it logs on the blocking pool says whose it is.
    pub span: tracing::Span,
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
    /// Where tenant policy files live.
    pub paths: TenantPaths,
    pub defaults: TenantDefaults,
    pub default_top_k: usize,
    pub max_top_k: usize,
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
                self.wrote |= batch
                    .iter()
                    .any(|e| matches!(e.command, Command::Upsert(_) | Command::Delete(_)));
                self.run(ctx, Work::Batch(batch));
            }
        }
    }

    fn run(&mut self, ctx: &mut Context<Self>, work: Work) {
        self.busy = true;
        let mut store = self.take_store();
        let setup = self.setup.clone();
        let tenant = self.tenant.clone();
        let limits = JobLimits {
            top_k: self
                .policy
                .as_ref()
                .ok()
                .and_then(|p| p.top_k)
                .unwrap_or(setup.default_top_k),
            max_documents: self.policy.as_ref().ok().and_then(|p| p.max_documents),
        };
        let job = tokio::task::spawn_blocking(move || {
            let close = matches!(work, Work::Close);
            work.apply(&tenant, store.as_mut(), setup.embedder.as_ref(), &limits);
            (store, close)
        });
        ctx.spawn(job.into_actor(self).map(|outcome, act, ctx| {
            act.busy = false;
            match outcome {
                Ok((_, true)) => ctx.stop(),
                Ok((store, false)) => {
                    act.store = Some(store);
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
        embedder: &dyn Embedder,
        limits: &JobLimits,
    ) {
        match self {
            Work::Batch(batch) if batch[0].command.is_upsert() => {
                apply_upserts(tenant, store, embedder, batch, limits.max_documents)
            }
            Work::Batch(batch) => {
                for env in batch {
                    let _entered = env.span.enter();
                    let result = apply_one(store, embedder, env.command, limits.top_k);
                    let _ = env.reply.send(result);
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

/// Apply several upsert requests as one write: each request is checked on
/// its own (a bad one, or one that would take the tenant over its quota,
/// fails alone), the good ones are written together, and every request gets
/// the outcome of that one write.
fn apply_upserts(
    tenant: &TenantId,
    store: &mut dyn TenantStore,
    embedder: &dyn Embedder,
    batch: Vec<Envelope>,
    quota: Option<u64>,
) {
    let dimension = match store.dimension() {
        Ok(d) => d,
        Err(e) => {
            for env in batch {
                let _ = env.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut quota = match quota.map(|q| Quota::new(tenant, store, q)).transpose() {
        Ok(q) => q,
        Err(e) => {
            for env in batch {
                let _ = env.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut records = Vec::new();
    let mut accepted = Vec::with_capacity(batch.len());
    // The one write of the batch is logged under its first request's span.
    let write_span = batch[0].span.clone();
    for env in batch {
        let _entered = env.span.enter();
        let Command::Upsert(docs) = env.command else {
            continue;
        };
        let n = docs.len();
        if let Some(q) = quota.as_mut() {
            if let Err(e) = q.admit(store, &docs) {
                let _ = env.reply.send(Err(e));
                continue;
            }
        }
        match to_records(docs, dimension, embedder) {
            Ok(mut r) => {
                records.append(&mut r);
                accepted.push((env.reply, n));
            }
            Err(e) => {
                let _ = env.reply.send(Err(e));
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
    let outcome = write_span.in_scope(|| store.upsert(records));
    for (reply, n) in accepted {
        let _ = reply.send(outcome.clone().map(|()| Reply::Upserted { upserted: n }));
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
    fn admit(&mut self, store: &mut dyn TenantStore, docs: &[Doc]) -> Result<(), ServiceError> {
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

fn to_records(
    docs: Vec<Doc>,
    dimension: usize,
    embedder: &dyn Embedder,
) -> Result<Vec<Record>, ServiceError> {
    docs.into_iter()
        .map(|doc| {
            let vector = match (doc.vector, &doc.text) {
                (Some(v), _) => v,
                (None, Some(text)) => embed(embedder, text, dimension)?,
                (None, None) => {
                    return Err(ServiceError::bad_request(format!(
                        "document {:?} has neither text nor vector",
                        doc.doc_id
                    )))
                }
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

fn embed(embedder: &dyn Embedder, text: &str, dimension: usize) -> Result<Vec<f32>, ServiceError> {
    if embedder.dimension() != dimension {
        return Err(ServiceError::dimension_mismatch(format!(
            "the embedder makes {} dimensions, the tenant's store has {dimension}; send vectors",
            embedder.dimension()
        )));
    }
    embedder.embed(text)
}

fn apply_one(
    store: &mut dyn TenantStore,
    embedder: &dyn Embedder,
    command: Command,
    default_top_k: usize,
) -> Result<Reply, ServiceError> {
    match command {
        Command::Upsert(_) => Err(ServiceError::internal("upsert outside a write batch")),
        Command::Search(s) => {
            let vector = match s.input {
                QueryInput::Vector(v) => v,
                QueryInput::Text(text) => embed(embedder, &text, store.dimension()?)?,
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
            Ok(Reply::Dropped { dropped: true })
        }
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
            let _ = env.reply.send(Err(e.clone()));
            return;
        }
        if let Some(limiter) = self.limiter.as_mut() {
            if !limiter.try_acquire(Instant::now()) {
                let _ = env.reply.send(Err(ServiceError::rate_limited(format!(
                    "tenant {} sends more than {} requests per second",
                    self.tenant,
                    limiter.rate()
                ))));
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
