//! The server store: tenants' points in a Qdrant server (or cluster), reached
//! over gRPC with `qdrant-client`, in one of two layouts.
//!
//! * `per_tenant`: a collection per tenant, `<collection_prefix><tenant>`,
//!   created on the tenant's first write with the configured dimension and
//!   cosine distance; `drop` deletes it.
//! * `shared`: one collection, `<collection_prefix>_shared` (`_` cannot begin
//!   a tenant id), whose `tenant` payload key is indexed as Qdrant's tenant
//!   key (`is_tenant`); every read, count, delete and search gets the tenant
//!   condition here, so no caller can forget it; `drop` deletes by it.
//!
//! Both: payload indexes on filtered keys made on first use (within
//! `store.indexed_keys` and `store.max_payload_indexes`), every write sent
//! with `wait=true` (the reply means the server has applied it), and a server
//! that cannot be reached answered `unavailable`, never a panic; the client
//! reconnects by itself on the next request.
//!
//! Owns the translation to Qdrant's API and the classification of its
//! failures. It must never let one tenant's request touch another tenant's
//! collection or points, and never block an async thread: its calls run on
//! the blocking pool, like every store's, and wait there for the gRPC reply
//! on the factory's own small runtime.

mod errors;
mod terms;

use errors::{classify, is_already_there, is_missing};
use terms::dense;
pub use terms::to_qdrant_filter;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use qdrant_client::qdrant::{
    vectors_config, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter as QFilter, GetPointsBuilder,
    KeywordIndexParamsBuilder, PointId as QPointId, PointStruct, PointsIdsList,
    SearchParamsBuilder, SearchPointsBuilder, UpsertPointsBuilder, Value as QValue,
    VectorParamsBuilder, VectorsOutput,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::Map;

use crate::config::{Layout, Settings, StoreSettings};
use crate::filter::Filter;
use crate::protocol::{Doc, Hit, ServiceError};
use crate::store::mark::{self, AppliedMark};
use crate::store::payload::{self, IndexKind, IndexPolicy, TENANT};
use crate::store::{
    check_dimension, create_data_folder, internal, remove_tenant_data, unique, Record, SearchQuery,
    Selector, StoreFactory, TenantStore,
};
use crate::tenant::{TenantId, TenantPaths};

/// Suffix of the shared layout's collection name, after the prefix.
const SHARED_COLLECTION: &str = "_shared";
/// Most bytes (estimated) sent in one upsert request. Qdrant's gRPC port sets
/// no size limit (its 32 MiB `max_request_size_mb` is for REST), but a group
/// commit merges every upsert queued for a tenant into one write (up to
/// `ingest.max_ack_pending` ingest messages of up to the NATS `max_payload`
/// each, plus requests): parts keep each request's encoding buffer and its
/// time against `qdrant_timeout` bounded.
const MAX_UPSERT_BYTES: usize = 8 << 20;

/// Makes [`QdrantStore`]s that share one client and one I/O runtime.
pub struct QdrantFactory {
    client: Arc<Qdrant>,
    io: Arc<IoRuntime>,
    /// The server, without credentials, for errors and logs.
    url: String,
    prefix: String,
    dimension: usize,
    paths: TenantPaths,
    indexes: Arc<IndexPolicy>,
    /// What is known of the shared collection, in the shared layout.
    shared: Option<Arc<Mutex<Known>>>,
}

/// The runtime that drives the gRPC client: stores run on the blocking
/// pool and wait here for replies.
///
/// Its own runtime, not the worker's, because a store must also work where
/// no runtime runs (the conformance tests, tools), and because waiting with
/// `block_on` needs a runtime whose I/O is driven by threads of its own.
/// Dropped through [`Runtime::shutdown_background`], which (unlike dropping a
/// runtime) is allowed on an async thread, where the last store may go.
///
/// [`Runtime::shutdown_background`]: tokio::runtime::Runtime::shutdown_background
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qdrant-io")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // Only `Drop` takes the runtime out.
        self.0
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .expect("the I/O runtime lives as long as its owner")
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A client of the configured Qdrant server: its URL, API key and
/// timeouts. Nothing is sent until the first call.
pub fn client(store: &StoreSettings) -> anyhow::Result<Qdrant> {
    let mut config = Qdrant::from_url(&store.qdrant_url)
        .timeout(store.qdrant_timeout)
        .connect_timeout(store.qdrant_connect_timeout)
        // The check runs a blocking round trip at build time and prints to
        // stdout; the factory's probe logs the server version instead.
        .skip_compatibility_check();
    if store.qdrant_api_key.is_set() {
        config = config.api_key(store.qdrant_api_key.expose());
    }
    config
        .build()
        .map_err(|e| anyhow::anyhow!("store.qdrant_url {:?}: {e}", store.qdrant_url))
}

impl QdrantFactory {
    /// Set up the client; nothing is sent yet (gRPC connects on first use).
    /// A probe reports in the log, in the background, whether the server
    /// answers and its version; an unreachable server is not fatal.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let store = &settings.store;
        create_data_folder(&store.folder)?;
        let client = Arc::new(client(store)?);
        let io = Arc::new(IoRuntime::new()?);
        let url = crate::config::redact_urls(&store.qdrant_url);
        let probe = client.clone();
        let probe_url = url.clone();
        io.handle().spawn(async move {
            match probe.health_check().await {
                Ok(reply) => {
                    tracing::info!(url = %probe_url, version = %reply.version, "qdrant server answers")
                }
                Err(e) => tracing::warn!(
                    url = %probe_url,
                    error = %e,
                    "qdrant server does not answer; requests get `unavailable` until it does"
                ),
            }
        });
        let shared = (store.layout == Layout::Shared).then(|| Arc::new(Mutex::new(Known::None)));
        Ok(Self {
            client,
            io,
            url,
            prefix: store.collection_prefix.clone(),
            dimension: store.dimension,
            paths: TenantPaths::new(&store.folder),
            indexes: Arc::new(IndexPolicy::from_settings(store)),
            shared,
        })
    }
}

