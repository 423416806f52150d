//! Settings: one [`Settings`] value, read from layered sources.
//!
//! Owns the order of the layers (the compiled-in `config/default.toml`, an
//! optional file, environment variables, command-line overrides: later wins),
//! the seed application's environment variable names, and the duration syntax
//! (seconds or humantime). It must never read settings anywhere else: every
//! other module gets what it needs from the `Settings` it is handed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The defaults, compiled in so the binary works from any directory; the file
/// in the repository is also the documentation of every setting.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variables and the setting each one sets. The seed application's
/// names are kept so an existing deployment's environment works unchanged.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("NATS_URL", "nats.url"),
    ("TENANTVEC_PREFIX", "nats.prefix"),
    ("NATS_USER", "nats.user"),
    ("NATS_PASSWORD", "nats.password"),
    ("NATS_TOKEN", "nats.token"),
    ("NATS_NKEY_SEED", "nats.nkey_seed"),
    ("NATS_CREDS", "nats.credentials_file"),
    ("NATS_TLS_CA", "nats.tls_ca_file"),
    ("NATS_TLS_CERT", "nats.tls_cert_file"),
    ("NATS_TLS_KEY", "nats.tls_key_file"),
    ("NATS_INBOX_PREFIX", "nats.inbox_prefix"),
    ("TENANTVEC_REQUEST_TIMEOUT", "nats.request_timeout"),
    ("VECTOR_STORE_POOL_SIZE", "pool.size"),
    ("VECTOR_STORE_TTL_SECONDS", "pool.ttl"),
    ("TENANTVEC_BACKEND", "store.backend"),
    ("TENANTVEC_LAYOUT", "store.layout"),
    ("VECTOR_STORE_FOLDER", "store.folder"),
    ("EMBEDDING_DIM", "store.dimension"),
    ("QDRANT_URL", "store.qdrant_url"),
    ("QDRANT_API_KEY", "store.qdrant_api_key"),
    ("QDRANT_TIMEOUT", "store.qdrant_timeout"),
    ("QDRANT_COLLECTION_PREFIX", "store.collection_prefix"),
    ("TENANTVEC_INDEXED_KEYS", "store.indexed_keys"),
    ("TENANTVEC_MAX_PAYLOAD_INDEXES", "store.max_payload_indexes"),
    ("TENANTVEC_MIN_FREE_DISK_MB", "store.min_free_disk_mb"),
    ("EMBEDDING_MODEL", "embedding.model"),
    ("OPENAI_BASE_URL", "embedding.base_url"),
    ("OPENAI_API_KEY", "embedding.api_key"),
    ("EMBEDDING_DIMENSIONS", "embedding.dimensions"),
    ("EMBEDDING_QUERY_PREFIX", "embedding.query_prefix"),
    ("EMBEDDING_DOCUMENT_PREFIX", "embedding.document_prefix"),
    ("EMBEDDING_INPUT_TYPE", "embedding.input_type"),
    ("EMBEDDING_TIMEOUT", "embedding.timeout"),
    ("DEFAULT_TOP_K", "search.default_top_k"),
    ("TENANTVEC_MAX_IN_FLIGHT", "limits.max_in_flight"),
    ("TENANTVEC_TENANT_QUEUE", "limits.tenant_queue"),
    ("TENANTVEC_MAX_DOCUMENTS", "tenants.max_documents"),
    ("TENANTVEC_MAX_RPS", "tenants.max_rps"),
    ("TENANTVEC_INGEST_ORDERED", "ingest.ordered"),
    ("TENANTVEC_METRICS_LISTEN", "metrics.listen"),
    ("TENANTVEC_CLUSTER", "cluster.enabled"),
    ("TENANTVEC_PARTITIONS", "cluster.partitions"),
    ("TENANTVEC_LEASE_TTL", "cluster.lease_ttl"),
    ("TENANTVEC_MEMBER", "cluster.member"),
    ("TENANTVEC_REPLICAS", "nats.replicas"),
    ("TENANTVEC_REQUEST_PARTITIONS", "nats.request_partitions"),
    ("TENANTVEC_WORKER_THREADS", "worker.threads"),
    ("RUST_LOG", "log.filter"),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub nats: NatsSettings,
    pub pool: PoolSettings,
    pub store: StoreSettings,
    pub embedding: EmbeddingSettings,
    pub search: SearchSettings,
    pub limits: Limits,
    pub tenants: crate::policy::TenantDefaults,
    pub ingest: IngestSettings,
    pub worker: WorkerSettings,
    pub cluster: ClusterSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    pub prefix: String,
    pub connection_name: String,
    /// User and password authentication (both set, or neither).
    pub user: String,
    pub password: Secret,
    /// Token authentication.
    pub token: Secret,
    /// NKey authentication: the user's seed (`SU…`).
    pub nkey_seed: Secret,
    /// JWT authentication: a `.creds` file.
    pub credentials_file: PathBuf,
    /// CA certificate(s) to trust for TLS (PEM); setting it turns TLS on.
    pub tls_ca_file: PathBuf,
    /// Client certificate and key for mutual TLS (PEM).
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Refuse to connect without TLS (also implied by a `tls://` URL).
    pub tls_required: bool,
    /// Subject prefix of this connection's reply inboxes; a per-user prefix
    /// lets the server keep each client to its own replies.
    pub inbox_prefix: String,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    #[serde(with = "duration")]
    pub discovery_timeout: Duration,
    /// Copies JetStream keeps of every stream and bucket the worker creates.
    pub replicas: usize,
    /// Request partitions the NATS server maps tenant verbs into (0: none):
    /// one connection and subscription each, so that one tenant's flood
    /// does not hold up the others' requests ([`crate::transport::partitions`]).
    pub request_partitions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub size: usize,
    #[serde(with = "duration")]
    pub ttl: Duration,
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

