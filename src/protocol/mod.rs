//! The wire contract (docs/protocol.md): subjects, request and reply bodies, error
//! codes.
//!
//! Owns the JSON shapes and the decoding rules: every body that comes off the
//! wire is decoded here into a typed value or a [`ServiceError`] that says what
//! is wrong. It must never touch a store, an actor or a socket; it is the one
//! place both the worker and the client read the contract from.

mod tenants;

pub use tenants::{
    DocumentsBucket, RegistryStats, TenantRequest, TenantsListRequest, TenantsOp, MAX_TENANTS_PAGE,
    TENANTS,
};

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::vector::VectorEncoding;

/// The subject prefix unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "tenantvec";
/// NATS Services API name; `$SRV.PING.tenantvec` answers once we serve.
pub const SERVICE_NAME: &str = "tenantvec";
/// Header carrying the error text (NATS Services API).
pub const HEADER_ERROR: &str = "Nats-Service-Error";
/// Header carrying the numeric status (NATS Services API).
pub const HEADER_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Every error code of the protocol, with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidTenant,
    /// The tenant has no record in the registry and `tenants.auto_create`
    /// is off: an operator creates it first.
    UnknownTenant,
    BadRequest,
    DimensionMismatch,
    TooLarge,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTenant => "invalid_tenant",
            Self::UnknownTenant => "unknown_tenant",
            Self::BadRequest => "bad_request",
            Self::DimensionMismatch => "dimension_mismatch",
            Self::TooLarge => "too_large",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP-like status sent in `Nats-Service-Error-Code`.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidTenant | Self::BadRequest | Self::DimensionMismatch => 400,
            Self::UnknownTenant => 404,
            Self::TooLarge => 413,
            Self::QuotaExceeded | Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// Whether a JetStream message that failed with this code may succeed
    /// when delivered again (a backend outage) or never will (bad input).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::RateLimited | Self::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request, as the client sees it.
///
/// One error type for the whole request path, rather than an error enum per
/// layer: every layer's failure ends as exactly one of the protocol's codes,
/// so converting at the point of failure keeps the message specific (the
/// layer knows what went wrong) and the mapping to codes in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: how long to wait before the next try is
    /// likely to be admitted, in milliseconds (clients' retries honour it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ServiceError {
    /// The same error, saying how long to wait before a retry.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(wait.as_millis().clamp(1, u64::MAX as u128) as u64);
        self
    }

    /// The same code and hint, with `message` instead.
    pub fn with_message(&self, message: String) -> Self {
        Self {
            code: self.code,
            message,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl ServiceError {
            $(pub fn $name(message: impl Into<String>) -> Self {
                Self { code: ErrorCode::$code, message: message.into(), retry_after_ms: None }
            })*
        }
    };
}

constructors! {
    invalid_tenant => InvalidTenant,
    unknown_tenant => UnknownTenant,
    bad_request => BadRequest,
    dimension_mismatch => DimensionMismatch,
    too_large => TooLarge,
    quota_exceeded => QuotaExceeded,
    rate_limited => RateLimited,
    unavailable => Unavailable,
    internal => Internal,
}

/// `{"error": {"code", "message"}}`, the body of every failed reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ServiceError,
}

/// Decode a request body; anything that is not the expected JSON is a
/// `bad_request` naming the problem (serde's message carries the field and
/// the position). An empty body stands for `{}`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        if e.to_string().contains(crate::vector::WRONG_LENGTH) {
            ServiceError::dimension_mismatch(format!("invalid body: {e}"))
        } else {
            ServiceError::bad_request(format!("invalid body: {e}"))
        }
    })
}

/// The verbs served per tenant, each on `<prefix>.<verb>.<tenant>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Upsert,
    Search,
    Get,
    Delete,
    Count,
    Drop,
    /// Write the tenant's export into the backup bucket (`crate::backup`).
    Export,
    /// Replace the tenant's documents with an export from the backup bucket.
    Import,
    /// Rotate the tenant's data key, its data encrypted again with the new
    /// one (`encryption.enabled`; `tenantvec keys rotate T`).
    Rekey,
}

impl Verb {
    pub const ALL: [Verb; 9] = [
        Verb::Upsert,
        Verb::Search,
        Verb::Get,
        Verb::Delete,
        Verb::Count,
        Verb::Drop,
        Verb::Export,
        Verb::Import,
        Verb::Rekey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Upsert => "upsert",
            Verb::Search => "search",
            Verb::Get => "get",
            Verb::Delete => "delete",
            Verb::Count => "count",
            Verb::Drop => "drop",
            Verb::Export => "export",
            Verb::Import => "import",
            Verb::Rekey => "rekey",
        }
    }

    /// Whether request partitions map the verb: the verbs of a tenant's
    /// data, not the operator's `rekey`, which arrives unmapped (as admin
    /// verbs do) and is served all the same.
    pub fn partitioned(self) -> bool {
        !matches!(self, Verb::Rekey)
    }

    /// The verb a subject token names, if any (case-sensitive, as subjects are).
    pub fn parse(token: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == token)
    }
}

