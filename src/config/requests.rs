//! `[search]` and `[limits]`: what a request may ask for and carry.
//!
//! Owns those sections' shapes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSettings {
    pub default_top_k: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_documents: usize,
    pub max_top_k: usize,
    pub max_doc_id_bytes: usize,
    pub max_text_bytes: usize,
    pub max_ids: usize,
    pub max_metadata_bytes: usize,
    pub max_metadata_depth: usize,
    pub max_in_flight: usize,
    /// Requests of one tenant between arrival and reply; past it that
    /// tenant's requests are answered `rate_limited`.
    pub tenant_queue: usize,
}
