//! Metrics: the worker's figures for Prometheus, and the `/metrics` endpoint
//! that serves them (README, "Metrics").
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::embed::{Embedder, Purpose};
use crate::filter::Filter;
use crate::protocol::{Addressed, AdminVerb, Doc, ErrorCode, Hit, ServiceError, Verb};
use crate::store::{Page, Record, Replaced, SearchQuery, Selector, StoreFactory, TenantStore};
use crate::tenant::TenantId;
use crate::transport::ingest::{IngestCounters, PartitionIngest};

/// Request latency buckets, in seconds: from a cached count (well under a
/// millisecond) to a large upsert that waits for its flush.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Activation and embedder buckets: an open shard or a remote call.
const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// How long a scrape waits for the ingest consumer's info before it reports
/// the last figure it had.
const CONSUMER_INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one connection to the endpoint may last.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The `verb` label of a request: the tenant verbs, the admin verbs, and
/// whatever else arrived on the request subject.
const VERBS: [&str; 12] = [
    "upsert",
    "search",
    "get",
    "delete",
    "count",
    "drop",
    "export",
    "import",
    "admin_stats",
    "admin_cleanup",
    "admin_evict",
    "unknown",
];

fn verb_index(addressed: Addressed<'_>) -> usize {
    match addressed {
        Addressed::Tenant(verb, _) => match verb {
            Verb::Upsert => 0,
            Verb::Search => 1,
            Verb::Get => 2,
            Verb::Delete => 3,
            Verb::Count => 4,
            Verb::Drop => 5,
            Verb::Export => 6,
            Verb::Import => 7,
        },
        Addressed::Admin(verb) => match verb {
            AdminVerb::Stats => 8,
            AdminVerb::Cleanup => 9,
            AdminVerb::Evict => 10,
        },
        Addressed::Stream | Addressed::Unknown => 11,
    }
}

/// The `code` label of a request's outcome: `ok`, or its error code.
const CODES: [&str; 9] = [
    "ok",
    "invalid_tenant",
    "bad_request",
    "dimension_mismatch",
    "too_large",
    "quota_exceeded",
    "rate_limited",
    "unavailable",
    "internal",
];

fn code_index(code: Option<ErrorCode>) -> usize {
    match code {
        None => 0,
        Some(ErrorCode::InvalidTenant) => 1,
        Some(ErrorCode::BadRequest) => 2,
        Some(ErrorCode::DimensionMismatch) => 3,
        Some(ErrorCode::TooLarge) => 4,
        Some(ErrorCode::QuotaExceeded) => 5,
        Some(ErrorCode::RateLimited) => 6,
        Some(ErrorCode::Unavailable) => 7,
        Some(ErrorCode::Internal) => 8,
    }
}

/// The `op` label of a store call.
#[derive(Clone, Copy)]
enum Op {
    Dimension,
    Upsert,
    Search,
    Get,
    Delete,
    Count,
    Drop,
    Maintain,
    Close,
    Scroll,
    Replace,
}

const OPS: [&str; 11] = [
    "dimension",
    "upsert",
    "search",
    "get",
    "delete",
    "count",
    "drop",
    "maintain",
    "close",
    "scroll",
    "replace",
];

/// The `purpose` label of an embedder call.
const PURPOSES: [&str; 2] = ["query", "document"];

fn purpose_index(purpose: Purpose) -> usize {
    match purpose {
        Purpose::Query => 0,
        Purpose::Document => 1,
    }
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// A histogram of durations whose every bucket is an atomic counter, so an
/// observation takes no lock (prometheus-client's own histogram takes a
/// mutex). Encoded in the standard histogram shape; `_count` is the sum of
/// the buckets read, so it always agrees with the `+Inf` bucket.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One more than `bounds`: the last is the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    fn requests() -> Self {
        Self::new(REQUEST_BUCKETS)
    }

    fn slow() -> Self {
        Self::new(SLOW_BUCKETS)
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let i = self.0.bounds.partition_point(|b| *b < seconds);
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

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
}