impl NatsSettings {
    /// The URL(s) without any `user:password@` part, for logs and errors.
    pub fn display_url(&self) -> String {
        redact_urls(&self.url)
    }
}

/// Comma-separated URLs without any `user:password@` part, for logs and errors.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}<redacted>@{}", &u[..scheme + 3], &u[at + 1..])
                }
                _ => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl PoolSettings {
    /// How often the supervisor looks for idle actors.
    pub fn sweep_every(&self) -> Duration {
        if !self.sweep_interval.is_zero() {
            return self.sweep_interval;
        }
        (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(60))
    }
}

/// Where tenants' points are kept (see README, "Backends").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Backend {
    Edge,
    Qdrant,
}

/// Where tenants' points live (see README, "Layouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Layout {
    /// A store per tenant: a shard (edge) or a collection (qdrant) each.
    PerTenant,
    /// One store for all tenants, each point tagged with its tenant.
    Shared,
}

impl Layout {
    /// Its name in settings.
    pub fn name(self) -> &'static str {
        match self {
            Layout::PerTenant => "per_tenant",
            Layout::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    pub layout: Layout,
    pub folder: PathBuf,
    pub dimension: usize,
    pub wal_capacity_kb: usize,
    pub vectors_on_disk: bool,
    pub optimize_threshold: usize,
    pub qdrant_url: String,
    pub qdrant_api_key: Secret,
    /// Longest a request to the Qdrant server may take before it is
    /// answered `unavailable`.
    #[serde(with = "duration")]
    pub qdrant_timeout: Duration,
    /// Longest a connection attempt to the Qdrant server may take.
    #[serde(with = "duration")]
    pub qdrant_connect_timeout: Duration,
    pub collection_prefix: String,
    /// Metadata keys that may get a payload index; empty: any key a filter
    /// uses. A list, or one string of comma-separated keys (the environment).
    #[serde(with = "keys")]
    pub indexed_keys: Vec<String>,
    /// Most payload indexes made on first use in one store (one shard or
    /// collection; in the shared layout, the one all tenants share).
    pub max_payload_indexes: usize,
    /// Edge: writes are refused while the data folder's disk has less free
    /// space than this, in MiB (0: never).
    pub min_free_disk_mb: u64,
    /// Where `dimension` was set when not by the defaults (a file, the
    /// environment, a flag): a remote embedder's dimension must then agree.
    #[serde(skip)]
    pub dimension_given: Option<String>,
}

impl StoreSettings {
    /// Which filter keys get a payload index.
    pub fn index_policy(&self) -> crate::store::payload::IndexPolicy {
        crate::store::payload::IndexPolicy::new(&self.indexed_keys, self.max_payload_indexes)
    }
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub enabled: bool,
    #[serde(with = "duration")]
    pub ack_wait: Duration,
    pub max_deliver: i64,
    #[serde(with = "durations")]
    pub backoff: Vec<Duration>,
    pub max_ack_pending: usize,
    pub pull_batch: usize,
    /// Bytes of ingest messages a worker asks the server for at once, over
    /// all the consumers it pulls (each pull asks for an equal share, and
    /// never less than the largest message the server takes); the order
    /// checks' stream reads in flight are bounded by as many bytes again.
    /// Twice it is kept under the server's `max_pending` (64 MiB by
    /// default), past which the server drops the worker's connection as a
    /// slow consumer.
    pub pull_max_bytes: usize,
    /// Most tries of a message that fails `internal` before it is
    /// dead-lettered (`unavailable` and `rate_limited` wait without limit).
    pub max_retries: u32,
    /// Most messages of one tenant a worker holds while that tenant's
    /// ingest is stalled (retrying, or waiting for an earlier message);
    /// past it they go back to the stream for later.
    pub stalled_tenant_messages: usize,
    #[serde(with = "duration")]
    pub deadletter_max_age: Duration,
    /// One worker at a time takes ingest messages (JetStream's pinned
    /// client), so a tenant's messages are applied in stream order even with
    /// several workers; the others stand by and take over when it stops
    /// pulling for `pin_timeout`.
    pub ordered: bool,
    #[serde(with = "duration")]
    pub pin_timeout: Duration,
}

impl IngestSettings {
    /// Whether the stream files messages by partition, a consumer each (the
    /// default, and always in a fleet); `ordered` keeps the single pinned
    /// consumer.
    pub fn partitioned(&self) -> bool {
        !self.ordered
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub threads: usize,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Partition tenants over every worker of the prefix (README, "Scaling
    /// out"); off: one worker serves the prefix alone.
    pub enabled: bool,
    /// Partitions of the prefix; fixed once the fleet first starts.
    pub partitions: u32,
    /// How long a partition's lease lasts without renewal: the longest a
    /// crashed worker's partitions stay without an owner.
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// This worker's name in the fleet (a subject token); empty: the host
    /// name, the process id and a random suffix, new at every start.
    pub member: String,
}

impl ClusterSettings {
    /// How often leases and membership are renewed and the assignment
    /// looked at again: a fifth of the lease, so that four renewals in a
    /// row may fail before the lease is at risk.
    pub fn tick(&self) -> Duration {
        self.lease_ttl / 5
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `address:port` of the Prometheus endpoint (`/metrics`); empty: none.
    pub listen: String,
}

impl MetricsSettings {
    /// The address to serve `/metrics` on, `None` when turned off.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            format!(
                "{listen:?} is not an address:port (e.g. \"127.0.0.1:9464\", \"[::1]:9464\"); \
                 empty turns the endpoint off"
            )
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
}

/// The name figment gives the compiled-in defaults among its sources.
fn defaults_name() -> std::borrow::Cow<'static, str> {
    use figment::Provider;
    Toml::string(DEFAULT_TOML).metadata().name
}

/// Overrides given on the command line, as `(setting, value)` pairs.
pub type Overrides = Vec<(&'static str, serde_json::Value)>;

impl Settings {
    /// Defaults, then `file`, then the environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::new().merge(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.is_file() {
                anyhow::bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let names: Vec<&str> = ENV_VARS.iter().map(|(name, _)| *name).collect();
        figment = figment.merge(Env::raw().only(&names).map(|name| {
            ENV_VARS
                .iter()
                .find(|(env, _)| name.as_str().eq_ignore_ascii_case(env))
                .map(|(_, key)| (*key).into())
                .unwrap_or_else(|| name.into())
        }));
        for (key, value) in overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| anyhow::anyhow!(describe_error(e)))?;
        settings.store.dimension_given = figment
            .find_metadata("store.dimension")
            .filter(|m| m.name != defaults_name())
            .map(|m| m.name.to_string());
        settings.validate().map_err(|invalid| {
            anyhow::anyhow!(
                "setting {} (from {}): {}",
                invalid.key,
                source_of(&figment, invalid.key),
                invalid.message
            )
        })?;
        Ok(settings)
    }

