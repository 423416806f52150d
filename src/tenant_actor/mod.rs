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
use crate::crypto::DataKey;
use crate::embed::record::Records;
use crate::embed::{Embedder, Embedding};
use crate::policy::{RateLimiter, TenantDefaults, TenantPolicy, TenantSettings};
use crate::protocol::{ErrorCode, ServiceError};
use crate::registry::keys::{Keys, TenantKeys};
use crate::registry::record::CloseWrite;
use crate::registry::{record, Found, Registry, TenantRecord};
use crate::store::{StoreFactory, TenantStore};
use crate::tenant::{TenantId, TenantPaths};

mod jobs;

use jobs::{apply_one, folder_bytes, JobLimits, Work};

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

/// How long after a failed read of its registry record an actor tries
/// again, on its next request (JetStream was away).
const RELOAD_AFTER: Duration = Duration::from_secs(1);

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Sent by the supervisor: finish the queue, close the store, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

/// The tenant's registry record changed: take its settings from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub TenantRecord);

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
    pub records: Records,
    /// Where tenant policy files live.
    pub paths: TenantPaths,
    pub defaults: TenantDefaults,
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// Where the pool's moves are recorded.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The tenant registry (`tenants.registry`); without it, a tenant's
    /// settings are its `tenant.json`.
    pub registry: Option<Registry>,
    /// A first write makes a tenant's record (`tenants.auto_create`).
    pub auto_create: bool,
    /// `encryption.enabled`: the keyring and the key store that give each
    /// tenant's data key to its store.
    pub keys: Option<Keys>,
}

