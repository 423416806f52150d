//! Ingest's figures: the counters ingest keeps (read by `admin.stats` and
//! by each scrape), and the consumers' pending counts asked of JetStream at
//! scrape time.
//!
//! Owns the ingest series. It must never record a figure twice, nor make a
//! scrape wait on JetStream longer than [`CONSUMER_INFO_TIMEOUT`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::protocol::IngestStats;

/// How long a scrape waits for the ingest consumer's info before it reports
/// the last figure it had.
pub(super) const CONSUMER_INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// Ingest figures for `admin.stats`.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub acked: AtomicU64,
    pub documents: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub redelivered: AtomicU64,
    pub retried: AtomicU64,
    pub deferred: AtomicU64,
}

impl IngestCounters {
    pub fn snapshot(&self) -> IngestStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngestStats {
            acked: get(&self.acked),
            documents: get(&self.documents),
            dead_lettered: get(&self.dead_lettered),
            redelivered: get(&self.redelivered),
            retried: get(&self.retried),
            deferred: get(&self.deferred),
        }
    }
}

/// What the ingest figures are read from.
pub(super) struct IngestSource {
    pub(super) counters: Arc<IngestCounters>,
    pub(super) consumers: IngestConsumers,
    /// Last figures read from the consumer's info (JetStream).
    pub(super) pending: AtomicU64,
    pub(super) ack_pending: AtomicU64,
    /// Whether the consumer's info was ever read.
    pub(super) known: AtomicBool,
}

/// The consumers whose pending counts add up to the ingest figures.
pub(super) enum IngestConsumers {
    /// The single consumer (`ingest.ordered`).
    Single(Box<PullConsumer>),
    /// The partitions' consumers this worker pulls now.
    Partitions(Box<dyn Fn() -> Vec<PullConsumer> + Send + Sync>),
}

impl IngestConsumers {
    pub(super) fn now(&self) -> Vec<PullConsumer> {
        match self {
            Self::Single(c) => vec![(**c).clone()],
            Self::Partitions(now) => now(),
        }
    }
}

impl std::fmt::Debug for IngestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestSource").finish_non_exhaustive()
    }
}

/// The ingest figures, read at scrape time from the counters ingest keeps
/// for `admin.stats` (nothing is recorded twice).
#[derive(Debug)]
pub(super) struct IngestCollector(pub(super) Arc<OnceLock<IngestSource>>);

impl Collector for IngestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.0.get() else {
            return Ok(());
        };
        let s = source.counters.snapshot();
        for (name, help, value) in [
            (
                "tenantvec_ingest_acked",
                "Ingest messages acked after their documents were committed",
                s.acked,
            ),
            (
                "tenantvec_ingest_documents",
                "Documents in the acked ingest messages",
                s.documents,
            ),
            (
                "tenantvec_ingest_redelivered",
                "Ingest messages delivered more than once",
                s.redelivered,
            ),
            (
                "tenantvec_ingest_retried",
                "Ingest tries that failed for a reason that may pass, retried in order",
                s.retried,
            ),
            (
                "tenantvec_ingest_dead_lettered",
                "Ingest messages that can never succeed, recorded as dead letters",
                s.dead_lettered,
            ),
            (
                "tenantvec_ingest_deferred",
                "Ingest messages handed back to the stream because their tenant was stalled",
                s.deferred,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        if source.known.load(Ordering::Relaxed) {
            for (name, help, value) in [
                ("tenantvec_ingest_pending", "Ingest messages in the stream not yet delivered to a worker (the consumer's pending count)", source.pending.load(Ordering::Relaxed)),
                ("tenantvec_ingest_ack_pending", "Ingest messages delivered and not yet acked", source.ack_pending.load(Ordering::Relaxed)),
            ] {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}
