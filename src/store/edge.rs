//! The embedded store: one Qdrant Edge shard per tenant, on local disk.
//!
//! Owns the shard's life (created on the tenant's first write, loaded on its
//! first job after that, closed by the actor) and the translation of our
//! documents, filters and queries into the engine's. It must never open a
//! path outside `<root>/<tenant>/`, never open a shard that another handle
//! holds (an exclusive file lock guards that), and never return before a
//! write is flushed to disk.

use std::collections::HashSet;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::external::uuid::Uuid as EdgeUuid;
use qdrant_edge::{
    Condition as EdgeCondition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter as EdgeFilter, Match,
    NamedQuery, Payload, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, PointStructPersisted, QueryEnum, Range as EdgeRange,
    SearchParams, SearchRequest, UpdateOperation, ValueVariants, VectorInternal,
    VectorStructInternal, WalOptions, WithPayloadInterface, WithVector, DEFAULT_VECTOR_NAME,
};
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::filter::{Condition, Filter, Scalar};
use crate::protocol::{Doc, Hit, ServiceError};
use crate::store::{point_uuid, Record, SearchQuery, Selector, StoreFactory, TenantStore};
use crate::tenant::{TenantId, TenantPaths};

/// Lock file inside a shard folder; held exclusively while the shard is open.
const LOCK_FILE: &str = ".tenantvec.lock";
/// The engine's config file; its presence means the shard exists.
const CONFIG_FILE: &str = "edge_config.json";
/// Payload keys of a point.
const DOC_ID: &str = "doc_id";
const TEXT: &str = "text";
const METADATA: &str = "metadata";

/// Shard options shared by every tenant of this worker.
#[derive(Debug, Clone)]
struct ShardOptions {
    dimension: usize,
    wal_capacity: usize,
    vectors_on_disk: bool,
    optimize_threshold: usize,
}

/// Makes [`EdgeStore`]s under one data root.
pub struct EdgeFactory {
    paths: TenantPaths,
    options: ShardOptions,
}

impl EdgeFactory {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let root = &settings.store.folder;
        std::fs::create_dir_all(root).map_err(|e| {
            anyhow::anyhow!("cannot create the data folder {}: {e}", root.display())
        })?;
        Ok(Self {
            paths: TenantPaths::new(root),
            options: ShardOptions {
                dimension: settings.store.dimension,
                wal_capacity: settings.store.wal_capacity_kb.max(64) * 1024,
                vectors_on_disk: settings.store.vectors_on_disk,
                optimize_threshold: settings.store.optimize_threshold,
            },
        })
    }
}

impl StoreFactory for EdgeFactory {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore> {
        Box::new(EdgeStore {
            tenant: tenant.clone(),
            paths: self.paths.clone(),
            dir: self.paths.store_dir(tenant),
            options: self.options.clone(),
            open: None,
        })
    }

    fn backend(&self) -> &'static str {
        "edge"
    }
}

/// One tenant's shard; `open` is `None` until the first job that needs it
/// and for a tenant with no data.
pub struct EdgeStore {
    tenant: TenantId,
    paths: TenantPaths,
    dir: PathBuf,
    options: ShardOptions,
    open: Option<OpenShard>,
}

struct OpenShard {
    shard: EdgeShard,
    dimension: usize,
    /// Payload paths that already have an index (of any type).
    indexed: HashSet<String>,
    /// Whether `optimize` has run since the shard was opened.
    optimized: bool,
    /// Held for as long as the shard is open; dropped after the shard.
    _lock: File,
}

