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

mod batch;
mod deadletter;
mod lane;
mod moved;
mod order;
mod partitions;
mod sealing;
mod setup;

use lane::lane_loop;

pub use partitions::PartitionIngest;
pub use setup::{apply_from_before, ensure_streams};

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{IngestSettings, Settings};
use crate::metrics::IngestCounters;
use crate::names::Names;
use crate::registry::keys::Keys;
use crate::router::Router;
use crate::tenant::TenantId;
use crate::transport::lanes::Outcome;

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
    /// Tenants' keys and home regions.
    tenancy: Tenancy,
    in_flight: Arc<Semaphore>,
    /// The permits `in_flight` started with.
    in_flight_limit: usize,
    /// What this consumer shares with the others the worker pulls.
    budget: PullBudget,
    /// The stream as tenants' applied marks name it, read on first use.
    stream_id: tokio::sync::OnceCell<Arc<str>>,
}

impl Shared {
    /// The ingest stream as an applied mark names it: its name and the
    /// moment it was made, so that a stream deleted and made again (its
    /// sequences starting over) never matches a mark of the old one.
    async fn stream_id(&self) -> Result<Arc<str>, String> {
        self.stream_id
            .get_or_try_init(|| async {
                let stream = self
                    .js
                    .get_stream(&self.names.ingest_stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let created = stream.cached_info().created.unix_timestamp_nanos();
                Ok::<_, String>(Arc::from(stream_id(&self.names.ingest_stream, created)))
            })
            .await
            .cloned()
    }
}

/// See [`Shared::stream_id`].
fn stream_id(name: &str, created_unix_nanos: i128) -> String {
    format!("{name}@{created_unix_nanos}")
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

/// What the ingest knows of tenants beyond their actors.
#[derive(Clone, Default)]
pub struct Tenancy {
    /// With `encryption.enabled`: what dead letters are sealed with.
    pub keys: Option<Keys>,
    /// With regions: where each tenant lives; a message of a tenant that
    /// has moved away is sent on to its new home's stream, never applied
    /// here.
    pub regions: Option<crate::region::Regions>,
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
    tenancy: Tenancy,
    shutdown: CancellationToken,
) -> Ingesting {
    let names = Names::new(&settings.storage_prefix());
    let in_flight = settings.ingest.max_ack_pending;
    let budget = PullBudget::new(&settings.ingest, 1, max_payload(&js));
    start_with(
        js, consumer, names, settings, in_flight, budget, router, counters, tenancy, shutdown,
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
    tenancy: Tenancy,
    shutdown: CancellationToken,
) -> Ingesting {
    let shared = Arc::new(Shared {
        budget,
        js,
        names,
        settings: settings.clone(),
        router,
        counters,
        tenancy,
        in_flight: Arc::new(Semaphore::new(in_flight)),
        in_flight_limit: in_flight,
        stream_id: tokio::sync::OnceCell::new(),
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
    fn a_partition_gets_its_share_of_the_slots() {
        assert_eq!(partition_share(64, 16), 8);
        assert_eq!(partition_share(64, 1), 64);
        assert_eq!(partition_share(1000, 16), 63);
        assert_eq!(partition_share(4, 16), MIN_PARTITION_IN_FLIGHT);
    }
}
