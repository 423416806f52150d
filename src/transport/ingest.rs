//! Durable ingest: a JetStream work queue of upserts, acked only once durable.
//!
//! Owns the ingest stream and its consumer (created or updated at start;
//! replaced only when a setting cannot change in place), the pull loop, and
//! the fate of each message. Messages go to their tenant's lane
//! ([`crate::transport::lanes`]); a lane applies its oldest messages as one
//! batch, and only once no older message of the tenant is left in the stream
//! (held by another worker, or due for redelivery), so per tenant the stream
//! order is the order of application, on one worker or many. A message is
//! acked once written (the ack confirmed before the lane goes on); retried in
//! place, its tenant's later messages waiting behind it, when the failure may
//! pass; dead-lettered with its body when it never can, after
//! `ingest.max_retries` tries of `internal`, or at its last delivery. Held
//! messages get progress acks, so nothing is redelivered while it waits. It
//! must never ack a message before its documents are durable, never apply a
//! message after a later one of its tenant, and never term one without a
//! dead-letter record stored first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::future::join_all;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::command::{Command, Envelope, IngestPart, ReplyTo};
use crate::config::{IngestSettings, Settings};
use crate::directory::Router;
use crate::protocol::{
    decode, tenant_token, ErrorCode, IngestStats, ServiceError, UpsertRequest, DEFAULT_PREFIX,
};
use crate::tenant::TenantId;
use crate::transport::lanes::{self, Arrival, Lanes, Outcome, Retry};

/// Names of the streams and the consumer for one prefix: the defaults for the
/// default prefix, suffixed with the prefix otherwise so two deployments on
/// one NATS account do not share a queue.
#[derive(Debug, Clone)]
pub struct Names {
    pub ingest_stream: String,
    pub deadletter_stream: String,
    pub consumer: String,
    pub ingest_subjects: String,
    pub deadletter_subjects: String,
    prefix: String,
    /// With `cluster.enabled`: the stream files each message under its
    /// tenant's partition, `<p>.ingest.<partition>.<tenant>`.
    partitions: Option<u32>,
}

/// What the names of a prefix's streams, consumer and bucket end with:
/// nothing for the default prefix, else `_` and the prefix in capitals with
/// anything but letters and digits as `_`, so two deployments on one NATS
/// account never share one.
pub fn name_suffix(prefix: &str) -> String {
    if prefix == DEFAULT_PREFIX {
        return String::new();
    }
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("_{clean}")
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        let suffix = name_suffix(prefix);
        Self {
            ingest_stream: format!("TENANTVEC_INGEST{suffix}"),
            deadletter_stream: format!("TENANTVEC_DEADLETTER{suffix}"),
            consumer: format!("tenantvec-ingest{}", suffix.to_ascii_lowercase()),
            ingest_subjects: format!("{prefix}.ingest.*"),
            deadletter_subjects: format!("{prefix}.deadletter.>"),
            prefix: prefix.to_owned(),
            partitions: None,
        }
    }

    /// The names of a prefix whose tenants are partitioned over a fleet.
    pub fn partitioned(prefix: &str, partitions: u32) -> Self {
        Self {
            partitions: Some(partitions),
            ..Self::new(prefix)
        }
    }

    /// The subject the stream files a tenant's message under.
    pub fn stored_subject(&self, tenant: &str) -> String {
        match self.partitions {
            Some(p) => format!(
                "{}.ingest.{}.{tenant}",
                self.prefix,
                crate::cluster::partition_of(tenant, p)
            ),
            None => self.ingest_subject(tenant),
        }
    }

    /// Filters that together match every stored message of `tenant`,
    /// whether or not the stream partitions (a client does not know).
    pub fn stored_filters(&self, tenant: &str) -> [String; 2] {
        [
            self.ingest_subject(tenant),
            format!("{}.ingest.*.{tenant}", self.prefix),
        ]
    }

    /// A filter that matches every message filed by partition.
    pub fn all_partitioned(&self) -> String {
        format!("{}.ingest.*.*", self.prefix)
    }

    /// Whether `name` is one of the partitions' durable consumers.
    pub fn is_partition_consumer(&self, name: &str) -> bool {
        name.strip_prefix(&self.consumer)
            .and_then(|rest| rest.strip_prefix("-p"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// A filter that matches every stored ingest message.
    pub fn all_stored(&self) -> String {
        format!("{}.ingest.>", self.prefix)
    }

    /// The durable consumer of one partition, and its filter.
    pub fn partition_consumer(&self, partition: u32) -> (String, String) {
        (
            format!("{}-p{partition}", self.consumer),
            format!("{}.ingest.{partition}.*", self.prefix),
        )
    }

    /// The stream's subject transform: `partition(P, 1)` of the tenant
    /// token, the function `cluster::partition_of` computes.
    fn transform(&self) -> Option<stream::SubjectTransform> {
        self.partitions.map(|p| stream::SubjectTransform {
            source: self.ingest_subjects.clone(),
            destination: format!(
                "{}.ingest.{{{{partition({p},1)}}}}.{{{{wildcard(1)}}}}",
                self.prefix
            ),
        })
    }

    /// `<p>.ingest.<tenant>`
    pub fn ingest_subject(&self, tenant: &str) -> String {
        format!("{}.ingest.{tenant}", self.prefix)
    }

    /// `<p>.deadletter.<tenant>`, `_invalid` for a tenant token that is not one.
    pub fn deadletter_subject(&self, tenant: Option<&TenantId>) -> String {
        let token = tenant.map_or("_invalid", |t| t.as_str());
        format!("{}.deadletter.{token}", self.prefix)
    }
}

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

/// The dead-letter record of a message that can never succeed. The body is
/// kept whole (base64: it may not even be UTF-8) because terminating the
/// message removes it from the work-queue stream.
#[derive(Debug, Serialize)]
struct DeadLetter<'a> {
    subject: &'a str,
    stream_seq: u64,
    error: &'a ServiceError,
    /// When the worker gave up on it (RFC 3339, UTC).
    time: String,
    /// The message's headers, each with its values, when it had any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    headers: std::collections::BTreeMap<String, Vec<String>>,
    body_base64: String,
}

/// Create or update the streams and the durable consumer. Idempotent; an
/// existing stream keeps its messages.
///
/// With partitions (`cluster.enabled`) the stream files each message under
/// its tenant's partition and each partition's owner makes and pulls its own
/// consumer ([`PartitionIngest`]); what is returned then is the single
/// worker's consumer from before, while it still holds messages
/// ([`consumer_from_before`], [`apply_from_before`]).
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    settings: &IngestSettings,
    replicas: usize,
) -> anyhow::Result<Option<consumer::PullConsumer>> {
    if let Some(partitions) = names.partitions {
        refuse_other_partitions(js, names, partitions).await?;
    }
    let ingest = stream::Config {
        name: names.ingest_stream.clone(),
        subjects: vec![names.ingest_subjects.clone()],
        subject_transform: names.transform(),
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_or_update_stream(ingest)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names.ingest_stream))?;
    let deadletter = stream::Config {
        name: names.deadletter_stream.clone(),
        subjects: vec![names.deadletter_subjects.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.deadletter_max_age,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_or_update_stream(deadletter)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names.deadletter_stream))?;
    // No server-side backoff: with one, nats-server takes its first step
    // as the ack wait (1 s), and a message queued behind its tenant's burst
    // was delivered again while its first copy still waited. The worker
    // retries failures itself, in order (`ingest.backoff`).
    let mut config = consumer_config(settings, &names.consumer);
    if settings.ordered {
        config.priority_policy = consumer::PriorityPolicy::PinnedClient;
        config.priority_groups = vec![PIN_GROUP.into()];
        config.priority_timeout = settings.pin_timeout;
    }
    let stream = js
        .get_stream(&names.ingest_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.ingest_stream))?;
    if names.partitions.is_some() {
        return consumer_from_before(&stream, names, config).await;
    }
    // The other way round: the partitions' consumers of an earlier fleet
    // overlap the single consumer, which a work-queue stream refuses.
    if let Some(p) = first_message(&stream, &names.all_partitioned()).await? {
        anyhow::bail!(
            "the ingest stream {} still holds messages filed by partition, the first \
             at sequence {p}; start a worker with ingest.ordered = false to apply them, \
             then this one",
            names.ingest_stream
        );
    }
    let mut partition_consumers = stream.consumer_names();
    while let Some(name) = partition_consumers.next().await {
        let name = name.map_err(|e| anyhow::anyhow!("cannot list ingest consumers: {e}"))?;
        if names.is_partition_consumer(&name) {
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot delete consumer {name}: {e}"))?;
            tracing::info!(consumer = %name, "deleted a fleet partition's ingest consumer (nothing left in it)");
        }
    }
    create_or_replace(&stream, config).await.map(Some)
}

