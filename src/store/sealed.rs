//! With `encryption.enabled` on a store that holds every tenant's data
//! together (the edge `shared` layout, the Qdrant server): each document's
//! text and metadata sealed with its tenant's data key before they reach
//! the store, and opened again on the way out.
//!
//! Owns what is sealed and what is not: the text and every metadata key but
//! those listed in `encryption.plaintext_metadata`, which stay in clear so
//! that filters can use them; a filter on any other key is refused. The
//! sealed part is kept in the point's `text` (the payload's shape is the
//! same for every backend). Vectors stay readable to the engine, which must
//! search them. It must never hand the inner store a document in clear,
//! nor return a sealed value to a caller.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::document::{is_sealed, sealed_version, DocumentCipher};
use crate::crypto::DataKey;
use crate::filter::Filter;
use crate::protocol::{Doc, Hit, ServiceError};
use crate::store::{Page, Record, Replaced, SearchQuery, Selector, StoreFactory, TenantStore};
use crate::tenant::TenantId;

/// Documents re-sealed per write during a key rotation.
const REKEY_PAGE: usize = 256;

/// What is sealed of a document.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Hidden {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
}

/// Makes every tenant's store a [`SealedDocuments`] around the backend's.
pub struct SealingFactory {
    inner: Arc<dyn StoreFactory>,
    clear: Arc<BTreeSet<String>>,
}

impl SealingFactory {
    pub fn new(inner: Arc<dyn StoreFactory>, plaintext_metadata: &[String]) -> Self {
        Self {
            inner,
            clear: Arc::new(plaintext_metadata.iter().cloned().collect()),
        }
    }
}

impl StoreFactory for SealingFactory {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore> {
        Box::new(SealedDocuments {
            inner: self.inner.open(tenant),
            tenant: tenant.to_string(),
            clear: self.clear.clone(),
            cipher: None,
        })
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn release_partition(&self, partition: u32) {
        self.inner.release_partition(partition)
    }
}

/// One tenant's store whose documents are sealed with the tenant's key.
pub struct SealedDocuments {
    inner: Box<dyn TenantStore>,
    tenant: String,
    clear: Arc<BTreeSet<String>>,
    cipher: Option<DocumentCipher>,
}

/// Seals and opens the documents of one tenant with one key version.
struct Sealer<'a> {
    tenant: &'a str,
    clear: &'a BTreeSet<String>,
    cipher: &'a DocumentCipher,
}

impl Sealer<'_> {
    /// The text and the metadata not listed, sealed into the text.
    fn seal(&self, mut r: Record) -> Result<Record, ServiceError> {
        let (clear, hidden): (Map<String, Value>, Map<String, Value>) =
            std::mem::take(&mut r.metadata)
                .into_iter()
                .partition(|(k, _)| self.clear.contains(k));
        let hidden = Hidden {
            text: r.text.take(),
            metadata: hidden,
        };
        let plain = serde_json::to_vec(&hidden)
            .map_err(|e| ServiceError::internal(format!("sealing a document: {e}")))?;
        let sealed = self
            .cipher
            .seal(self.tenant, &r.doc_id, &plain)
            .map_err(|e| refused(self.tenant, &r.doc_id, e))?;
        r.text = Some(sealed);
        r.metadata = clear;
        Ok(r)
    }

    /// The text and metadata of a stored document, opened. A document
    /// stored in clear (before encryption was on) comes back as it is.
    fn open(
        &self,
        doc_id: &str,
        text: &mut Option<String>,
        metadata: &mut Map<String, Value>,
    ) -> Result<(), ServiceError> {
        let Some(sealed) = text.as_deref().filter(|t| is_sealed(t)) else {
            return Ok(());
        };
        let plain = self
            .cipher
            .open(self.tenant, doc_id, sealed)
            .map_err(|e| refused(self.tenant, doc_id, e))?;
        let hidden: Hidden = serde_json::from_slice(&plain).map_err(|e| {
            ServiceError::internal(format!(
                "tenant {}: document {doc_id:?} opened to something unreadable: {e}",
                self.tenant
            ))
        })?;
        *text = hidden.text;
        metadata.extend(hidden.metadata);
        Ok(())
    }

    fn open_record(&self, mut r: Record) -> Result<Record, ServiceError> {
        self.open(&r.doc_id, &mut r.text, &mut r.metadata)?;
        Ok(r)
    }
}

fn refused(tenant: &str, doc_id: &str, e: crate::crypto::KeyError) -> ServiceError {
    ServiceError::internal(format!("tenant {tenant}: document {doc_id:?}: {e}"))
}

fn no_key(tenant: &str) -> ServiceError {
    ServiceError::internal(format!(
        "tenant {tenant}: encryption is on and the tenant's data key was not given"
    ))
}

fn sealed_text(text: Option<&str>) -> bool {
    text.is_some_and(is_sealed)
}

