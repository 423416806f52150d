//! `[embedding]`: the built-in embedder or an OpenAI-compatible server.
//!
//! Owns the section's shape; the API key is a [`Secret`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;
use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSettings {
    /// `hashing` (built in), or a model served at `base_url`.
    pub model: String,
    /// An OpenAI-compatible API root; `<base_url>/embeddings` is called.
    pub base_url: String,
    /// Sent as a bearer key when set.
    pub api_key: Secret,
    /// Asked of models that can shorten their vectors; 0: not sent.
    pub dimensions: usize,
    /// Put before each query and document text (e5 models want
    /// `"query: "` and `"passage: "`).
    pub query_prefix: String,
    pub document_prefix: String,
    /// Send `input_type` = `"query"` / `"document"` (Voyage/Cohere style).
    pub input_type: bool,
    /// Texts in one request to the embedder.
    pub batch_size: usize,
    /// Requests to the embedder in flight at once, across all tenants.
    pub max_in_flight: usize,
    /// Longest one request to the embedder may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Tries after the first, for connection errors, 429 and 5xx.
    pub retries: u32,
    /// First retry delay; doubled each time, with jitter.
    #[serde(with = "duration")]
    pub retry_delay: Duration,
    /// Ask for base64 vectors (`encoding_format`), a quarter of the JSON.
    pub base64: bool,
    /// Query texts whose vectors are kept (0: none).
    pub query_cache: usize,
}