/// A stream that files messages by another number of partitions may change
/// only once it holds none of them: a tenant's partition would change, and
/// its waiting messages would sit under a partition no consumer takes (or
/// one whose order check does not see them).
async fn refuse_other_partitions(
    js: &jetstream::Context,
    names: &Names,
    partitions: u32,
) -> anyhow::Result<()> {
    let Ok(stream) = js.get_stream(&names.ingest_stream).await else {
        return Ok(()); // Not made yet.
    };
    let before = stream
        .cached_info()
        .config
        .subject_transform
        .as_ref()
        .and_then(|t| partitions_in(&t.destination));
    match before {
        Some(before) if before != partitions => {
            match first_message(&stream, &names.all_partitioned()).await? {
                Some(first) => anyhow::bail!(
                    "the ingest stream {} files messages by {before} partitions and still holds \
                     some (the first at sequence {first}); cluster.partitions is {partitions}: \
                     keep it at {before} until they are applied",
                    names.ingest_stream
                ),
                None => {
                    tracing::info!(
                        before,
                        now = partitions,
                        "the ingest stream is empty: partitions changed"
                    );
                    Ok(())
                }
            }
        }
        _ => Ok(()),
    }
}

/// The partition count in a stream's subject transform destination
/// (`…{{partition(16,1)}}…`).
fn partitions_in(destination: &str) -> Option<u32> {
    let rest = &destination[destination.find("partition(")? + "partition(".len()..];
    rest[..rest.find(',')?].trim().parse().ok()
}

/// With partitions: the single consumer of before (an earlier version, or
/// `ingest.ordered`), if its messages are not all applied yet
/// ([`apply_from_before`] applies them before the partitions are pulled);
/// with none left it is deleted. It is
/// narrowed to the subjects of before (`<p>.ingest.<tenant>`; the
/// partitions' are one token longer) and never pinned, whatever it was.
async fn consumer_from_before(
    stream: &stream::Stream,
    names: &Names,
    mut config: consumer::pull::Config,
) -> anyhow::Result<Option<consumer::PullConsumer>> {
    let exists = match stream.consumer_info(&names.consumer).await {
        Ok(_) => true,
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => false,
        Err(e) => anyhow::bail!("cannot read consumer {}: {e}", names.consumer),
    };
    let left = first_message(stream, &names.ingest_subjects).await?;
    match left {
        None if exists => {
            stream
                .delete_consumer(&names.consumer)
                .await
                .map_err(|e| anyhow::anyhow!("cannot delete consumer {}: {e}", names.consumer))?;
            tracing::info!(consumer = %names.consumer, "deleted the single worker's ingest consumer (nothing left in it)");
            Ok(None)
        }
        None => Ok(None),
        Some(first) => {
            tracing::warn!(
                consumer = %names.consumer,
                first_seq = first,
                "ingest messages filed before the stream partitioned wait in it; \
                 applying them before pulling the partitions"
            );
            config.filter_subject = names.ingest_subjects.clone();
            // Not pinned, whatever it was: every member pulls it.
            config.priority_policy = consumer::PriorityPolicy::None;
            config.priority_groups = Vec::new();
            config.priority_timeout = Duration::ZERO;
            create_or_replace(stream, config).await.map(Some)
        }
    }
}

