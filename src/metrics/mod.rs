//! Metrics: the worker's figures for Prometheus, and the `/metrics` endpoint
//! that serves them (docs/operations.md, "Metrics").
//!
//! Owns every metric the worker exports (names, help, labels, buckets), the
//! hooks that record them (a request's verb, outcome and time; the pool's
//! moves; each store call; each embedder call), the figures read at scrape
//! time (ingest counters and the consumer's pending count, process memory),
//! and the HTTP server on `metrics.listen`. It is made once in
//! [`crate::worker::run`] and handed down; nothing else keeps a metric.
//!
//! It must never slow or change what it observes: recording is atomics only
//! (every label set is made at start, so a request allocates nothing and
//! takes no lock), no lock is held across an await, a slow or failing scrape
//! costs the request path nothing, and no label carries a tenant (the number
//! of series must not grow with the number of tenants).

mod histogram;
mod ingest;
mod labels;
mod process;
mod server;
mod tenants;
mod timed;

pub use histogram::Histogram;
pub use ingest::IngestCounters;
pub use server::MetricsServer;

use ingest::{IngestCollector, IngestConsumers, IngestSource, CONSUMER_INFO_TIMEOUT};
use labels::{code_index, verb_index, Labels1, Labels2, CODES, OPS, PURPOSES, VERBS};
use process::ProcessCollector;
use tenants::{CensusSource, TenantsCollector};
use timed::{TimedEmbedder, TimedFactory};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_nats::jetstream::consumer::PullConsumer;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::embed::Embedder;
use crate::protocol::{Addressed, ErrorCode};
use crate::store::StoreFactory;

/// Everything the worker records; one per worker, shared through an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// `[verb][code]`, made at start.
    requests: Vec<[Counter; CODES.len()]>,
    request_seconds: Vec<Histogram>,
    store_seconds: Vec<Histogram>,
    store_failures: Vec<Counter>,
    activation_seconds: Histogram,
    pool_active: Gauge,
    pool_closing: Gauge,
    pool_hits: Counter,
    pool_misses: Counter,
    pool_evictions: Counter,
    pool_expirations: Counter,
    embedder_calls: Vec<Counter>,
    embedder_failures: Vec<Counter>,
    embedder_seconds: Vec<Histogram>,
    embedder_texts: Vec<Counter>,
    /// Set once ingest starts: read at each scrape.
    ingest: Arc<OnceLock<IngestSource>>,
    /// Set when the worker keeps a registry: read at each scrape.
    census: Arc<OnceLock<CensusSource>>,
    /// Per region (`worker.regions`): requests and ingest messages sent
    /// there from this worker, and those that found it unreachable.
    regions: Vec<RegionCounters>,
}

/// One region's forwarding figures.
struct RegionCounters {
    region: String,
    /// `[requests, ingest]`.
    forwarded: [Counter; 2],
    unreachable: Counter,
}

