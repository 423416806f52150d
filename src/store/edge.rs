//! The embedded store: Qdrant Edge shards on local disk, in one of two
//! layouts.
//!
//! * `per_tenant`: a shard per tenant in `<root>/<tenant>/vector_store/`,
//!   created on the tenant's first write, opened by its actor's first job,
//!   closed when the actor stops. Physical isolation, as in the seed design.
//!   A shard that a failed write left broken is closed and opened again from
//!   disk by the tenant's next job.
//! * `shared`: one shard for every tenant in `<root>/_shared/vector_store/`
//!   (`_` cannot begin a tenant id), opened at start; each point carries its
//!   tenant in a `tenant` payload key indexed as the engine's tenant key, and
//!   every read, count, delete and search is given the tenant condition here,
//!   so no caller can forget it. Activating a tenant costs nothing.
//!
//! With `encryption.enabled` (per_tenant only), each tenant's folder is
//! encrypted by the kernel with the tenant's data key ([`super::encrypted`]):
//! the key is put into the filesystem when the shard opens and taken out
//! when it closes; a tenant written before encryption was on is copied into
//! an encrypted folder by its first open.
//!
//! Owns the scoping of a tenant's points (ids, payload, filters) in both
//! layouts. It must never open a path outside `<root>/<tenant>/` for a tenant
//! (the shared shard excepted), nor let a read or write of one tenant reach
//! another tenant's points.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Layout, Settings};
use crate::crypto::fscrypt::KeyIdentifier;
use crate::crypto::DataKey;
use crate::filter::Filter;
use crate::protocol::{Doc, Hit, ServiceError};
use crate::store::encrypted::{EncryptedFolders, Unlocked};
use crate::store::mark::{self, AppliedMark};
use crate::store::shard::{self, Shard, ShardOptions};
use crate::store::{
    create_data_folder, internal, payload, remove_tenant_data, unique, Record, SearchQuery,
    Selector, StoreFactory, TenantStore,
};
use crate::tenant::{TenantId, TenantPaths};
use qdrant_edge::external::uuid::Uuid as EdgeUuid;
use qdrant_edge::{PointId, PointStruct, PointStructPersisted};

/// Folder of the shared shard under the data root.
const SHARED_DIR: &str = "_shared";

/// Makes [`EdgeStore`]s under one data root.
pub struct EdgeFactory {
    paths: TenantPaths,
    options: ShardOptions,
    optimize_threshold: usize,
    /// The one shard of the shared layout, open for the worker's lifetime.
    shared: Option<Arc<Shard>>,
    /// The shared layout in a fleet: a shard per partition, open while this
    /// worker owns the partition.
    partitioned: Option<Arc<PartitionShards>>,
    /// `encryption.enabled`: tenants' folders encrypted with their keys.
    encryption: Option<Arc<EncryptedFolders>>,
}

/// The shared layout's shards in a fleet, one per partition under
/// `<root>/_shared/p<n>/vector_store/`, so that a partition's tenants move
/// between workers with their shard: opened by the first job of one of the
/// partition's tenants, closed when the partition is handed over.
pub struct PartitionShards {
    root: PathBuf,
    options: ShardOptions,
    partitions: u32,
    open: Vec<std::sync::Mutex<Option<Arc<Shard>>>>,
}

impl PartitionShards {
    fn dir(&self, partition: u32) -> PathBuf {
        self.root
            .join(SHARED_DIR)
            .join(format!("p{partition}"))
            .join("vector_store")
    }

