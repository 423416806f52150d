//! Tenant stores: the [`TenantStore`] trait every backend implements, and the
//! choice of backend from settings.
//!
//! Owns the contract between a tenant actor and the engine: what a store must
//! do (apply writes durably before it returns, answer reads of a tenant with
//! no data from nothing, never touch another tenant) and the types that cross
//! it. It must never be shared between tenants or called from an async thread:
//! a store belongs to exactly one tenant actor, which calls it on the blocking
//! pool.

pub mod edge;
pub mod encrypted;
pub mod mark;
#[cfg(test)]
pub mod memory;
pub mod page_cache;
pub mod payload;
pub mod qdrant;
pub mod sealed;
pub mod shard;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{Backend, Settings};
use crate::filter::Filter;
pub use crate::protocol::internal;
use crate::protocol::{Doc, Hit, ServiceError};
use crate::tenant::{TenantId, TenantPaths};
pub use mark::AppliedMark;

/// The answer of a store that does not encrypt to [`TenantStore::rekey`].
pub fn cannot_rekey() -> ServiceError {
    ServiceError::bad_request(
        "this store does not encrypt tenants' data: rotating a tenant's key needs \
         encryption.enabled (the edge backend, per_tenant layout)",
    )
}

/// A document ready to store: its vector is known and has been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub doc_id: String,
    pub text: Option<String>,
    pub metadata: Map<String, Value>,
    pub vector: Vec<f32>,
}

/// A nearest-neighbour query against one tenant.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub vector: Vec<f32>,
    pub top_k: usize,
    pub filter: Option<Filter>,
    pub with_vectors: bool,
}

/// Which documents a delete removes.
#[derive(Debug, Clone)]
pub enum Selector {
    Ids(Vec<String>),
    Filter(Filter),
}

/// One tenant's store, owned by that tenant's actor alone.
///
/// Methods take `&mut self` and are synchronous: the actor moves the store
/// onto the blocking pool for each job and gets it back afterwards, so a
/// store needs no locks of its own and two jobs of one tenant can never
/// overlap. Errors are protocol errors directly: each failure is classified
/// where it is understood (a wrong dimension, an unreachable backend).
pub trait TenantStore: Send {
    /// The tenant's vector dimension: the one kept with its data, or the
    /// configured one for a tenant that has none yet.
    fn dimension(&mut self) -> Result<usize, ServiceError>;

    /// Insert or replace by `doc_id`, and with `mark` move the tenant's
    /// [`AppliedMark`] to it in the same write: the documents and the mark
    /// are durable together or not at all (where a backend splits a large
    /// write, the mark goes with its last part). Durable when it returns.
    /// The one write a store implements: a store that wraps another passes
    /// the mark on with the documents.
    fn write(
        &mut self,
        records: Vec<Record>,
        mark: Option<&AppliedMark>,
    ) -> Result<(), ServiceError>;

    /// Insert or replace by `doc_id` (the mark stays); durable when it returns.
    fn upsert(&mut self, records: Vec<Record>) -> Result<(), ServiceError> {
        self.write(records, None)
    }

    /// The tenant's [`AppliedMark`]: the newest ingest message its store
    /// holds; `None` for a tenant that no ingest message has reached.
    fn applied_mark(&mut self) -> Result<Option<AppliedMark>, ServiceError>;

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError>;

    /// The documents among `doc_ids` that exist, in request order.
    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError>;

    /// Remove the selected documents; durable when it returns. Returns how many existed.
    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError>;

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError>;

    /// Erase every document of the tenant and the files that hold them. The
    /// operator's configuration of the tenant (`config/tenant.json`) stays.
    /// Idempotent.
    fn drop_tenant(&mut self) -> Result<(), ServiceError>;

    /// Work worth doing while the tenant is idle (building an index once it
    /// is large). Returns whether anything was done.
    fn maintain(&mut self) -> Result<bool, ServiceError> {
        Ok(false)
    }

    /// Release every handle; the data stays. Called once, before the actor stops.
    fn close(&mut self) -> Result<(), ServiceError>;

    /// The tenant's data key (`encryption.enabled`), given by its actor
    /// before the store's first job that may open its data. Ignored by a
    /// store that does not encrypt.
    fn set_data_key(&mut self, _key: Option<Arc<crate::crypto::DataKey>>) {}

