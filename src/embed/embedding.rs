//! The embedder as one job of one tenant uses it: the dimension and the
//! tenant's embedder record checked before any text is sent, the record
//! written after the first write of vectors it made.
//!
//! Owns the rule that a tenant's vectors all come from one embedder. It must
//! never send a text before that check, nor record an embedder before a
//! write of its vectors succeeded.

use crate::embed::{record, Embedder, Purpose};
use crate::protocol::ServiceError;
use crate::tenant::TenantId;

/// The embedder as one job of one tenant uses it: the dimension and the
/// tenant's embedder record checked before any text is sent, the record
/// written after the first write of vectors it made.
pub struct Embedding<'a> {
    embedder: &'a dyn Embedder,
    records: &'a record::Records,
    tenant: &'a TenantId,
    /// Vectors were made for a tenant that has no record yet.
    unrecorded: std::cell::Cell<bool>,
}

impl<'a> Embedding<'a> {
    pub fn new(
        embedder: &'a dyn Embedder,
        records: &'a record::Records,
        tenant: &'a TenantId,
    ) -> Self {
        Self {
            embedder,
            records,
            tenant,
            unrecorded: std::cell::Cell::new(false),
        }
    }

    pub fn check(&self, dimension: usize) -> Result<(), ServiceError> {
        if self.embedder.dimension() != dimension {
            return Err(ServiceError::dimension_mismatch(format!(
                "the embedder makes {} dimensions, the tenant's store has {dimension}; send vectors",
                self.embedder.dimension()
            )));
        }
        if !self.records.check(self.tenant, self.embedder)? {
            self.unrecorded.set(true);
        }
        Ok(())
    }

    pub fn documents(
        &self,
        texts: &[&str],
        dimension: usize,
    ) -> Result<Vec<Vec<f32>>, ServiceError> {
        self.check(dimension)?;
        let vectors = self.embedder.embed(texts, Purpose::Document)?;
        if vectors.len() != texts.len() {
            return Err(ServiceError::internal(format!(
                "the embedder made {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    pub fn query(&self, text: &str, dimension: usize) -> Result<Vec<f32>, ServiceError> {
        self.check(dimension)?;
        self.embedder
            .embed(&[text], Purpose::Query)?
            .pop()
            .ok_or_else(|| ServiceError::internal("the embedder made no vector"))
    }

    /// The embedder, where its records are, and the tenant (for `crate::backup`).
    pub fn parts(&self) -> (&'a dyn Embedder, &'a record::Records, &'a TenantId) {
        (self.embedder, self.records, self.tenant)
    }

    /// The tenant was dropped: its vectors and their record are gone.
    pub fn forget(&self) -> Result<(), ServiceError> {
        self.records.remove(self.tenant)
    }

    /// After a successful write: record the embedder if this job made the
    /// tenant's first vectors.
    pub fn record(&self) -> Result<(), ServiceError> {
        if self.unrecorded.replace(false) {
            self.records.write(self.tenant, self.embedder)?;
        }
        Ok(())
    }
}
