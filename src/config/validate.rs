//! The ranges of the settings: every value checked once, at load, and the
//! first one out of range named with its source.
//!
//! Owns the bounds. It must never let through a value that would break
//! something later (a zero nothing can serve with, a size whose arithmetic
//! overflows, a thread count the system cannot start).

use std::time::Duration;

use super::Settings;

impl Settings {
    /// Every setting within its range, or the first one that is not, named.
    /// Bounds are generous; what they refuse would otherwise break something
    /// later (a zero that nothing can serve with, a size whose arithmetic
    /// overflows, a thread count the system cannot start).
    pub(super) fn validate(&self) -> Result<(), Invalid> {
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
        if !s.worker.region.is_empty() {
            super::worker::check_region(&s.worker.region)
                .map_err(|m| Invalid::new("worker.region", m))?;
            check(s.tenants.registry, "worker.region", || {
                "needs tenants.registry = true: a tenant's home region is a field of its record"
                    .into()
            })?;
        }
        for r in &s.worker.regions {
            super::worker::check_region(r).map_err(|m| Invalid::new("worker.regions", m))?;
        }
        check(
            s.worker.regions.is_empty() || !s.worker.region.is_empty(),
            "worker.regions",
            || "lists regions, but worker.region (this worker's) is not set".into(),
        )?;
        check(
            !s.nats.request_timeout.is_zero(),
            "nats.request_timeout",
            || "must be positive".into(),
        )?;
        let e = &s.encryption;
        if e.enabled {
            check(
                !e.master_key_file.as_os_str().is_empty(),
                "encryption.master_key_file",
                || {
                    "must name the master key file when encryption.enabled is on \
                     (`tenantvec keys new --out FILE` makes one)"
                        .into()
                },
            )?;
            check(s.tenants.registry, "encryption.enabled", || {
                "needs tenants.registry: each tenant's wrapped key is kept in its record".into()
            })?;
            check(
                !e.require_full || s.encrypts_everything(),
                "encryption.require_full",
                || {
                    format!(
                        "with backend {:?} and layout {:?} the store holds every tenant's data \
                         together and must see vectors to search them (and the metadata keys \
                         of encryption.plaintext_metadata): only text and metadata are \
                         encrypted there. Everything is encrypted only in the edge store's \
                         per_tenant layout; or set encryption.require_full = false",
                        s.store.backend, s.store.layout
                    )
                },
            )?;
            for key in &e.plaintext_metadata {
                crate::filter::check_key(key)
                    .map_err(|err| Invalid::new("encryption.plaintext_metadata", err.message))?;
            }
        }
        crate::protocol::check_prefix(&s.nats.prefix)
            .map_err(|m| Invalid::new("nats.prefix", m))?;
        crate::protocol::check_prefix(&s.nats.inbox_prefix)
            .map_err(|m| Invalid::new("nats.inbox_prefix", m))?;
        Ok(())
    }
}

/// A setting out of its range: which one, and why.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) key: &'static str,
    pub(super) message: String,
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