pub struct TenantActor {
    tenant: TenantId,
    generation: u64,
    setup: Arc<TenantSetup>,
    supervisor: Recipient<Closed>,
    /// The tenant's policy, read when the actor starts (from its registry
    /// record, else its `tenant.json`); an unreadable one fails every
    /// request (fail closed), and so does a tenant without a record when
    /// `tenants.auto_create` is off (`unknown_tenant`).
    policy: Result<TenantPolicy, ServiceError>,
    /// The tenant has a registry record (read, made from its files, made by
    /// its first write, or created by an operator meanwhile).
    registered: bool,
    /// When the read of its record last failed; the next request after
    /// [`RELOAD_AFTER`] tries again.
    load_failed: Option<Instant>,
    /// A request that arrived while the record was read again.
    held: Vec<Envelope>,
    /// The last write was a `drop`: nothing is left to count at close.
    dropped: bool,
    /// A write ran since the actor started: its figures are written at close.
    wrote_any: bool,
    /// The record's `last_active` as the actor read it.
    last_active: Option<String>,
    /// The region the tenant is being moved to (`tenants move`): its
    /// writes are refused meanwhile.
    moving: Option<String>,
    limiter: Option<RateLimiter>,
    /// `None` only while a job has it on the blocking pool.
    store: Option<Box<dyn TenantStore>>,
    /// The tenant's data key (`encryption.enabled`), once read from its
    /// record; given to every store handle the actor makes.
    data_key: Option<Arc<DataKey>>,
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
        // With a registry the record is read when the actor starts (see
        // `started`), before it takes a request. Without, the policy is a
        // small file, read once per activation: not worth a trip to the
        // blocking pool before the actor can take its first request.
        let policy = match setup.registry {
            Some(_) => default_policy(&setup),
            None => TenantPolicy::load(&setup.paths, &tenant, &setup.defaults, setup.max_top_k),
        };
        let mut actor = Self {
            tenant,
            generation,
            setup,
            supervisor,
            policy: Err(ServiceError::internal("no policy yet")),
            registered: false,
            load_failed: None,
            held: Vec::new(),
            dropped: false,
            wrote_any: false,
            last_active: None,
            moving: None,
            limiter: None,
            store: Some(store),
            data_key: None,
            queue: VecDeque::new(),
            busy: false,
            closing: false,
            wrote: false,
            read_cost: Duration::ZERO,
        };
        actor.set_policy(policy);
        actor
    }

    fn set_policy(&mut self, policy: Result<TenantPolicy, ServiceError>) {
        if let Err(e) = &policy {
            if e.code == ErrorCode::Internal {
                tracing::error!(tenant = %self.tenant, error = %e, "tenant policy unreadable; refusing its requests");
            }
        }
        self.limiter = policy
            .as_ref()
            .ok()
            .and_then(|p| p.max_rps)
            .map(|rate| RateLimiter::new(rate, Instant::now()));
        self.policy = policy;
    }

    /// Read the tenant's record (or make it from the files of before)
    /// before the actor takes another message.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let Some(registry) = self.setup.registry.clone() else {
            return;
        };
        let setup = self.setup.clone();
        let tenant = self.tenant.clone();
        let read = async move {
            let found = registry
                .activate(&tenant, &setup.paths, &setup.records)
                .await;
            // With encryption, the tenant's data key comes with its record
            // (a rotation the last activation left unfinished, finished).
            let key = match (&found, &setup.keys) {
                (Ok(Found::Record(_) | Found::Migrated(_)), Some(keys)) => {
                    Some(match keys.tenant_keys(tenant.as_str()).await {
                        Ok(TenantKeys {
                            current,
                            next: None,
                        }) => Ok(Arc::new(current)),
                        Ok(TenantKeys {
                            current,
                            next: Some(next),
                        }) => {
                            let (current, next) = (Arc::new(current), Arc::new(next));
                            let (setup, tenant) = (setup.clone(), tenant.clone());
                            tokio::task::spawn_blocking(move || {
                                finish_rotation(&setup, &tenant, current, next)
                            })
                            .await
                            .unwrap_or_else(|e| {
                                Err(ServiceError::internal(format!(
                                    "finishing a key rotation failed: {e}"
                                )))
                            })
                        }
                        Err(e) => Err(e),
                    })
                }
                _ => None,
            };
            (found, key)
        };
        ctx.wait(read.into_actor(self).map(|(found, key), act, ctx| {
            act.found(found);
            match key {
                Some(Ok(key)) => act.give_key(key),
                Some(Err(e)) => {
                    tracing::error!(tenant = %act.tenant, error = %e, "cannot open the tenant's data key; refusing its requests");
                    if e.code == ErrorCode::Unavailable {
                        act.load_failed = Some(Instant::now());
                    }
                    act.set_policy(Err(e));
                }
                None => {}
            }
            for env in std::mem::take(&mut act.held) {
                act.admit(env, ctx);
            }
        }));
    }

    fn found(&mut self, found: Result<Found, ServiceError>) {
        self.load_failed = None;
        match found {
            Ok(Found::Record(record)) => self.adopt(&record),
            Ok(Found::Migrated(record)) => {
                tracing::info!(
                    tenant = %self.tenant,
                    settings = ?record.settings,
                    embedder = ?record.embedder,
                    "tenant registered from its files (tenant.json, embedder.json, its store)"
                );
                self.adopt(&record);
            }
            Ok(Found::Missing) if self.setup.auto_create => {
                // The defaults, also after a read that failed before.
                self.registered = false;
                self.set_policy(default_policy(&self.setup));
            }
            Ok(Found::Missing) => {
                self.registered = false;
                self.set_policy(Err(ServiceError::unknown_tenant(format!(
                    "tenant {t} has no record and tenants.auto_create is off: \
                     create it first (tenantvec tenants create {t})",
                    t = self.tenant
                ))));
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, error = %e, "cannot read the tenant's registry record; refusing its requests until it can");
                self.load_failed = Some(Instant::now());
                self.set_policy(Err(e));
            }
        }
    }

    /// The tenant's data key, for this store and every one made after it.
    fn give_key(&mut self, key: Arc<DataKey>) {
        if let Some(store) = self.store.as_mut() {
            store.set_data_key(Some(key.clone()));
        }
        self.data_key = Some(key);
    }

    /// Take the settings of the tenant's record.
    fn adopt(&mut self, record: &TenantRecord) {
        self.registered = true;
        self.moving = match record.state {
            crate::registry::TenantState::Moving => record.moving_to.clone(),
            _ => None,
        };
        self.last_active = record.last_active.clone();
        let policy =
            TenantPolicy::resolve(&record.settings, &self.setup.defaults, self.setup.max_top_k)
                .map_err(|e| {
                    ServiceError::internal(format!(
                        "tenant {}: its registry record has an invalid setting: {e}",
                        self.tenant
                    ))
                });
        self.set_policy(policy);
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
            key: self.data_key.clone(),
        }
    }

    fn take_store(&mut self) -> Box<dyn TenantStore> {
        // After a job panicked its store is gone (and closed by unwinding);
        // a fresh handle reopens the data on its next job.
        self.store.take().unwrap_or_else(|| {
            let mut store = self.setup.factory.open(&self.tenant);
            if self.data_key.is_some() {
                store.set_data_key(self.data_key.clone());
            }
            store
        })
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
        let mut limits = self.job_limits();
        // A read that opens the store costs the open, not the read: only
        // reads of an open store price the next ones.
        let read =
            matches!(&work, Work::Batch(b) if !b[0].command.is_write()) && store.answers_inline();
        // A tenant's first write makes its record (`tenants.auto_create`).
        let create = !self.registered
            && self.setup.auto_create
            && matches!(&work, Work::Batch(b) if b[0].command.is_write() && !matches!(b[0].command, Command::Drop));
        // A write of a tenant whose key is not known yet (its first, which
        // makes its record): the key is read (or made) before the store opens.
        let is_drop = matches!(&work, Work::Batch(b) if matches!(b[0].command, Command::Drop));
        let need_key = self.setup.keys.is_some()
            && self.data_key.is_none()
            && !is_drop
            && matches!(&work, Work::Batch(b) if b.iter().any(|e| e.command.is_write()));
        // A drop destroys the tenant's key before its files go.
        let destroy_key = self.setup.keys.is_some() && is_drop;
        // `keys rotate`: the data encrypted again, under a new key.
        let rekey = matches!(&work, Work::Batch(b) if matches!(b[0].command, Command::Rekey));
        if let Work::Batch(b) = &work {
            if b.iter().any(|e| e.command.is_write()) {
                self.wrote_any = true;
                self.dropped = matches!(b.last().map(|e| &e.command), Some(Command::Drop));
            }
        }
        let closing = Closing {
            write: match self.registered {
                true => record::on_close(
                    self.wrote_any,
                    self.last_active.as_deref(),
                    std::time::SystemTime::now(),
                ),
                false => CloseWrite::Nothing,
            },
            dropped: self.dropped,
        };
        let job = tokio::task::spawn_blocking(move || {
            let started = thread_cpu();
            let close = matches!(work, Work::Close);
            let created = create && register(&setup, &tenant);
            let mut new_key = None;
            let key_step = match (need_key, destroy_key, rekey) {
                (_, _, true) => rotate_key_of(&setup, &tenant, store.as_mut()).map(Some),
                (true, _, _) => key_of(&setup, &tenant).map(Some),
                (_, true, _) => destroy_key_of(&setup, &tenant).map(|()| None),
                _ => Ok(None),
            };
            match key_step {
                Ok(key) if need_key || destroy_key || rekey => {
                    store.set_data_key(key.clone());
                    limits.key = key.clone();
                    new_key = Some(key);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(%tenant, error = %e, "the tenant's data key cannot be had or destroyed; its request is refused");
                    if let Work::Batch(batch) = work {
                        for env in batch {
                            env.fail(e.clone());
                        }
                    }
                    return (
                        store,
                        false,
                        created,
                        thread_cpu().saturating_sub(started),
                        None,
                    );
                }
            }
            let embedding = Embedding::new(setup.embedder.as_ref(), &setup.records, &tenant);
            let figures = close && closing.write == CloseWrite::Figures;
            let documents = match figures {
                true if closing.dropped => Some(0),
                true => store.count(None).ok().map(|n| n as u64),
                false => None,
            };
            work.apply(&tenant, store.as_mut(), &embedding, &limits);
            if close && closing.write != CloseWrite::Nothing {
                record_close(
                    &setup,
                    &tenant,
                    figures.then_some(documents),
                    closing.dropped,
                );
            }
            (
                store,
                close,
                created,
                thread_cpu().saturating_sub(started),
                new_key,
            )
        });
        ctx.spawn(job.into_actor(self).map(move |outcome, act, ctx| {
            act.busy = false;
            if matches!(outcome, Ok((_, _, true, _, _))) {
                act.registered = true;
            }
            if let Ok((_, _, _, _, Some(key))) = &outcome {
                act.data_key = key.clone();
            }
            match outcome {
                Ok((_, true, _, _, _)) => ctx.stop(),
                Ok((store, false, _, took, _)) => {
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

/// The policy of a tenant without settings of its own: the defaults.
fn default_policy(setup: &TenantSetup) -> Result<TenantPolicy, ServiceError> {
    TenantPolicy::resolve(&TenantSettings::default(), &setup.defaults, setup.max_top_k)
        .map_err(ServiceError::internal)
}

/// What a closing job writes into the tenant's record.
struct Closing {
    write: CloseWrite,
    dropped: bool,
}

/// Make the tenant's record before its first write; `false` when the
/// registry cannot be reached (the write goes ahead, and the record is
/// made from the tenant's store folder at its next activation).
fn register(setup: &TenantSetup, tenant: &TenantId) -> bool {
    let Some(registry) = &setup.registry else {
        return false;
    };
    let record = TenantRecord::new(tenant, &record::now());
    match registry.block_on(registry.create(&record)) {
        Ok(made) => {
            if made.is_some() {
                tracing::info!(%tenant, "tenant created by its first write");
            }
            true
        }
        Err(e) => {
            tracing::warn!(%tenant, error = %e, "cannot make the tenant's record; made at its next activation");
            false
        }
    }
}

/// The tenant's data key from its record (made there if it has none), on
/// the blocking pool.
fn key_of(setup: &TenantSetup, tenant: &TenantId) -> Result<Arc<DataKey>, ServiceError> {
    let (Some(registry), Some(keys)) = (&setup.registry, &setup.keys) else {
        return Err(ServiceError::internal(
            "encryption is on without a registry",
        ));
    };
    registry
        .block_on(keys.data_key(tenant.as_str()))
        .map(Arc::new)
}

/// `keys rotate`: a new data key for the tenant, stored beside the current
/// one, the tenant's data encrypted again with it, then the old one erased
/// (an interruption is taken up by the tenant's next activation, see
/// [`finish_rotation`]); on the blocking pool.
fn rotate_key_of(
    setup: &TenantSetup,
    tenant: &TenantId,
    store: &mut dyn TenantStore,
) -> Result<Arc<DataKey>, ServiceError> {
    let (Some(registry), Some(keys)) = (&setup.registry, &setup.keys) else {
        return Err(ServiceError::bad_request(format!(
            "tenant {tenant}: rotating its key needs encryption.enabled"
        )));
    };
    let current = key_of(setup, tenant)?;
    store.set_data_key(Some(current));
    let next = Arc::new(registry.block_on(keys.begin_rotation(tenant.as_str()))?);
    store.rekey(next.clone())?;
    registry.block_on(keys.finish_rotation(tenant.as_str()))?;
    tracing::info!(%tenant, key_version = next.version(), "the tenant's data key was rotated: its data is encrypted with the new key, and the old one erased");
    Ok(next)
}

/// A rotation of the tenant's key that was interrupted: its data encrypted
/// with the next key (if it is not already), then the rotation finished.
/// Run at activation, before the actor serves, with a store of its own.
fn finish_rotation(
    setup: &TenantSetup,
    tenant: &TenantId,
    current: Arc<DataKey>,
    next: Arc<DataKey>,
) -> Result<Arc<DataKey>, ServiceError> {
    let (Some(registry), Some(keys)) = (&setup.registry, &setup.keys) else {
        return Err(ServiceError::internal(
            "encryption is on without a registry",
        ));
    };
    let mut store = setup.factory.open(tenant);
    store.set_data_key(Some(current));
    let rekeyed = store.rekey(next.clone());
    let closed = store.close();
    rekeyed.and(closed)?;
    registry.block_on(keys.finish_rotation(tenant.as_str()))?;
    tracing::info!(%tenant, key_version = next.version(), "an interrupted rotation of the tenant's key was finished");
    Ok(next)
}

/// Destroy the tenant's data key (a drop, before its files go): every copy
/// of its wrapped form erased from the key store; what it encrypted is
/// unreadable from then on, wherever a copy of it lies.
fn destroy_key_of(setup: &TenantSetup, tenant: &TenantId) -> Result<(), ServiceError> {
    let (Some(registry), Some(keys)) = (&setup.registry, &setup.keys) else {
        return Err(ServiceError::internal(
            "encryption is on without a registry",
        ));
    };
    registry.block_on(keys.store.destroy(tenant.as_str()))?;
    tracing::info!(%tenant, "the tenant's data key was destroyed (drop)");
    Ok(())
}

/// Write what the closing actor saw into the tenant's record: with
/// `figures` (it wrote; the documents counted, `None` when they could not
/// be), its size and embedder too, else its last activity alone (best
/// effort: a record that cannot be written keeps the figures of before).
fn record_close(
    setup: &TenantSetup,
    tenant: &TenantId,
    figures: Option<Option<u64>>,
    dropped: bool,
) {
    let Some(registry) = &setup.registry else {
        return;
    };
    let (documents, bytes, embedder) = match figures {
        Some(documents) => (
            documents,
            match dropped {
                true => Some(0),
                false => folder_bytes(&setup.paths.store_dir(tenant)),
            },
            setup.records.read(tenant).ok().flatten(),
        ),
        None => (None, None, None),
    };
    let now = record::now();
    let written = registry.block_on(registry.update(tenant.as_str(), |r| {
        r.closed(documents, bytes, embedder.clone(), &now);
        if dropped && figures.is_some() {
            r.embedder = None;
        }
        Ok(())
    }));
    if let Err(e) = written {
        tracing::warn!(%tenant, error = %e, "cannot write the tenant's figures into its record");
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

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(tenant = %self.tenant, generation = self.generation, "tenant actor started");
        self.load(ctx);
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
        if self
            .load_failed
            .is_some_and(|at| at.elapsed() >= RELOAD_AFTER)
        {
            // The registry was away: read the record again before this
            // request (the mailbox waits meanwhile).
            self.held.push(env);
            self.load(ctx);
            return;
        }
        self.admit(env, ctx);
    }
}

impl Handler<Reconfigure> for TenantActor {
    type Result = ();

    fn handle(&mut self, Reconfigure(record): Reconfigure, _ctx: &mut Self::Context) {
        self.load_failed = None;
        self.adopt(&record);
    }
}

impl TenantActor {
    /// Check a request against the tenant's policy and rate, then queue it.
    fn admit(&mut self, env: Envelope, ctx: &mut Context<Self>) {
        if let Err(e) = &self.policy {
            env.fail(e.clone());
            return;
        }
        // A move's export: every write queued before it goes with the
        // tenant, every write after it is refused until the move ends.
        if let Command::Export(export) = &env.command {
            if let Some(to) = &export.moving_to {
                self.moving = Some(to.clone());
            }
        }
        if let Some(to) = &self.moving {
            let refused = env.command.is_write() && !matches!(env.command, Command::Drop);
            if refused {
                env.fail(
                    ServiceError::unavailable(format!(
                        "tenant {} is moving to region {to}; retry in a moment",
                        self.tenant
                    ))
                    .retry_after(std::time::Duration::from_millis(500)),
                );
                return;
            }
        }
        let mut env = env;
        if let Some(limiter) = self.limiter.as_mut() {
            let rate = limiter.rate();
            let tenant = &self.tenant;
            let limited = |wait| {
                ServiceError::rate_limited(format!(
                    "tenant {tenant} sends more than {rate} requests per second",
                ))
                .retry_after(wait)
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
                let limited = limited(limiter.wait());
                for part in parts.drain(admitted..) {
                    part.reply.send(Err(limited.clone()));
                }
                if parts.is_empty() {
                    env.reply.send(Err(limited));
                    return;
                }
            } else if !limiter.try_acquire(now) {
                env.reply.send(Err(limited(limiter.wait())));
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