    /// Encrypt the tenant's data with `next` instead of the key it has
    /// (`keys rotate`), and keep `next` as its key. Idempotent: data under
    /// `next` already is left as it is. A store that does not encrypt
    /// answers [`cannot_rekey`].
    fn rekey(&mut self, next: Arc<crate::crypto::DataKey>) -> Result<(), ServiceError>;

    /// Whether a read may run on the actor's own thread rather than the
    /// blocking pool: the data is open in this process and a read does no
    /// I/O beyond memory-mapped pages. False for a store that waits on the
    /// network, and for one not opened yet (its first job opens it).
    fn answers_inline(&self) -> bool {
        false
    }

    /// A page of the tenant's documents, with their vectors: at most
    /// `limit`, starting at `cursor` (`None`: the first page), in an order
    /// that stays the same while nothing is written. Returns the cursor of
    /// the next page, `None` after the last. For export: a tenant is read a
    /// page at a time, never collected.
    fn scroll(&mut self, cursor: Option<&str>, limit: usize) -> Result<Page, ServiceError>;

    /// Replace every document of the tenant with the batches `next` yields
    /// (until `None`), all of `dimension`, as atomically as the backend
    /// allows; says how. The default deletes the tenant's documents a page
    /// at a time, then writes the batches: a failure part way leaves part of
    /// the new documents. A backend that can build aside and swap overrides it.
    fn replace(
        &mut self,
        dimension: usize,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<Replaced, ServiceError> {
        replace_in_place(self, dimension, next)
    }
}

/// A page of [`TenantStore::scroll`].
#[derive(Debug, Default)]
pub struct Page {
    pub docs: Vec<Record>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// How [`TenantStore::replace`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// Whether the old documents stayed whole until the new ones were all
    /// written (a failure changes nothing).
    pub atomic: bool,
    /// In words, for the reply.
    pub how: &'static str,
}

/// Documents deleted per step of [`replace_in_place`].
const DELETE_PAGE: usize = 1024;

/// [`TenantStore::replace`] for any store: delete the tenant's documents a
/// page at a time (its collection or shard, with its dimension and indexes,
/// stays), then upsert the batches. Not atomic.
pub fn replace_in_place<S: TenantStore + ?Sized>(
    store: &mut S,
    dimension: usize,
    next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
) -> Result<Replaced, ServiceError> {
    let current = store.dimension()?;
    if current != dimension {
        return Err(ServiceError::dimension_mismatch(format!(
            "the documents have {dimension} dimensions, the tenant's store has {current}"
        )));
    }
    loop {
        let page = store.scroll(None, DELETE_PAGE)?;
        if page.docs.is_empty() {
            break;
        }
        let ids = page.docs.into_iter().map(|r| r.doc_id).collect();
        store.delete(&Selector::Ids(ids))?;
    }
    while let Some(batch) = next()? {
        store.upsert(batch)?;
    }
    Ok(Replaced {
        atomic: false,
        how: "deleted the tenant's documents, then wrote the new ones in batches",
    })
}

/// Makes the store of a tenant. Opening is lazy: `open` must be cheap and
/// touch nothing on disk or on the network; the store does that on its first
/// job, on the blocking pool.
pub trait StoreFactory: Send + Sync {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore>;
    /// `edge` or `qdrant`, for stats and the service metadata.
    fn backend(&self) -> &'static str;
    /// A partition was handed over and its tenants' stores are closed: let
    /// go of what the factory keeps for it (the edge shared layout's shard
    /// of the partition). Nothing by default.
    fn release_partition(&self, _partition: u32) {}
}

/// The factory for the configured backend.
pub fn factory(settings: &Settings) -> anyhow::Result<Arc<dyn StoreFactory>> {
    let backend: Arc<dyn StoreFactory> = match settings.store.backend {
        Backend::Edge => Arc::new(edge::EdgeFactory::new(settings)?),
        Backend::Qdrant => Arc::new(qdrant::QdrantFactory::new(settings)?),
    };
    // Encryption where the kernel cannot encrypt per tenant: each
    // document's text and metadata sealed before they reach the store.
    if settings.encryption.enabled && !settings.encrypts_everything() {
        return Ok(Arc::new(sealed::SealingFactory::new(
            backend,
            &settings.encryption.plaintext_metadata,
        )));
    }
    Ok(backend)
}

/// `dimension_mismatch` unless `vector` has the store's `dimension`.
pub fn check_dimension(vector: &[f32], dimension: usize) -> Result<(), ServiceError> {
    if vector.len() != dimension {
        return Err(ServiceError::dimension_mismatch(format!(
            "vector has {} dimensions, the tenant's store has {dimension}",
            vector.len()
        )));
    }
    Ok(())
}

/// Make the data root at start: every backend keeps tenants' folders
/// (`tenant.json`, and the edge store's shards) under it.
pub fn create_data_folder(root: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)
        .map_err(|e| anyhow::anyhow!("cannot create the data folder {}: {e}", root.display()))
}