impl StoreFactory for QdrantFactory {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore> {
        let (collection, scope, known) = match &self.shared {
            Some(known) => (
                format!("{}{SHARED_COLLECTION}", self.prefix),
                Some(tenant.as_str().to_owned()),
                known.clone(),
            ),
            None => (
                format!("{}{tenant}", self.prefix),
                None,
                Arc::new(Mutex::new(Known::None)),
            ),
        };
        Box::new(QdrantStore {
            tenant: tenant.clone(),
            who: format!("tenant {tenant}"),
            client: self.client.clone(),
            io: self.io.clone(),
            url: self.url.clone(),
            collection,
            scope,
            dimension: self.dimension,
            paths: self.paths.clone(),
            indexes: self.indexes.clone(),
            known,
            mark: None,
        })
    }

    fn backend(&self) -> &'static str {
        "qdrant"
    }
}

/// What this worker knows of a collection. Another worker may create or
/// delete it at any time, so "missing" is never trusted: reads ask the
/// server, and a write that finds the collection gone makes it again.
#[derive(Debug, Clone)]
enum Known {
    /// Not looked at yet, or found missing.
    None,
    Exists {
        dimension: usize,
        /// Payload paths that have an index (of any type).
        indexed: HashSet<String>,
    },
}

pub struct QdrantStore {
    tenant: TenantId,
    /// "tenant <id>", for errors and logs.
    who: String,
    client: Arc<Qdrant>,
    io: Arc<IoRuntime>,
    url: String,
    collection: String,
    /// The tenant condition, in the shared layout.
    scope: Option<String>,
    /// Dimension of a collection made from now on.
    dimension: usize,
    paths: TenantPaths,
    /// Which filter keys get a payload index.
    indexes: Arc<IndexPolicy>,
    /// Shared by every store of the shared layout, own in `per_tenant`.
    known: Arc<Mutex<Known>>,
    /// The tenant's applied mark as last read or written (`None`: not read
    /// yet). This store is its only writer while the tenant is active here.
    mark: Option<Option<AppliedMark>>,
}

impl QdrantStore {
    /// Wait for `call` on the I/O runtime. Called on the blocking pool only.
    fn run<T>(&self, call: impl Future<Output = Result<T, QdrantError>>) -> Result<T, QdrantError> {
        self.io.handle().block_on(call)
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        // Known is a cache: a panic mid-update leaves at worst a stale entry,
        // which the next "not found" corrects.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self) {
        *self.known() = Known::None;
    }