/// The admin verbs, on `<prefix>.admin.<verb>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminVerb {
    Stats,
    Cleanup,
    Evict,
}

impl AdminVerb {
    pub const ALL: [AdminVerb; 3] = [AdminVerb::Stats, AdminVerb::Cleanup, AdminVerb::Evict];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminVerb::Stats => "stats",
            AdminVerb::Cleanup => "cleanup",
            AdminVerb::Evict => "evict",
        }
    }

    pub fn parse(token: &str) -> Option<AdminVerb> {
        AdminVerb::ALL.into_iter().find(|v| v.as_str() == token)
    }
}

/// The verb token of the admin subjects, `<prefix>.admin.<verb>`.
pub const ADMIN: &str = "admin";
/// Verb tokens under the prefix that belong to JetStream streams, not to the
/// request-reply endpoint: `<prefix>.ingest.<tenant>`, `<prefix>.deadletter.<tenant>`.
pub const STREAM_VERBS: [&str; 2] = ["ingest", "deadletter"];

/// What a subject under the prefix addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressed<'a> {
    /// `<prefix>.<verb>.<tenant>`, with the tenant token unchecked.
    Tenant(Verb, &'a str),
    /// `<prefix>.admin.<verb>`.
    Admin(AdminVerb),
    /// A subject a JetStream stream captures; its publisher waits for the
    /// stream's PubAck on the reply subject, so it is never answered here.
    Stream,
    /// Anything else: a verb (or admin verb) nobody serves.
    Unknown,
}

/// The error for [`Addressed::Unknown`]: names every verb served.
pub fn unknown_verb(subject: &str) -> ServiceError {
    let verbs: Vec<String> = Verb::ALL
        .iter()
        .map(|v| v.as_str().to_owned())
        .chain(
            AdminVerb::ALL
                .iter()
                .map(|v| format!("{ADMIN}.{}", v.as_str())),
        )
        .collect();
    // Debug formatting and a length cap: the subject comes from the client.
    let shown: String = subject.chars().take(128).collect();
    ServiceError::bad_request(format!(
        "no such verb in subject {shown:?}; the verbs are {}",
        verbs.join(", ")
    ))
}

/// Why `prefix` cannot begin a subject, if it cannot: it must be one or
/// more dot-separated NATS tokens, each non-empty, without the wildcards
/// `*` and `>`, whitespace or control characters. Checked by the settings
/// (the worker) and before a client sends anything.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let bad_token = |t: &str| {
        t.is_empty()
            || t.chars()
                .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
    };
    if prefix.split('.').any(bad_token) {
        return Err(format!(
            "prefix {prefix:?} is not a subject prefix: one or more dot-separated NATS tokens, \
             each non-empty, without '*', '>', spaces or control characters"
        ));
    }
    Ok(())
}

/// Subject names for one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<p>.<verb>.<tenant>`
    pub fn tenant(&self, verb: Verb, tenant: &str) -> String {
        format!("{}.{}.{}", self.prefix, verb.as_str(), tenant)
    }

    /// `<p>.*.*`: every tenant verb and admin verb, the one subject the
    /// worker's endpoint subscribes to (why one: `transport::service`).
    pub fn requests(&self) -> String {
        format!("{}.*.*", self.prefix)
    }

    /// What `subject` addresses; `subject` is one that [`Subjects::requests`]
    /// matched, anything else is [`Addressed::Unknown`].
    pub fn classify<'a>(&self, subject: &'a str) -> Addressed<'a> {
        let Some((verb, last)) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split_once('.'))
        else {
            return Addressed::Unknown;
        };
        if last.contains('.') {
            return Addressed::Unknown;
        }
        if let Some(verb) = Verb::parse(verb) {
            return Addressed::Tenant(verb, last);
        }
        if verb == ADMIN {
            return AdminVerb::parse(last).map_or(Addressed::Unknown, Addressed::Admin);
        }
        if STREAM_VERBS.contains(&verb) {
            return Addressed::Stream;
        }
        Addressed::Unknown
    }

    /// The tenant token of an ingest publish (`<p>.ingest.<tenant>`).
    pub fn ingest_token<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(".ingest."))
            .filter(|token| !token.is_empty() && !token.contains('.'))
    }

    /// `<p>.admin.<verb>`
    pub fn admin(&self, verb: AdminVerb) -> String {
        format!("{}.admin.{}", self.prefix, verb.as_str())
    }

    /// `<p>.admin.tenants.<op>`: the registry's operations.
    pub fn tenants(&self, op: TenantsOp) -> String {
        format!("{}.admin.{TENANTS}.{}", self.prefix, op.as_str())
    }

    /// `<p>.admin.tenants.*`, the subscription of the registry's operations.
    pub fn tenants_requests(&self) -> String {
        format!("{}.admin.{TENANTS}.*", self.prefix)
    }
}

