//! A region's directory: every region's tenant records, in one KV bucket of
//! this region's JetStream domain that JetStream fills itself, by sourcing
//! each region's registry bucket (across domains, `$JS.<region>.API`) under
//! a key `<region>.<tenant>`; and its copy in memory, read before the
//! worker serves and followed from then on.
//!
//! Owns the bucket's sources and the in-memory claims. It must never write
//! a record (the registries are the truth; this is their copy), never make
//! a request wait for JetStream, and never forget a region's tenants when
//! that region is unreachable: a source that cannot be read keeps what it
//! brought, and JetStream resumes it when the region returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::names::{name_suffix, storage_prefix, tenants_bucket};
use crate::region::Claim;
use crate::registry::TenantState;

/// The directory bucket of a region: `TENANTVEC_DIRECTORY` and the
/// suffix of its storage prefix.
pub fn bucket_name(prefix: &str, region: &str) -> String {
    format!(
        "TENANTVEC_DIRECTORY{}",
        name_suffix(&storage_prefix(prefix, Some(region)))
    )
}

/// How a region's registry is sourced into `directory`: its bucket's
/// stream, from its domain (none: this region's own), each record's
/// subject moved under `<region>.`.
pub fn source(prefix: &str, region: &str, own: &str, directory: &str) -> stream::Source {
    let registry = tenants_bucket(&storage_prefix(prefix, Some(region)));
    stream::Source {
        name: format!("KV_{registry}"),
        external: (region != own).then(|| stream::External {
            api_prefix: format!("$JS.{region}.API"),
            delivery_prefix: None,
        }),
        subject_transforms: vec![stream::SubjectTransform {
            source: format!("$KV.{registry}.>"),
            destination: format!("$KV.{directory}.{region}.>"),
        }],
        ..Default::default()
    }
}

/// What the directory reads of a record.
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    home_region: Option<String>,
    #[serde(default)]
    state: TenantState,
    #[serde(default)]
    home_epoch: u64,
}

impl Stored {
    fn claim(self) -> Claim {
        Claim {
            home: self.home_region,
            arriving: self.state == TenantState::Arriving,
            in_transit: matches!(self.state, TenantState::Moving | TenantState::Arriving),
            epoch: self.home_epoch,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Tenant → region holding a record of it → what that record says.
    claims: HashMap<String, BTreeMap<String, Claim>>,
    complete: bool,
}

/// The directory as this worker keeps it.
pub struct Directory {
    bucket: String,
    kv: kv::Store,
    inner: RwLock<Inner>,
    /// Signalled when the directory has been read whole.
    read: tokio::sync::Notify,
    prefix: String,
    own: String,
    regions: Vec<String>,
    /// Regions whose registry the directory did not read when last looked.
    unlinked: std::sync::Mutex<Vec<String>>,
}

/// A directory source not heard from for this long is taken as lost.
const SILENT: Duration = Duration::from_secs(20);

/// Whether `region`'s registry bucket exists and answers (through its
/// domain's API; this region's through its own).
async fn registry_exists(
    client: &async_nats::Client,
    prefix: &str,
    region: &str,
    own: &str,
) -> bool {
    let stream = format!(
        "KV_{}",
        tenants_bucket(&storage_prefix(prefix, Some(region)))
    );
    let api = match region == own {
        true => "$JS.API".to_owned(),
        false => format!("$JS.{region}.API"),
    };
    let asked = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(format!("{api}.STREAM.INFO.{stream}"), "".into()),
    )
    .await;
    match asked {
        Ok(Ok(reply)) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
            .is_ok_and(|v| v.get("error").is_none()),
        _ => false,
    }
}

impl Directory {
    /// Open (or make) this region's directory bucket, sourcing the
    /// registry of this region; [`Directory::link`] adds the others.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        own: &str,
        regions: &[String],
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let bucket = bucket_name(prefix, own);
        if js.get_stream(format!("KV_{bucket}")).await.is_err() {
            js.create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "tenantvec region directory: every region's tenant records".into(),
                history: 1,
                num_replicas: replicas,
                sources: Some(vec![source(prefix, own, own, &bucket)]),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the directory bucket {bucket}: {e}"))?;
        }
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the directory bucket {bucket}: {e}"))?;
        let directory = Self {
            bucket,
            kv,
            inner: RwLock::new(Inner::default()),
            read: tokio::sync::Notify::new(),
            prefix: prefix.to_owned(),
            own: own.to_owned(),
            regions: regions.to_vec(),
            unlinked: std::sync::Mutex::new(regions.to_vec()),
        };
        directory.link(js).await?;
        Ok(directory)
    }