impl Metrics {
    /// Every metric, registered; the request, store and embedder series
    /// exist from the start (at zero), so rates over them are defined.
    pub fn new(settings: &Settings) -> Self {
        let mut r = Registrar(Registry::default());

        let requests_family = r.add(
            "tenantvec_requests",
            "Requests answered, by verb and outcome code (ok or the error code)",
            Family::<Labels2, Counter>::default(),
        );
        let requests = VERBS
            .iter()
            .map(|verb| {
                std::array::from_fn(|c| {
                    requests_family
                        .get_or_create(&[("verb", verb), ("code", CODES[c])])
                        .clone()
                })
            })
            .collect();
        let request_seconds = r.per_label(
            "tenantvec_request_duration_seconds",
            "Time from a request's arrival to its reply being sent, by verb",
            Family::new_with_constructor(Histogram::requests as fn() -> Histogram),
            ("verb", &VERBS),
        );
        let store_seconds = r.per_label(
            "tenantvec_store_duration_seconds",
            "Time of one call into a tenant's store alone (the engine or the Qdrant server), by operation",
            Family::new_with_constructor(Histogram::requests as fn() -> Histogram),
            ("op", &OPS),
        );
        let store_failures = r.per_label(
            "tenantvec_store_failures",
            "Store calls that returned an error, by operation",
            Family::default(),
            ("op", &OPS),
        );

        let activation_seconds = r.add(
            "tenantvec_pool_activation_duration_seconds",
            "Cold activation: the first store call of a newly started tenant actor, which opens its store",
            Histogram::slow(),
        );
        let pool_active = r.add(
            "tenantvec_pool_active",
            "Tenant actors in the pool (serving)",
            Gauge::default(),
        );
        let pool_closing = r.add(
            "tenantvec_pool_closing",
            "Tenant actors told to stop that have not closed their store yet",
            Gauge::default(),
        );
        r.add(
            "tenantvec_pool_max",
            "Most tenant actors in the pool (pool.size)",
            Gauge::<i64, AtomicI64>::default(),
        )
        .set(i64::try_from(settings.pool.size).unwrap_or(i64::MAX));
        let pool_hits = r.add(
            "tenantvec_pool_hits",
            "Requests routed to a tenant actor that was already active",
            Counter::default(),
        );
        let pool_misses = r.add(
            "tenantvec_pool_misses",
            "Requests that started a tenant actor",
            Counter::default(),
        );
        let pool_evictions = r.add(
            "tenantvec_pool_evictions",
            "Tenant actors stopped as least recently used of a full pool",
            Counter::default(),
        );
        let pool_expirations = r.add(
            "tenantvec_pool_expirations",
            "Tenant actors stopped after being idle for pool.ttl",
            Counter::default(),
        );

        let embedder_calls = r.per_label(
            "tenantvec_embedder_calls",
            "Calls to the embedder (one per request's texts; a remote embedder batches and retries inside one), by purpose",
            Family::default(),
            ("purpose", &PURPOSES),
        );
        let embedder_failures = r.per_label(
            "tenantvec_embedder_failures",
            "Embedder calls that failed (after the remote embedder's retries), by purpose",
            Family::default(),
            ("purpose", &PURPOSES),
        );
        let embedder_texts = r.per_label(
            "tenantvec_embedder_texts",
            "Texts sent to the embedder, by purpose",
            Family::default(),
            ("purpose", &PURPOSES),
        );
        let embedder_seconds = r.per_label(
            "tenantvec_embedder_duration_seconds",
            "Time of one embedder call, by purpose",
            Family::new_with_constructor(Histogram::slow as fn() -> Histogram),
            ("purpose", &PURPOSES),
        );

        let forwarded = r.add(
            "tenantvec_region_forwards",
            "Requests (kind=request) and ingest messages (kind=ingest) this worker sent to a tenant's home region, by region (its own included for ingest)",
            Family::<Labels2, Counter>::default(),
        );
        let unreachable = r.add(
            "tenantvec_region_unreachable",
            "Requests and ingest messages answered unavailable because their tenant's home region was unreachable, by region",
            Family::<Labels1, Counter>::default(),
        );
        let regions = settings
            .worker
            .all_regions()
            .into_iter()
            .map(|region| {
                // Once per region at start: label values are 'static.
                let label: &'static str = Box::leak(region.clone().into_boxed_str());
                RegionCounters {
                    region,
                    forwarded: ["request", "ingest"].map(|kind| {
                        forwarded
                            .get_or_create(&[("region", label), ("kind", kind)])
                            .clone()
                    }),
                    unreachable: unreachable.get_or_create(&[("region", label)]).clone(),
                }
            })
            .collect();

        let ingest = Arc::new(OnceLock::new());
        let Registrar(mut registry) = r;
        registry.register_collector(Box::new(IngestCollector(ingest.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        let census = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(TenantsCollector {
            source: census.clone(),
            pool_active: pool_active.clone(),
        }));

        Self {
            registry,
            requests,
            request_seconds,
            store_seconds,
            store_failures,
            activation_seconds,
            pool_active,
            pool_closing,
            pool_hits,
            pool_misses,
            pool_evictions,
            pool_expirations,
            embedder_calls,
            embedder_failures,
            embedder_seconds,
            embedder_texts,
            ingest,
            census,
            regions,
        }
    }

    fn region(&self, region: &str) -> Option<&RegionCounters> {
        self.regions.iter().find(|r| r.region == region)
    }

    /// A request (or, `ingest`, an ingest message) sent to `region`.
    pub fn region_forwarded(&self, region: &str, ingest: bool) {
        if let Some(r) = self.region(region) {
            r.forwarded[usize::from(ingest)].inc();
        }
    }

    /// A request or ingest message whose home `region` was unreachable.
    pub fn region_unreachable(&self, region: &str) {
        if let Some(r) = self.region(region) {
            r.unreachable.inc();
        }
    }

    /// A request was taken; [`RequestMark::finish`] records it once its
    /// reply is out.
    pub fn start(self: &Arc<Self>, addressed: Addressed<'_>) -> RequestMark {
        RequestMark {
            metrics: self.clone(),
            verb: verb_index(addressed),
            start: Instant::now(),
        }
    }

    /// Requests answered with each error code since start, every verb
    /// together (for `admin.stats`); every code is listed, zero or not.
    pub fn error_counts(&self) -> BTreeMap<String, u64> {
        (1..CODES.len())
            .map(|c| {
                let n = self.requests.iter().map(|per_code| per_code[c].get()).sum();
                (CODES[c].to_owned(), n)
            })
            .collect()
    }

    /// The pool found the tenant's actor active.
    pub fn pool_hit(&self) {
        self.pool_hits.inc();
    }

    /// The pool started an actor for the tenant.
    pub fn pool_miss(&self) {
        self.pool_misses.inc();
    }

    /// An actor was stopped as the least recently used of a full pool.
    pub fn pool_evicted(&self) {
        self.pool_evictions.inc();
    }

    /// An actor was stopped after its idle time ran out.
    pub fn pool_expired(&self) {
        self.pool_expirations.inc();
    }

    /// The pool's sizes after a change: actors serving, actors closing.
    pub fn pool_sizes(&self, active: usize, closing: usize) {
        self.pool_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
        self.pool_closing
            .set(i64::try_from(closing).unwrap_or(i64::MAX));
    }

    /// The store factory whose stores time every call.
    pub fn timed_factory(self: &Arc<Self>, inner: Arc<dyn StoreFactory>) -> Arc<dyn StoreFactory> {
        Arc::new(TimedFactory {
            inner,
            metrics: self.clone(),
        })
    }

    /// The embedder whose calls are counted and timed.
    pub fn timed_embedder(self: &Arc<Self>, inner: Arc<dyn Embedder>) -> Arc<dyn Embedder> {
        Arc::new(TimedEmbedder {
            inner,
            metrics: self.clone(),
        })
    }

    /// Report the ingest figures from now on: the worker's counters, and the
    /// consumer's pending count (asked of JetStream at each scrape).
    pub fn watch_ingest(&self, counters: Arc<IngestCounters>, consumer: PullConsumer) {
        self.watch(counters, IngestConsumers::Single(Box::new(consumer)));
    }

    /// [`Metrics::watch_ingest`] with a consumer per partition: the pending
    /// counts are those of the consumers `partitions` gives at each scrape
    /// (the partitions this worker pulls then), added up.
    pub fn watch_partitions(
        &self,
        counters: Arc<IngestCounters>,
        partitions: impl Fn() -> Vec<PullConsumer> + Send + Sync + 'static,
    ) {
        self.watch(counters, IngestConsumers::Partitions(Box::new(partitions)));
    }

    /// Report the registry's census from now on: `census` gives it at
    /// each scrape (no tenant counted active: the pool's gauge says how
    /// many are).
    pub fn watch_registry(
        &self,
        census: impl Fn() -> crate::protocol::RegistryStats + Send + Sync + 'static,
    ) {
        let _ = self.census.set(Box::new(census));
    }

    fn watch(&self, counters: Arc<IngestCounters>, consumers: IngestConsumers) {
        let _ = self.ingest.set(IngestSource {
            counters,
            consumers,
            pending: AtomicU64::new(0),
            ack_pending: AtomicU64::new(0),
            known: AtomicBool::new(false),
        });
    }

    /// Every metric in the Prometheus text format (0.0.4), with the figures
    /// read at scrape time brought up to date first.
    pub async fn render(&self) -> String {
        if let Some(source) = self.ingest.get() {
            let infos = futures::future::join_all(source.consumers.now().into_iter().map(
                |consumer| async move {
                    tokio::time::timeout(CONSUMER_INFO_TIMEOUT, consumer.get_info()).await
                },
            ))
            .await;
            let (mut pending, mut ack_pending, mut complete) = (0, 0, true);
            for info in infos {
                match info {
                    Ok(Ok(info)) => {
                        pending += info.num_pending;
                        ack_pending += info.num_ack_pending as u64;
                    }
                    Ok(Err(e)) => {
                        complete = false;
                        tracing::debug!(error = %e, "metrics: ingest consumer info");
                    }
                    Err(_) => {
                        complete = false;
                        tracing::debug!("metrics: ingest consumer info timed out");
                    }
                }
            }
            // A partial sum would read as a drop: keep the last whole one.
            if complete {
                source.pending.store(pending, Ordering::Relaxed);
                source.ack_pending.store(ack_pending, Ordering::Relaxed);
                source.known.store(true, Ordering::Relaxed);
            }
        }
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        text
    }
}

/// A request on its way: its verb and when it arrived.
pub struct RequestMark {
    metrics: Arc<Metrics>,
    verb: usize,
    start: Instant,
}

impl RequestMark {
    /// The reply is out: count it under its code (`None`: ok) and time it.
    pub fn finish(self, code: Option<ErrorCode>) {
        self.metrics.requests[self.verb][code_index(code)].inc();
        self.metrics.request_seconds[self.verb].observe(self.start.elapsed());
    }
}

/// The one way a metric is registered: named, described, and handed back
/// to be recorded into.
struct Registrar(Registry);

impl Registrar {
    /// Register `metric` and return it (metrics are handles: the copy kept
    /// records into the registered one).
    fn add<M>(&mut self, name: &str, help: &str, metric: M) -> M
    where
        M: prometheus_client::registry::Metric + Clone,
    {
        self.0.register(name, help, metric.clone());
        metric
    }

    /// Register a family with one label and make its series for every value
    /// of the label now, in the order of `values` (so a series is found by
    /// index, and exists at zero from the start).
    fn per_label<M, C>(
        &mut self,
        name: &str,
        help: &str,
        family: Family<Labels1, M, C>,
        (label, values): (&'static str, &[&'static str]),
    ) -> Vec<M>
    where
        Family<Labels1, M, C>: prometheus_client::registry::Metric + Clone,
        M: Clone,
        C: prometheus_client::metrics::family::MetricConstructor<M>,
    {
        let family = self.add(name, help, family);
        values
            .iter()
            .map(|value| family.get_or_create(&[(label, value)]).clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AdminVerb, Verb};

    fn line_value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn requests_are_counted_by_verb_and_code_and_timed() {
        let metrics = Arc::new(Metrics::new(&Settings::defaults()));
        let search = Addressed::Tenant(Verb::Search, "alice");
        metrics.start(search).finish(None);
        metrics.start(search).finish(Some(ErrorCode::BadRequest));
        metrics
            .start(Addressed::Admin(AdminVerb::Stats))
            .finish(Some(ErrorCode::BadRequest));
        let text = metrics.render().await;
        assert_eq!(
            line_value(
                &text,
                r#"tenantvec_requests_total{verb="search",code="ok"}"#
            ),
            1.0
        );
        assert_eq!(
            line_value(
                &text,
                r#"tenantvec_requests_total{verb="search",code="bad_request"}"#
            ),
            1.0
        );
        assert_eq!(
            line_value(
                &text,
                r#"tenantvec_request_duration_seconds_count{verb="search"}"#
            ),
            2.0
        );
        assert_eq!(
            line_value(
                &text,
                r#"tenantvec_request_duration_seconds_bucket{verb="search",le="+Inf"}"#
            ),
            2.0
        );
        assert!(!text.contains("alice"), "a tenant never becomes a label");
        let errors = metrics.error_counts();
        assert_eq!(errors["bad_request"], 2);
        assert_eq!(errors["internal"], 0);
        assert!(!errors.contains_key("ok"));
        assert_eq!(line_value(&text, "tenantvec_pool_max "), 10.0);
        assert!(line_value(&text, "process_resident_memory_bytes ") > 0.0);
    }
}