/// `doc_ids` without repeats, in first-seen order: a delete counts each
/// document once however often it is named.
pub fn unique(doc_ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    doc_ids
        .iter()
        .filter(|d| seen.insert(d.as_str()))
        .cloned()
        .collect()
}

/// Remove a tenant's data from its folder under the data root: the last step
/// of every backend's `drop`. That is the edge store's shard
/// (`<tenant>/vector_store/`); the operator's files in the folder stay
/// (`config/tenant.json` holds the tenant's quota and rate limit, which a
/// tenant must not lift by dropping itself), and so does anything else kept
/// there. The folder itself goes only when nothing is left in it. A missing
/// folder is fine; a symlinked one is refused, never followed.
pub fn remove_tenant_data(paths: &TenantPaths, tenant: &TenantId) -> Result<(), ServiceError> {
    let who = format!("tenant {tenant}");
    paths
        .check_tenant_dir(tenant)
        .map_err(|e| internal(&who, "tenant folder", e))?;
    refuse_seed_index(paths, tenant)?;
    // `remove_dir_all` removes a symlink itself, never what it points to.
    match std::fs::remove_dir_all(paths.store_dir(tenant)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(internal(&who, "remove tenant store", e)),
    }
    match std::fs::remove_dir(paths.tenant_dir(tenant)) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(internal(&who, "remove tenant folder", e)),
    }
}

/// The seed application keeps its FAISS index in
/// `user_data/<user>/vector_store/faiss_index/`, the folder a tenant's shard
/// uses here. A worker pointed at the seed's `user_data` would open or erase
/// it; refuse instead, and say what to do.
pub fn refuse_seed_index(paths: &TenantPaths, tenant: &TenantId) -> Result<(), ServiceError> {
    let index = paths.store_dir(tenant).join("faiss_index");
    if index.exists() {
        return Err(ServiceError::internal(format!(
            "tenant {tenant}: {} is a FAISS index of the seed application; give the worker a \
             data folder of its own (VECTOR_STORE_FOLDER) and move the data with tenantvec-migrate",
            index.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_faiss_index_is_never_opened_nor_erased() {
        let root = tempfile::tempdir().unwrap();
        let paths = TenantPaths::new(root.path());
        let tenant = TenantId::parse("alice").unwrap();
        let index = paths.store_dir(&tenant).join("faiss_index");
        std::fs::create_dir_all(&index).unwrap();
        std::fs::write(index.join("index.faiss"), b"seed").unwrap();
        let refused = remove_tenant_data(&paths, &tenant).unwrap_err();
        assert!(
            refused.message.contains("tenantvec-migrate"),
            "{}",
            refused.message
        );
        assert!(index.join("index.faiss").exists());
    }

    fn setup() -> (tempfile::TempDir, TenantPaths, TenantId) {
        let root = tempfile::tempdir().unwrap();
        let paths = TenantPaths::new(root.path());
        (root, paths, TenantId::parse("t").unwrap())
    }

    #[test]
    fn removing_data_keeps_the_operator_s_files() {
        let (_root, paths, t) = setup();
        std::fs::create_dir_all(paths.store_dir(&t).join("segments")).unwrap();
        std::fs::create_dir_all(paths.tenant_dir(&t).join("config")).unwrap();
        let policy = paths.tenant_dir(&t).join("config/tenant.json");
        std::fs::write(&policy, r#"{"max_documents": 3}"#).unwrap();
        remove_tenant_data(&paths, &t).unwrap();
        assert!(!paths.store_dir(&t).exists());
        assert_eq!(
            std::fs::read_to_string(&policy).unwrap(),
            r#"{"max_documents": 3}"#
        );
        remove_tenant_data(&paths, &t).unwrap(); // idempotent
        assert!(policy.is_file());
    }

    #[test]
    fn a_folder_left_empty_goes_and_a_missing_one_is_fine() {
        let (_root, paths, t) = setup();
        remove_tenant_data(&paths, &t).unwrap();
        std::fs::create_dir_all(paths.store_dir(&t)).unwrap();
        remove_tenant_data(&paths, &t).unwrap();
        assert!(!paths.tenant_dir(&t).exists());
    }
}