    /// The compiled-in defaults alone, for tests and embedding.
    pub fn defaults() -> Self {
        Figment::new()
            .merge(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml is valid (checked by a unit test)")
    }

    /// Every setting within its range, or the first one that is not, named.
    /// Bounds are generous; what they refuse would otherwise break something
    /// later (a zero that nothing can serve with, a size whose arithmetic
    /// overflows, a thread count the system cannot start).
    fn validate(&self) -> Result<(), Invalid> {
        let s = self;
        let range = |key: &'static str, value: usize, min: usize, max: usize| {
            check((min..=max).contains(&value), key, || {
                format!("is {value}, must be {min}..={max}")
            })
        };
        range("pool.size", s.pool.size, 1, 1_000_000)?;
        check(!s.pool.ttl.is_zero(), "pool.ttl", || {
            "must be positive".into()
        })?;
        // 65,536 is also the largest vector Qdrant accepts.
        range("store.dimension", s.store.dimension, 1, 65_536)?;
        range(
            "store.wal_capacity_kb",
            s.store.wal_capacity_kb,
            64,
            1 << 20,
        )?;
        check(
            s.store.min_free_disk_mb <= 1 << 40,
            "store.min_free_disk_mb",
            || format!("is {}, must be at most 2^40", s.store.min_free_disk_mb),
        )?;
        range(
            "store.max_payload_indexes",
            s.store.max_payload_indexes,
            0,
            10_000,
        )?;
        check(
            !s.store.qdrant_timeout.is_zero(),
            "store.qdrant_timeout",
            || "must be positive".into(),
        )?;
        check(
            !s.store.qdrant_connect_timeout.is_zero(),
            "store.qdrant_connect_timeout",
            || "must be positive".into(),
        )?;
        check(
            s.store.collection_prefix.len() <= 100
                && s.store
                    .collection_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "store.collection_prefix",
            || {
                format!(
                    "{:?} may hold at most 100 letters, digits, '_' and '-'",
                    s.store.collection_prefix
                )
            },
        )?;
        let max_key = crate::filter::MAX_KEY_LEN;
        for key in &s.store.indexed_keys {
            check(
                !key.is_empty()
                    && key.len() <= max_key
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "store.indexed_keys",
                || format!("{key:?} is not a metadata key (1 to {max_key} of [A-Za-z0-9_-])"),
            )?;
        }
        // Refused rather than silently leaving listed keys unindexed.
        check(
            s.store.indexed_keys.len() <= s.store.max_payload_indexes,
            "store.indexed_keys",
            || {
                format!(
                    "lists {} keys, more than store.max_payload_indexes ({}) allows",
                    s.store.indexed_keys.len(),
                    s.store.max_payload_indexes
                )
            },
        )?;
        let l = &s.limits;
        range("limits.max_documents", l.max_documents, 1, 100_000)?;
        range("limits.max_top_k", l.max_top_k, 1, 100_000)?;
        range("limits.max_doc_id_bytes", l.max_doc_id_bytes, 1, 65_536)?;
        range("limits.max_text_bytes", l.max_text_bytes, 1, 64 << 20)?;
        range("limits.max_ids", l.max_ids, 1, 1_000_000)?;
        range(
            "limits.max_metadata_bytes",
            l.max_metadata_bytes,
            2,
            64 << 20,
        )?;
        range("limits.max_metadata_depth", l.max_metadata_depth, 1, 128)?;
        // Far below the semaphore's own limit, and the drain counts permits
        // in a u32.
        range("limits.max_in_flight", l.max_in_flight, 1, 1_000_000)?;
        range("limits.tenant_queue", l.tenant_queue, 1, 1_000_000)?;
        range(
            "search.default_top_k",
            s.search.default_top_k,
            1,
            l.max_top_k,
        )?;
        let rps = s.tenants.max_rps;
        check(
            rps == 0.0 || (0.001..=1e9).contains(&rps),
            "tenants.max_rps",
            || format!("is {rps}, must be 0 (no limit) or 0.001..=1e9"),
        )?;
        let i = &s.ingest;
        range("ingest.max_ack_pending", i.max_ack_pending, 1, 100_000)?;
        range("ingest.pull_batch", i.pull_batch, 1, 100_000)?;
        range("ingest.pull_max_bytes", i.pull_max_bytes, 1, 1 << 30)?;
        range(
            "ingest.stalled_tenant_messages",
            i.stalled_tenant_messages,
            1,
            100_000,
        )?;
        check(i.max_retries >= 1, "ingest.max_retries", || {
            "must be at least 1".into()
        })?;
        check(
            i.ack_wait >= Duration::from_secs(1),
            "ingest.ack_wait",
            || {
                "must be at least 1s (messages held longer get progress acks at a quarter of it)"
                    .into()
            },
        )?;
        check(!i.backoff.is_empty(), "ingest.backoff", || {
            "needs at least one step".into()
        })?;
        check(
            i.max_deliver > i.backoff.len() as i64,
            "ingest.max_deliver",
            || "must be larger than the number of ingest.backoff steps".into(),
        )?;
        check(
            i.pin_timeout >= Duration::from_secs(3),
            "ingest.pin_timeout",
            || "must be at least 3s (pulls are renewed at a third of it)".into(),
        )?;
        range("worker.threads", s.worker.threads, 0, 1024)?;
        range("nats.replicas", s.nats.replicas, 1, 5)?;
        // Each partition is a connection of its own.
        range("nats.request_partitions", s.nats.request_partitions, 0, 64)?;
        let c = &s.cluster;
        range("cluster.partitions", c.partitions as usize, 1, 4096)?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&c.lease_ttl),
            "cluster.lease_ttl",
            || "must be 1s..=10m".into(),
        )?;
        check(
            c.member.len() <= 64
                && c.member
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "cluster.member",
            || {
                format!(
                    "{:?} may hold at most 64 letters, digits, '_' and '-' (empty: a name is made)",
                    c.member
                )
            },
        )?;
        check(!(c.enabled && i.ordered), "ingest.ordered", || {
            "cannot be on with cluster.enabled: each partition has its own consumer, \
             pulled only by the partition's owner, which keeps every tenant's order"
                .into()
        })?;
        check(
            !(c.enabled && s.nats.request_partitions > 0),
            "nats.request_partitions",
            || {
                "cannot be combined with cluster.enabled yet: requests forwarded between \
                 the fleet's workers do not go through request partitions"
                    .into()
            },
        )?;
        s.metrics
            .address()
            .map_err(|m| Invalid::new("metrics.listen", m))?;
        check(
            !s.worker.shutdown_timeout.is_zero(),
            "worker.shutdown_timeout",
            || "must be positive".into(),
        )?;
        check(
            !s.nats.request_timeout.is_zero(),
            "nats.request_timeout",
            || "must be positive".into(),
        )?;
        crate::protocol::check_prefix(&s.nats.prefix)
            .map_err(|m| Invalid::new("nats.prefix", m))?;
        crate::protocol::check_prefix(&s.nats.inbox_prefix)
            .map_err(|m| Invalid::new("nats.inbox_prefix", m))?;
        Ok(())
    }
}

