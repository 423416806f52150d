//! Settings: one [`Settings`] value, read from layered sources.
//!
//! Owns the order of the layers (the compiled-in `config/default.toml`, an
//! optional file, environment variables, command-line overrides: later wins),
//! the seed application's environment variable names, and the duration syntax
//! (seconds or humantime). It must never read settings anywhere else: every
//! other module gets what it needs from the `Settings` it is handed.

mod embedding;
mod encryption;
mod ingest;
mod nats;
mod pool;
mod requests;
mod secret;
mod store;
mod validate;
pub mod values;
mod worker;

pub use embedding::*;
pub use encryption::*;
pub use ingest::*;
pub use nats::*;
pub use pool::*;
pub use requests::*;
pub use secret::Secret;
pub use store::*;
pub use values::{duration, durations, keys};
pub use worker::*;

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The defaults, compiled in so the binary works from any directory; the file
/// in the repository is also the documentation of every setting.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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
    ("TENANTVEC_RETRY_DEADLINE", "nats.retry_deadline"),
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
    ("TENANTVEC_REGISTRY", "tenants.registry"),
    ("TENANTVEC_AUTO_CREATE", "tenants.auto_create"),
    ("TENANTVEC_INGEST_ORDERED", "ingest.ordered"),
    ("TENANTVEC_METRICS_LISTEN", "metrics.listen"),
    ("TENANTVEC_CLUSTER", "cluster.enabled"),
    ("TENANTVEC_PARTITIONS", "cluster.partitions"),
    ("TENANTVEC_LEASE_TTL", "cluster.lease_ttl"),
    ("TENANTVEC_MEMBER", "cluster.member"),
    ("TENANTVEC_REPLICAS", "nats.replicas"),
    ("TENANTVEC_REQUEST_PARTITIONS", "nats.request_partitions"),
    ("TENANTVEC_WORKER_THREADS", "worker.threads"),
    ("TENANTVEC_REGION", "worker.region"),
    ("TENANTVEC_REGIONS", "worker.regions"),
    ("TENANTVEC_ENCRYPTION", "encryption.enabled"),
    ("TENANTVEC_MASTER_KEY_FILE", "encryption.master_key_file"),
    (
        "TENANTVEC_ENCRYPTION_REQUIRE_FULL",
        "encryption.require_full",
    ),
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
    pub encryption: EncryptionSettings,
    pub log: LogSettings,
}

/// The name figment gives the compiled-in defaults among its sources.
fn defaults_name() -> std::borrow::Cow<'static, str> {
    use figment::Provider;
    Toml::string(DEFAULT_TOML).metadata().name
}

/// Overrides given on the command line, as `(setting, value)` pairs.
pub type Overrides = Vec<(&'static str, serde_json::Value)>;

impl Settings {
    /// With `encryption.enabled`: whether everything of a tenant's is
    /// encrypted (the kernel encrypts each tenant's folder: the edge store's
    /// per_tenant layout), rather than its documents' text and metadata
    /// only (a store that holds every tenant together).
    pub fn encrypts_everything(&self) -> bool {
        self.store.backend == Backend::Edge && self.store.layout == Layout::PerTenant
    }

    /// The prefix the worker's streams, buckets and stored subjects are
    /// named from: the subject prefix, and with regions `<prefix>.<region>`,
    /// so that no two regions' streams take the same subjects (a subject
    /// crosses between regions, and every stream that listens on it in any
    /// region would store it).
    pub fn storage_prefix(&self) -> String {
        crate::names::storage_prefix(&self.nats.prefix, self.worker.region())
    }

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

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