    /// The partition's shard, opened (or created) on first use.
    fn get(&self, partition: u32) -> Result<Arc<Shard>, ServiceError> {
        let mut open = self.open[partition as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(shard) = open.as_ref().filter(|s| !s.is_broken()) {
            return Ok(shard.clone());
        }
        let who = format!("shared store of partition {partition}");
        let shard = Shard::open(&self.dir(partition), &self.options, true, &who)?
            .ok_or_else(|| internal(&who, "open", "the shard was not created"))?;
        shard.ensure_tenant_index(&who)?;
        let shard = Arc::new(shard);
        *open = Some(shard.clone());
        Ok(shard)
    }

    /// Close the partition's shard: its tenants' stores are closed already
    /// (the partition's actors were stopped first), so this is the last
    /// handle, and the lock goes with it for the next owner.
    fn release(&self, partition: u32) {
        let taken = self.open[partition as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let who = format!("shared store of partition {partition}");
        match taken.map(Arc::try_unwrap) {
            Some(Ok(shard)) => {
                if let Err(e) = shard.close(&who) {
                    tracing::error!(partition, error = %e, "closing a partition's shared shard");
                }
            }
            Some(Err(_still_used)) => tracing::warn!(
                partition,
                "a partition's shared shard is still in use at its hand-over; it closes with its last user"
            ),
            None => {}
        }
    }
}

impl EdgeFactory {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let root = &settings.store.folder;
        create_data_folder(root)?;
        let options = ShardOptions {
            dimension: settings.store.dimension,
            wal_capacity: settings.store.wal_capacity_kb.max(64) * 1024,
            vectors_on_disk: settings.store.vectors_on_disk,
            indexes: payload::IndexPolicy::from_settings(&settings.store),
            min_free_bytes: settings.store.min_free_disk_mb.saturating_mul(1 << 20),
        };
        let partitioned = (settings.cluster.enabled && settings.store.layout == Layout::Shared)
            .then(|| {
                Arc::new(PartitionShards {
                    root: root.clone(),
                    options: options.clone(),
                    partitions: settings.cluster.partitions,
                    open: (0..settings.cluster.partitions)
                        .map(|_| std::sync::Mutex::new(None))
                        .collect(),
                })
            });
        let shared = match settings.store.layout {
            Layout::PerTenant => None,
            Layout::Shared if partitioned.is_some() => None,
            Layout::Shared => {
                let dir = root.join(SHARED_DIR).join("vector_store");
                let shard = Shard::open(&dir, &options, true, "shared store")
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .ok_or_else(|| anyhow::anyhow!("the shared store was not created"))?;
                shard
                    .ensure_tenant_index("shared store")
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(Arc::new(shard))
            }
        };
        let encryption = match settings.encryption.enabled && settings.encrypts_everything() {
            true => Some(EncryptedFolders::open(root)?),
            false => None,
        };
        Ok(Self {
            paths: TenantPaths::new(root),
            options,
            optimize_threshold: settings.store.optimize_threshold,
            shared,
            partitioned,
            encryption,
        })
    }
}

impl StoreFactory for EdgeFactory {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore> {
        let slot = match (&self.shared, &self.partitioned) {
            (Some(shard), _) => Slot::Shared(shard.clone()),
            (None, Some(shards)) => Slot::Partition {
                partition: crate::partition::partition_of(tenant.as_str(), shards.partitions),
                shards: shards.clone(),
                open: None,
            },
            (None, None) => Slot::Own(None),
        };
        Box::new(EdgeStore {
            tenant: tenant.clone(),
            who: format!("tenant {tenant}"),
            paths: self.paths.clone(),
            dir: self.paths.store_dir(tenant),
            options: self.options.clone(),
            optimize_threshold: self.optimize_threshold,
            slot,
            encryption: self.encryption.clone(),
            key: None,
            unlocked: None,
        })
    }

    fn backend(&self) -> &'static str {
        "edge"
    }

    fn release_partition(&self, partition: u32) {
        if let Some(shards) = &self.partitioned {
            shards.release(partition);
        }
    }
}

/// Close a per-tenant shard that a failed write has broken, so that the
/// next use opens it again from disk, where everything acknowledged is.
/// (The shared shard is not reopened under its tenants: once broken, every
/// tenant's request is answered `internal` until the worker restarts.)
fn discard_broken(open: &mut Option<Box<Shard>>, who: &str) {
    if open.as_ref().is_some_and(|s| s.is_broken()) {
        if let Some(shard) = open.take() {
            // The failure was logged and answered when the shard broke.
            let _ = shard.close(who);
        }
    }
}