/// A setting out of its range: which one, and why.
#[derive(Debug)]
struct Invalid {
    key: &'static str,
    message: String,
}

impl Invalid {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

fn check(ok: bool, key: &'static str, message: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(key, message()))
    }
}

/// The environment variable that sets `key`, if one does.
fn env_var_of(key: &str) -> Option<&'static str> {
    ENV_VARS.iter().find(|(_, k)| *k == key).map(|(v, _)| *v)
}

/// Where `key`'s value came from, in words: the file, the environment
/// variable, the command line or the defaults.
fn source_of(figment: &Figment, key: &str) -> String {
    describe_source(key, figment.find_metadata(key))
}

fn describe_source(key: &str, metadata: Option<&figment::Metadata>) -> String {
    let Some(m) = metadata else {
        return "the defaults".into();
    };
    if let Some(figment::Source::File(path)) = &m.source {
        return format!("file {}", path.display());
    }
    if m.name == defaults_name() || m.name.contains("TOML source string") {
        return "the defaults (config/default.toml)".into();
    }
    if m.name.contains("environment") {
        return match env_var_of(key) {
            Some(var) => format!("environment variable {var}"),
            None => "the environment".into(),
        };
    }
    "the command line".into()
}

/// One line for a value figment could not read: the setting, its source,
/// and what was wrong (figment may collect several; the first is enough to
/// fix, and the next start names the next).
fn describe_error(error: figment::Error) -> String {
    let Some(first) = error.into_iter().next() else {
        return "the settings could not be read".into();
    };
    let key = first.path.join(".");
    let source = describe_source(&key, first.metadata.as_ref());
    let what = first.kind.to_string();
    if key.is_empty() {
        format!("settings from {source}: {what}")
    } else {
        format!("setting {key} (from {source}): {what}")
    }
}