/// Before a worker pulls partitions (or a fleet member joins): apply the
/// messages that the single consumer still holds (filed before the stream partitioned), in
/// lanes as always, wait until none is left in the stream (members starting
/// together pull it side by side, and each waits for the others' too), then
/// delete that consumer. The partitions' consumers are made only after it
/// is gone: a work-queue stream refuses consumers that overlap, and with the
/// narrowed consumer beside them nats-server 2.15 kept the messages the
/// partitions' consumers acked (found by the test), so the two never live
/// side by side. The member serves nothing meanwhile; this happens once, on
/// the first start of a fleet on a prefix one worker served.
pub async fn apply_from_before(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    settings: &Settings,
    router: Router,
    counters: Arc<IngestCounters>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let names = Names::new(&settings.nats.prefix);
    let stream = js
        .get_stream(&names.ingest_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.ingest_stream))?;
    let began = Instant::now();
    let stop = shutdown.child_token();
    let ingesting = start(
        js.clone(),
        consumer,
        settings,
        router,
        counters,
        stop.clone(),
    );
    while first_message(&stream, &names.ingest_subjects)
        .await?
        .is_some()
    {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(ORDER_RECHECK) => {}
        }
    }
    stop.cancel();
    ingesting.drain(settings.worker.shutdown_timeout).await;
    if shutdown.is_cancelled() {
        anyhow::bail!(
            "stopped while applying the ingest messages filed before the stream partitioned"
        );
    }
    // Another member may have deleted it first.
    if let Err(e) = stream.delete_consumer(&names.consumer).await {
        tracing::debug!(error = %e, consumer = %names.consumer, "consumer of before not deleted");
    }
    tracing::info!(
        consumer = %names.consumer,
        took = ?began.elapsed(),
        "applied every ingest message filed before the stream partitioned; pulling the partitions"
    );
    Ok(())
}

/// The sequence of the stream's first message on `subject` (wildcards
/// allowed), if it has one.
async fn first_message(stream: &stream::Stream, subject: &str) -> anyhow::Result<Option<u64>> {
    next_message(stream, subject, 0)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the ingest stream: {e}"))
}

/// The sequence of the stream's next message on `subject` at or after
/// `from`, if there is one.
async fn next_message<I>(
    stream: &stream::Stream<I>,
    subject: &str,
    from: u64,
) -> Result<Option<u64>, jetstream::stream::RawMessageError> {
    match stream.get_first_raw_message_by_subject(subject, from).await {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create the durable consumer, or replace it when its settings cannot
/// change in place.
async fn create_or_replace(
    stream: &stream::Stream,
    config: consumer::pull::Config,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = config.durable_name.clone().unwrap_or_default();
    // create_consumer updates a durable consumer whose config changed.
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        Err(first) => {
            // The server does not change a consumer's priority policy or its
            // filter in place. Deleting it loses nothing: the messages stay
            // in the stream and those delivered but unacked go to the new
            // consumer. The same goes for a consumer made by an earlier
            // version with a server-side backoff.
            let replace = match stream.consumer_info(&name).await {
                Ok(info) => {
                    info.config.priority_policy != config.priority_policy
                        || info.config.filter_subject != config.filter_subject
                        || !info.config.backoff.is_empty()
                }
                Err(_) => false,
            };
            if !replace {
                anyhow::bail!("cannot create consumer {name}: {first}");
            }
            tracing::warn!(
                consumer = %name,
                "the ingest consumer's settings cannot change in place: recreating it"
            );
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot recreate consumer {name}: {e}"))?;
            stream
                .create_consumer(config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create consumer {name}: {e}"))
        }
    }
}

/// The consumer config shared by the single consumer and the partitions'.
fn consumer_config(settings: &IngestSettings, durable: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        description: Some("tenantvec workers: durable ingest".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        // See ensure_streams: the worker retries failures itself.
        backoff: Vec::new(),
        max_ack_pending: settings.max_ack_pending as i64,
        ..Default::default()
    }
}

/// Each held partition's ingest: a durable consumer per partition
/// (`<consumer>-p<n>`, filtered to `<p>.ingest.<n>.*`), pulled only by the
/// partition's owner, each with lanes of its own. Per-tenant order holds
/// because one worker applies a partition at a time, and a backlog in one
/// partition does not hold up the others.
pub struct PartitionIngest {
    js: jetstream::Context,
    names: Names,
    settings: Settings,
    router: Router,
    counters: Arc<IngestCounters>,
    /// One for all the partitions this worker holds: it may hold them all.
    budget: PullBudget,
    running: std::sync::Mutex<
        std::collections::HashMap<u32, (CancellationToken, Ingesting, consumer::PullConsumer)>,
    >,
}

impl PartitionIngest {
    pub fn new(
        js: jetstream::Context,
        settings: &Settings,
        router: Router,
        counters: Arc<IngestCounters>,
    ) -> Self {
        let budget = PullBudget::new(
            &settings.ingest,
            settings.cluster.partitions as usize,
            max_payload(&js),
        );
        Self {
            budget,
            js,
            names: Names::partitioned(&settings.nats.prefix, settings.cluster.partitions),
            settings: settings.clone(),
            router,
            counters,
            running: Default::default(),
        }
    }

    /// Create (or update) the partition's consumer and pull it.
    pub async fn start(&self, partition: u32) -> anyhow::Result<()> {
        // A pull left from an earlier hold of the partition goes first.
        self.stop(partition).await;
        let (durable, filter) = self.names.partition_consumer(partition);
        let mut config = consumer_config(&self.settings.ingest, &durable);
        config.filter_subject = filter;
        let share = partition_share(
            self.settings.ingest.max_ack_pending,
            self.names.partitions.unwrap_or(1),
        );
        config.max_ack_pending = share as i64;
        let stream = self
            .js
            .get_stream_no_info(&self.names.ingest_stream)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", self.names.ingest_stream))?;
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create consumer {durable}: {e}"))?;
        let stop = CancellationToken::new();
        let ingesting = start_with(
            self.js.clone(),
            consumer.clone(),
            self.names.clone(),
            &self.settings,
            share,
            self.budget.clone(),
            self.router.clone(),
            self.counters.clone(),
            stop.clone(),
        );
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, (stop, ingesting, consumer));
        Ok(())
    }

    /// Pull every partition (a worker alone on its prefix).
    pub async fn start_all(&self) -> anyhow::Result<()> {
        for partition in 0..self.names.partitions.unwrap_or(1) {
            self.start(partition).await?;
        }
        Ok(())
    }

    /// The consumers pulled now (for the pending figures).
    pub fn consumers(&self) -> Vec<consumer::PullConsumer> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(_, _, c)| c.clone())
            .collect()
    }

    /// Stop pulling the partition: running batches finish, held messages go
    /// back to the stream for the next owner.
    pub async fn stop(&self, partition: u32) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        if let Some((stop, ingesting, _)) = running {
            stop.cancel();
            ingesting.drain(self.settings.worker.shutdown_timeout).await;
        }
    }

    /// Stop every partition still pulled.
    pub async fn stop_all(&self) {
        let all: Vec<u32> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        join_all(all.into_iter().map(|p| self.stop(p))).await;
    }
}

