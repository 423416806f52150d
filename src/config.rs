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
    ("DEFAULT_TOP_K", "search.default_top_k"),
    ("TENANTVEC_MAX_IN_FLIGHT", "limits.max_in_flight"),
    ("TENANTVEC_MAX_DOCUMENTS", "tenants.max_documents"),
    ("TENANTVEC_MAX_RPS", "tenants.max_rps"),
    ("TENANTVEC_INGEST_ORDERED", "ingest.ordered"),
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
    pub model: String,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub threads: usize,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
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
        let settings: Settings = figment.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults alone, for tests and embedding.
    pub fn defaults() -> Self {
        Figment::new()
            .merge(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml is valid (checked by a unit test)")
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.pool.size >= 1, "pool.size must be at least 1");
        anyhow::ensure!(!self.pool.ttl.is_zero(), "pool.ttl must be positive");
        anyhow::ensure!(
            (1..=65536).contains(&self.store.dimension),
            "store.dimension must be 1..=65536"
        );
        anyhow::ensure!(
            self.search.default_top_k >= 1 && self.search.default_top_k <= self.limits.max_top_k,
            "search.default_top_k must be 1..=limits.max_top_k"
        );
        anyhow::ensure!(
            self.ingest.max_ack_pending >= 1 && self.ingest.pull_batch >= 1,
            "ingest.max_ack_pending and ingest.pull_batch must be at least 1"
        );
        anyhow::ensure!(
            self.ingest.stalled_tenant_messages >= 1 && self.ingest.max_retries >= 1,
            "ingest.stalled_tenant_messages and ingest.max_retries must be at least 1"
        );
        anyhow::ensure!(
            self.ingest.ack_wait >= Duration::from_secs(1),
            "ingest.ack_wait must be at least 1s (messages held longer get progress acks at a quarter of it)"
        );
        anyhow::ensure!(
            self.ingest.max_deliver > self.ingest.backoff.len() as i64,
            "ingest.max_deliver must be larger than the number of ingest.backoff steps"
        );
        anyhow::ensure!(
            self.ingest.pin_timeout >= Duration::from_secs(3),
            "ingest.pin_timeout must be at least 3s (pulls are renewed at a third of it)"
        );
        anyhow::ensure!(
            self.limits.max_in_flight >= 1,
            "limits.max_in_flight must be at least 1"
        );
        anyhow::ensure!(
            !self.nats.prefix.is_empty()
                && self
                    .nats
                    .prefix
                    .split('.')
                    .all(|t| !t.is_empty() && !t.contains(['*', '>', ' '])),
            "nats.prefix {:?} must be one or more dot-separated NATS tokens without wildcards",
            self.nats.prefix
        );
        anyhow::ensure!(
            self.store.collection_prefix.len() <= 100
                && self
                    .store
                    .collection_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "store.collection_prefix {:?} may hold at most 100 letters, digits, '_' and '-'",
            self.store.collection_prefix
        );
        anyhow::ensure!(
            !self.store.qdrant_timeout.is_zero() && !self.store.qdrant_connect_timeout.is_zero(),
            "store.qdrant_timeout and store.qdrant_connect_timeout must be positive"
        );
        let max_key = crate::filter::MAX_KEY_LEN;
        for key in &self.store.indexed_keys {
            anyhow::ensure!(
                !key.is_empty()
                    && key.len() <= max_key
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "store.indexed_keys: {key:?} is not a metadata key (1 to {max_key} of [A-Za-z0-9_-])"
            );
        }
        // Refused rather than silently leaving listed keys unindexed.
        anyhow::ensure!(
            self.store.indexed_keys.len() <= self.store.max_payload_indexes,
            "store.indexed_keys lists {} keys, more than store.max_payload_indexes ({}) allows",
            self.store.indexed_keys.len(),
            self.store.max_payload_indexes
        );
        Ok(())
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
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Float(f) if f >= 0.0 && f.is_finite() => Ok(Duration::from_secs_f64(f)),
            Raw::Float(f) => Err(de::Error::custom(format!("{f} is not a duration"))),
            Raw::Text(t) => match t.trim().parse::<u64>() {
                Ok(secs) => Ok(Duration::from_secs(secs)),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| de::Error::custom(format!("{t:?} is not a duration: {e}"))),
            },
        }
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
