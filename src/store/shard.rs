//! One open Qdrant Edge shard, and the translation of our documents, filters
//! and queries into the engine's terms.
//!
//! Owns a shard's handle from open to close: the exclusive lock file that
//! keeps a second handle out, writes that are flushed before they return,
//! payload indexes made on first use, and the compaction of the engine's WAL.
//! It knows nothing of tenants' layouts: callers give it point ids, payloads
//! and filters already scoped. It must never return from a write before the
//! flush, and never open a shard whose lock another handle holds.

use std::collections::HashSet;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition as EdgeCondition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter as EdgeFilter,
    KeywordIndexParams, Match, NamedQuery, Payload, PayloadFieldSchema, PayloadSchemaParams,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStructPersisted,
    QueryEnum, Range as EdgeRange, ScoredPoint, SearchParams, SearchRequest, UpdateOperation,
    ValueVariants, VectorInternal, VectorStructInternal, WalOptions, WithPayloadInterface,
    WithVector, DEFAULT_VECTOR_NAME,
};

use crate::filter::{Condition, Filter, Scalar};
use crate::protocol::{Doc, ServiceError};
use crate::store::internal;
use crate::store::payload::{self, metadata_path, IndexKind, TENANT};

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
pub struct Shard {
    shard: EdgeShard,
    dir: PathBuf,
    dimension: usize,
    write: Mutex<WriteState>,
    /// Held for as long as the shard is open; released after the shard is.
    lock: File,
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
        std::fs::create_dir_all(dir).map_err(|e| internal(who, "create shard folder", e))?;
        let lock = lock(who, dir)?;
        let shard = if exists {
            compact_wal(dir).map_err(|e| internal(who, "compact WAL", e))?;
            EdgeShard::load(dir, None)
        } else {
            EdgeShard::new(dir, options.edge_config())
        }
        .map_err(|e| internal(who, "open shard", e))?;
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
            shard,
            dir: dir.to_owned(),
            dimension,
            write: Mutex::new(WriteState {
                indexed,
                optimized: false,
            }),
            lock,
        }))
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Flush, compact the WAL, release the lock.
    pub fn close(self, who: &str) -> Result<(), ServiceError> {
        let started = Instant::now();
        let Self {
            shard, dir, lock, ..
        } = self;
        drop(shard); // flushes
        let compacted = compact_wal(&dir).map_err(|e| internal(who, "compact WAL", e));
        drop(lock);
        tracing::debug!(%who, ms = ms(started), "shard closed");
        compacted
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WriteState> {
        // A panic while holding the lock leaves nothing half-done that a
        // later write would trip over (the engine's own locks guard its
        // state), so a poisoned lock is used as it is.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, who: &str, op: UpdateOperation) -> Result<(), ServiceError> {
        self.shard
            .update(op)
            .map_err(|e| internal(who, "update", e))?;
        // Edge shards do not replay their WAL on load: a write is durable
        // only once the segments are flushed, so flush before returning.
        self.shard.flush();
        Ok(())
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

    /// Give every key the filter uses a payload index, so a filtered search
    /// does not scan the whole shard; the first kind seen for a key wins.
    pub fn ensure_indexes(&self, who: &str, filter: &Filter) -> Result<(), ServiceError> {
        let missing: Vec<_> = {
            let state = self.state();
            filter
                .conditions
                .iter()
                .filter(|(key, _)| !state.indexed.contains(&metadata_path(key)))
                .filter_map(|(key, cond)| {
                    Some((metadata_path(key), schema_type(IndexKind::of(cond)?)))
                })
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut state = self.state();
        for (path, kind) in missing {
            self.ensure_index(who, &mut state, &path, PayloadFieldSchema::FieldType(kind))?;
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
        self.shard
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
            .shard
            .retrieve(
                ids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(with_vectors)),
            )
            .map_err(|e| internal(who, "retrieve", e))?;
        Ok(records.into_iter().map(|r| (r.payload, r.vector)).collect())
    }

    pub fn count(&self, who: &str, filter: Option<EdgeFilter>) -> Result<usize, ServiceError> {
        self.shard
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

    /// Build the HNSW index once the shard holds `threshold` points.
    pub fn maintain(&self, who: &str, threshold: usize) -> Result<bool, ServiceError> {
        let mut state = self.state();
        if threshold == 0 || state.optimized || self.shard.info().points_count < threshold {
            return Ok(false);
        }
        self.shard
            .optimize()
            .map_err(|e| internal(who, "optimize", e))?;
        self.shard.flush();
        state.optimized = true;
        Ok(true)
    }
}

/// Delete the WAL segments the engine no longer needs, while the shard is
/// closed and its lock is held.
///
/// Qdrant Edge 0.7.2 writes every operation to its WAL but never acknowledges
/// (truncates) it and never replays it on load: its segments are the data,
/// flushed after each of our writes. Left alone, the WAL grows with every
/// write ever made and each load re-reads and checksums all of it. This does
/// what the engine's own `ack` would: it removes the closed segments
/// (`closed-<first index>`) except the newest, which the WAL needs to number
/// the next operation after the last one (operation numbers version the
/// points, so they must never go back). Open segments are left as they are.
fn compact_wal(dir: &Path) -> std::io::Result<()> {
    let wal = dir.join("wal");
    let mut closed: Vec<(u64, PathBuf)> = match std::fs::read_dir(&wal) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let start = name.strip_prefix("closed-")?.parse::<u64>().ok()?;
                Some((start, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    closed.sort();
    closed.pop(); // the newest closed segment stays
    for (_, path) in closed {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Take the shard's exclusive lock, or fail: some other handle (another
/// worker on the same folder, or a bug that would open it twice) has it.
fn lock(who: &str, dir: &Path) -> Result<File, ServiceError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| internal(who, "open lock file", e))?;
    // A lock can be held for a moment by someone who is not using the store:
    // a process forked by this one keeps a copy of the descriptor until it
    // execs. So wait a little before calling the store taken.
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ServiceError::unavailable(format!(
                    "{who}: the store is open in another process; retry later"
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(internal(who, "lock store", e)),
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn json_path(path: &str) -> Result<qdrant_edge::JsonPath, ServiceError> {
    path.parse()
        .map_err(|()| ServiceError::bad_request(format!("filter key path {path:?} is not usable")))
}

/// The engine's index type of an [`IndexKind`].
fn schema_type(kind: IndexKind) -> PayloadSchemaType {
    match kind {
        IndexKind::Keyword => PayloadSchemaType::Keyword,
        IndexKind::Float => PayloadSchemaType::Float,
        IndexKind::Bool => PayloadSchemaType::Bool,
    }
}

/// `must` conditions in the engine's terms: every one of `filter`'s on
/// `metadata.<key>` (numbers compare as a closed range, so `1` equals `1.0`),
/// plus `tenant == <tenant>` when a tenant scope is given.
pub fn to_edge_filter(
    filter: Option<&Filter>,
    tenant: Option<&str>,
) -> Result<Option<EdgeFilter>, ServiceError> {
    let mut must = Vec::new();
    if let Some(t) = tenant {
        must.push(scalar_condition(
            &json_path(TENANT)?,
            &Scalar::String(t.to_owned()),
        ));
    }
    for (key, cond) in filter.map(|f| f.conditions.as_slice()).unwrap_or_default() {
        let path = json_path(&metadata_path(key))?;
        let c = match cond {
            Condition::Equals(s) => scalar_condition(&path, s),
            Condition::AnyOf(list) => EdgeCondition::Filter(EdgeFilter {
                should: Some(list.iter().map(|s| scalar_condition(&path, s)).collect()),
                min_should: None,
                must: None,
                must_not: None,
            }),
            Condition::Range(r) => {
                let r = r.tightest();
                EdgeCondition::Field(FieldCondition::new_range(
                    path,
                    EdgeRange {
                        lt: r.lt.map(OrderedFloat),
                        gt: r.gt.map(OrderedFloat),
                        gte: r.gte.map(OrderedFloat),
                        lte: r.lte.map(OrderedFloat),
                    },
                ))
            }
        };
        must.push(c);
    }
    Ok((!must.is_empty()).then_some(EdgeFilter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    }))
}

fn scalar_condition(path: &qdrant_edge::JsonPath, s: &Scalar) -> EdgeCondition {
    let field = match s {
        Scalar::String(v) => FieldCondition::new_match(
            path.clone(),
            Match::new_value(ValueVariants::String(v.clone())),
        ),
        Scalar::Bool(b) => {
            FieldCondition::new_match(path.clone(), Match::new_value(ValueVariants::Bool(*b)))
        }
        Scalar::Number(n) => FieldCondition::new_range(
            path.clone(),
            EdgeRange {
                lt: None,
                gt: None,
                gte: Some(OrderedFloat(*n)),
                lte: Some(OrderedFloat(*n)),
            },
        ),
    };
    EdgeCondition::Field(field)
}

/// A point read from the engine as a document.
pub fn to_doc(payload: Option<Payload>, vector: Option<VectorStructInternal>) -> Doc {
    let vector = vector.and_then(|v| match v {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Some(v),
            _ => None,
        },
        _ => None,
    });
    payload::to_doc(payload.map(|p| p.0).unwrap_or_default(), vector)
}