/// The priority group every worker pulls in when `ingest.ordered` is on.
const PIN_GROUP: &str = "workers";

/// Most messages of one tenant applied in one batch (one group commit).
const MAX_BATCH_MESSAGES: usize = 64;
/// How soon a lane looks again for an earlier message of its tenant that is
/// still in the stream (held by another worker, or due for redelivery).
const ORDER_RECHECK: Duration = Duration::from_millis(200);
/// How soon a rate-limited lane tries again: the bucket refills continuously.
const RATE_LIMIT_RETRY: Duration = Duration::from_millis(100);
/// How long a message handed back by a stalled tenant stays away.
const DEFER_DELAY: Duration = Duration::from_secs(2);
/// Tries of an ack or a term before the lane gives up on it for now.
const ACK_TRIES: u32 = 3;

struct Shared {
    js: jetstream::Context,
    names: Names,
    settings: Settings,
    router: Router,
    counters: Arc<IngestCounters>,
    in_flight: Arc<Semaphore>,
    /// The permits `in_flight` started with.
    in_flight_limit: usize,
    /// What this consumer shares with the others the worker pulls.
    budget: PullBudget,
}

/// The bytes the server may have on their way to a worker at once, shared
/// by every consumer it pulls: each pull request asks for a share of
/// `ingest.pull_max_bytes`, and the order checks' stream reads (each answer
/// a whole message) in flight are bounded by as many bytes again.
///
/// Why a budget at all: the server writes what was asked for to the
/// worker's one connection, and drops the connection as a slow consumer
/// once more than its `max_pending` (64 MiB by default) waits there; every
/// ack and stream read in flight then times out, and the worker makes
/// little progress for tens of seconds. Counted in messages alone, 64
/// messages of ~1 MB per consumer got there, and so did the first order
/// checks of a hundred tenants asked together.
#[derive(Clone)]
struct PullBudget {
    /// The bytes one pull request asks for (see [`pull_share`]).
    pull_max_bytes: usize,
    stream_reads: Arc<Semaphore>,
}

impl PullBudget {
    /// For a worker that may pull `consumers` consumers at once, on a
    /// server whose largest message is `max_payload`.
    fn new(settings: &IngestSettings, consumers: usize, max_payload: usize) -> Self {
        Self {
            pull_max_bytes: pull_share(settings.pull_max_bytes, consumers, max_payload),
            stream_reads: Arc::new(Semaphore::new(stream_reads(
                settings.pull_max_bytes,
                max_payload,
            ))),
        }
    }
}

/// The running pull and lane tasks; [`Ingesting::drain`] waits for them
/// after shutdown.
pub struct Ingesting {
    pull: JoinHandle<()>,
    lanes: JoinHandle<()>,
}

/// A message a lane holds, with its share of `max_ack_pending`.
struct Pending {
    message: Arc<jetstream::Message>,
    seq: u64,
    delivered: i64,
    _permit: OwnedSemaphorePermit,
}

enum Event {
    /// Boxed: a message is large next to a finished batch's outcome.
    Arrived(Box<jetstream::Message>, OwnedSemaphorePermit),
    Finished(TenantId, Outcome),
}

/// Start pulling. Messages in flight are bounded by `ingest.max_ack_pending`.
pub fn start(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    settings: &Settings,
    router: Router,
    counters: Arc<IngestCounters>,
    shutdown: CancellationToken,
) -> Ingesting {
    let names = Names::new(&settings.nats.prefix);
    let in_flight = settings.ingest.max_ack_pending;
    let budget = PullBudget::new(&settings.ingest, 1, max_payload(&js));
    start_with(
        js, consumer, names, settings, in_flight, budget, router, counters, shutdown,
    )
}