/// What the ingest figures are read from.
struct IngestSource {
    counters: Arc<IngestCounters>,
    consumers: IngestConsumers,
    /// Last figures read from the consumer's info (JetStream).
    pending: AtomicU64,
    ack_pending: AtomicU64,
    /// Whether the consumer's info was ever read.
    known: AtomicBool,
}

/// The consumers whose pending counts add up to the ingest figures.
enum IngestConsumers {
    /// The single consumer (`ingest.ordered`).
    Single(Box<PullConsumer>),
    /// The partitions' consumers this worker pulls now.
    Partitions(Arc<PartitionIngest>),
}

impl IngestConsumers {
    fn now(&self) -> Vec<PullConsumer> {
        match self {
            Self::Single(c) => vec![(**c).clone()],
            Self::Partitions(p) => p.consumers(),
        }
    }
}

impl std::fmt::Debug for IngestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestSource").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every metric, registered; the request, store and embedder series
    /// exist from the start (at zero), so rates over them are defined.
    pub fn new(settings: &Settings) -> Self {
        let mut registry = Registry::default();

        let requests_family = Family::<Labels2, Counter>::default();
        registry.register(
            "tenantvec_requests",
            "Requests answered, by verb and outcome code (ok or the error code)",
            requests_family.clone(),
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
        let request_family = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            Histogram::requests,
        );
        registry.register(
            "tenantvec_request_duration_seconds",
            "Time from a request's arrival to its reply being sent, by verb",
            request_family.clone(),
        );
        let request_seconds = VERBS
            .iter()
            .map(|verb| request_family.get_or_create(&[("verb", verb)]).clone())
            .collect();

        let store_family = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            Histogram::requests,
        );
        registry.register(
            "tenantvec_store_duration_seconds",
            "Time of one call into a tenant's store alone (the engine or the Qdrant server), by operation",
            store_family.clone(),
        );
        let store_seconds = OPS
            .iter()
            .map(|op| store_family.get_or_create(&[("op", op)]).clone())
            .collect();
        let store_failures_family = Family::<Labels1, Counter>::default();
        registry.register(
            "tenantvec_store_failures",
            "Store calls that returned an error, by operation",
            store_failures_family.clone(),
        );
        let store_failures = OPS
            .iter()
            .map(|op| store_failures_family.get_or_create(&[("op", op)]).clone())
            .collect();

        let activation_seconds = Histogram::slow();
        registry.register(
            "tenantvec_pool_activation_duration_seconds",
            "Cold activation: the first store call of a newly started tenant actor, which opens its store",
            activation_seconds.clone(),
        );
        let pool_active = Gauge::default();
        registry.register(
            "tenantvec_pool_active",
            "Tenant actors in the pool (serving)",
            pool_active.clone(),
        );
        let pool_closing = Gauge::default();
        registry.register(
            "tenantvec_pool_closing",
            "Tenant actors told to stop that have not closed their store yet",
            pool_closing.clone(),
        );
        let pool_max = Gauge::<i64, AtomicI64>::default();
        pool_max.set(i64::try_from(settings.pool.size).unwrap_or(i64::MAX));
        registry.register(
            "tenantvec_pool_max",
            "Most tenant actors in the pool (pool.size)",
            pool_max,
        );
        let pool_hits = Counter::default();
        registry.register(
            "tenantvec_pool_hits",
            "Requests routed to a tenant actor that was already active",
            pool_hits.clone(),
        );
        let pool_misses = Counter::default();
        registry.register(
            "tenantvec_pool_misses",
            "Requests that started a tenant actor",
            pool_misses.clone(),
        );
        let pool_evictions = Counter::default();
        registry.register(
            "tenantvec_pool_evictions",
            "Tenant actors stopped as least recently used of a full pool",
            pool_evictions.clone(),
        );
        let pool_expirations = Counter::default();
        registry.register(
            "tenantvec_pool_expirations",
            "Tenant actors stopped after being idle for pool.ttl",
            pool_expirations.clone(),
        );

        let per_purpose = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Labels1, Counter>::default();
            registry.register(name, help, family.clone());
            PURPOSES
                .iter()
                .map(|p| family.get_or_create(&[("purpose", p)]).clone())
                .collect::<Vec<_>>()
        };
        let embedder_calls = per_purpose(
            &mut registry,
            "tenantvec_embedder_calls",
            "Calls to the embedder (one per request's texts; a remote embedder batches and retries inside one), by purpose",
        );
        let embedder_failures = per_purpose(
            &mut registry,
            "tenantvec_embedder_failures",
            "Embedder calls that failed (after the remote embedder's retries), by purpose",
        );
        let embedder_texts = per_purpose(
            &mut registry,
            "tenantvec_embedder_texts",
            "Texts sent to the embedder, by purpose",
        );
        let embedder_family =
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(Histogram::slow);
        registry.register(
            "tenantvec_embedder_duration_seconds",
            "Time of one embedder call, by purpose",
            embedder_family.clone(),
        );
        let embedder_seconds = PURPOSES
            .iter()
            .map(|p| embedder_family.get_or_create(&[("purpose", p)]).clone())
            .collect();

        let ingest = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(IngestCollector(ingest.clone())));
        registry.register_collector(Box::new(ProcessCollector));

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
    /// counts are those of the partitions this worker pulls, added up.
    pub fn watch_partitions(
        &self,
        counters: Arc<IngestCounters>,
        partitions: Arc<PartitionIngest>,
    ) {
        self.watch(counters, IngestConsumers::Partitions(partitions));
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

    /// Serve `/metrics` on `metrics.listen`, unless it is empty. The
    /// address is bound here, so a bad or taken one stops the start; the
    /// server runs until the returned handle is dropped.
    pub async fn serve(
        self: &Arc<Self>,
        settings: &Settings,
    ) -> anyhow::Result<Option<MetricsServer>> {
        let Some(address) = settings
            .metrics
            .address()
            .map_err(|e| anyhow::anyhow!("setting metrics.listen: {e}"))?
        else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
            anyhow::anyhow!(
                "setting metrics.listen: cannot serve the metrics endpoint on {address}: {e} \
                 (set another address:port, or an empty one to turn it off)"
            )
        })?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, self.clone(), stop.clone()));
        tracing::info!("metrics on http://{address}/metrics");
        Ok(Some(MetricsServer {
            address,
            _stop: stop.drop_guard(),
        }))
    }
}

