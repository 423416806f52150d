//! Durable ingest: a JetStream work queue of upserts, acked only once durable.
//!
//! Owns the ingest stream and its consumer (created or updated at start,
//! never deleted), the pull loop, and the fate of each message: routed to its
//! tenant's actor and acked after the store has committed it; `nak`ed with a
//! delay when the failure may pass (the store is unavailable); `term`ed with a
//! dead-letter record when it never can succeed. It must never ack a message
//! before its documents are durable, and never term one without a dead-letter
//! record stored first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{IngestSettings, Settings};
use crate::protocol::{
    decode, tenant_token, IngestStats, ServiceError, UpsertRequest, DEFAULT_PREFIX,
};
use crate::supervisor::{Route, Supervisor};
use crate::tenant::TenantId;
use crate::tenant_actor::Envelope;

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
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        let suffix = if prefix == DEFAULT_PREFIX {
            String::new()
        } else {
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
        };
        Self {
            ingest_stream: format!("TENANTVEC_INGEST{suffix}"),
            deadletter_stream: format!("TENANTVEC_DEADLETTER{suffix}"),
            consumer: format!("tenantvec-ingest{}", suffix.to_ascii_lowercase()),
            ingest_subjects: format!("{prefix}.ingest.*"),
            deadletter_subjects: format!("{prefix}.deadletter.>"),
            prefix: prefix.to_owned(),
        }
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
        }
    }
}

/// The dead-letter record of a message that can never succeed.
#[derive(Debug, Serialize)]
struct DeadLetter<'a> {
    subject: &'a str,
    stream_seq: u64,
    error: &'a ServiceError,
}

/// Create or update the streams and the durable consumer. Idempotent; an
/// existing stream keeps its messages.
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    settings: &IngestSettings,
) -> anyhow::Result<consumer::PullConsumer> {
    let ingest = stream::Config {
        name: names.ingest_stream.clone(),
        subjects: vec![names.ingest_subjects.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
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
        ..Default::default()
    };
    js.create_or_update_stream(deadletter)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names.deadletter_stream))?;
    let mut config = consumer::pull::Config {
        durable_name: Some(names.consumer.clone()),
        description: Some("tenantvec workers: durable ingest".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        backoff: settings.backoff.clone(),
        max_ack_pending: settings.max_ack_pending as i64,
        ..Default::default()
    };
    if settings.ordered {
        config.priority_policy = consumer::PriorityPolicy::PinnedClient;
        config.priority_groups = vec![PIN_GROUP.into()];
        config.priority_timeout = settings.pin_timeout;
    }
    let stream = js
        .get_stream(&names.ingest_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.ingest_stream))?;
    // create_consumer updates a durable consumer whose config changed.
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        Err(first) => {
            // The server does not change a consumer's priority policy in
            // place. Deleting it loses nothing: the messages stay in the
            // stream and those delivered but unacked go to the new consumer.
            let other_policy = match stream.consumer_info(&names.consumer).await {
                Ok(info) => info.config.priority_policy != config.priority_policy,
                Err(_) => false,
            };
            if !other_policy {
                anyhow::bail!("cannot create consumer {}: {first}", names.consumer);
            }
            tracing::warn!(
                consumer = %names.consumer,
                ordered = settings.ordered,
                "ingest.ordered changed: recreating the ingest consumer"
            );
            stream
                .delete_consumer(&names.consumer)
                .await
                .map_err(|e| anyhow::anyhow!("cannot recreate consumer {}: {e}", names.consumer))?;
            stream
                .create_consumer(config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create consumer {}: {e}", names.consumer))
        }
    }
}

/// The priority group every worker pulls in when `ingest.ordered` is on.
const PIN_GROUP: &str = "workers";

struct Shared {
    js: jetstream::Context,
    names: Names,
    settings: Settings,
    supervisor: Addr<Supervisor>,
    counters: Arc<IngestCounters>,
    in_flight: Arc<Semaphore>,
}