/// Messages in flight for one partition's consumer: its share of
/// `ingest.max_ack_pending`, so that a worker pulling every partition holds
/// about as many messages (and as much memory) as one consumer did, but at
/// least [`MIN_PARTITION_IN_FLIGHT`], so that a busy tenant still writes
/// several messages per group commit.
fn partition_share(max_ack_pending: usize, partitions: u32) -> usize {
    max_ack_pending
        .div_ceil(partitions.max(1) as usize)
        .max(MIN_PARTITION_IN_FLIGHT)
}

/// See [`partition_share`].
const MIN_PARTITION_IN_FLIGHT: usize = 8;

/// The largest message the server takes, as it said when we connected.
fn max_payload(js: &jetstream::Context) -> usize {
    js.client().server_info().max_payload
}

/// Pull `consumer` with lanes of its own, at most `in_flight` messages held,
/// within the worker's `budget`.
#[allow(clippy::too_many_arguments)] // one call each from the two kinds of consumer
fn start_with(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    names: Names,
    settings: &Settings,
    in_flight: usize,
    budget: PullBudget,
    router: Router,
    counters: Arc<IngestCounters>,
    shutdown: CancellationToken,
) -> Ingesting {
    let shared = Arc::new(Shared {
        budget,
        js,
        names,
        settings: settings.clone(),
        router,
        counters,
        in_flight: Arc::new(Semaphore::new(in_flight)),
        in_flight_limit: in_flight,
    });
    let (events, inbox) = mpsc::channel(in_flight.max(16));
    let pull = tokio::spawn(pull_loop(
        consumer,
        shared.clone(),
        events.clone(),
        shutdown.clone(),
    ));
    let lanes = tokio::spawn(lane_loop(shared, inbox, events, shutdown));
    Ingesting { pull, lanes }
}

impl Ingesting {
    /// Wait for the loops to stop: running batches finish, the messages not
    /// started are handed back to the stream for another worker.
    pub async fn drain(self, timeout: Duration) {
        let _ = self.pull.await;
        if tokio::time::timeout(timeout, self.lanes).await.is_err() {
            tracing::warn!(
                "ingest messages still in flight at the shutdown timeout; they will be redelivered"
            );
        }
    }
}

/// Room for a message's subject and headers beyond its payload.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// The bytes each pull request asks for: an equal share of `budget` among
/// the `consumers` a worker may pull, but never less than the largest
/// message the server takes (`max_payload` and its subject and headers):
/// a message larger than a pull's `max_bytes` is never delivered by it.
fn pull_share(budget: usize, consumers: usize, max_payload: usize) -> usize {
    (budget / consumers.max(1)).max(max_payload.saturating_add(MESSAGE_OVERHEAD))
}

/// How many stream reads may be in flight within `budget` bytes: an answer
/// carries the whole message, base64-encoded in JSON (4/3 of its size).
fn stream_reads(budget: usize, max_payload: usize) -> usize {
    let answer = max_payload / 3 * 4 + MESSAGE_OVERHEAD;
    (budget / answer).max(1)
}

/// Open a pull stream. With `ordered`, in the pinned group, and renewed at a
/// third of the pin timeout so the pin is never lost between pulls.
async fn pull(
    consumer: &consumer::PullConsumer,
    settings: &IngestSettings,
    max_bytes: usize,
) -> Result<consumer::pull::Stream, consumer::StreamError> {
    let stream = consumer
        .stream()
        .max_messages_per_batch(settings.pull_batch)
        .max_bytes_per_batch(max_bytes);
    if settings.ordered {
        let expires = settings.pin_timeout / 3;
        stream
            .group(PIN_GROUP)
            .expires(expires)
            .heartbeat(expires / 4)
            .messages()
            .await
    } else {
        stream.heartbeat(Duration::from_secs(5)).messages().await
    }
}

/// Pull messages, each with a permit, and hand them to the lanes in the
/// order they were delivered.
async fn pull_loop(
    consumer: consumer::PullConsumer,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    'connect: loop {
        let messages = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = pull(&consumer, &shared.settings.ingest, shared.budget.pull_max_bytes) => m,
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull ingest messages; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'connect,
                }
            }
        };
        loop {
            // Take a permit first: at most max_ack_pending messages in flight.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = shared.in_flight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(message)) => {
                    if events
                        .send(Event::Arrived(Box::new(message), permit))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    // Missed heartbeats while NATS is away, and the like; the
                    // pull stream recovers by itself once it is back.
                    tracing::debug!(error = %e, "ingest pull stream");
                }
                None => {
                    tracing::warn!("ingest pull stream ended; reopening");
                    continue 'connect;
                }
            }
        }
    }
}

/// Own every tenant's lane: take arrivals, start batches, keep held
/// messages alive with progress acks, and at shutdown hand back what has not
/// started once the running batches have finished.
async fn lane_loop(
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<Event>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let ingest = &shared.settings.ingest;
    // A stalled tenant keeps at most half of this consumer's slots.
    let stalled_cap = ingest
        .stalled_tenant_messages
        .min(shared.in_flight_limit / 2)
        .max(1);
    let mut lanes: Lanes<Pending> = Lanes::new(stalled_cap, MAX_BATCH_MESSAGES);
    let mut progress = tokio::time::interval(ingest.ack_wait / 4);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    progress.tick().await;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if !stopping {
            for (tenant, seqs) in lanes.start(now) {
                spawn_batch(&shared, &lanes, tenant, &seqs, events.clone());
            }
        } else if !lanes.running() {
            break;
        }
        let wake = lanes.next_wake().unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                for (pending, applied) in lanes.take_idle() {
                    tokio::spawn(let_go(shared.clone(), pending, applied));
                }
            }
            Some(event) = inbox.recv() => match event {
                Event::Arrived(message, permit) => {
                    arrive(&shared, &mut lanes, *message, permit, stopping);
                }
                Event::Finished(tenant, outcome) => {
                    // Released messages drop here, and their permits with them.
                    lanes.finish(&tenant, outcome, Instant::now());
                }
            },
            _ = progress.tick() => {
                let held: Vec<_> = lanes.held().map(|p| p.message.clone()).collect();
                tokio::spawn(async move {
                    for message in held {
                        if let Err(e) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(error = %e, "progress ack failed");
                        }
                    }
                });
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    // What the last batches wrote and could not ack.
    for (pending, applied) in lanes.take_idle() {
        let_go(shared.clone(), pending, applied).await;
    }
    // Arrivals the pull loop handed over before it stopped.
    while let Ok(event) = inbox.try_recv() {
        if let Event::Arrived(message, permit) = event {
            if let Some(pending) = pending(&shared, *message, permit) {
                hand_back(shared.clone(), pending).await;
            }
        }
    }
}