/// The running `/metrics` server; stops when dropped.
pub struct MetricsServer {
    pub address: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn accept(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&metrics, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
            }
        });
    }
}

type Body = http_body_util::Full<Bytes>;

async fn respond(
    metrics: &Metrics,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let reply = |status: u16, content_type: &'static str, body: Bytes| {
        hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Body::new(body))
            .unwrap_or_default()
    };
    if request.uri().path() != "/metrics" {
        return reply(
            404,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: the metrics are at /metrics\n"),
        );
    }
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return reply(
            405,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed: GET /metrics\n"),
        );
    }
    reply(
        200,
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        Bytes::from(metrics.render().await),
    )
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

struct TimedFactory {
    inner: Arc<dyn StoreFactory>,
    metrics: Arc<Metrics>,
}

impl StoreFactory for TimedFactory {
    fn open(&self, tenant: &TenantId) -> Box<dyn TenantStore> {
        Box::new(TimedStore {
            inner: self.inner.open(tenant),
            metrics: self.metrics.clone(),
            fresh: true,
        })
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn release_partition(&self, partition: u32) {
        self.inner.release_partition(partition)
    }
}

/// A tenant's store with each call timed; the first call of a new store
/// (opening is lazy, so it opens the store) is also the activation time.
struct TimedStore {
    inner: Box<dyn TenantStore>,
    metrics: Arc<Metrics>,
    fresh: bool,
}

impl TimedStore {
    fn time<T>(
        &mut self,
        op: Op,
        call: impl FnOnce(&mut dyn TenantStore) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let start = Instant::now();
        let outcome = call(self.inner.as_mut());
        let elapsed = start.elapsed();
        let m = &self.metrics;
        m.store_seconds[op as usize].observe(elapsed);
        if outcome.is_err() {
            m.store_failures[op as usize].inc();
        }
        if std::mem::take(&mut self.fresh) && !matches!(op, Op::Close) {
            m.activation_seconds.observe(elapsed);
        }
        outcome
    }
}

impl TenantStore for TimedStore {
    fn dimension(&mut self) -> Result<usize, ServiceError> {
        self.time(Op::Dimension, |s| s.dimension())
    }