/// The shard a tenant's store uses.
enum Slot {
    /// `per_tenant`: the tenant's own shard, `None` until a job needs it and
    /// for a tenant with no data. Boxed: an idle tenant's store stays small.
    Own(Option<Box<Shard>>),
    /// `shared`: the one shard of all tenants.
    Shared(Arc<Shard>),
    /// `shared` in a fleet: the shard of the tenant's partition, taken from
    /// the factory on first use and let go at close.
    Partition {
        shards: Arc<PartitionShards>,
        partition: u32,
        open: Option<Arc<Shard>>,
    },
}

pub struct EdgeStore {
    tenant: TenantId,
    /// "tenant <id>", for errors and logs.
    who: String,
    paths: TenantPaths,
    dir: PathBuf,
    options: ShardOptions,
    optimize_threshold: usize,
    slot: Slot,
    encryption: Option<Arc<EncryptedFolders>>,
    /// The tenant's data key, given by its actor (`encryption.enabled`).
    key: Option<Arc<DataKey>>,
    /// The key in the filesystem while the shard is open.
    unlocked: Option<Unlocked>,
}

impl EdgeStore {
    /// The tenant's shard: opened (or, with `create`, created) on first use
    /// in the per-tenant layout; `None` for a tenant with no data there.
    fn shard(&mut self, create: bool) -> Result<Option<&Shard>, ServiceError> {
        if matches!(self.slot, Slot::Own(_)) {
            self.open_own(create)?;
        }
        match &mut self.slot {
            Slot::Shared(shard) => Ok(Some(shard)),
            Slot::Partition {
                shards,
                partition,
                open,
            } => {
                if open.as_ref().is_none_or(|s| s.is_broken()) {
                    *open = Some(shards.get(*partition)?);
                }
                Ok(open.as_deref())
            }
            Slot::Own(open) => Ok(open.as_deref()),
        }
    }

    /// Open the per-tenant shard unless it is open (and not broken).
    fn open_own(&mut self, create: bool) -> Result<(), ServiceError> {
        let Slot::Own(open) = &mut self.slot else {
            return Ok(());
        };
        discard_broken(open, &self.who);
        if open.is_some() {
            return Ok(());
        }
        self.paths
            .check_tenant_dir(&self.tenant)
            .map_err(|e| internal(&self.who, "tenant folder", e))?;
        crate::store::refuse_seed_index(&self.paths, &self.tenant)?;
        if self.encryption.is_some() && !self.prepare_encrypted(create)? {
            return Ok(());
        }
        let shard = Shard::open(&self.dir, &self.options, create, &self.who)?.map(Box::new);
        self.slot = Slot::Own(shard);
        Ok(())
    }