/// Wrap an arriving message; `None` when it has no JetStream metadata (it
/// cannot be acked, so there is nothing to do with it).
fn pending(
    shared: &Shared,
    message: jetstream::Message,
    permit: OwnedSemaphorePermit,
) -> Option<Pending> {
    let (seq, delivered) = match message.info() {
        Ok(i) => (i.stream_sequence, i.delivered),
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "ingest message without JetStream metadata; ignored");
            return None;
        }
    };
    if delivered > 1 {
        shared.counters.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    Some(Pending {
        message: Arc::new(message),
        seq,
        delivered,
        _permit: permit,
    })
}

fn arrive(
    shared: &Arc<Shared>,
    lanes: &mut Lanes<Pending>,
    message: jetstream::Message,
    permit: OwnedSemaphorePermit,
    stopping: bool,
) {
    let Some(pending) = pending(shared, message, permit) else {
        return;
    };
    let tenant = match TenantId::parse(tenant_token(&pending.message.subject)) {
        Ok(t) => t,
        Err(error) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                dead_letter(&shared, &pending.message, None, pending.seq, &error).await;
            });
            return;
        }
    };
    if stopping {
        tokio::spawn(hand_back(shared.clone(), pending));
        return;
    }
    let last = pending.delivered >= shared.settings.ingest.max_deliver;
    let seq = pending.seq;
    match lanes.arrive(&tenant, seq, pending, last, Instant::now()) {
        (Arrival::Held, _) => {}
        (Arrival::Replaced, _) => {
            tracing::debug!(%tenant, seq, "redelivered while held; keeping the newest copy");
        }
        (Arrival::Deferred, Some(pending)) => {
            shared.counters.deferred.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(e) = pending
                    .message
                    .ack_with(AckKind::Nak(Some(DEFER_DELAY)))
                    .await
                {
                    tracing::debug!(error = %e, "nak failed; ack_wait will redeliver");
                }
            });
        }
        (Arrival::Deferred, None) => {}
        (Arrival::Stale, pending) => {
            tracing::warn!(
                %tenant,
                seq,
                "an ingest message settled already came again (its ack was lost); acked, not applied again"
            );
            if let Some(pending) = pending {
                tokio::spawn(async move {
                    if let Err(e) = pending.message.ack().await {
                        tracing::debug!(error = %e, "ack of a stale message failed; it comes again");
                    }
                });
            }
        }
    }
}

/// Let go of a held message at a stop: one already written (its ack did
/// not go through) is acked, never handed back, since whoever took it next
/// would write it again after the later messages this lane acked; the rest
/// goes back to the stream. An ack that fails leaves it to come again after
/// the ack wait (then written again, the one case left; README).
async fn let_go(shared: Arc<Shared>, pending: Pending, applied: bool) {
    if applied {
        if !confirm(&pending.message, AckKind::Ack).await {
            tracing::warn!(
                seq = pending.seq,
                "a written ingest message could not be acked at the stop"
            );
        }
    } else {
        hand_back(shared, pending).await;
    }
}

/// Give a message not yet applied back to the stream, for this worker or
/// another; at its last delivery it is dead-lettered instead (the server
/// would never deliver it again).
async fn hand_back(shared: Arc<Shared>, pending: Pending) {
    if pending.delivered >= shared.settings.ingest.max_deliver {
        let tenant = TenantId::parse(tenant_token(&pending.message.subject)).ok();
        let error = ServiceError::unavailable(format!(
            "the worker stopped before applying the message at its last delivery ({} of ingest.max_deliver)",
            pending.delivered
        ));
        dead_letter(
            &shared,
            &pending.message,
            tenant.as_ref(),
            pending.seq,
            &error,
        )
        .await;
    } else if let Err(e) = pending.message.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "nak failed; ack_wait will redeliver");
    }
}

/// A message of a running batch.
struct BatchItem {
    message: Arc<jetstream::Message>,
    seq: u64,
    delivered: i64,
    attempts: u32,
    applied: bool,
}

fn spawn_batch(
    shared: &Arc<Shared>,
    lanes: &Lanes<Pending>,
    tenant: TenantId,
    seqs: &[u64],
    events: mpsc::Sender<Event>,
) {
    let items: Vec<BatchItem> = seqs
        .iter()
        .filter_map(|seq| lanes.get(&tenant, *seq))
        .map(|held| BatchItem {
            message: held.message.message.clone(),
            seq: held.message.seq,
            delivered: held.message.delivered,
            attempts: held.attempts,
            applied: held.applied,
        })
        .collect();
    let shared = shared.clone();
    tokio::spawn(async move {
        let outcome = run_batch(&shared, &tenant, items).await;
        let _ = events.send(Event::Finished(tenant, outcome)).await;
    });
}

