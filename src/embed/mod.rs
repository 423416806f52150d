//! Embedders: text to vector, for documents and queries that come without one.
//!
//! Owns the [`Embedder`] trait, the choice of embedder from settings (with
//! the probe that learns a remote model's dimension at start), and the
//! record of which embedder wrote a tenant's vectors ([`record`]). It must
//! never decide a tenant's dimension (the store does) or block on the network
//! from an async thread: embedders are called from the blocking pool, inside
//! a tenant actor's job.

mod embedding;
mod hashing;
pub mod openai;
pub mod record;

pub use embedding::Embedding;
pub use hashing::HashingEmbedder;

use std::sync::Arc;

use crate::config::Settings;
use crate::protocol::ServiceError;

/// The name of the built-in embedder.
pub const HASHING: &str = "hashing";

/// What a text is embedded for: models trained for retrieval (e5, Voyage,
/// Cohere) embed a query and a document differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Query,
    Document,
}

/// Turns texts into vectors of [`Embedder::dimension`] floats.
///
/// Synchronous on purpose: it runs on the blocking pool next to the store
/// work of the same job, so a CPU-bound embedder never stalls the transport,
/// and an HTTP embedder uses a blocking client there. A tenant's job waiting
/// on the network holds up that tenant alone.
pub trait Embedder: Send + Sync {
    /// The embedder's name, as in `EMBEDDING_MODEL`.
    fn name(&self) -> &str;
    fn dimension(&self) -> usize;
    /// One vector per text, in order. Several texts are sent together.
    fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError>;
}

/// The embedder named by `embedding.model`, and the settings' dimension made
/// to agree with it: a remote model is asked for one vector at start, and a
/// dimension set in a file, the environment or a flag that differs from it
/// stops the start.
pub fn from_settings(settings: &mut Settings) -> anyhow::Result<Arc<dyn Embedder>> {
    let model = settings.embedding.model.trim();
    if model.is_empty() || model == HASHING {
        return Ok(Arc::new(HashingEmbedder::new(settings.store.dimension)));
    }
    let embedder = openai::OpenAiEmbedder::connect(&settings.embedding)?;
    let probed = embedder.dimension();
    if probed != settings.store.dimension {
        if let Some(source) = &settings.store.dimension_given {
            anyhow::bail!(
                "EMBEDDING_DIM (store.dimension, from {source}) is {}, but model {:?} at {} \
                 makes {probed}-dimensional vectors; set EMBEDDING_DIM={probed}, or leave it unset",
                settings.store.dimension,
                embedder.name(),
                settings.embedding.base_url
            );
        }
        tracing::info!(
            model = embedder.name(),
            dimension = probed,
            "the embedder's dimension is the store dimension"
        );
        settings.store.dimension = probed;
    }
    Ok(Arc::new(embedder))
}