    /// Before the per-tenant shard opens under encryption: the tenant's key
    /// in the filesystem, its folder encrypted with it (made so when new or
    /// empty, copied into an encrypted one when written before encryption
    /// was on). `false`: there is nothing to open.
    fn prepare_encrypted(&mut self, create: bool) -> Result<bool, ServiceError> {
        let Some(folders) = self.encryption.clone() else {
            return Ok(true);
        };
        if !create && !self.dir.exists() {
            return Ok(false);
        }
        let id = self.unlock()?;
        match folders.policy(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                folders.make_dir(&self.dir, &id, &self.who)?;
                Ok(true)
            }
            Err(e) => Err(internal(&self.who, "read the store folder's encryption", e)),
            Ok(Some(policy)) if policy == id => Ok(true),
            Ok(Some(policy)) => Err(internal(
                &self.who,
                "open",
                format!(
                    "its store folder is encrypted with key {}, and its record holds key {}",
                    policy.hex(),
                    id.hex()
                ),
            )),
            Ok(None) => {
                let empty = std::fs::read_dir(&self.dir)
                    .map(|mut d| d.next().is_none())
                    .map_err(|e| internal(&self.who, "read the store folder", e))?;
                match empty {
                    true => folders.make_dir(&self.dir, &id, &self.who)?,
                    false => {
                        let copied = self.copy_into_encrypted(&folders, &id)?;
                        tracing::info!(tenant = %self.tenant, documents = copied, "a tenant written before encryption was on is now encrypted (copied into an encrypted folder)");
                    }
                }
                Ok(true)
            }
        }
    }

    /// The tenant's key in the filesystem (once per open).
    fn unlock(&mut self) -> Result<KeyIdentifier, ServiceError> {
        if let Some(unlocked) = &self.unlocked {
            return Ok(unlocked.id());
        }
        let (Some(folders), Some(key)) = (&self.encryption, &self.key) else {
            return Err(internal(
                &self.who,
                "open",
                "encryption is on and the tenant's data key was not given",
            ));
        };
        let unlocked = folders.unlock(key, &self.who)?;
        let id = unlocked.id();
        self.unlocked = Some(unlocked);
        Ok(id)
    }

    /// Copy the tenant's shard (in clear, written before encryption was on,
    /// or under its current key, unlocked) into a folder beside its own
    /// encrypted with key `id`, then swap the two and remove the old one
    /// (its blocks stay in the filesystem's free space until reused). The
    /// documents copied.
    fn copy_into_encrypted(
        &mut self,
        folders: &EncryptedFolders,
        id: &KeyIdentifier,
    ) -> Result<usize, ServiceError> {
        let who = self.who.clone();
        let Some(plain) = Shard::open(&self.dir, &self.options, false, &who)? else {
            return Ok(0);
        };
        let side = self.side_dir();
        remove_dir(&side).map_err(|e| internal(&who, "remove an unfinished copy", e))?;
        folders.make_dir(&side, id, &who)?;
        let mut options = self.options.clone();
        options.dimension = plain.dimension();
        let mark_id = self.mark_id();
        let mark = plain
            .retrieve(&who, &[mark_id], false)?
            .first()
            .and_then(|(payload, _)| shard::stored_mark(payload.as_ref()));
        let documents = shard::without_mark(None, mark_id);
        let mut cursor = None;
        let mut copied = 0usize;
        let mut done = false;
        let built = self.build_aside(&side, &options, mark.as_ref(), &mut || {
            if done {
                return Ok(None);
            }
            let (points, next) = plain.scroll(&who, cursor.take(), 256, Some(documents.clone()))?;
            done = next.is_none();
            cursor = next;
            let batch = points
                .into_iter()
                .map(|point| stored_record(point, &who, "encrypt"))
                .collect::<Result<Vec<_>, _>>()?;
            copied += batch.len();
            Ok(Some(batch))
        });
        let closed = plain.close(&who);
        built.and(closed)?;
        self.swap_in(&side)?;
        Ok(copied)
    }

    /// [`TenantStore::rekey`] of the per-tenant layout: with both keys in
    /// the filesystem, the shard copied into a folder under `next`, swapped
    /// in, and the old key taken out.
    fn rekey_own(&mut self, next: Arc<DataKey>) -> Result<(), ServiceError> {
        let Some(folders) = self.encryption.clone() else {
            return Err(ServiceError::bad_request(
                "rotating a tenant's key needs encryption.enabled",
            ));
        };
        let who = self.who.clone();
        let Slot::Own(open) = &mut self.slot else {
            return Err(ServiceError::bad_request(
                "rotating a tenant's key needs the per_tenant layout",
            ));
        };
        if let Some(shard) = open.take() {
            (*shard).close(&who)?;
        }
        let next_id = KeyIdentifier::of(&next);
        let under = match folders.policy(&self.dir) {
            Ok(policy) => policy,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(internal(&who, "read the store folder's encryption", e)),
        };
        if self.dir.exists() && under != Some(next_id) {
            self.unlock()?;
            let unlocked_next = folders.unlock(&next, &who)?;
            let copied = self.copy_into_encrypted(&folders, &next_id);
            let old = self.unlocked.replace(unlocked_next);
            if let Err(e) = copied {
                // The tenant stays under its current key.
                if let Some(next) = std::mem::replace(&mut self.unlocked, old) {
                    let _ = next.release(&who);
                }
                return Err(e);
            }
            if let Some(old) = old {
                old.release(&who)?;
            }
            tracing::info!(tenant = %self.tenant, documents = copied.unwrap_or(0), "the tenant's data is encrypted with its new key");
        } else if let Some(old) = self.unlocked.take() {
            old.release(&who)?;
        }
        self.key = Some(next);
        Ok(())
    }

    fn is_shared(&self) -> bool {
        matches!(self.slot, Slot::Shared(_) | Slot::Partition { .. })
    }

    /// The tenant condition, in the shared layout.
    fn scope(&self) -> Option<&str> {
        self.is_shared().then_some(self.tenant.as_str())
    }

    /// A document's point id: from its `doc_id`, and in the shared layout
    /// from the tenant too, so equal `doc_id`s of two tenants never meet.
    fn point_id(&self, doc_id: &str) -> PointId {
        let key = payload::point_uuid(self.scope(), doc_id);
        PointId::Uuid(EdgeUuid::from_bytes(key.into_bytes()))
    }

    fn filter(&self, filter: Option<&Filter>) -> Result<Option<qdrant_edge::Filter>, ServiceError> {
        shard::to_edge_filter(filter, self.scope())
    }

    /// The id of the tenant's applied mark ([`mark`]): in its own shard
    /// beside its documents, or in the shared shard under the tenant value
    /// no tenant's reads include.
    fn mark_id(&self) -> PointId {
        let key = mark::point_uuid(self.scope());
        PointId::Uuid(EdgeUuid::from_bytes(key.into_bytes()))
    }

    /// [`Self::filter`] for what goes through every point rather than
    /// nearest vectors (count, delete, scroll): in the tenant's own shard,
    /// without its mark. A search needs no such condition: the mark has no
    /// vector.
    fn docs_filter(
        &self,
        filter: Option<&Filter>,
    ) -> Result<Option<qdrant_edge::Filter>, ServiceError> {
        let scoped = self.filter(filter)?;
        Ok(match self.is_shared() {
            true => scoped,
            false => Some(shard::without_mark(scoped, self.mark_id())),
        })
    }

    /// Points among `doc_ids` that exist and belong to this tenant.
    fn existing(
        &mut self,
        doc_ids: &[String],
        with_vectors: bool,
    ) -> Result<Vec<Doc>, ServiceError> {
        let ids: Vec<PointId> = doc_ids.iter().map(|d| self.point_id(d)).collect();
        let tenant = self.scope().map(str::to_owned);
        let who = self.who.clone();
        let Some(shard) = self.shard(false)? else {
            return Ok(Vec::new());
        };
        Ok(shard
            .retrieve(&who, &ids, with_vectors)?
            .into_iter()
            // Ids are tenant-scoped already; the payload check is a second lock.
            .filter(|(payload, _)| {
                tenant.is_none()
                    || payload.as_ref().and_then(|p| payload::tenant_of(&p.0)) == tenant.as_deref()
            })
            .map(|(payload, vector)| shard::to_doc(payload, vector))
            .collect())
    }
}