/// The tenant token of a subject: always its last token.
pub fn tenant_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

/// One document as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doc {
    pub doc_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// An array of numbers, or base64 of little-endian f32 ([`crate::vector`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::vector::deserialize_opt"
    )]
    pub vector: Option<Vec<f32>>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub doc_id: String,
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

impl Hit {
    /// A stored document found with `score`.
    pub fn new(doc: Doc, score: f32) -> Self {
        Self {
            doc_id: doc.doc_id,
            score,
            text: doc.text,
            metadata: doc.metadata,
            vector: doc.vector,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    pub documents: Vec<Doc>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::vector::deserialize_opt"
    )]
    pub vector: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    #[serde(default)]
    pub with_vectors: bool,
    /// How the reply carries vectors (with `with_vectors`).
    #[serde(default, skip_serializing_if = "is_array")]
    pub vector_encoding: VectorEncoding,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub doc_ids: Vec<String>,
    #[serde(default)]
    pub with_vectors: bool,
    /// How the reply carries vectors (with `with_vectors`).
    #[serde(default, skip_serializing_if = "is_array")]
    pub vector_encoding: VectorEncoding,
}

fn is_array(encoding: &VectorEncoding) -> bool {
    *encoding == VectorEncoding::Array
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EvictRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Every successful per-tenant reply.
/// `Transfer` is the summary of an export or an import (`crate::backup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Upserted { upserted: usize },
    Results { results: Vec<Hit> },
    Documents { documents: Vec<Doc> },
    Deleted { deleted: usize },
    Count { count: usize },
    Dropped { dropped: bool },
    Rekeyed { rekeyed: bool, key_version: u32 },
    Transfer(Value),
}

impl Reply {
    /// The reply's JSON body, its vectors (if any) in `encoding`.
    pub fn encode(&self, encoding: VectorEncoding) -> serde_json::Result<Vec<u8>> {
        if encoding == VectorEncoding::Array {
            return serde_json::to_vec(self);
        }
        // Rare (asked for per request): through a `Value`, each vector
        // replaced by its base64 from the f32s themselves.
        let vectors: Vec<Option<&Vec<f32>>> = match self {
            Reply::Results { results } => results.iter().map(|h| h.vector.as_ref()).collect(),
            Reply::Documents { documents } => documents.iter().map(|d| d.vector.as_ref()).collect(),
            _ => return serde_json::to_vec(self),
        };
        let mut value = serde_json::to_value(self)?;
        let items = value
            .as_object_mut()
            .and_then(|o| o.values_mut().next())
            .and_then(Value::as_array_mut);
        for (item, vector) in items.into_iter().flatten().zip(vectors) {
            if let (Some(item), Some(vector)) = (item.as_object_mut(), vector) {
                item.insert(
                    "vector".into(),
                    Value::String(crate::vector::to_base64(vector)),
                );
            }
        }
        serde_json::to_vec(&value)
    }
}

/// `admin.stats`: the seed's pool figures plus ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub size: usize,
    pub max_size: usize,
    pub ttl_seconds: f64,
    pub keys: Vec<String>,
    pub hit_rate: f64,
    /// Actors that were told to stop and are still finishing their queue.
    pub closing: usize,
    /// Requests of inactive tenants waiting for an actor to finish closing,
    /// because `2 × max_size` actors hold a store already.
    #[serde(default)]
    pub waiting: usize,
    pub backend: String,
    /// The embedder of texts sent without vectors, and the dimension of
    /// stores this worker creates (a client can check its vectors first).
    #[serde(default)]
    pub embedding_model: String,
    #[serde(default)]
    pub dimension: usize,
    /// Durable ingest figures of this worker, when it consumes the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestStats>,
    /// Requests answered with each error code since the worker started.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// With `cluster.enabled`: this worker's place in the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
    /// With `tenants.registry`: the tenants by state and by size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryStats>,
    /// With regions: this worker's region and every region's tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<RegionStats>,
}

