//! Embedders: text to vector, for documents and queries that come without one.
//!
//! Owns the [`Embedder`] trait and the choice of embedder from settings. It
//! must never decide a tenant's dimension (the store does) or block on the
//! network from an async thread: embedders are called from the blocking pool,
//! inside a tenant actor's job.

mod hashing;

pub use hashing::HashingEmbedder;

use std::sync::Arc;

use crate::config::Settings;
use crate::protocol::ServiceError;

/// Turns text into a vector of [`Embedder::dimension`] floats.
///
/// Synchronous on purpose: it runs on the blocking pool next to the store
/// work of the same job, so a CPU-bound embedder never stalls the transport,
/// and an HTTP embedder can use a blocking client there.
pub trait Embedder: Send + Sync {
    /// The embedder's name, as in `EMBEDDING_MODEL`.
    fn name(&self) -> &str;
    fn dimension(&self) -> usize;
    fn embed(&self, text: &str) -> Result<Vec<f32>, ServiceError>;
}

/// The embedder named by `embedding.model`.
pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<dyn Embedder>> {
    match settings.embedding.model.as_str() {
        "hashing" | "" => Ok(Arc::new(HashingEmbedder::new(settings.store.dimension))),
        other => anyhow::bail!(
            "embedding.model {other:?} is not available in this build; use \"hashing\" \
             or send vectors with every document and query"
        ),
    }
}