/// The running pull loop; [`Ingesting::drain`] waits for it after shutdown.
pub struct Ingesting {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

/// Start pulling. Messages in flight are bounded by `ingest.max_ack_pending`.
pub fn start(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    settings: &Settings,
    supervisor: Addr<Supervisor>,
    counters: Arc<IngestCounters>,
    shutdown: CancellationToken,
) -> Ingesting {
    let shared = Arc::new(Shared {
        js,
        names: Names::new(&settings.nats.prefix),
        settings: settings.clone(),
        supervisor,
        counters,
        in_flight: Arc::new(Semaphore::new(settings.ingest.max_ack_pending)),
    });
    let task = tokio::spawn(pull_loop(consumer, shared.clone(), shutdown));
    Ingesting { task, shared }
}

impl Ingesting {
    /// Wait for the loop to stop and the messages in flight to be settled.
    pub async fn drain(self, timeout: Duration) {
        let _ = self.task.await;
        let max = self.shared.settings.ingest.max_ack_pending as u32;
        if tokio::time::timeout(timeout, self.shared.in_flight.acquire_many(max))
            .await
            .is_err()
        {
            tracing::warn!(
                "ingest messages still in flight at the shutdown timeout; they will be redelivered"
            );
        }
    }
}

/// Open a pull stream. With `ordered`, in the pinned group, and renewed at a
/// third of the pin timeout so the pin is never lost between pulls.
async fn pull(
    consumer: &consumer::PullConsumer,
    settings: &IngestSettings,
) -> Result<consumer::pull::Stream, consumer::StreamError> {
    let stream = consumer
        .stream()
        .max_messages_per_batch(settings.pull_batch);
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

async fn pull_loop(
    consumer: consumer::PullConsumer,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    'connect: loop {
        let messages = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = pull(&consumer, &shared.settings.ingest) => m,
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
                Some(Ok(message)) => handle(message, &shared, permit),
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

/// Route one message; settle it when its tenant's actor has answered.
fn handle(
    message: jetstream::Message,
    shared: &Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (stream_seq, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    if delivered > 1 {
        shared.counters.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let subject = message.subject.to_string();
    let tenant = TenantId::parse(tenant_token(&subject)).ok();
    let parsed = TenantId::parse(tenant_token(&subject)).and_then(|t| {
        let req = decode::<UpsertRequest>(&message.payload)?;
        Ok((
            t,
            crate::transport::decode::upsert(req, &shared.settings.limits)?,
        ))
    });
    let shared = shared.clone();
    let (tenant, command) = match parsed {
        Ok(ok) => ok,
        Err(error) => {
            tokio::spawn(async move {
                dead_letter(&shared, &message, tenant.as_ref(), stream_seq, &error).await;
                drop(permit);
            });
            return;
        }
    };
    let docs = match &command {
        crate::tenant_actor::Command::Upsert(d) => d.len() as u64,
        _ => 0,
    };
    // Routed now, in stream order, so the tenant's actor applies it in order.
    let (reply, outcome) = oneshot::channel();
    let span = tracing::info_span!("ingest", %tenant, stream_seq);
    shared.supervisor.do_send(Route(Envelope {
        tenant: tenant.clone(),
        command,
        reply,
        span,
    }));
    tokio::spawn(async move {
        let result = outcome
            .await
            .unwrap_or_else(|_| Err(ServiceError::internal("the tenant's job failed")));
        match result {
            Ok(_) => match message.ack().await {
                Ok(()) => {
                    shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                    shared.counters.documents.fetch_add(docs, Ordering::Relaxed);
                }
                // Durable already; the redelivery that follows is harmless.
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "ack failed; message will be redelivered")
                }
            },
            Err(error) if error.code.is_transient() => {
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                let delay = retry_delay(&shared.settings.ingest, delivered);
                tracing::warn!(%tenant, %error, ?delay, "ingest failed; retrying later");
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(%tenant, error = %e, "nak failed; ack_wait will redeliver");
                }
            }
            Err(error) => dead_letter(&shared, &message, Some(&tenant), stream_seq, &error).await,
        }
        drop(permit);
    });
}

/// Delay before a failed message comes back: the consumer's backoff
/// schedule, by delivery count, its last step repeating.
fn retry_delay(settings: &IngestSettings, delivered: i64) -> Duration {
    let i = (delivered.max(1) - 1) as usize;
    settings
        .backoff
        .get(i)
        .or(settings.backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

/// Store a dead-letter record, then `term` the message. When the record
/// cannot be stored the message is `nak`ed instead, so it is never lost.
async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    tenant: Option<&TenantId>,
    stream_seq: u64,
    error: &ServiceError,
) {
    let subject = shared.names.deadletter_subject(tenant);
    let record = DeadLetter {
        subject: message.subject.as_str(),
        stream_seq,
        error,
    };
    let body = serde_json::to_vec(&record).unwrap_or_default();
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
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "term failed; the message will be dead-lettered again");
            }
        }
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot store a dead-letter record; retrying the message later");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}
