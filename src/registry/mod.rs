//! The tenant registry: one record per tenant in a JetStream KV bucket
//! (`TENANTVEC_TENANTS[_<PREFIX>]`), read by every worker and tool of the
//! prefix.
//!
//! Owns the bucket and every access to it: records read, made only when
//! absent, changed only against the revision they were read at (so two
//! writers never lose each other's change: the loser reads again and
//! applies its change to the winner's record), removed, listed page by
//! page; and what an actor finds when it activates a tenant (its record, or
//! one made from the files of before, or none). It must never hold a
//! record across requests (actors cache their own), never write on a warm
//! request's path, and never let a JetStream outage look like a missing
//! tenant: a record that cannot be read is `unavailable`, never absent.

mod follow;
pub mod import;
pub mod index;
pub mod keys;
pub mod record;
pub mod rotate;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};

pub use index::Index;
pub use record::{TenantRecord, TenantState};

/// Whether a KV update failed because the key moved past the revision it
/// expected (another writer came first): a conflict to read again and
/// retry, never an outage. async-nats 0.51 names it `WrongLastRevision`
/// only for the server's error code 10071; nats-server 2.15 also answers
/// 10164 ("wrong last sequence", seen under load in a 3-node cluster),
/// which reaches us as `Other`.
pub fn is_revision_conflict(e: &kv::UpdateError) -> bool {
    e.kind() == kv::UpdateErrorKind::WrongLastRevision
        || e.to_string().contains("wrong last sequence")
}

/// Whether a KV create failed because the key exists (see
/// [`is_revision_conflict`] for the second error code).
pub fn is_taken(e: &kv::CreateError) -> bool {
    e.kind() == kv::CreateErrorKind::AlreadyExists || e.to_string().contains("wrong last sequence")
}

use crate::embed::record::Records;
use crate::names::tenants_bucket;
use crate::policy::TenantSettings;
use crate::protocol::ServiceError;
use crate::tenant::{TenantId, TenantPaths};

/// How long one access waits for JetStream before it answers `unavailable`.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of a revision-checked change that keeps losing to other writers.
const CHANGE_TRIES: u32 = 16;

/// The wait after a revision-checked change lost to another writer for the
/// `tries`-th time: drawn at random up to 2^`tries` ms (at most 64 ms), so
/// that two writers in step stop reading and losing together (seen: one of
/// two writers of one record losing 16 times in a row on 2 busy cores).
fn lost_wait(tries: u32) -> Duration {
    let cap_us = 1000u64 << tries.min(6);
    let mut b = [0u8; 8];
    let draw = match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b) % cap_us,
        Err(_) => cap_us / 2,
    };
    Duration::from_micros(draw)
}

/// A record with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub record: TenantRecord,
    pub revision: u64,
}

/// What an activating actor finds.
#[derive(Debug)]
pub enum Found {
    /// The tenant's record.
    Record(TenantRecord),
    /// No record, but the tenant's files of before (`tenant.json`,
    /// `embedder.json`, a store folder): a record made from them, once.
    Migrated(TenantRecord),
    /// Nothing at all: a tenant still to be created.
    Missing,
}

/// The registry's bucket as a worker or a tool reaches it.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    js: jetstream::Context,
    bucket: String,
    /// Every record's id, state and size, from a watch of the bucket.
    index: Index,
    /// The runtime of the NATS connection, for callers on the blocking pool.
    handle: tokio::runtime::Handle,
    /// With regions: this region, every record made here is homed in.
    region: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// `store` (a bucket of the registry's) did not answer `what`.
fn unreachable(store: &str, what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::unavailable(format!("{store} cannot be reached ({what}: {e}); retry"))
}

/// `f`, an access to `store`, within [`TIMEOUT`]; its failure `unavailable`.
async fn timed_in<T, E: std::fmt::Display>(
    store: &str,
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, ServiceError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| unreachable(store, what, e)),
        Err(_) => Err(unreachable(store, what, "timed out")),
    }
}

const REGISTRY: &str = "the tenant registry";