    /// Wait for `call`; `None` when the collection does not exist (it is
    /// forgotten: another worker may have dropped it), so that a read or a
    /// delete of a tenant without a collection finds nothing.
    fn unless_missing<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, QdrantError>>,
    ) -> Result<Option<T>, ServiceError> {
        match self.run(call) {
            Ok(reply) => Ok(Some(reply)),
            Err(e) if is_missing(&e) => {
                self.forget();
                Ok(None)
            }
            Err(e) => Err(self.fail(what, e)),
        }
    }

    /// A failure of `what` as a protocol error.
    fn fail(&self, what: &str, e: QdrantError) -> ServiceError {
        classify(&self.who, &self.url, what, e)
    }

    /// The collection's dimension, asking the server the first time;
    /// `None` while the collection does not exist.
    fn existing_dimension(&self) -> Result<Option<usize>, ServiceError> {
        if let Known::Exists { dimension, .. } = &*self.known() {
            return Ok(Some(*dimension));
        }
        let info = match self.run(self.client.collection_info(&self.collection)) {
            Ok(info) => info,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(self.fail("collection info", e)),
        };
        let info = info.result.unwrap_or_default();
        let dimension = info
            .config
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|c| match c {
                vectors_config::Config::Params(p) => usize::try_from(p.size).ok(),
                vectors_config::Config::ParamsMap(_) => None,
            })
            .ok_or_else(|| {
                internal(
                    &self.who,
                    "collection info",
                    format!(
                        "collection {} has no unnamed dense vector; it was not made by tenantvec",
                        self.collection
                    ),
                )
            })?;
        let indexed = info.payload_schema.into_keys().collect();
        *self.known() = Known::Exists { dimension, indexed };
        Ok(Some(dimension))
    }

    /// Make the collection unless it exists, with the configured dimension,
    /// cosine distance and, in the shared layout, the tenant index.
    fn ensure_collection(&self) -> Result<usize, ServiceError> {
        let dimension = match self.existing_dimension()? {
            Some(d) => d,
            None => {
                let create = CreateCollectionBuilder::new(&self.collection)
                    .vectors_config(VectorParamsBuilder::new(
                        self.dimension as u64,
                        Distance::Cosine,
                    ))
                    .on_disk_payload(true);
                match self.run(self.client.create_collection(create)) {
                    Ok(_) => tracing::info!(
                        who = %self.who,
                        collection = %self.collection,
                        "collection created"
                    ),
                    // Another worker made it first: use theirs.
                    Err(e) if is_already_there(&e) => {}
                    Err(e) => return Err(self.fail("create collection", e)),
                }
                self.existing_dimension()?.ok_or_else(|| {
                    internal(&self.who, "create collection", "missing right after create")
                })?
            }
        };
        // Checked on every first write, not only after a create: a worker
        // that stopped between making the shared collection and indexing it
        // must not leave it without its tenant index.
        if self.scope.is_some() && !self.is_indexed(TENANT) {
            let tenant_index = CreateFieldIndexCollectionBuilder::new(
                &self.collection,
                TENANT,
                FieldType::Keyword,
            )
            .field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true))
            .wait(true);
            self.run(self.client.create_field_index(tenant_index))
                .map_err(|e| self.fail("create tenant index", e))?;
            self.mark_indexed(TENANT);
        }
        Ok(dimension)
    }

    fn is_indexed(&self, path: &str) -> bool {
        matches!(&*self.known(), Known::Exists { indexed, .. } if indexed.contains(path))
    }

    fn mark_indexed(&self, path: &str) {
        if let Known::Exists { indexed, .. } = &mut *self.known() {
            indexed.insert(path.to_owned());
        }
    }

    /// Give the keys `filter` uses a payload index (the first kind seen for
    /// a key wins), so a filtered search does not scan the collection: only
    /// keys the operator allows, and no more than the cap per collection (in
    /// the shared layout, the one collection's cap for all tenants; workers
    /// that index at the same moment may pass it by a few). Beyond it the
    /// server filters without an index. Returns `false` if the collection
    /// does not exist.
    fn ensure_indexes(&self, filter: Option<&Filter>) -> Result<bool, ServiceError> {
        if self.existing_dimension()?.is_none() {
            return Ok(false);
        }
        let Some(filter) = filter else {
            return Ok(true);
        };
        let missing = {
            let known = self.known();
            let Known::Exists { indexed, .. } = &*known else {
                return Ok(false);
            };
            self.indexes.to_index(filter, indexed)
        };
        for (path, kind) in missing {
            let field_type = match kind {
                IndexKind::Keyword => FieldType::Keyword,
                IndexKind::Float => FieldType::Float,
                IndexKind::Bool => FieldType::Bool,
            };
            let create =
                CreateFieldIndexCollectionBuilder::new(&self.collection, &path, field_type)
                    .wait(true);
            match self.run(self.client.create_field_index(create)) {
                Ok(_) => {}
                Err(e) if is_missing(&e) => {
                    self.forget();
                    return Ok(false);
                }
                Err(e) => return Err(self.fail("create payload index", e)),
            }
            self.mark_indexed(&path);
        }
        Ok(true)
    }

    fn point_id(&self, doc_id: &str) -> QPointId {
        QPointId::from(payload::point_uuid(self.scope.as_deref(), doc_id).to_string())
    }

    /// `filter` with the tenant condition added in the shared layout.
    fn filter(&self, filter: Option<&Filter>) -> Option<QFilter> {
        to_qdrant_filter(filter, self.scope.as_deref())
    }

    /// The id of the tenant's applied mark ([`mark`]): in its own
    /// collection beside its documents, or in the shared one under the
    /// tenant value no tenant's reads include.
    fn mark_id(&self) -> QPointId {
        QPointId::from(mark::point_uuid(self.scope.as_deref()).to_string())
    }

    /// [`Self::filter`] for what goes through every point rather than
    /// nearest vectors (count, delete, scroll): in the tenant's own
    /// collection, without its mark. A search needs no such condition: the
    /// mark has no vector.
    fn docs_filter(&self, filter: Option<&Filter>) -> Option<QFilter> {
        let scoped = self.filter(filter);
        if self.scope.is_some() {
            return scoped;
        }
        let mut filter = scoped.unwrap_or_default();
        filter
            .must_not
            .push(qdrant_client::qdrant::Condition::has_id([self.mark_id()]));
        Some(filter)
    }

    /// The mark's point: no vector, the mark in its payload.
    fn mark_point(&self, mark: &AppliedMark) -> PointStruct {
        PointStruct::new(
            self.mark_id(),
            HashMap::<String, Vec<f32>>::new(),
            Payload::from(mark.to_payload(self.scope.as_deref())),
        )
    }

    /// The documents among `doc_ids` that exist and belong to this tenant,
    /// in request order.
    fn existing(&self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        if doc_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<QPointId> = doc_ids.iter().map(|d| self.point_id(d)).collect();
        let request = GetPointsBuilder::new(&self.collection, ids)
            .with_payload(true)
            .with_vectors(with_vectors);
        let Some(reply) = self.unless_missing("get", self.client.get_points(request))? else {
            return Ok(Vec::new());
        };
        let points = reply.result;
        let mut by_id: HashMap<String, Doc> = points
            .into_iter()
            .filter_map(|p| self.to_doc(p.payload, p.vectors))
            .map(|d| (d.doc_id.clone(), d))
            .collect();
        let mut docs = Vec::with_capacity(by_id.len());
        for doc_id in doc_ids {
            if let Some(doc) = by_id.remove(doc_id) {
                docs.push(doc);
            }
        }
        Ok(docs)
    }

    /// A retrieved point as a document, if it is this tenant's: ids are
    /// tenant-scoped already, the payload check is a second lock.
    fn to_doc(
        &self,
        payload: HashMap<String, QValue>,
        vectors: Option<VectorsOutput>,
    ) -> Option<Doc> {
        let payload = Map::from(Payload::from(payload));
        if self.scope.is_some() && payload::tenant_of(&payload) != self.scope.as_deref() {
            return None;
        }
        Some(payload::to_doc(payload, dense(vectors)))
    }

    fn count_matching(&self, filter: Option<QFilter>) -> Result<usize, ServiceError> {
        let mut request = CountPointsBuilder::new(&self.collection).exact(true);
        if let Some(f) = filter {
            request = request.filter(f);
        }
        let reply = self.unless_missing("count", self.client.count(request))?;
        Ok(reply.and_then(|r| r.result).map_or(0, |r| r.count) as usize)
    }

    fn delete_points(
        &self,
        selector: impl Into<qdrant_client::qdrant::points_selector::PointsSelectorOneOf>,
    ) -> Result<(), ServiceError> {
        let request = DeletePointsBuilder::new(&self.collection)
            .points(selector)
            .wait(true);
        // Nothing to delete in a collection that does not exist.
        self.unless_missing("delete", self.client.delete_points(request))?;
        Ok(())
    }

    /// Send `records` in requests of at most [`MAX_UPSERT_BYTES`]
    /// (estimated), each waited for. Upserts replace by id, so a retry after
    /// a failure part way through leaves the same result as one request
    /// would have. Points are built per request, so a retry needs no copy
    /// made in advance.
    /// The tenant's `mark`, when given, goes in the last request: it is
    /// never durable before every document it covers.
    fn upsert_records(
        &self,
        records: &[Record],
        mark: Option<&AppliedMark>,
    ) -> Result<(), QdrantError> {
        let mut rest = records;
        if rest.is_empty() {
            if let Some(mark) = mark {
                let request =
                    UpsertPointsBuilder::new(&self.collection, vec![self.mark_point(mark)])
                        .wait(true);
                self.run(self.client.upsert_points(request))?;
            }
        }
        while !rest.is_empty() {
            let mut bytes = 0;
            let n = rest
                .iter()
                .take_while(|r| {
                    bytes += approx_bytes(r);
                    bytes <= MAX_UPSERT_BYTES
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(n);
            let mut points: Vec<PointStruct> = batch.iter().map(|r| self.point(r)).collect();
            if let (true, Some(mark)) = (tail.is_empty(), mark) {
                points.push(self.mark_point(mark));
            }
            let request = UpsertPointsBuilder::new(&self.collection, points).wait(true);
            self.run(self.client.upsert_points(request))?;
            rest = tail;
        }
        Ok(())
    }

    fn point(&self, r: &Record) -> PointStruct {
        let payload = payload::build(
            self.scope.as_deref(),
            r.doc_id.clone(),
            r.text.clone(),
            r.metadata.clone(),
        );
        PointStruct::new(
            self.point_id(&r.doc_id),
            r.vector.clone(),
            Payload::from(payload),
        )
    }
}

/// About how many bytes a record takes in an upsert request.
fn approx_bytes(r: &Record) -> usize {
    r.vector.len() * 4
        + r.text.as_ref().map_or(0, String::len)
        + serde_json::to_vec(&r.metadata).map_or(0, |m| m.len())
        + r.doc_id.len()
        + 64
}

impl TenantStore for QdrantStore {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        Ok(self.existing_dimension()?.unwrap_or(self.dimension))
    }

    fn write(
        &mut self,
        records: Vec<Record>,
        mark: Option<&AppliedMark>,
    ) -> Result<(), ServiceError> {
        if records.is_empty() && mark.is_none() {
            return Ok(());
        }
        let dimension = self.ensure_collection()?;
        for r in &records {
            check_dimension(&r.vector, dimension)?;
        }
        // A mark sent is unknown until its write is known to have gone through.
        if mark.is_some() {
            self.mark = None;
        }
        match self.upsert_records(&records, mark) {
            Ok(()) => {}
            // Dropped by another worker since we looked: make it again, once.
            Err(e) if is_missing(&e) => {
                self.forget();
                self.ensure_collection()?;
                self.upsert_records(&records, mark)
                    .map_err(|e| self.fail("upsert", e))?;
            }
            Err(e) => return Err(self.fail("upsert", e)),
        }
        if let Some(mark) = mark {
            self.mark = Some(Some(mark.clone()));
        }
        Ok(())
    }

    fn applied_mark(&mut self) -> Result<Option<AppliedMark>, ServiceError> {
        if let Some(known) = &self.mark {
            return Ok(known.clone());
        }
        let request = GetPointsBuilder::new(&self.collection, vec![self.mark_id()])
            .with_payload(true)
            .with_vectors(false);
        let found = self
            .unless_missing("get", self.client.get_points(request))?
            .and_then(|reply| reply.result.into_iter().next())
            .and_then(|p| AppliedMark::from_payload(&Map::from(Payload::from(p.payload))));
        self.mark = Some(found.clone());
        Ok(found)
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        let Some(dimension) = self.existing_dimension()? else {
            return Ok(Vec::new());
        };
        check_dimension(&query.vector, dimension)?;
        if !self.ensure_indexes(query.filter.as_ref())? {
            return Ok(Vec::new());
        }
        let mut request =
            SearchPointsBuilder::new(&self.collection, query.vector.clone(), query.top_k as u64)
                .with_payload(true)
                .with_vectors(query.with_vectors)
                // Used once the server has built an HNSW index; high enough
                // that tenants of this size are searched (almost) exactly.
                .params(SearchParamsBuilder::default().hnsw_ef(query.top_k.max(256) as u64));
        if let Some(f) = self.filter(query.filter.as_ref()) {
            request = request.filter(f);
        }
        let Some(reply) = self.unless_missing("search", self.client.search_points(request))? else {
            return Ok(Vec::new());
        };
        Ok(reply
            .result
            .into_iter()
            .filter_map(|p| Some(Hit::new(self.to_doc(p.payload, p.vectors)?, p.score)))
            .collect())
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        self.existing(doc_ids, with_vectors)
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        match selector {
            Selector::Ids(doc_ids) => {
                let found = self.existing(&unique(doc_ids), false)?;
                if !found.is_empty() {
                    let ids: Vec<QPointId> =
                        found.iter().map(|d| self.point_id(&d.doc_id)).collect();
                    self.delete_points(PointsIdsList { ids })?;
                }
                Ok(found.len())
            }
            Selector::Filter(f) => {
                if !self.ensure_indexes(Some(f))? {
                    return Ok(0);
                }
                let Some(filter) = self.docs_filter(Some(f)) else {
                    return Ok(0);
                };
                let n = self.count_matching(Some(filter.clone()))?;
                if n > 0 {
                    self.delete_points(filter)?;
                }
                Ok(n)
            }
        }
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        if !self.ensure_indexes(filter)? {
            return Ok(0);
        }
        // Every point of the tenant's own collection, counted without a
        // filter, less its mark if it has one.
        if filter.is_none() && self.scope.is_none() {
            let marks = usize::from(self.applied_mark()?.is_some());
            return Ok(self.count_matching(None)?.saturating_sub(marks));
        }
        self.count_matching(self.docs_filter(filter))
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        match &self.scope {
            Some(_) => {
                if self.existing_dimension()?.is_some() {
                    let everything = self.filter(None).ok_or_else(|| {
                        internal(
                            &self.who,
                            "drop",
                            "no tenant condition in the shared layout",
                        )
                    })?;
                    self.delete_points(everything)?;
                    self.delete_points(PointsIdsList {
                        ids: vec![self.mark_id()],
                    })?;
                }
            }
            None => {
                // Deleting a collection that does not exist succeeds.
                self.run(self.client.delete_collection(&self.collection))
                    .map_err(|e| self.fail("delete collection", e))?;
                self.forget();
            }
        }
        self.mark = None;
        remove_tenant_data(&self.paths, &self.tenant)
    }

    fn rekey(&mut self, _next: std::sync::Arc<crate::crypto::DataKey>) -> Result<(), ServiceError> {
        Err(crate::store::cannot_rekey())
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        // Nothing is held per tenant: the client and its connections are the
        // factory's, shared by every tenant. The mark is read again when the
        // tenant is next active (another worker may have written it since).
        self.mark = None;
        Ok(())
    }

    fn scroll(
        &mut self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::Page, ServiceError> {
        use qdrant_client::qdrant::point_id::PointIdOptions;
        let mut request = qdrant_client::qdrant::ScrollPointsBuilder::new(&self.collection)
            .limit(limit.clamp(1, u32::MAX as usize) as u32)
            .with_payload(true)
            .with_vectors(true);
        if let Some(c) = cursor {
            request = request.offset(QPointId::from(c.to_owned()));
        }
        if let Some(f) = self.docs_filter(None) {
            request = request.filter(f);
        }
        let Some(reply) = self.unless_missing("scroll", self.client.scroll(request))? else {
            return Ok(crate::store::Page::default());
        };
        let mut docs = Vec::with_capacity(reply.result.len());
        for p in reply.result {
            let Some(doc) = self.to_doc(p.payload, p.vectors) else {
                continue;
            };
            let vector = doc.vector.ok_or_else(|| {
                internal(
                    &self.who,
                    "scroll",
                    format!("{:?} has no vector", doc.doc_id),
                )
            })?;
            docs.push(Record {
                doc_id: doc.doc_id,
                text: doc.text,
                metadata: doc.metadata,
                vector,
            });
        }
        let next = match reply.next_page_offset.and_then(|p| p.point_id_options) {
            None => None,
            Some(PointIdOptions::Uuid(u)) => Some(u),
            Some(PointIdOptions::Num(n)) => {
                return Err(internal(
                    &self.who,
                    "scroll",
                    format!("point id {n} was not made by tenantvec"),
                ))
            }
        };
        Ok(crate::store::Page { docs, next })
    }
}