impl EdgeStore {
    /// The open shard; loads it when it exists on disk, creates it when
    /// `create` is set, and otherwise answers `None` without touching disk.
    fn shard(&mut self, create: bool) -> Result<Option<&mut OpenShard>, ServiceError> {
        if self.open.is_none() {
            self.paths
                .check_tenant_dir(&self.tenant)
                .map_err(|e| internal(&self.tenant, "tenant folder", e))?;
            let exists = self.dir.join(CONFIG_FILE).is_file();
            if !exists && !create {
                return Ok(None);
            }
            let started = std::time::Instant::now();
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| internal(&self.tenant, "create shard folder", e))?;
            let lock = lock(&self.tenant, &self.dir)?;
            let shard = if exists {
                compact_wal(&self.dir).map_err(|e| internal(&self.tenant, "compact WAL", e))?;
                EdgeShard::load(&self.dir, None)
            } else {
                EdgeShard::new(&self.dir, self.edge_config())
            }
            .map_err(|e| internal(&self.tenant, "open shard", e))?;
            tracing::debug!(
                tenant = %self.tenant,
                created = !exists,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "shard opened"
            );
            let dimension = shard
                .config()
                .vectors
                .get(DEFAULT_VECTOR_NAME)
                .map(|v| v.size)
                .ok_or_else(|| {
                    ServiceError::internal(format!(
                        "tenant {}: shard has no default vector",
                        self.tenant
                    ))
                })?;
            let indexed = shard
                .info()
                .payload_schema
                .keys()
                .map(|k| k.to_string())
                .collect();
            self.open = Some(OpenShard {
                shard,
                dimension,
                indexed,
                optimized: false,
                _lock: lock,
            });
        }
        Ok(self.open.as_mut())
    }

    fn edge_config(&self) -> EdgeConfig {
        let vector = EdgeVectorParamsBuilder::new(self.options.dimension, Distance::Cosine)
            .on_disk(self.options.vectors_on_disk)
            .build();
        let mut config = EdgeConfig::builder()
            .vector(DEFAULT_VECTOR_NAME, vector)
            .on_disk_payload(true)
            .build();
        config.wal_options = Some(WalOptions {
            segment_capacity: self.options.wal_capacity,
            segment_queue_len: 0,
            retain_closed: NonZeroUsize::MIN,
        });
        config
    }
}

impl OpenShard {
    fn update(&self, tenant: &TenantId, op: UpdateOperation) -> Result<(), ServiceError> {
        self.shard
            .update(op)
            .map_err(|e| internal(tenant, "update", e))?;
        // Edge shards do not replay their WAL on load: a write is durable
        // only once the segments are flushed, so flush before replying.
        self.shard.flush();
        Ok(())
    }

    /// Give every key the filter uses a payload index, so a filtered search
    /// does not scan the whole shard; the first kind seen for a key wins.
    fn ensure_indexes(&mut self, tenant: &TenantId, filter: &Filter) -> Result<(), ServiceError> {
        for (key, cond) in &filter.conditions {
            let path = metadata_path(key);
            if self.indexed.contains(&path) {
                continue;
            }
            let Some(kind) = index_kind(cond) else {
                continue;
            };
            let op = UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(
                CreateIndex {
                    field_name: json_path(&path)?,
                    field_schema: Some(PayloadFieldSchema::FieldType(kind)),
                },
            ));
            self.update(tenant, op)?;
            self.indexed.insert(path);
        }
        Ok(())
    }

    fn check_dimension(&self, vector: &[f32]) -> Result<(), ServiceError> {
        if vector.len() != self.dimension {
            return Err(ServiceError::dimension_mismatch(format!(
                "vector has {} dimensions, the tenant's store has {}",
                vector.len(),
                self.dimension
            )));
        }
        Ok(())
    }
}