/// Regions as one worker's directory sees them (`admin.stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStats {
    /// This worker's region.
    pub region: String,
    /// Every region of the deployment, with the tenants homed there.
    pub tenants: std::collections::BTreeMap<String, u64>,
    /// Whether the directory has been read whole (always, once serving).
    pub complete: bool,
    /// Regions whose registry the directory does not read at the moment
    /// (unreachable, or their registry not made yet): tenants made there
    /// since are unknown here until it does.
    pub unlinked: Vec<String>,
}

/// A fleet member's view of the fleet (`admin.stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// This worker's name in the fleet.
    pub member: String,
    pub partitions: u32,
    /// The partitions this worker serves.
    pub serving: Vec<u32>,
    /// Every partition's owner as this worker last read the leases (none:
    /// being handed over, or no worker).
    pub owners: Vec<Option<String>>,
}

/// Durable ingest figures since the worker started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestStats {
    /// Messages acked after their documents were committed.
    pub acked: u64,
    /// Documents in those messages.
    pub documents: u64,
    /// Messages that can never succeed: recorded on the dead-letter subject, then terminated.
    pub dead_lettered: u64,
    /// Messages delivered more than once (a worker died before acking, or a retry).
    pub redelivered: u64,
    /// Tries that failed for a reason that may pass, retried in order.
    pub retried: u64,
    /// Messages handed back to the stream for later because their tenant
    /// was stalled and held its share of max_ack_pending already.
    #[serde(default)]
    pub deferred: u64,
}

/// A failure of the store or of a tenant's files that is not the caller's: logged with its cause, and
/// answered `internal` naming the tenant and the step that failed.
pub fn internal(who: &str, what: &str, e: impl std::fmt::Display) -> ServiceError {
    tracing::error!(%who, error = %e, "store failure: {what}");
    ServiceError::internal(format!("{who}: {what} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_subject_tokens() {
        for good in ["tenantvec", "a.b", "app-1_x"] {
            assert!(check_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "a..b", "a.", "*", "a.>", "a b", "a\tb", "x\u{7}"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_codes_have_their_status() {
        assert_eq!(ErrorCode::TooLarge.status(), 413);
        assert_eq!(ErrorCode::QuotaExceeded.status(), 429);
        assert_eq!(ErrorCode::Unavailable.status(), 503);
        assert_eq!(
            serde_json::to_value(ErrorCode::DimensionMismatch).unwrap(),
            "dimension_mismatch"
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_are_bad_requests() {
        let err = decode::<SearchRequest>(br#"{"topk": 3}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("topk"), "{}", err.message);
        let err = decode::<SearchRequest>(b"{nope").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(decode::<EmptyRequest>(b"").is_ok());
    }

    #[test]
    fn tenant_is_the_last_token() {
        assert_eq!(tenant_token("tenantvec.search.alice"), "alice");
        let s = Subjects::new("p");
        assert_eq!(s.tenant(Verb::Drop, "bob"), "p.drop.bob");
        assert_eq!(s.admin(AdminVerb::Evict), "p.admin.evict");
    }

    #[test]
    fn subjects_are_classified_by_their_verb_token() {
        let s = Subjects::new("a.b");
        assert_eq!(s.requests(), "a.b.*.*");
        assert_eq!(
            s.classify("a.b.upsert.alice"),
            Addressed::Tenant(Verb::Upsert, "alice")
        );
        // The tenant token is checked later, by TenantId::parse.
        assert_eq!(
            s.classify("a.b.drop.NOPE"),
            Addressed::Tenant(Verb::Drop, "NOPE")
        );
        // A tenant called "admin" or "stats" is a tenant, not an admin verb.
        assert_eq!(
            s.classify("a.b.count.admin"),
            Addressed::Tenant(Verb::Count, "admin")
        );
        assert_eq!(
            s.classify("a.b.admin.stats"),
            Addressed::Admin(AdminVerb::Stats)
        );
        assert_eq!(s.classify("a.b.admin.nope"), Addressed::Unknown);
        assert_eq!(s.classify("a.b.ingest.alice"), Addressed::Stream);
        assert_eq!(s.classify("a.b.deadletter._invalid"), Addressed::Stream);
        assert_eq!(s.classify("a.b.Upsert.alice"), Addressed::Unknown);
        assert_eq!(s.classify("a.b.upsert"), Addressed::Unknown);
        assert_eq!(s.classify("a.b.upsert.x.y"), Addressed::Unknown);
        assert_eq!(s.classify("a.c.upsert.alice"), Addressed::Unknown);
        assert_eq!(s.classify("a.bupsert.alice"), Addressed::Unknown);
        let e = unknown_verb("a.b.frob.alice");
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("frob"), "{}", e.message);
        assert!(e.message.contains(
            "upsert, search, get, delete, count, drop, export, import, rekey, admin.stats"
        ));
    }
}