/// A secret setting (password, token, seed). Its `Debug` and `Serialize`
/// say only whether it is set, so it never reaches a log line, an error
/// message or a reply; [`Secret::expose`] is the one way to read it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "\"<redacted>\""
        } else {
            "\"\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_set() { "<redacted>" } else { "" })
    }
}

/// Durations as whole seconds (`3600`, the seed's `VECTOR_STORE_TTL_SECONDS`)
/// or humantime strings (`"1h 30m"`); written back as humantime.
///
/// humantime-serde alone reads only strings, and the seed's variables hold bare
/// numbers, so numbers are taken as seconds here and strings go to humantime.
pub mod duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Float(f64),
            Text(String),
        }
        let d = match Raw::deserialize(d)? {
            Raw::Secs(s) => Duration::from_secs(s),
            // try_: from_secs_f64 panics on what a Duration cannot hold (1e30).
            Raw::Float(f) => Duration::try_from_secs_f64(f)
                .map_err(|_| de::Error::custom(format!("{f} is not a duration in seconds")))?,
            Raw::Text(t) => match t.trim().parse::<u64>() {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| de::Error::custom(format!("{t:?} is not a duration: {e}")))?,
            },
        };
        check(d).map_err(de::Error::custom)
    }

    /// The longest duration any setting may have: ten years. Longer ones
    /// are surely mistakes, and they would overflow deadlines computed
    /// from them (`Instant + Duration` panics past the clock's range).
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    /// `d`, if it is at most [`MAX`].
    pub fn check(d: Duration) -> Result<Duration, String> {
        if d > MAX {
            return Err(format!(
                "{} is longer than ten years, the longest a duration setting may be",
                humantime::format_duration(d)
            ));
        }
        Ok(d)
    }
}