impl SealedDocuments {
    /// The sealer of the tenant's current key; an error when the key was
    /// not given (encryption is on: nothing is stored or read in clear).
    fn sealer(&self) -> Result<Sealer<'_>, ServiceError> {
        let cipher = self.cipher.as_ref().ok_or_else(|| no_key(&self.tenant))?;
        Ok(Sealer {
            tenant: &self.tenant,
            clear: &self.clear,
            cipher,
        })
    }

    /// Refuse a filter on a key that is sealed: the store cannot see it.
    fn check_filter(&self, filter: Option<&Filter>) -> Result<(), ServiceError> {
        let Some(filter) = filter else {
            return Ok(());
        };
        match filter
            .conditions
            .iter()
            .find(|(key, _)| !self.clear.contains(key))
        {
            None => Ok(()),
            Some((key, _)) => Err(ServiceError::bad_request(format!(
                "metadata key {key:?} is encrypted, so it cannot be filtered on; the keys that \
                 can are those listed in encryption.plaintext_metadata ({})",
                self.clear
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl TenantStore for SealedDocuments {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        self.inner.dimension()
    }

    fn write(
        &mut self,
        records: Vec<Record>,
        mark: Option<&crate::store::AppliedMark>,
    ) -> Result<(), ServiceError> {
        let sealer = self.sealer()?;
        let sealed = records
            .into_iter()
            .map(|r| sealer.seal(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.write(sealed, mark)
    }

    fn applied_mark(&mut self) -> Result<Option<crate::store::AppliedMark>, ServiceError> {
        self.inner.applied_mark()
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        self.check_filter(query.filter.as_ref())?;
        let mut hits = self.inner.search(query)?;
        if hits.iter().any(|h| sealed_text(h.text.as_deref())) {
            let sealer = self.sealer()?;
            for h in &mut hits {
                sealer.open(&h.doc_id, &mut h.text, &mut h.metadata)?;
            }
        }
        Ok(hits)
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        let mut docs = self.inner.get(doc_ids, with_vectors)?;
        if docs.iter().any(|d| sealed_text(d.text.as_deref())) {
            let sealer = self.sealer()?;
            for d in &mut docs {
                sealer.open(&d.doc_id, &mut d.text, &mut d.metadata)?;
            }
        }
        Ok(docs)
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        if let Selector::Filter(f) = selector {
            self.check_filter(Some(f))?;
        }
        self.inner.delete(selector)
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        self.check_filter(filter)?;
        self.inner.count(filter)
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        self.inner.drop_tenant()
    }

    fn maintain(&mut self) -> Result<bool, ServiceError> {
        self.inner.maintain()
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        self.inner.close()
    }

    fn set_data_key(&mut self, key: Option<Arc<DataKey>>) {
        self.cipher = key.as_deref().map(DocumentCipher::new);
    }

    /// Every document sealed with another version than `next`'s opened
    /// with the current key and sealed again with `next`, a page at a time
    /// in place. Documents sealed with `next` already (an interrupted
    /// rotation) are left as they are; so are the current key's, if it
    /// fails part way (both keys are kept until it is done).
    fn rekey(&mut self, next: Arc<DataKey>) -> Result<(), ServiceError> {
        let next_cipher = DocumentCipher::new(&next);
        let resealer = Sealer {
            tenant: &self.tenant,
            clear: &self.clear,
            cipher: &next_cipher,
        };
        let current = self.cipher.as_ref().map(|cipher| Sealer {
            tenant: &self.tenant,
            clear: &self.clear,
            cipher,
        });
        let mut cursor: Option<String> = None;
        loop {
            let page = self.inner.scroll(cursor.as_deref(), REKEY_PAGE)?;
            let mut again = Vec::new();
            for r in page.docs {
                let sealed_with = r.text.as_deref().and_then(sealed_version);
                if sealed_with == Some(next_cipher.version()) {
                    continue;
                }
                let opened = match (sealed_with, &current) {
                    (None, _) => r,
                    (Some(_), Some(current)) => current.open_record(r)?,
                    (Some(_), None) => return Err(no_key(&self.tenant)),
                };
                again.push(resealer.seal(opened)?);
            }
            if !again.is_empty() {
                self.inner.upsert(again)?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        self.cipher = Some(next_cipher);
        Ok(())
    }

    fn answers_inline(&self) -> bool {
        self.inner.answers_inline()
    }

    fn scroll(&mut self, cursor: Option<&str>, limit: usize) -> Result<Page, ServiceError> {
        let mut page = self.inner.scroll(cursor, limit)?;
        if page.docs.iter().any(|r| sealed_text(r.text.as_deref())) {
            let sealer = self.sealer()?;
            page.docs = page
                .docs
                .into_iter()
                .map(|r| sealer.open_record(r))
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(page)
    }

    fn replace(
        &mut self,
        dimension: usize,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<Replaced, ServiceError> {
        // From the fields, not `sealer()`: `self.inner` is borrowed below.
        let cipher = self.cipher.as_ref().ok_or_else(|| no_key(&self.tenant))?;
        let sealer = Sealer {
            tenant: &self.tenant,
            clear: &self.clear,
            cipher,
        };
        let mut sealed_next = || -> Result<Option<Vec<Record>>, ServiceError> {
            match next()? {
                None => Ok(None),
                Some(batch) => batch
                    .into_iter()
                    .map(|r| sealer.seal(r))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
            }
        };
        self.inner.replace(dimension, &mut sealed_next)
    }
}
