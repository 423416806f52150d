//! One open Qdrant Edge shard, and the translation of our documents, filters
//! and queries into the engine's terms.
//!
//! Owns a shard's handle from open to close: the exclusive lock file that
//! keeps a second handle out, writes that are flushed before they return,
//! payload indexes made on first use (within the operator's bounds), the
//! compaction of the engine's WAL, and containing the engine's panics on a
//! failed write (a full disk, an I/O error). It knows nothing of tenants'
//! layouts: callers give it point ids, payloads and filters already scoped.
//! It must never return from a write before the flush, never open a shard
//! whose lock another handle holds, and never let an engine panic unwind past
//! it: a second panic while unwinding (the engine flushes again when dropped)
//! would abort the process and every tenant's work with it.

mod disk;
mod terms;

use disk::{check_room, compact_wal, lock};
use terms::{json_path, schema_type};
pub use terms::{mark_point, stored_mark, to_doc, to_edge_filter, without_mark};

use std::collections::HashSet;
use std::fs::File;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParamsBuilder,
    FieldIndexOperations, Filter as EdgeFilter, KeywordIndexParams, NamedQuery, Payload,
    PayloadFieldSchema, PayloadSchemaParams, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, ScoredPoint, SearchParams, SearchRequest, UpdateOperation,
    VectorInternal, VectorStructInternal, WalOptions, WithPayloadInterface, WithVector,
    DEFAULT_VECTOR_NAME,
};

use crate::filter::Filter;
use crate::protocol::ServiceError;
use crate::store::internal;
use crate::store::payload::{IndexPolicy, TENANT};

/// Lock file inside a shard folder; held exclusively while the shard is open.
const LOCK_FILE: &str = ".tenantvec.lock";
/// The engine's config file; its presence means the shard exists.
const CONFIG_FILE: &str = "edge_config.json";
/// How long opening a shard waits for its lock before answering `unavailable`.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// A point as read back: its payload and, when asked for, its vector.
pub type StoredPoint = (Option<Payload>, Option<VectorStructInternal>);

/// How new shards are made.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub dimension: usize,
    pub wal_capacity: usize,
    pub vectors_on_disk: bool,
    /// Which filter keys get a payload index made on first use.
    pub indexes: IndexPolicy,
    /// Writes are refused while the shard's disk has less free space than
    /// this, in bytes (0: never), see [`check_room`].
    pub min_free_bytes: u64,
}

impl ShardOptions {
    fn edge_config(&self) -> EdgeConfig {
        let vector = EdgeVectorParamsBuilder::new(self.dimension, Distance::Cosine)
            .on_disk(self.vectors_on_disk)
            .build();
        let mut config = EdgeConfig::builder()
            .vector(DEFAULT_VECTOR_NAME, vector)
            .on_disk_payload(true)
            .build();
        config.wal_options = Some(WalOptions {
            segment_capacity: self.wal_capacity,
            segment_queue_len: 0,
            retain_closed: NonZeroUsize::MIN,
        });
        config
    }
}

/// An open shard. Reads run concurrently; writes (and everything else that
/// ends in a flush) take `write` first, because the engine's flush expects
/// to be alone and panics otherwise.
///
/// A write the engine cannot flush (it panics: a full disk, an I/O error)
/// leaves the shard broken: its state on disk is no longer known to match
/// what it holds, so it is never used or flushed again. Every later call
/// answers `internal`; the owner closes it and opens the shard anew from disk,
/// where everything flushed before the failure is. Closing a broken shard
/// drops the engine where a panic of its last flush is contained.
pub struct Shard {
    /// `None` once released, by [`Shard::close`] or by `Drop`.
    engine: Option<EdgeShard>,
    dir: PathBuf,
    dimension: usize,
    indexes: IndexPolicy,
    min_free_bytes: u64,
    write: Mutex<WriteState>,
    broken: AtomicBool,
    /// Held for as long as the shard is open; released after the shard is.
    lock: Option<File>,
}

struct WriteState {
    /// Payload paths that already have an index (of any type).
    indexed: HashSet<String>,
    /// Whether `optimize` has run since the shard was opened.
    optimized: bool,
}