/// Ask the stream whether a batch may be applied in its order: nothing of
/// the tenant older than its first message, nothing between its messages
/// (see [`lanes::order_questions`]). In a work-queue stream a message stays
/// until it is acked or terminated, so this sees what other workers hold,
/// what waits for redelivery and what has not reached this lane yet. The
/// questions go out together: one round trip, and none at all between
/// adjacent sequences (a burst of one tenant).
async fn order_in_stream(
    shared: &Shared,
    tenant: &TenantId,
    batch: &[u64],
) -> Result<lanes::Order, String> {
    let stream = shared
        .js
        .get_stream_no_info(&shared.names.ingest_stream)
        .await
        .map_err(|e| e.to_string())?;
    let subject = shared.names.stored_subject(tenant.as_str());
    let answers = join_all(lanes::order_questions(batch).into_iter().map(|(i, from)| {
        let (stream, subject) = (&stream, &subject);
        async move {
            let _turn = shared
                .budget
                .stream_reads
                .acquire()
                .await
                .map_err(|e| e.to_string())?;
            next_message(stream, subject, from)
                .await
                .map(|found| (i, found))
                .map_err(|e| e.to_string())
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, String>>()?;
    Ok(lanes::judge_order(batch, &answers))
}

/// Apply one batch of a tenant's messages, in order, and settle them: acked
/// once written (the ack confirmed by the server, so the next batch sees
/// them gone), dead-lettered when they can never succeed, and from the first
/// failure that may pass on, left for the next try.
///
/// The stream is asked first whether the batch is the tenant's oldest
/// messages with none between them; only the part of it that is goes ahead
/// (see [`Lanes`] for why every batch asks).
async fn run_batch(shared: &Shared, tenant: &TenantId, mut items: Vec<BatchItem>) -> Outcome {
    let settings = &shared.settings.ingest;
    let first = items.first().map_or(0, |i| i.seq);
    let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
    // Whether the check passed the whole batch (what the lane handed back
    // before its first message is then gone).
    let checked = match order_in_stream(shared, tenant, &seqs).await {
        Ok(lanes::Order::Prefix(n)) => {
            items.truncate(n);
            n == seqs.len()
        }
        Ok(lanes::Order::Older(older)) => {
            tracing::debug!(%tenant, seq = first, older, "waiting for an older message of the tenant");
            return wait(ORDER_RECHECK);
        }
        Ok(lanes::Order::FirstGone) => {
            tracing::warn!(
                %tenant,
                seq = first,
                "an ingest message was settled elsewhere while this worker held it; dropped, not applied again"
            );
            return Outcome {
                settled: vec![first],
                ..Outcome::default()
            };
        }
        Err(e) => {
            tracing::warn!(%tenant, error = %e, "cannot read the ingest stream; waiting");
            return wait(Duration::from_secs(1));
        }
    };

    // Decode and route what has not been written yet, as one command.
    let span = tracing::info_span!("ingest", %tenant, first_seq = first);
    let mut parts = Vec::new();
    let mut awaited = Vec::with_capacity(items.len());
    for item in &items {
        if item.applied {
            awaited.push(Awaited::Written(0));
            continue;
        }
        let decoded = decode::<UpsertRequest>(&item.message.payload)
            .and_then(|req| crate::transport::decode::upsert(req, &shared.settings.limits));
        match decoded {
            Ok(Command::Upsert(docs)) => {
                let (reply, outcome) = ReplyTo::channel();
                awaited.push(Awaited::Routed(outcome, docs.len() as u64));
                parts.push(IngestPart { docs, reply });
            }
            Ok(_) => awaited.push(Awaited::Failed(ServiceError::internal(
                "an ingest message decoded to something other than an upsert",
            ))),
            Err(e) => awaited.push(Awaited::Failed(e)),
        }
    }
    if !parts.is_empty() {
        shared.router.route(Envelope {
            tenant: tenant.clone(),
            command: Command::Ingest(parts),
            reply: ReplyTo::ignored(),
            span,
        });
    }

    let mut to_ack = Vec::new();
    let mut to_dead = Vec::new();
    let mut retry = None;
    for (item, p) in items.iter().zip(awaited) {
        let result = match p {
            Awaited::Written(n) => Ok(n),
            Awaited::Failed(e) => Err(e),
            Awaited::Routed(outcome, n) => outcome
                .await
                .unwrap_or_else(|_| Err(ServiceError::internal("the tenant's job failed")))
                .map(|_| n),
        };
        if retry.is_some() {
            // Behind a failure that may pass: the actor wrote none of these.
            continue;
        }
        match result {
            Ok(n) => to_ack.push((item, n)),
            Err(error) if !error.code.is_transient() => to_dead.push((item, error)),
            Err(error) => {
                if item.delivered >= settings.max_deliver {
                    let error = ServiceError {
                        code: error.code,
                        message: format!("{} (at its last delivery)", error.message),
                    };
                    to_dead.push((item, error));
                } else if error.code == ErrorCode::Internal
                    && item.attempts + 1 >= settings.max_retries
                {
                    let error = ServiceError::internal(format!(
                        "{} (after {} tries)",
                        error.message,
                        item.attempts + 1
                    ));
                    to_dead.push((item, error));
                } else {
                    shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                    let (after, count) = match error.code {
                        ErrorCode::RateLimited => (RATE_LIMIT_RETRY, false),
                        ErrorCode::Unavailable => (retry_delay(settings, item.attempts), false),
                        _ => (retry_delay(settings, item.attempts), true),
                    };
                    tracing::warn!(%tenant, seq = item.seq, %error, ?after, "ingest failed; retrying in order");
                    retry = Some(Retry { after, count });
                }
            }
        }
    }

    let acks = join_all(
        to_ack
            .iter()
            .map(|(item, _)| confirm(&item.message, AckKind::Ack)),
    );
    let deads =
        join_all(to_dead.iter().map(|(item, error)| {
            dead_letter(shared, &item.message, Some(tenant), item.seq, error)
        }));
    let (acked, dead) = tokio::join!(acks, deads);
    let mut outcome = Outcome {
        retry,
        checked,
        ..Outcome::default()
    };
    for ((item, docs), ok) in to_ack.iter().zip(acked) {
        if ok {
            shared.counters.acked.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .documents
                .fetch_add(*docs, Ordering::Relaxed);
            outcome.settled.push(item.seq);
        } else {
            outcome.applied.push(item.seq);
        }
    }
    for ((item, _), ok) in to_dead.iter().zip(dead) {
        if ok {
            outcome.settled.push(item.seq);
        }
    }
    if outcome.retry.is_none() && outcome.settled.len() < items.len() {
        // An ack or a dead letter did not go through: try those again soon
        // (written messages are acked, not written again).
        outcome.retry = Some(Retry {
            after: Duration::from_secs(1),
            count: false,
        });
    }
    outcome
}

/// What became of one message of a batch while the tenant's actor works.
enum Awaited {
    Written(u64),
    Routed(
        oneshot::Receiver<Result<crate::protocol::Reply, ServiceError>>,
        u64,
    ),
    Failed(ServiceError),
}

fn wait(after: Duration) -> Outcome {
    Outcome {
        retry: Some(Retry {
            after,
            count: false,
        }),
        ..Outcome::default()
    }
}

/// Ack (or term) a message and wait for the server to confirm it, so the
/// tenant's next batch cannot find it still in the stream.
async fn confirm(message: &jetstream::Message, kind: AckKind) -> bool {
    for attempt in 1..=ACK_TRIES {
        match message.double_ack_with(kind).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(attempt, error = %e, ?kind, "ingest ack not confirmed");
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
        }
    }
    false
}

/// Delay before the worker tries a failed message again: the backoff
/// schedule by tries so far, its last step repeating.
fn retry_delay(settings: &IngestSettings, attempts: u32) -> Duration {
    settings
        .backoff
        .get(attempts as usize)
        .or(settings.backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

/// Store a dead-letter record (with the message's body, so it can be
/// replayed), then terminate the message. Returns whether both happened;
/// when the record cannot be stored the message stays, so it is never lost.
async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    tenant: Option<&TenantId>,
    stream_seq: u64,
    error: &ServiceError,
) -> bool {
    let subject = shared.names.deadletter_subject(tenant);
    let headers = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(name, values)| {
            let values = values.iter().map(|v| v.as_str().to_owned()).collect();
            (name.to_string(), values)
        })
        .collect();
    // The subject the producer published to, which a replay publishes to
    // again (the stream files it by partition, one token longer).
    let published = shared.names.ingest_subject(tenant_token(&message.subject));
    let record = DeadLetter {
        subject: &published,
        stream_seq,
        error,
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        headers,
        body_base64: BASE64.encode(&message.payload),
    };
    let body = match serde_json::to_vec(&record) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a dead-letter record");
            return false;
        }
    };
    let stored = match shared.js.publish(subject.clone(), body.into()).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => {
            shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %message.subject, stream_seq, %error, "ingest message dead-lettered");
            if !confirm(message, AckKind::Term).await {
                tracing::warn!("term not confirmed; the message will be dead-lettered again");
                return false;
            }
            true
        }
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot store a dead-letter record; retrying the message later");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_shares_the_budget_but_always_fits_the_largest_message() {
        let mib = 1 << 20;
        assert_eq!(pull_share(16 * mib, 1, mib), 16 * mib);
        assert_eq!(pull_share(16 * mib, 4, mib), 4 * mib);
        assert_eq!(pull_share(16 * mib, 16, mib), mib + MESSAGE_OVERHEAD);
        assert_eq!(pull_share(16 * mib, 0, mib), 16 * mib);
        assert_eq!(pull_share(1, 1, 8 * mib), 8 * mib + MESSAGE_OVERHEAD);
    }

    #[test]
    fn stream_reads_fit_the_budget_and_one_always_goes() {
        let mib = 1 << 20;
        // ~1.4 MiB per answer of a 1 MiB message: 11 in 16 MiB.
        assert_eq!(stream_reads(16 * mib, mib), 11);
        assert_eq!(stream_reads(mib, 8 * mib), 1);
        assert_eq!(stream_reads(64 * mib, 0), 1024);
    }

    #[test]
    fn the_partition_count_is_read_back_from_the_transform() {
        let names = Names::partitioned("tenantvec", 16);
        let destination = names.transform().unwrap().destination;
        assert_eq!(partitions_in(&destination), Some(16));
        assert_eq!(partitions_in("tenantvec.ingest.{{wildcard(1)}}"), None);
    }

    #[test]
    fn a_partition_gets_its_share_of_the_slots() {
        assert_eq!(partition_share(64, 16), 8);
        assert_eq!(partition_share(64, 1), 64);
        assert_eq!(partition_share(1000, 16), 63);
        assert_eq!(partition_share(4, 16), MIN_PARTITION_IN_FLIGHT);
    }

    #[test]
    fn partition_consumers_are_told_from_the_others() {
        let names = Names::new("tenantvec");
        assert!(names.is_partition_consumer("tenantvec-ingest-p0"));
        assert!(names.is_partition_consumer("tenantvec-ingest-p15"));
        assert!(!names.is_partition_consumer("tenantvec-ingest"));
        assert!(!names.is_partition_consumer("tenantvec-ingest-px"));
        assert!(!names.is_partition_consumer("tenantvec-ingest-p"));
    }
}