impl TenantStore for EdgeStore {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        let default = self.options.dimension;
        Ok(self.shard(false)?.map_or(default, |s| s.dimension()))
    }

    fn write(
        &mut self,
        records: Vec<Record>,
        mark: Option<&AppliedMark>,
    ) -> Result<(), ServiceError> {
        if records.is_empty() && mark.is_none() {
            return Ok(());
        }
        let points: Vec<(PointId, Record)> = records
            .into_iter()
            .map(|r| (self.point_id(&r.doc_id), r))
            .collect();
        let tenant = self.scope().map(str::to_owned);
        let mark_id = self.mark_id();
        let who = self.who.clone();
        let shard = self
            .shard(true)?
            .ok_or_else(|| internal(&who, "create shard", "shard missing after create"))?;
        let mut persisted = Vec::with_capacity(points.len() + 1);
        for (id, r) in points {
            shard.check_dimension(&r.vector)?;
            persisted.push(to_point(id, r, tenant.as_deref()));
        }
        if let Some(mark) = mark {
            persisted.push(shard::mark_point(mark_id, mark, tenant.as_deref()));
        }
        shard.upsert(&who, persisted)
    }

    fn applied_mark(&mut self) -> Result<Option<AppliedMark>, ServiceError> {
        let id = self.mark_id();
        let who = self.who.clone();
        let Some(shard) = self.shard(false)? else {
            return Ok(None);
        };
        Ok(shard
            .retrieve(&who, &[id], false)?
            .first()
            .and_then(|(payload, _)| shard::stored_mark(payload.as_ref())))
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        let filter = self.filter(query.filter.as_ref())?;
        let who = self.who.clone();
        let Some(shard) = self.shard(false)? else {
            return Ok(Vec::new());
        };
        shard.check_dimension(&query.vector)?;
        if let Some(f) = &query.filter {
            shard.ensure_indexes(&who, f)?;
        }
        let points = shard.search(
            &who,
            query.vector.clone(),
            query.top_k,
            filter,
            query.with_vectors,
        )?;
        Ok(points
            .into_iter()
            .map(|p| Hit::new(shard::to_doc(p.payload, p.vector), p.score))
            .collect())
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        self.existing(doc_ids, with_vectors)
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        match selector {
            Selector::Ids(doc_ids) => {
                let found = self.existing(&unique(doc_ids), false)?;
                let ids: Vec<PointId> = found.iter().map(|d| self.point_id(&d.doc_id)).collect();
                let who = self.who.clone();
                if let (false, Some(shard)) = (ids.is_empty(), self.shard(false)?) {
                    shard.delete_ids(&who, ids)?;
                }
                Ok(found.len())
            }
            Selector::Filter(f) => {
                let filter = self.docs_filter(Some(f))?;
                let who = self.who.clone();
                let Some(shard) = self.shard(false)? else {
                    return Ok(0);
                };
                shard.ensure_indexes(&who, f)?;
                match filter {
                    Some(filter) => shard.delete_filter(&who, filter),
                    None => Ok(0),
                }
            }
        }
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        // Every point of the tenant's own shard, counted without a filter
        // (the engine knows that number), less its mark if it has one.
        if filter.is_none() && !self.is_shared() {
            let marks = usize::from(self.applied_mark()?.is_some());
            let who = self.who.clone();
            let Some(shard) = self.shard(false)? else {
                return Ok(0);
            };
            return Ok(shard.count(&who, None)?.saturating_sub(marks));
        }
        let scoped = self.docs_filter(filter)?;
        let who = self.who.clone();
        let Some(shard) = self.shard(false)? else {
            return Ok(0);
        };
        if let Some(f) = filter {
            shard.ensure_indexes(&who, f)?;
        }
        shard.count(&who, scoped)
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        if self.is_shared() {
            let everything = self.filter(None)?.ok_or_else(|| {
                internal(
                    &self.who,
                    "drop",
                    "no tenant condition in the shared layout",
                )
            })?;
            let who = self.who.clone();
            let mark = self.mark_id();
            if let Some(shard) = self.shard(true)? {
                shard.delete_filter(&who, everything)?;
                shard.delete_ids(&who, vec![mark])?;
            }
        }
        // A broken shard cannot be closed cleanly, and its files go anyway.
        if let Slot::Own(open) = &mut self.slot {
            discard_broken(open, &self.who);
        }
        self.close()?;
        remove_tenant_data(&self.paths, &self.tenant)
    }

    fn maintain(&mut self) -> Result<bool, ServiceError> {
        match &self.slot {
            // A broken shard waits for the tenant's next job to reopen it.
            Slot::Own(Some(shard)) if !shard.is_broken() => {
                shard.maintain(&self.who, self.optimize_threshold)
            }
            // The shared shard is everyone's; it is not optimised per tenant.
            _ => Ok(false),
        }
    }

    fn answers_inline(&self) -> bool {
        match &self.slot {
            Slot::Own(Some(shard)) => !shard.is_broken(),
            // A tenant without data: its next read looks at the disk.
            Slot::Own(None) => false,
            Slot::Shared(shard) => !shard.is_broken(),
            Slot::Partition { open, .. } => open.as_ref().is_some_and(|s| !s.is_broken()),
        }
    }

    fn set_data_key(&mut self, key: Option<Arc<DataKey>>) {
        self.key = key;
    }

    fn rekey(&mut self, next: Arc<DataKey>) -> Result<(), ServiceError> {
        self.rekey_own(next)
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        match &mut self.slot {
            Slot::Own(open) => {
                let closed = match open.take() {
                    Some(shard) => (*shard).close(&self.who),
                    None => Ok(()),
                };
                // The files are closed: the key goes out of the filesystem.
                let locked = match self.unlocked.take() {
                    Some(unlocked) => unlocked.release(&self.who),
                    None => Ok(()),
                };
                closed.and(locked)
            }
            // The shared shard stays open for the other tenants.
            Slot::Shared(_) => Ok(()),
            // So does a partition's, until the partition is handed over;
            // this store's handle goes, so that the hand-over's is the last.
            Slot::Partition { open, .. } => {
                open.take();
                Ok(())
            }
        }
    }

    fn scroll(
        &mut self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::Page, ServiceError> {
        self.scroll_page(cursor, limit)
    }

    fn replace(
        &mut self,
        dimension: usize,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<crate::store::Replaced, ServiceError> {
        self.replace_docs(dimension, next)
    }
}

/// Export and import (`crate::backup`): paging through a tenant, and the
/// per-tenant layout's atomic replace.
impl EdgeStore {
    fn scroll_page(
        &mut self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::Page, ServiceError> {
        let offset = cursor
            .map(|c| {
                EdgeUuid::parse_str(c)
                    .map(PointId::Uuid)
                    .map_err(|e| ServiceError::bad_request(format!("bad page cursor {c:?}: {e}")))
            })
            .transpose()?;
        let filter = self.docs_filter(None)?;
        let tenant = self.scope().map(str::to_owned);
        let who = self.who.clone();
        let Some(shard) = self.shard(false)? else {
            return Ok(crate::store::Page::default());
        };
        let (points, next) = shard.scroll(&who, offset, limit, filter)?;
        let mut docs = Vec::with_capacity(points.len());
        for (payload, vector) in points {
            if tenant.is_some()
                && payload.as_ref().and_then(|p| payload::tenant_of(&p.0)) != tenant.as_deref()
            {
                continue;
            }
            docs.push(stored_record((payload, vector), &who, "scroll")?);
        }
        let next = match next {
            None => None,
            Some(PointId::Uuid(u)) => Some(u.to_string()),
            Some(other) => {
                return Err(internal(
                    &who,
                    "scroll",
                    format!("point id {other:?} was not made by tenantvec"),
                ))
            }
        };
        Ok(crate::store::Page { docs, next })
    }

    /// Shared layout: in place. Per tenant: build a new shard in
    /// `<tenant>/vector_store.import/`, and only once every batch is in it
    /// and it is closed, swap it with `vector_store/` in one
    /// `renameat2(RENAME_EXCHANGE)`; then remove the old one. A failure
    /// before the swap removes the new shard and leaves the tenant as it was.
    fn replace_docs(
        &mut self,
        dimension: usize,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<crate::store::Replaced, ServiceError> {
        if self.is_shared() {
            return crate::store::replace_in_place(self, dimension, next);
        }
        let who = self.who.clone();
        self.paths
            .check_tenant_dir(&self.tenant)
            .map_err(|e| internal(&who, "tenant folder", e))?;
        crate::store::refuse_seed_index(&self.paths, &self.tenant)?;
        // The mark stays: an ingest message applied before the import is
        // still applied, and must not be written again over it.
        let mark = self.applied_mark()?;
        let side = self.side_dir();
        remove_dir(&side).map_err(|e| internal(&who, "remove an unfinished import", e))?;
        if let Some(folders) = self.encryption.clone() {
            let id = self.unlock()?;
            folders.make_dir(&side, &id, &who)?;
        }
        let mut options = self.options.clone();
        options.dimension = dimension;
        self.build_aside(&side, &options, mark.as_ref(), next)?;
        self.swap_in(&side)?;
        Ok(crate::store::Replaced {
            atomic: true,
            how: "built a new shard aside, then swapped it in with one rename",
        })
    }

    /// Where a new shard is built before it replaces the tenant's.
    fn side_dir(&self) -> PathBuf {
        self.dir.with_file_name("vector_store.import")
    }

    /// Build a shard in `side` from the batches `next` yields, with the
    /// tenant's `mark` last, and close it; on failure, remove it.
    fn build_aside(
        &self,
        side: &std::path::Path,
        options: &ShardOptions,
        mark: Option<&AppliedMark>,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<(), ServiceError> {
        let who = &self.who;
        let built = (|| {
            let shard = Shard::open(side, options, true, who)?
                .ok_or_else(|| internal(who, "create shard", "shard missing after create"))?;
            let mut fill = || {
                while let Some(batch) = next()? {
                    let mut points = Vec::with_capacity(batch.len());
                    for r in batch {
                        shard.check_dimension(&r.vector)?;
                        points.push(to_point(self.point_id(&r.doc_id), r, None));
                    }
                    shard.upsert(who, points)?;
                }
                if let Some(mark) = mark {
                    shard.upsert(who, vec![shard::mark_point(self.mark_id(), mark, None)])?;
                }
                Ok(())
            };
            let filled = fill();
            let closed = shard.close(who);
            filled.and(closed)
        })();
        if built.is_err() {
            let _ = remove_dir(side);
        }
        built
    }

    /// Swap the shard built in `side` with the tenant's (closed first) in
    /// one `renameat2(RENAME_EXCHANGE)`, then remove the old one.
    fn swap_in(&mut self, side: &std::path::Path) -> Result<(), ServiceError> {
        let who = self.who.clone();
        if let Slot::Own(open) = &mut self.slot {
            if let Some(shard) = open.take() {
                (*shard).close(&who)?;
            }
        }
        let swapped = if self.dir.exists() {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                side,
                rustix::fs::CWD,
                &self.dir,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(std::io::Error::from)
        } else {
            std::fs::rename(side, &self.dir)
        };
        if let Err(e) = swapped {
            let _ = remove_dir(side);
            return Err(internal(&who, "swap in the new shard", e));
        }
        if let Err(e) = remove_dir(side) {
            tracing::warn!(%who, dir = %side.display(), error = %e, "the replaced shard was not removed");
        }
        Ok(())
    }
}

/// A document as the point stored for it (`tenant`: the shared layout's
/// tenant key in its payload).
fn to_point(id: PointId, r: Record, tenant: Option<&str>) -> PointStructPersisted {
    let payload = payload::build(tenant, r.doc_id, r.text, r.metadata);
    PointStructPersisted::from(PointStruct::new(
        id,
        r.vector,
        serde_json::Value::Object(payload),
    ))
}

/// A stored point as a document to write again (export, a copy into an
/// encrypted folder): every stored point has its vector.
fn stored_record(
    (payload, vector): shard::StoredPoint,
    who: &str,
    what: &str,
) -> Result<Record, ServiceError> {
    let doc = shard::to_doc(payload, vector);
    let vector = doc
        .vector
        .ok_or_else(|| internal(who, what, format!("{:?} has no vector", doc.doc_id)))?;
    Ok(Record {
        doc_id: doc.doc_id,
        text: doc.text,
        metadata: doc.metadata,
        vector,
    })
}

/// Remove a folder and what it holds; a missing one is fine.
fn remove_dir(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