    fn upsert(&mut self, records: Vec<Record>) -> Result<(), ServiceError> {
        self.time(Op::Upsert, |s| s.upsert(records))
    }

    fn search(&mut self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        self.time(Op::Search, |s| s.search(query))
    }

    fn get(&mut self, doc_ids: &[String], with_vectors: bool) -> Result<Vec<Doc>, ServiceError> {
        self.time(Op::Get, |s| s.get(doc_ids, with_vectors))
    }

    fn delete(&mut self, selector: &Selector) -> Result<usize, ServiceError> {
        self.time(Op::Delete, |s| s.delete(selector))
    }

    fn count(&mut self, filter: Option<&Filter>) -> Result<usize, ServiceError> {
        self.time(Op::Count, |s| s.count(filter))
    }

    fn drop_tenant(&mut self) -> Result<(), ServiceError> {
        self.time(Op::Drop, |s| s.drop_tenant())
    }

    fn maintain(&mut self) -> Result<bool, ServiceError> {
        self.time(Op::Maintain, |s| s.maintain())
    }

    fn close(&mut self) -> Result<(), ServiceError> {
        self.time(Op::Close, |s| s.close())
    }

    fn answers_inline(&self) -> bool {
        self.inner.answers_inline()
    }

    fn scroll(&mut self, cursor: Option<&str>, limit: usize) -> Result<Page, ServiceError> {
        self.time(Op::Scroll, |s| s.scroll(cursor, limit))
    }

    fn replace(
        &mut self,
        dimension: usize,
        next: &mut dyn FnMut() -> Result<Option<Vec<Record>>, ServiceError>,
    ) -> Result<Replaced, ServiceError> {
        self.time(Op::Replace, |s| s.replace(dimension, next))
    }
}

struct TimedEmbedder {
    inner: Arc<dyn Embedder>,
    metrics: Arc<Metrics>,
}

impl Embedder for TimedEmbedder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
        let p = purpose_index(purpose);
        let start = Instant::now();
        let outcome = self.inner.embed(texts, purpose);
        let m = &self.metrics;
        m.embedder_seconds[p].observe(start.elapsed());
        m.embedder_calls[p].inc();
        m.embedder_texts[p].inc_by(texts.len() as u64);
        if outcome.is_err() {
            m.embedder_failures[p].inc();
        }
        outcome
    }
}

/// The ingest figures, read at scrape time from the counters ingest keeps
/// for `admin.stats` (nothing is recorded twice).
#[derive(Debug)]
struct IngestCollector(Arc<OnceLock<IngestSource>>);

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

/// The process's memory, read from `/proc/self/status` at scrape time
/// (Linux; elsewhere the metrics are left out).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return Ok(());
        };
        for (field, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            ),
            (
                "VmSize:",
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
            ),
        ] {
            if let Some(bytes) =
                crate::memory::status_kib(&status, field).map(|kib| kib.saturating_mul(1024))
            {
                let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_histogram_puts_each_duration_in_its_bucket() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let counts: Vec<u64> =
            h.0.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
        assert_eq!(counts, vec![2, 1, 1]);
        assert_eq!(h.0.sum_nanos.load(Ordering::Relaxed), 1_006_500_000);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\ttenantvec\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(crate::memory::status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(crate::memory::status_kib(status, "VmSize:"), Some(123456));
        assert_eq!(crate::memory::status_kib(status, "VmHWM:"), None);
    }
}