fn unavailable(what: &str, e: impl std::fmt::Display) -> ServiceError {
    unreachable(REGISTRY, what, e)
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, ServiceError> {
    timed_in(REGISTRY, what, f).await
}

/// The keys of `kv` (a bucket of `store`), at most `limit` of them, in the
/// order of the stream (each key's last message headers only, through one
/// ordered consumer), all within `within`.
async fn keys_of(
    kv: &kv::Store,
    store: &str,
    limit: usize,
    within: Duration,
) -> Result<Vec<String>, ServiceError> {
    let keys = timed_in(store, "list", kv.keys()).await?;
    tokio::time::timeout(within, keys.take(limit).try_collect::<Vec<String>>())
        .await
        .map_err(|_| unreachable(store, "list", "timed out"))?
        .map_err(|e| unreachable(store, "list", e))
}

impl Registry {
    /// Open the prefix's bucket, made with `replicas` copies when missing.
    /// Called on the runtime that drives the connection.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let bucket = tenants_bucket(prefix);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "tenantvec tenant registry: one record per tenant".into(),
                    history: 1,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the registry bucket {bucket}: {e}"))?,
        };
        Ok(Self {
            kv,
            js: js.clone(),
            bucket,
            index: Index::default(),
            handle: tokio::runtime::Handle::current(),
            region: None,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The registry of `region`'s tenants: a record made through it without
    /// a home is homed there.
    pub fn in_region(mut self, region: Option<&str>) -> Self {
        self.region = region.map(str::to_owned);
        self
    }

    /// The live index; complete once [`Registry::follow`] has read the
    /// whole bucket.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Run `f` to completion from a thread outside the runtime (the
    /// blocking pool).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    /// The tenant's record, `None` when it has none.
    pub async fn get(&self, tenant: &str) -> Result<Option<Versioned>, ServiceError> {
        let entry = timed("read", self.kv.entry(tenant)).await?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some(Versioned {
                record: TenantRecord::decode(tenant, &e.value)?,
                revision: e.revision,
            })),
            _ => Ok(None),
        }
    }

    /// Store `record` if its tenant has none; `Ok(None)` when it has one.
    pub async fn create(&self, record: &TenantRecord) -> Result<Option<u64>, ServiceError> {
        let homed;
        let record = match (&record.home_region, &self.region) {
            (None, Some(region)) => {
                let mut r = record.clone();
                r.home_region = Some(region.clone());
                homed = r;
                &homed
            }
            _ => record,
        };
        match tokio::time::timeout(TIMEOUT, self.kv.create(&record.id, record.encode())).await {
            Ok(Ok(revision)) => {
                self.index.put(record, revision);
                Ok(Some(revision))
            }
            Ok(Err(e)) if is_taken(&e) => Ok(None),
            Ok(Err(e)) => Err(unavailable("create", e)),
            Err(_) => Err(unavailable("create", "timed out")),
        }
    }

    /// Apply `change` to the tenant's record and store it against the
    /// revision it was read at, again from a fresh read whenever another
    /// writer came first. `Ok(None)`: the tenant has no record. `change`
    /// may refuse (its error is returned, nothing is written).
    pub async fn update<F>(
        &self,
        tenant: &str,
        mut change: F,
    ) -> Result<Option<TenantRecord>, ServiceError>
    where
        F: FnMut(&mut TenantRecord) -> Result<(), ServiceError>,
    {
        for tries in 0..CHANGE_TRIES {
            if tries > 0 {
                tokio::time::sleep(lost_wait(tries)).await;
            }
            let Some(Versioned {
                mut record,
                revision,
            }) = self.get(tenant).await?
            else {
                return Ok(None);
            };
            change(&mut record)?;
            record.updated = record::now();
            match tokio::time::timeout(TIMEOUT, self.kv.update(tenant, record.encode(), revision))
                .await
            {
                Ok(Ok(revision)) => {
                    self.index.put(&record, revision);
                    return Ok(Some(record));
                }
                Ok(Err(e)) if is_revision_conflict(&e) => continue,
                Ok(Err(e)) => return Err(unavailable("update", e)),
                Err(_) => return Err(unavailable("update", "timed out")),
            }
        }
        Err(ServiceError::unavailable(format!(
            "tenant {tenant}: its record changed under every one of {CHANGE_TRIES} tries; retry"
        )))
    }

    /// Remove the tenant's record, every revision of it.
    pub async fn remove(&self, tenant: &str) -> Result<(), ServiceError> {
        timed("remove", self.kv.purge(tenant)).await?;
        self.index.remove(tenant, None);
        Ok(())
    }

    /// A page of ids in order (from after `cursor`, starting with `prefix`,
    /// those `keep` takes by their stored state) and the next page's
    /// cursor: from the index once complete, else from a scan of every key.
    pub async fn page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
        keep: impl Fn(&str, TenantState) -> bool,
    ) -> Result<(Vec<String>, Option<String>), ServiceError> {
        if let Some(page) = self.index.page(prefix, cursor, limit, keep) {
            return Ok(page);
        }
        let ids = self.ids().await?;
        let (page, next) = record::page(&ids, prefix, cursor, limit);
        Ok((page.into_iter().map(str::to_owned).collect(), next))
    }

    /// Every tenant's id, sorted. Reads each key's last message headers
    /// only (no values), through one ordered consumer.
    pub async fn ids(&self) -> Result<Vec<String>, ServiceError> {
        let mut ids = keys_of(&self.kv, REGISTRY, usize::MAX, TIMEOUT * 10).await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// The records of `ids`, read together; those removed meanwhile are
    /// left out.
    pub async fn records(&self, ids: &[&str]) -> Result<Vec<TenantRecord>, ServiceError> {
        let reads: Vec<_> = ids
            .iter()
            .map(|id| {
                let (registry, id) = (self.clone(), (*id).to_owned());
                async move { registry.get(&id).await }
            })
            .collect();
        let reads = futures::stream::iter(reads)
            .buffered(32)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(reads.into_iter().flatten().map(|v| v.record).collect())
    }

    /// Every record's last value, then every change from then on; and
    /// whether the bucket was empty when the watch began (then no record
    /// will say it is the last of before).
    async fn watch_all(&self) -> Result<(kv::Watch, bool), ServiceError> {
        let watch = timed("watch", self.kv.watch_with_history(">")).await?;
        // Asked now (the bucket's own status is as it was when opened).
        let stream = timed("status", self.js.get_stream(format!("KV_{}", self.bucket))).await?;
        Ok((watch, stream.cached_info().state.messages == 0))
    }

    /// What activating `tenant` finds: its record; or, when it has none
    /// and its files of before are there, a record made from them (stored
    /// only if no other worker stored one meanwhile, whose record is then
    /// taken); or nothing.
    pub async fn activate(
        &self,
        tenant: &TenantId,
        paths: &TenantPaths,
        records: &Records,
    ) -> Result<Found, ServiceError> {
        if let Some(v) = self.get(tenant.as_str()).await? {
            return Ok(Found::Record(v.record));
        }
        let settings = TenantSettings::read_file(paths, tenant)?;
        let embedder = records.read(tenant)?;
        let folder = paths.store_dir(tenant).is_dir();
        if settings.is_none() && embedder.is_none() && !folder {
            return Ok(Found::Missing);
        }
        let mut record = TenantRecord::new(tenant, &record::now());
        record.settings = settings.unwrap_or_default();
        record.embedder = embedder;
        match self.create(&record).await? {
            Some(_) => Ok(Found::Migrated(record)),
            None => match self.get(tenant.as_str()).await? {
                Some(v) => Ok(Found::Record(v.record)),
                None => Ok(Found::Missing),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codes_of_a_key_that_moved_are_conflicts_and_an_outage_is_not() {
        let code_10071 = kv::UpdateError::new(kv::UpdateErrorKind::WrongLastRevision);
        let code_10164 = kv::UpdateError::with_source(
            kv::UpdateErrorKind::Other,
            "publish failed: wrong last sequence (code 400, error code 10164)",
        );
        let outage = kv::UpdateError::with_source(kv::UpdateErrorKind::Other, "timed out");
        assert!(is_revision_conflict(&code_10071));
        assert!(is_revision_conflict(&code_10164));
        assert!(!is_revision_conflict(&outage));
        let taken = kv::CreateError::with_source(
            kv::CreateErrorKind::Other,
            "publish failed: wrong last sequence (code 400, error code 10164)",
        );
        assert!(is_taken(&taken));
        assert!(is_taken(&kv::CreateError::new(
            kv::CreateErrorKind::AlreadyExists
        )));
        assert!(!is_taken(&kv::CreateError::new(kv::CreateErrorKind::Other)));
    }

    #[test]
    fn a_lost_change_waits_a_random_while_growing_to_64_ms() {
        for tries in 1..20 {
            let cap = Duration::from_millis(1 << tries.min(6));
            let waits: Vec<Duration> = (0..50).map(|_| lost_wait(tries)).collect();
            assert!(waits.iter().all(|w| *w < cap), "{tries}: {waits:?}");
            assert!(waits.iter().any(|w| *w != waits[0]), "{tries}: not random");
        }
    }
}
