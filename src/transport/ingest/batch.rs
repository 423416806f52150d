//! One batch of one tenant's messages: applied as one write through the
//! tenant's actor, then acked, retried in place or dead-lettered.
//!
//! Owns the outcome of each message of the batch. It must never ack a
//! message before its documents are durable, nor apply one the order check
//! did not clear.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, Envelope, IngestPart, ReplyTo};
use crate::config::IngestSettings;
use crate::protocol::{decode, ErrorCode, ServiceError, UpsertRequest};
use crate::store::AppliedMark;
use crate::tenant::TenantId;
use crate::transport::lanes::{self, Lanes, Outcome, Retry};

use super::deadletter::dead_letter;
use super::order::order_in_stream;
use super::sealing::{is_sealed, open_body};
use super::{confirm, Event, Pending, Shared, ORDER_RECHECK, RATE_LIMIT_RETRY};

/// A message of a running batch.
pub(super) struct BatchItem {
    message: Arc<jetstream::Message>,
    seq: u64,
    delivered: i64,
    attempts: u32,
    applied: bool,
    doomed: Option<ServiceError>,
}

impl BatchItem {
    fn handed(&self) -> super::moved::Handed<'_> {
        super::moved::Handed {
            message: &self.message,
            seq: self.seq,
            applied: self.applied,
        }
    }
}

pub(super) fn spawn_batch(
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
            doomed: held.doomed.clone(),
        })
        .collect();
    let shared = shared.clone();
    tokio::spawn(async move {
        let outcome = run_batch(&shared, &tenant, items).await;
        let _ = events.send(Event::Finished(tenant, outcome)).await;
    });
}

/// Apply one batch of a tenant's messages, in order, and settle them: acked
/// once written (the ack confirmed by the server, so the next batch sees
/// them gone), dead-lettered when they can never succeed, and from the first
/// failure that may pass on, left for the next try.
///
/// The stream is asked first whether the batch is the tenant's oldest
/// messages with none between them; only the part of it that is goes ahead
/// (see [`Lanes`] for why every batch asks).
pub(super) async fn run_batch(
    shared: &Shared,
    tenant: &TenantId,
    mut items: Vec<BatchItem>,
) -> Outcome {
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

    // A tenant moved to another region while these waited: sent there.
    if let Some(regions) = &shared.tenancy.regions {
        if let Some(winner) = regions.superseded_by(tenant.as_str()) {
            let handed: Vec<_> = items.iter().map(BatchItem::handed).collect();
            let mut aside = super::moved::set_aside(shared, tenant, &winner, &handed).await;
            aside.checked = checked;
            return aside;
        }
        if let crate::region::Home::Remote(home) = regions.home_of(tenant.as_str()) {
            let handed: Vec<_> = items.iter().map(BatchItem::handed).collect();
            let mut sent = super::moved::send_on(shared, tenant, &home, &handed).await;
            sent.checked = checked;
            return sent;
        }
    }

    let stream = match shared.stream_id().await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(%tenant, error = %e, "cannot read the ingest stream's identity; waiting");
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
        if let Some(error) = &item.doomed {
            awaited.push(Awaited::Doomed(error.clone()));
            continue;
        }
        // A replayed dead letter's body is sealed with the tenant's key.
        let opened;
        let body = match is_sealed(item.message.headers.as_ref()) {
            false => Ok(&item.message.payload[..]),
            true => {
                opened =
                    open_body(shared.tenancy.keys.as_ref(), tenant, &item.message.payload).await;
                opened.as_deref().map_err(Clone::clone)
            }
        };
        let decoded = body
            .and_then(decode::<UpsertRequest>)
            .and_then(|req| crate::transport::decode::upsert(req, &shared.settings.limits));
        match decoded {
            Ok(Command::Upsert(docs)) => {
                let (reply, outcome) = ReplyTo::channel();
                awaited.push(Awaited::Routed(outcome, docs.len() as u64));
                parts.push(IngestPart {
                    docs,
                    reply,
                    message: AppliedMark::new(stream.clone(), item.seq),
                });
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
            Awaited::Doomed(e) => {
                if retry.is_none() {
                    to_dead.push((item, e));
                }
                continue;
            }
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
                    let error =
                        error.with_message(format!("{} (at its last delivery)", error.message));
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

    // Written and not acked yet: a crash here leaves messages in the stream
    // that the tenant's applied mark covers.
    crate::crash_point!("ingest-after-write");
    let last = to_ack.len().saturating_sub(1);
    let acks = join_all(
        to_ack
            .iter()
            .enumerate()
            .map(|(i, (item, _))| ack_written(&item.message, i < last)),
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
    for ((item, error), ok) in to_dead.iter().zip(dead) {
        match ok {
            true => outcome.settled.push(item.seq),
            false => outcome.doomed.push((item.seq, error.clone())),
        }
    }
    // Between this batch's acks and the tenant's next batch; and the same
    // where an ack of this batch was lost, the later ones confirmed.
    crate::crash_point!("ingest-after-acks");
    crate::crash_point!("ingest-after-lost-ack", !outcome.applied.is_empty());
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

/// Ack a written message and wait for the server's confirmation. The crash
/// tests lose an ack here (`ingest-lose-ack`, of a message that a later one
/// of its batch follows), as a connection cut between the worker and the
/// server would.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
async fn ack_written(message: &jetstream::Message, followed: bool) -> bool {
    fail::fail_point!("ingest-lose-ack", followed, |_| false);
    confirm(message, AckKind::Ack).await
}

/// What became of one message of a batch while the tenant's actor works.
pub(super) enum Awaited {
    Written(u64),
    /// Failed for good before; its dead letter is to be stored again.
    Doomed(ServiceError),
    Routed(
        oneshot::Receiver<Result<crate::protocol::Reply, ServiceError>>,
        u64,
    ),
    Failed(ServiceError),
}

pub(super) fn wait(after: Duration) -> Outcome {
    Outcome {
        retry: Some(Retry {
            after,
            count: false,
        }),
        ..Outcome::default()
    }
}

/// Delay before the worker tries a failed message again: the backoff
/// schedule by tries so far, its last step repeating.
pub(super) fn retry_delay(settings: &IngestSettings, attempts: u32) -> Duration {
    settings
        .backoff
        .get(attempts as usize)
        .or(settings.backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}