impl TenantStore for EdgeStore {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        let default = self.options.dimension;
        Ok(self.shard(false)?.map_or(default, |s| s.dimension))
    }

    fn upsert(&mut self, records: Vec<Record>) -> Result<(), ServiceError> {
        if records.is_empty() {
            return Ok(());
        }
        let tenant = self.tenant.clone();
        let open = self
            .shard(true)?
            .ok_or_else(|| unreachable_state(&tenant))?;
        let mut points = Vec::with_capacity(records.len());
        for r in records {
            open.check_dimension(&r.vector)?;
            let mut payload = Map::new();
            payload.insert(DOC_ID.into(), Value::String(r.doc_id.clone()));
            if let Some(text) = r.text {
                payload.insert(TEXT.into(), Value::String(text));
            }
            payload.insert(METADATA.into(), Value::Object(r.metadata));
            let point = PointStruct::new(edge_id(&r.doc_id), r.vector, Value::Object(payload));
            points.push(PointStructPersisted::from(point));
        }
        let op = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        open.update(&tenant, op)
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        let tenant = self.tenant.clone();
        let Some(open) = self.shard(false)? else {
            return Ok(Vec::new());
        };
        open.check_dimension(&query.vector)?;
        let filter = match &query.filter {
            Some(f) => {
                open.ensure_indexes(&tenant, f)?;
                Some(to_edge_filter(f)?)
            }
            None => None,
        };
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(query.vector.clone()),
                using: None,
            }),
            filter,
            params: Some(SearchParams {
                // Only used once an HNSW index exists; high enough that
                // tenants of this size are searched (almost) exactly.
                hnsw_ef: Some(query.top_k.max(256)),
                ..SearchParams::default()
            }),
            limit: query.top_k,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: Some(WithVector::Bool(query.with_vectors)),
            score_threshold: None,
        };
        let points = open
            .shard
            .search(request)
            .map_err(|e| internal(&tenant, "search", e))?;
        Ok(points
            .into_iter()
            .map(|p| {
                let doc = to_doc(p.payload, p.vector);
                Hit {
                    doc_id: doc.doc_id,
                    score: p.score,
                    text: doc.text,
                    metadata: doc.metadata,
                    vector: doc.vector,
                }
            })
            .collect())
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        let tenant = self.tenant.clone();
        let Some(open) = self.shard(false)? else {
            return Ok(Vec::new());
        };
        let ids: Vec<PointId> = doc_ids.iter().map(|d| edge_id(d)).collect();
        let records = open
            .shard
            .retrieve(
                &ids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(with_vectors)),
            )
            .map_err(|e| internal(&tenant, "retrieve", e))?;
        Ok(records
            .into_iter()
            .map(|r| to_doc(r.payload, r.vector))
            .collect())
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        let tenant = self.tenant.clone();
        let Some(open) = self.shard(false)? else {
            return Ok(0);
        };
        let (existing, op) = match selector {
            Selector::Ids(doc_ids) => {
                let ids: HashSet<PointId> = doc_ids.iter().map(|d| edge_id(d)).collect();
                let ids: Vec<PointId> = ids.into_iter().collect();
                let found = open
                    .shard
                    .retrieve(&ids, Some(WithPayloadInterface::Bool(false)), None)
                    .map_err(|e| internal(&tenant, "retrieve", e))?;
                let found: Vec<PointId> = found.into_iter().map(|r| r.id).collect();
                (found.len(), PointOperations::DeletePoints { ids: found })
            }
            Selector::Filter(f) => {
                open.ensure_indexes(&tenant, f)?;
                let filter = to_edge_filter(f)?;
                let n = open
                    .shard
                    .count(CountRequest {
                        filter: Some(filter.clone()),
                        exact: true,
                    })
                    .map_err(|e| internal(&tenant, "count", e))?;
                (n, PointOperations::DeletePointsByFilter(filter))
            }
        };
        if existing > 0 {
            open.update(&tenant, UpdateOperation::PointOperation(op))?;
        }
        Ok(existing)
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        let tenant = self.tenant.clone();
        let Some(open) = self.shard(false)? else {
            return Ok(0);
        };
        let filter = match filter {
            Some(f) => {
                open.ensure_indexes(&tenant, f)?;
                Some(to_edge_filter(f)?)
            }
            None => None,
        };
        open.shard
            .count(CountRequest {
                filter,
                exact: true,
            })
            .map_err(|e| internal(&tenant, "count", e))
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        self.close()?;
        self.paths
            .check_tenant_dir(&self.tenant)
            .map_err(|e| internal(&self.tenant, "tenant folder", e))?;
        let dir = self.paths.tenant_dir(&self.tenant);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(&self.tenant, "remove tenant folder", e)),
        }
    }

    fn maintain(&mut self) -> Result<bool, ServiceError> {
        let threshold = self.options.optimize_threshold;
        let tenant = self.tenant.clone();
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        if threshold == 0 || open.optimized || open.shard.info().points_count < threshold {
            return Ok(false);
        }
        open.shard
            .optimize()
            .map_err(|e| internal(&tenant, "optimize", e))?;
        open.shard.flush();
        open.optimized = true;
        Ok(true)
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let OpenShard { shard, _lock, .. } = open;
        // Dropping the shard flushes it; the lock is released after it, once
        // the WAL is compacted.
        drop(shard);
        compact_wal(&self.dir).map_err(|e| internal(&self.tenant, "compact WAL", e))?;
        drop(_lock);
        tracing::debug!(
            tenant = %self.tenant,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "shard closed"
        );
        Ok(())
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
fn lock(tenant: &TenantId, dir: &Path) -> Result<File, ServiceError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| internal(tenant, "open lock file", e))?;
    // A lock can be held for a moment by someone who is not using the store:
    // a process forked by this one keeps a copy of the descriptor until it
    // execs. So wait a little before calling the store taken.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ServiceError::unavailable(format!(
                    "tenant {tenant}: its store is open in another process; retry later"
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(internal(tenant, "lock store", e)),
        }
    }
}