impl Shard {
    /// Open the shard in `dir`: load it if it exists, create it if `create`
    /// is set, and otherwise answer `None` without touching the disk.
    /// `who` names the owner in errors and logs.
    pub fn open(
        dir: &Path,
        options: &ShardOptions,
        create: bool,
        who: &str,
    ) -> Result<Option<Self>, ServiceError> {
        let exists = dir.join(CONFIG_FILE).is_file();
        if !exists && !create {
            return Ok(None);
        }
        let started = Instant::now();
        if !exists {
            let root = dir.ancestors().find(|d| d.is_dir()).unwrap_or(dir);
            check_room(who, root, options.min_free_bytes)?;
        }
        std::fs::create_dir_all(dir).map_err(|e| internal(who, "create shard folder", e))?;
        let lock = lock(who, dir)?;
        if exists {
            compact_wal(dir).map_err(|e| internal(who, "compact WAL", e))?;
        }
        // Opening writes too (the config, a first segment): a failure there
        // may panic like a flush, and is contained the same way.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            if exists {
                EdgeShard::load(dir, None)
            } else {
                EdgeShard::new(dir, options.edge_config())
            }
        }))
        .map_err(|panic| internal(who, "open shard", panic_message(&*panic)))?;
        let shard = opened.map_err(|e| internal(who, "open shard", e))?;
        let dimension = shard
            .config()
            .vectors
            .get(DEFAULT_VECTOR_NAME)
            .map(|v| v.size)
            .ok_or_else(|| internal(who, "open shard", "no default vector"))?;
        let indexed = shard
            .info()
            .payload_schema
            .keys()
            .map(|k| k.to_string())
            .collect();
        tracing::debug!(%who, created = !exists, ms = ms(started), "shard opened");
        Ok(Some(Self {
            engine: Some(shard),
            dir: dir.to_owned(),
            dimension,
            indexes: options.indexes.clone(),
            min_free_bytes: options.min_free_bytes,
            write: Mutex::new(WriteState {
                indexed,
                optimized: false,
            }),
            broken: AtomicBool::new(false),
            lock: Some(lock),
        }))
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Whether a failed write has left the shard unusable (see [`Shard`]).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The payload paths that have an index, sorted (the tenant key's too).
    pub fn indexed_keys(&self, who: &str) -> Result<Vec<String>, ServiceError> {
        let mut keys: Vec<String> = self
            .engine(who)?
            .info()
            .payload_schema
            .keys()
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Release the engine (which flushes as it goes), compact the WAL,
    /// release the lock. A broken shard is released without compaction, and
    /// the failure answered.
    pub fn close(mut self, who: &str) -> Result<(), ServiceError> {
        let started = Instant::now();
        let closed = self.release(who);
        tracing::debug!(%who, ms = ms(started), "shard closed");
        closed
    }

    /// Let go of the engine and then the lock; see [`Shard::close`].
    fn release(&mut self, who: &str) -> Result<(), ServiceError> {
        // Checked before the engine is taken out: `engine()` says why.
        let usable = self.engine(who).map(|_| ());
        let Some(engine) = self.engine.take() else {
            return Ok(());
        };
        // No flush of ours: every write of ours ended in one, and the
        // engine's `Drop` flushes once more anyway (a forced flush of every
        // segment, fsyncs included), here where a panic is contained. A
        // flush before it would double the fsyncs of every close, the cost
        // of a cold activation that evicts another tenant.
        crate::crash_point!("shard-close");
        let outcome = match usable {
            Ok(()) => match catch_unwind(AssertUnwindSafe(|| drop(engine))) {
                Ok(()) => compact_wal(&self.dir).map_err(|e| internal(who, "compact WAL", e)),
                Err(panic) => Err(self.broke(who, "close", &*panic)),
            },
            Err(e) => {
                // Dropped, not leaked with `mem::forget`: the engine holds a
                // flock on its WAL through a descriptor only its `Drop`
                // closes, and a leaked handle would keep the shard from ever
                // being opened again in this process. That `Drop` flushes
                // once more: with room on the disk again it succeeds; if not
                // it panics, and the panic stops here (the engine's parts
                // dropped while it unwinds only log their failures).
                match catch_unwind(AssertUnwindSafe(|| drop(engine))) {
                    Ok(()) => {
                        tracing::warn!(%who, dir = %self.dir.display(), "broken shard released; its last flush succeeded")
                    }
                    Err(panic) => tracing::error!(
                        %who,
                        dir = %self.dir.display(),
                        cause = %panic_message(&*panic),
                        "broken shard released; its last flush failed too"
                    ),
                }
                Err(e)
            }
        };
        drop(self.lock.take());
        outcome
    }

    /// The engine, unless the shard is broken or released.
    fn engine(&self, who: &str) -> Result<&EdgeShard, ServiceError> {
        match &self.engine {
            Some(engine) if !self.is_broken() => Ok(engine),
            _ => Err(ServiceError::internal(format!(
                "{who}: the store at {} failed to write to its disk (full, or an I/O error) \
                 and is closed; an operator must look at that disk",
                self.dir.display()
            ))),
        }
    }

    /// Run a step of the engine that writes to disk. The engine panics when
    /// that fails (0.7.2's flush `expect`s success); the panic stops here,
    /// marks the shard broken and is answered `internal`: a full or failing
    /// disk is the operator's to fix, and no retry by the caller helps until
    /// then. (The panic hook still prints the message.)
    fn guarded<T>(
        &self,
        who: &str,
        what: &str,
        step: impl FnOnce() -> T,
    ) -> Result<T, ServiceError> {
        catch_unwind(AssertUnwindSafe(step)).map_err(|panic| self.broke(who, what, &*panic))
    }

    /// Mark the shard broken after `what` panicked; log it and say why.
    fn broke(&self, who: &str, what: &str, panic: &(dyn std::any::Any + Send)) -> ServiceError {
        self.broken.store(true, Ordering::Release);
        let cause = panic_message(panic);
        tracing::error!(
            %who,
            dir = %self.dir.display(),
            %cause,
            "store {what} failed writing to disk (full, or an I/O error); the shard is closed"
        );
        ServiceError::internal(format!(
            "{who}: writing to the store's disk at {} failed ({}): the disk may be full; \
             this write may not be kept",
            self.dir.display(),
            brief(&cause)
        ))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WriteState> {
        // A panic while holding the lock leaves nothing half-done that a
        // later write would trip over (the engine's own locks guard its
        // state), so a poisoned lock is used as it is.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, who: &str, op: UpdateOperation) -> Result<(), ServiceError> {
        let engine = self.engine(who)?;
        check_room(who, &self.dir, self.min_free_bytes)?;
        self.guarded(who, "update", || engine.update(op))?
            .map_err(|e| internal(who, "update", e))?;
        // Edge shards do not replay their WAL on load: a write is durable
        // only once the segments are flushed, so flush before returning.
        self.guarded(who, "flush", || engine.flush())
    }

    /// Give the payload path an index of `kind` unless it has one.
    fn ensure_index(
        &self,
        who: &str,
        state: &mut WriteState,
        path: &str,
        schema: PayloadFieldSchema,
    ) -> Result<(), ServiceError> {
        if state.indexed.contains(path) {
            return Ok(());
        }
        let op =
            UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: json_path(path)?,
                field_schema: Some(schema),
            }));
        self.apply(who, op)?;
        state.indexed.insert(path.to_owned());
        Ok(())
    }

    /// The `tenant` payload key as the engine's tenant key (`is_tenant`), so
    /// its points are grouped on disk and a tenant's reads touch only them.
    pub fn ensure_tenant_index(&self, who: &str) -> Result<(), ServiceError> {
        let mut state = self.state();
        let schema =
            PayloadFieldSchema::FieldParams(PayloadSchemaParams::Keyword(KeywordIndexParams {
                is_tenant: Some(true),
                ..Default::default()
            }));
        self.ensure_index(who, &mut state, TENANT, schema)
    }

    /// Give the keys the filter uses a payload index, so a filtered search
    /// does not scan the whole shard; the first kind seen for a key wins.
    /// Only keys the operator allows, and no more indexes than the cap (in
    /// the shared layout, the one shard's cap for all tenants together);
    /// beyond it a filter is served without an index.
    pub fn ensure_indexes(&self, who: &str, filter: &Filter) -> Result<(), ServiceError> {
        let mut state = self.state();
        for (path, kind) in self.indexes.to_index(filter, &state.indexed) {
            self.ensure_index(
                who,
                &mut state,
                &path,
                PayloadFieldSchema::FieldType(schema_type(kind)),
            )?;
        }
        Ok(())
    }

    pub fn check_dimension(&self, vector: &[f32]) -> Result<(), ServiceError> {
        crate::store::check_dimension(vector, self.dimension)
    }

    pub fn upsert(&self, who: &str, points: Vec<PointStructPersisted>) -> Result<(), ServiceError> {
        let _state = self.state();
        let op = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        self.apply(who, op)
    }

    pub fn search(
        &self,
        who: &str,
        vector: Vec<f32>,
        top_k: usize,
        filter: Option<EdgeFilter>,
        with_vectors: bool,
    ) -> Result<Vec<ScoredPoint>, ServiceError> {
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(vector),
                using: None,
            }),
            filter,
            params: Some(SearchParams {
                // Only used once an HNSW index exists; high enough that
                // tenants of this size are searched (almost) exactly.
                hnsw_ef: Some(top_k.max(256)),
                ..SearchParams::default()
            }),
            limit: top_k,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: Some(WithVector::Bool(with_vectors)),
            score_threshold: None,
        };
        self.engine(who)?
            .search(request)
            .map_err(|e| internal(who, "search", e))
    }

    /// The points among `ids` that exist, in `ids` order, with payload.
    pub fn retrieve(
        &self,
        who: &str,
        ids: &[PointId],
        with_vectors: bool,
    ) -> Result<Vec<StoredPoint>, ServiceError> {
        let records = self
            .engine(who)?
            .retrieve(
                ids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(with_vectors)),
            )
            .map_err(|e| internal(who, "retrieve", e))?;
        Ok(records.into_iter().map(|r| (r.payload, r.vector)).collect())
    }

    pub fn count(&self, who: &str, filter: Option<EdgeFilter>) -> Result<usize, ServiceError> {
        self.engine(who)?
            .count(CountRequest {
                filter,
                exact: true,
            })
            .map_err(|e| internal(who, "count", e))
    }

    pub fn delete_ids(&self, who: &str, ids: Vec<PointId>) -> Result<(), ServiceError> {
        let _state = self.state();
        self.apply(
            who,
            UpdateOperation::PointOperation(PointOperations::DeletePoints { ids }),
        )
    }

    /// Delete what `filter` matches; returns how many points that was.
    pub fn delete_filter(&self, who: &str, filter: EdgeFilter) -> Result<usize, ServiceError> {
        let _state = self.state();
        let n = self.count(who, Some(filter.clone()))?;
        if n > 0 {
            self.apply(
                who,
                UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(filter)),
            )?;
        }
        Ok(n)
    }

    /// Up to `limit` points from `offset` on, by id, with payload and
    /// vectors; and the id where the next page starts.
    pub fn scroll(
        &self,
        who: &str,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<EdgeFilter>,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), ServiceError> {
        let request = qdrant_edge::ScrollRequest {
            offset,
            limit: Some(limit.max(1)),
            filter,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: WithVector::Bool(true),
            order_by: None,
        };
        let (records, next) = self
            .engine(who)?
            .scroll(request)
            .map_err(|e| internal(who, "scroll", e))?;
        Ok((
            records.into_iter().map(|r| (r.payload, r.vector)).collect(),
            next,
        ))
    }

    /// Build the HNSW index once the shard holds `threshold` points.
    pub fn maintain(&self, who: &str, threshold: usize) -> Result<bool, ServiceError> {
        let mut state = self.state();
        let engine = self.engine(who)?;
        if threshold == 0 || state.optimized || engine.info().points_count < threshold {
            return Ok(false);
        }
        check_room(who, &self.dir, self.min_free_bytes)?;
        self.guarded(who, "optimize", || engine.optimize())?
            .map_err(|e| internal(who, "optimize", e))?;
        self.guarded(who, "flush", || engine.flush())?;
        state.optimized = true;
        Ok(true)
    }
}

impl Drop for Shard {
    /// A shard dropped without [`Shard::close`] (its owner's job panicked,
    /// say) is released the same way, so the engine's flush in its own
    /// `Drop` never panics while the thread is already unwinding.
    fn drop(&mut self) {
        if self.engine.is_some() {
            let who = format!("shard {}", self.dir.display());
            let _ = self.release(&who);
        }
    }
}

/// A panic's message cut for a reply: the engine's errors carry their
/// backtrace in their text, which belongs in the log only.
fn brief(cause: &str) -> String {
    let head = cause.split(", backtrace").next().unwrap_or(cause);
    let head = head.lines().next().unwrap_or(head);
    head.chars().take(300).collect()
}

/// The message a panic carried, for the log and the reply.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_s_message_is_kept() {
        let caught = catch_unwind(|| panic!("segments flushed: {}", 28)).unwrap_err();
        assert_eq!(panic_message(&*caught), "segments flushed: 28");
        let caught = catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(&*caught), "a panic without a message");
        let engine = "segments flushed: E { d: \"No space\", backtrace: Some(\"0: x\\n1: y\") }";
        assert_eq!(brief(engine), "segments flushed: E { d: \"No space\"");
    }
}
