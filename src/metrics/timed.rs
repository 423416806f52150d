//! The store and the embedder, timed: wrappers that record each call's
//! time and failure, and a new store's first call as its activation.
//!
//! Owns the wrapping. It must never change a call's arguments or outcome.

use std::sync::Arc;
use std::time::Instant;

use super::labels::{purpose_index, Op};
use super::Metrics;
use crate::embed::{Embedder, Purpose};
use crate::filter::Filter;
use crate::protocol::{Doc, Hit, ServiceError};
use crate::store::{Page, Record, Replaced, SearchQuery, Selector, StoreFactory, TenantStore};
use crate::tenant::TenantId;

pub(super) struct TimedFactory {
    pub(super) inner: Arc<dyn StoreFactory>,
    pub(super) metrics: Arc<Metrics>,
}

impl StoreFactory for TimedFactory {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore> {
        Box::new(TimedStore {
            inner: self.inner.open(tenant),
            metrics: self.metrics.clone(),
            fresh: true,
        })
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn release_partition(&self, partition: u32) {
        self.inner.release_partition(partition)
    }
}

/// A tenant's store with each call timed; the first call of a new store
/// (opening is lazy, so it opens the store) is also the activation time.
pub(super) struct TimedStore {
    inner: Box<dyn TenantStore>,
    metrics: Arc<Metrics>,
    fresh: bool,
}

impl TimedStore {
    fn time<T>(
        &mut self,
        op: Op,
        call: impl FnOnce(&mut dyn TenantStore) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let start = Instant::now();
        let outcome = call(self.inner.as_mut());
        let elapsed = start.elapsed();
        let m = &self.metrics;
        m.store_seconds[op as usize].observe(elapsed);
        if outcome.is_err() {
            m.store_failures[op as usize].inc();
        }
        if std::mem::take(&mut self.fresh) && !matches!(op, Op::Close) {
            m.activation_seconds.observe(elapsed);
        }
        outcome
    }
}

impl TenantStore for TimedStore {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        self.time(Op::Dimension, |s| s.dimension())
    }

    fn write(
        &mut self,
        records: Vec<Record>,
        mark: Option<&crate::store::AppliedMark>,
    ) -> Result<(), ServiceError> {
        self.time(Op::Upsert, |s| s.write(records, mark))
    }

    fn applied_mark(&mut self) -> Result<Option<crate::store::AppliedMark>, ServiceError> {
        self.time(Op::Get, |s| s.applied_mark())
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        self.time(Op::Search, |s| s.search(query))
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        self.time(Op::Get, |s| s.get(doc_ids, with_vectors))
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        self.time(Op::Delete, |s| s.delete(selector))
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        self.time(Op::Count, |s| s.count(filter))
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        self.time(Op::Drop, |s| s.drop_tenant())
    }

    fn maintain(&mut self) -> Result<bool, ServiceError> {
        self.time(Op::Maintain, |s| s.maintain())
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        self.time(Op::Close, |s| s.close())
    }

    fn answers_inline(&self) -> bool {
        self.inner.answers_inline()
    }

    fn set_data_key(&mut self, key: Option<Arc<crate::crypto::DataKey>>) {
        self.inner.set_data_key(key)
    }

    fn rekey(&mut self, next: Arc<crate::crypto::DataKey>) -> Result<(), ServiceError> {
        self.inner.rekey(next)
    }

    fn scroll(&mut self, cursor: Option<&str>, limit: usize) -> Result<Page, ServiceError> {
        self.time(Op::Scroll, |s| s.scroll(cursor, limit))
    }

    fn replace(
        &mut self,
        dimension: usize,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<Replaced, ServiceError> {
        self.time(Op::Replace, |s| s.replace(dimension, next))
    }
}

pub(super) struct TimedEmbedder {
    pub(super) inner: Arc<dyn Embedder>,
    pub(super) metrics: Arc<Metrics>,
}

impl Embedder for TimedEmbedder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
        let p = purpose_index(purpose);
        let start = Instant::now();
        let outcome = self.inner.embed(texts, purpose);
        let m = &self.metrics;
        m.embedder_seconds[p].observe(start.elapsed());
        m.embedder_calls[p].inc();
        m.embedder_texts[p].inc_by(texts.len() as u64);
        if outcome.is_err() {
            m.embedder_failures[p].inc();
        }
        outcome
    }
}