/// How long opening a shard waits for its lock before answering `unavailable`.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

fn edge_id(doc_id: &str) -> PointId {
    PointId::Uuid(EdgeUuid::from_bytes(point_uuid(doc_id).into_bytes()))
}

fn metadata_path(key: &str) -> String {
    format!("{METADATA}.{key}")
}

fn json_path(path: &str) -> Result<qdrant_edge::JsonPath, ServiceError> {
    path.parse()
        .map_err(|()| ServiceError::bad_request(format!("filter key path {path:?} is not usable")))
}

/// The index type that serves a condition, if one does.
fn index_kind(cond: &Condition) -> Option<PayloadSchemaType> {
    let of = |s: &Scalar| match s {
        Scalar::String(_) => PayloadSchemaType::Keyword,
        Scalar::Number(_) => PayloadSchemaType::Float,
        Scalar::Bool(_) => PayloadSchemaType::Bool,
    };
    match cond {
        Condition::Equals(s) => Some(of(s)),
        Condition::Range(_) => Some(PayloadSchemaType::Float),
        Condition::AnyOf(list) => {
            let first = of(list.first()?);
            list.iter().all(|s| of(s) == first).then_some(first)
        }
    }
}

/// Our filter in the engine's terms: every condition must hold on
/// `metadata.<key>`; numbers compare as a closed range so `1` equals `1.0`.
fn to_edge_filter(filter: &Filter) -> Result<EdgeFilter, ServiceError> {
    let mut must = Vec::with_capacity(filter.conditions.len());
    for (key, cond) in &filter.conditions {
        let path = json_path(&metadata_path(key))?;
        let c = match cond {
            Condition::Equals(s) => scalar_condition(&path, s),
            Condition::AnyOf(list) => EdgeCondition::Filter(EdgeFilter {
                should: Some(list.iter().map(|s| scalar_condition(&path, s)).collect()),
                min_should: None,
                must: None,
                must_not: None,
            }),
            Condition::Range(r) => EdgeCondition::Field(FieldCondition::new_range(
                path,
                EdgeRange {
                    lt: r.lt.map(OrderedFloat),
                    gt: r.gt.map(OrderedFloat),
                    gte: r.gte.map(OrderedFloat),
                    lte: r.lte.map(OrderedFloat),
                },
            )),
        };
        must.push(c);
    }
    Ok(EdgeFilter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    })
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

/// A stored point back as a document.
fn to_doc(payload: Option<Payload>, vector: Option<VectorStructInternal>) -> Doc {
    let mut payload = payload.map(|p| p.0).unwrap_or_default();
    let doc_id = match payload.remove(DOC_ID) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let text = match payload.remove(TEXT) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let metadata = match payload.remove(METADATA) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let vector = vector.and_then(|v| match v {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Some(v),
            _ => None,
        },
        _ => None,
    });
    Doc {
        doc_id,
        text,
        metadata,
        vector,
    }
}

fn internal(tenant: &TenantId, what: &str, e: impl std::fmt::Display) -> ServiceError {
    tracing::error!(%tenant, error = %e, "store failure: {what}");
    ServiceError::internal(format!("tenant {tenant}: {what} failed: {e}"))
}

fn unreachable_state(tenant: &TenantId) -> ServiceError {
    ServiceError::internal(format!("tenant {tenant}: shard missing after create"))
}