    /// Regions whose registry the directory does not read at the moment.
    pub fn unlinked(&self) -> Vec<String> {
        self.unlinked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Make every region's registry a source of the directory, and note
    /// which ones it reads. A source is added once its registry exists (a
    /// source made before it would wait for JetStream's retry, tens of
    /// seconds); one that has not been heard from for [`SILENT`] while its
    /// region answers is made again (JetStream retries a lost source with
    /// a growing wait, up to a minute or more). Sources are never removed
    /// for a region that does not answer: the directory keeps its tenants.
    pub async fn link(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let name = format!("KV_{}", self.bucket);
        let info = js
            .get_stream(&name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?
            .cached_info()
            .clone();
        let configured = info.config.sources.clone().unwrap_or_default();
        let heard = |region: &str| {
            let source = source(&self.prefix, region, &self.own, &self.bucket);
            info.sources
                .iter()
                .find(|s| s.name == source.name)
                .and_then(|s| s.active)
                .is_some_and(|a| a < SILENT)
        };
        let mut sources = configured.clone();
        let mut unlinked = Vec::new();
        let mut renewed = Vec::new();
        for region in &self.regions {
            let wanted = source(&self.prefix, region, &self.own, &self.bucket);
            let present = configured.iter().any(|s| s.name == wanted.name);
            if present && heard(region) {
                continue;
            }
            unlinked.push(region.clone());
            if !registry_exists(&js.client(), &self.prefix, region, &self.own).await {
                continue;
            }
            match present {
                false => sources.push(wanted),
                true => renewed.push(wanted.name),
            }
        }
        let mut config = info.config.clone();
        if !renewed.is_empty() {
            // Made again: taken out, then put back.
            config.sources = Some(
                sources
                    .iter()
                    .filter(|s| !renewed.contains(&s.name))
                    .cloned()
                    .collect(),
            );
            js.update_stream(config.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot renew the directory's sources: {e}"))?;
        }
        if sources != configured || !renewed.is_empty() {
            config.sources = Some(sources);
            js.update_stream(config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot give the directory its regions: {e}"))?;
            tracing::info!(bucket = %self.bucket, unlinked = ?unlinked, "region directory sources set");
        }
        *self.unlinked.lock().unwrap_or_else(|e| e.into_inner()) = unlinked;
        Ok(())
    }

    /// The tenant's record in `region`, written through this worker, known
    /// here at once (the directory's copy follows); `None`: removed.
    pub fn note(&self, region: &str, tenant: &str, record: Option<&crate::registry::TenantRecord>) {
        let mut inner = self.lock();
        match record {
            Some(r) => {
                let claim = Stored {
                    home_region: r.home_region.clone(),
                    state: r.state,
                    home_epoch: r.home_epoch,
                }
                .claim();
                inner
                    .claims
                    .entry(tenant.to_owned())
                    .or_default()
                    .insert(region.to_owned(), claim);
            }
            None => {
                if let Some(c) = inner.claims.get_mut(tenant) {
                    c.remove(region);
                }
            }
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of the records the regions hold of `tenant`.
    pub fn with_claims<T>(&self, tenant: &str, f: impl FnOnce(&BTreeMap<String, Claim>) -> T) -> T {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        static NONE: BTreeMap<String, Claim> = BTreeMap::new();
        f(inner.claims.get(tenant).unwrap_or(&NONE))
    }

    /// `region`'s record of `tenant`, as the directory holds it.
    pub async fn record(
        &self,
        region: &str,
        tenant: &str,
    ) -> Result<Option<crate::registry::TenantRecord>, crate::protocol::ServiceError> {
        let entry = self
            .kv
            .get(format!("{region}.{tenant}"))
            .await
            .map_err(|e| {
                crate::protocol::ServiceError::unavailable(format!(
                    "the region directory cannot be read: {e}"
                ))
            })?;
        entry
            .map(|raw| crate::registry::TenantRecord::decode(tenant, &raw))
            .transpose()
    }

    /// Tenants homed in each region, as far as the directory knows.
    pub fn homes(&self) -> BTreeMap<String, u64> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut counts = BTreeMap::new();
        for claims in inner.claims.values() {
            if let crate::region::Home::Remote(r) = crate::region::resolve("", claims) {
                *counts.entry(r).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn is_complete(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .complete
    }

    /// Wait until the directory has been read whole, at most `limit`.
    pub async fn wait_read(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let read = self.read.notified();
            if self.is_complete() {
                return true;
            }
            if tokio::time::timeout_at(deadline, read).await.is_err() {
                return self.is_complete();
            }
        }
    }

    /// Apply one entry of the bucket (`<region>.<tenant>`).
    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let Some((region, tenant)) = key.split_once('.') else {
            return;
        };
        let mut inner = self.lock();
        match value.map(serde_json::from_slice::<Stored>) {
            Some(Ok(stored)) => {
                inner
                    .claims
                    .entry(tenant.to_owned())
                    .or_default()
                    .insert(region.to_owned(), stored.claim());
            }
            Some(Err(e)) => {
                tracing::warn!(%key, error = %e, "directory record unreadable");
            }
            None => {
                if let Some(c) = inner.claims.get_mut(tenant) {
                    c.remove(region);
                    if c.is_empty() {
                        inner.claims.remove(tenant);
                    }
                }
            }
        }
    }

    fn mark_complete(&self, started: std::time::Instant) {
        let tenants = {
            let mut inner = self.lock();
            inner.complete = true;
            inner.claims.len()
        };
        self.read.notify_waiters();
        tracing::info!(
            tenants,
            seconds = started.elapsed().as_secs_f64(),
            "region directory read"
        );
    }

    /// Read the whole bucket, then follow every change until `shutdown`; a
    /// watch that fails is made again and the bucket read anew.
    pub async fn follow(&self, shutdown: CancellationToken) {
        loop {
            let started = std::time::Instant::now();
            let watch = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = self.kv.watch_with_history(">") => w,
            };
            let empty = match self.kv.status().await {
                Ok(s) => s.values() == 0,
                Err(_) => false,
            };
            match watch {
                Ok(mut changes) => {
                    {
                        let mut inner = self.lock();
                        inner.claims.clear();
                    }
                    if empty {
                        self.mark_complete(started);
                    }
                    loop {
                        let change = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            c = changes.next() => c,
                        };
                        match change {
                            Some(Ok(entry)) => {
                                let put = entry.operation == kv::Operation::Put;
                                self.apply(&entry.key, put.then_some(&entry.value[..]));
                                if entry.seen_current && !self.is_complete() {
                                    self.mark_complete(started);
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "directory watch interrupted; watching again");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot watch the directory; trying again"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
