//! A tenant store in memory, for unit tests of the logic above the store
//! (group commit, last write wins, quotas, embedding): what the real
//! backends do, without their files or servers, so those rules are tested
//! in microseconds rather than only end to end.
//!
//! Owns nothing but a map of documents; filters are the filter module's own
//! `matches`, search is an exact cosine scan. It must never be used outside
//! tests: it keeps nothing across a restart.

use std::collections::BTreeMap;

use crate::filter::Filter;
use crate::protocol::{Doc, Hit, ServiceError};
use crate::store::{
    check_dimension, unique, AppliedMark, Page, Record, SearchQuery, Selector, TenantStore,
};

/// One tenant's documents, by `doc_id`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    dimension: usize,
    docs: BTreeMap<String, Record>,
    /// Writes applied, for tests that count group commits.
    pub writes: usize,
    /// The applied mark, kept like a backend keeps it: with the write.
    pub mark: Option<AppliedMark>,
}

impl MemoryStore {
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            ..Self::default()
        }
    }

    fn to_doc(r: &Record, with_vectors: bool) -> Doc {
        Doc {
            doc_id: r.doc_id.clone(),
            text: r.text.clone(),
            metadata: r.metadata.clone(),
            vector: with_vectors.then(|| r.vector.clone()),
        }
    }

    fn selected<'a>(&'a self, filter: Option<&'a Filter>) -> impl Iterator<Item = &'a Record> {
        self.docs
            .values()
            .filter(move |r| filter.is_none_or(|f| f.matches(&r.metadata)))
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

impl TenantStore for MemoryStore {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        Ok(self.dimension)
    }

    fn write(
        &mut self,
        records: Vec<Record>,
        mark: Option<&AppliedMark>,
    ) -> Result<(), ServiceError> {
        for r in &records {
            check_dimension(&r.vector, self.dimension)?;
        }
        self.writes += 1;
        for r in records {
            self.docs.insert(r.doc_id.clone(), r);
        }
        if let Some(mark) = mark {
            self.mark = Some(mark.clone());
        }
        Ok(())
    }

    fn applied_mark(&mut self) -> Result<Option<AppliedMark>, ServiceError> {
        Ok(self.mark.clone())
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        check_dimension(&query.vector, self.dimension)?;
        let mut hits: Vec<Hit> = self
            .selected(query.filter.as_ref())
            .map(|r| {
                Hit::new(
                    Self::to_doc(r, query.with_vectors),
                    cosine(&query.vector, &r.vector),
                )
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(query.top_k);
        Ok(hits)
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        Ok(doc_ids
            .iter()
            .filter_map(|id| self.docs.get(id))
            .map(|r| Self::to_doc(r, with_vectors))
            .collect())
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        self.writes += 1;
        let ids: Vec<String> = match selector {
            Selector::Ids(ids) => unique(ids),
            Selector::Filter(f) => self.selected(Some(f)).map(|r| r.doc_id.clone()).collect(),
        };
        Ok(ids
            .iter()
            .filter(|id| self.docs.remove(*id).is_some())
            .count())
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        Ok(self.selected(filter).count())
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        self.docs.clear();
        self.mark = None;
        Ok(())
    }

    fn rekey(&mut self, _next: std::sync::Arc<crate::crypto::DataKey>) -> Result<(), ServiceError> {
        Err(crate::store::cannot_rekey())
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        Ok(())
    }

    fn scroll(&mut self, cursor: Option<&str>, limit: usize) -> Result<Page, ServiceError> {
        let docs: Vec<Record> = self
            .docs
            .range::<str, _>((
                cursor.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included),
                std::ops::Bound::Unbounded,
            ))
            .take(limit + 1)
            .map(|(_, r)| r.clone())
            .collect();
        let mut docs = docs;
        let next = (docs.len() > limit)
            .then(|| docs.pop().map(|r| r.doc_id))
            .flatten();
        Ok(Page { docs, next })
    }
}