/// A list of keys: a list, or one string of comma-separated keys (how an
/// environment variable gives it). Keys that look like numbers are kept as
/// written.
pub mod keys {
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(keys: &[String], s: S) -> Result<S::Ok, S::Error> {
        keys.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let one = |v: Value| match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            v => Err(de::Error::custom(format!("{v} is not a key"))),
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()),
            Value::Array(items) => items.into_iter().map(one).collect(),
            v => one(v).map(|k| vec![k]),
        }
    }
}

/// A list of durations, each as [`duration`] reads it.
pub mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct One(#[serde(with = "super::duration")] Duration);

    pub fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        d.iter().map(|d| One(*d)).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<One>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by every test that sets environment variables or loads settings
    /// from them: tests run in parallel, and one test's variables (some
    /// invalid on purpose) must not reach another's load.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn defaults_parse_and_match_the_seed() {
        let s = Settings::defaults();
        s.validate().unwrap();
        assert_eq!(s.pool.size, 10);
        assert_eq!(s.pool.ttl, Duration::from_secs(3600));
        assert_eq!(s.store.folder, PathBuf::from("user_data"));
        assert_eq!(s.search.default_top_k, 5);
        assert_eq!(s.store.dimension, 384);
    }

    #[test]
    fn durations_take_seconds_or_humantime() {
        #[derive(Deserialize)]
        struct D {
            #[serde(with = "duration")]
            d: Duration,
        }
        let secs: D = serde_json::from_str(r#"{"d": 90}"#).unwrap();
        assert_eq!(secs.d, Duration::from_secs(90));
        let text: D = serde_json::from_str(r#"{"d": "1h 30m"}"#).unwrap();
        assert_eq!(text.d, Duration::from_secs(5400));
        let numeric_text: D = serde_json::from_str(r#"{"d": "42"}"#).unwrap();
        assert_eq!(numeric_text.d, Duration::from_secs(42));
        assert!(serde_json::from_str::<D>(r#"{"d": "soon"}"#).is_err());
    }

    #[test]
    fn secrets_never_show() {
        let mut s = Settings::defaults();
        s.nats.password = Secret::new("hunter2");
        s.nats.token = Secret::new("t0ken");
        let shown = format!("{s:?} {}", serde_json::to_string(&s).unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert_eq!(s.nats.password.expose(), "hunter2");
        s.nats.url = "nats://u:pw@host:4222, tls://other:4443".into();
        assert_eq!(
            s.nats.display_url(),
            "nats://<redacted>@host:4222,tls://other:4443"
        );
    }

    #[test]
    fn the_qdrant_backend_and_ordered_ingest_come_from_the_environment() {
        let _env = env_lock();
        std::env::set_var("TENANTVEC_BACKEND", "qdrant");
        std::env::set_var("QDRANT_API_KEY", "k3y-secret");
        std::env::set_var("QDRANT_TIMEOUT", "3s");
        std::env::set_var("QDRANT_COLLECTION_PREFIX", "app_");
        std::env::set_var("TENANTVEC_INGEST_ORDERED", "true");
        let s = Settings::load(None, vec![]).unwrap();
        assert_eq!(s.store.backend, Backend::Qdrant);
        assert_eq!(s.store.qdrant_api_key.expose(), "k3y-secret");
        assert_eq!(s.store.qdrant_timeout, Duration::from_secs(3));
        assert_eq!(s.store.collection_prefix, "app_");
        assert!(s.ingest.ordered);
        assert!(!format!("{s:?}").contains("k3y-secret"));
        std::env::set_var("QDRANT_COLLECTION_PREFIX", "no/slash");
        assert!(Settings::load(None, vec![]).is_err(), "prefix is validated");
        for v in [
            "TENANTVEC_BACKEND",
            "QDRANT_API_KEY",
            "QDRANT_TIMEOUT",
            "QDRANT_COLLECTION_PREFIX",
            "TENANTVEC_INGEST_ORDERED",
        ] {
            std::env::remove_var(v);
        }
    }

    #[test]
    fn index_settings_come_from_the_environment_and_are_checked() {
        let _env = env_lock();
        std::env::set_var("TENANTVEC_INDEXED_KEYS", "color, size,42");
        std::env::set_var("TENANTVEC_MAX_PAYLOAD_INDEXES", "4");
        let s = Settings::load(None, vec![]).unwrap();
        assert_eq!(s.store.indexed_keys, ["color", "size", "42"]);
        assert_eq!(s.store.max_payload_indexes, 4);
        std::env::set_var("TENANTVEC_MAX_PAYLOAD_INDEXES", "2");
        assert!(
            Settings::load(None, vec![]).is_err(),
            "more keys than the cap"
        );
        std::env::set_var("TENANTVEC_INDEXED_KEYS", "a.b");
        assert!(Settings::load(None, vec![]).is_err(), "not a metadata key");
        for v in ["TENANTVEC_INDEXED_KEYS", "TENANTVEC_MAX_PAYLOAD_INDEXES"] {
            std::env::remove_var(v);
        }
        let d = Settings::defaults();
        assert!(d.store.indexed_keys.is_empty());
        assert_eq!(d.store.max_payload_indexes, 16);
    }

    /// Values of every kind a person or a script might put in a variable.
    fn any_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (0u64..100).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            Just("1e30".to_owned()),
            Just("-1".to_owned()),
            Just("NaN".to_owned()),
            Just("inf".to_owned()),
            Just("".to_owned()),
            Just("true".to_owned()),
            Just("[1, 2]".to_owned()),
            Just("1h 30m".to_owned()),
            Just("99999999999y".to_owned()),
            Just("qdrant".to_owned()),
            Just("shared".to_owned()),
            "[ -~]{0,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random values in every variable: settings load or say which
        /// setting is wrong, where it came from, in one line; never a panic.
        #[test]
        fn random_environments_load_or_name_the_setting(
            values in proptest::collection::vec(
                proptest::option::weighted(0.3, any_value()), ENV_VARS.len()),
        ) {
            let _env = env_lock();
            let set: Vec<(&str, String)> = ENV_VARS
                .iter()
                .zip(&values)
                .filter_map(|((var, _), v)| v.clone().map(|v| (*var, v)))
                .collect();
            for (var, value) in &set {
                std::env::set_var(var, value);
            }
            let loaded = std::panic::catch_unwind(|| Settings::load(None, vec![]));
            for (var, _) in &set {
                std::env::remove_var(var);
            }
            match loaded {
                Err(_) => panic!("Settings::load panicked with {set:?}"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let line = format!("{e:#}");
                    assert!(!line.contains('\n'), "one line: {line}");
                    assert!(
                        set.iter().any(|(var, _)| line.contains(var))
                            || line.contains("the defaults"),
                        "names the variable it came from: {line} ({set:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn errors_name_the_setting_and_its_source() {
        let _env = env_lock();
        for (var, value, key) in [
            ("VECTOR_STORE_TTL_SECONDS", "1e30", "pool.ttl"),
            ("VECTOR_STORE_POOL_SIZE", "0", "pool.size"),
            ("TENANTVEC_MAX_IN_FLIGHT", "0", "limits.max_in_flight"),
            ("EMBEDDING_DIM", "0", "store.dimension"),
            ("EMBEDDING_DIM", "100000", "store.dimension"),
            ("VECTOR_STORE_POOL_SIZE", "ten", "pool.size"),
            ("TENANTVEC_PREFIX", "a b", "nats.prefix"),
            ("TENANTVEC_METRICS_LISTEN", "9464", "metrics.listen"),
            ("TENANTVEC_METRICS_LISTEN", "localhost:x", "metrics.listen"),
        ] {
            std::env::set_var(var, value);
            let e = Settings::load(None, vec![]).unwrap_err().to_string();
            std::env::remove_var(var);
            assert!(
                e.contains(key) && e.contains(&format!("environment variable {var}")),
                "{var}={value}: {e}"
            );
        }
        let e = Settings::load(None, vec![("pool.ttl", 1e30.into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.ttl") && e.contains("command line"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[limits]\ntenant_queue = 0\n").unwrap();
        let e = Settings::load(Some(&file), vec![]).unwrap_err().to_string();
        assert!(
            e.contains("limits.tenant_queue") && e.contains(&file.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn durations_beyond_ten_years_or_a_duration_are_refused() {
        #[derive(Debug, Deserialize)]
        struct D {
            #[serde(with = "duration")]
            #[allow(dead_code)]
            d: Duration,
        }
        for bad in [
            r#"1e30"#,
            r#"-1"#,
            r#""400y""#,
            r#"1e300"#,
            r#"18446744073709551615"#,
        ] {
            let parsed = serde_json::from_str::<D>(&format!(r#"{{"d": {bad}}}"#));
            assert!(parsed.is_err(), "{bad}: {parsed:?}");
        }
    }

    #[test]
    fn overrides_win() {
        let _env = env_lock();
        let s = Settings::load(
            None,
            vec![("pool.size", 3.into()), ("pool.ttl", "2s".into())],
        )
        .unwrap();
        assert_eq!(s.pool.size, 3);
        assert_eq!(s.pool.ttl, Duration::from_secs(2));
    }
}
