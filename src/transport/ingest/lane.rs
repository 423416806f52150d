//! The lane loop: every tenant's held messages, batches started in
//! stream order, progress acks for what waits, and at a stop what is held
//! let go (acked when written, else handed back).
//!
//! Owns the fate of a message between its arrival and its batch. It must
//! never hand back a message already written, nor start two batches of one
//! tenant at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::protocol::{tenant_token, ServiceError};
use crate::tenant::TenantId;
use crate::transport::lanes::{Arrival, Lanes};

use super::batch::spawn_batch;
use super::confirm;
use super::deadletter::dead_letter;
use super::{Event, Pending, Shared, DEFER_DELAY, MAX_BATCH_MESSAGES};

/// Own every tenant's lane: take arrivals, start batches, keep held
/// messages alive with progress acks, and at shutdown hand back what has not
/// started once the running batches have finished.
pub(super) async fn lane_loop(
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
pub(super) fn pending(
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

pub(super) fn arrive(
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
/// the ack wait (then written again, the one case left; docs/scaling.md, "What remains").
pub(super) async fn let_go(shared: Arc<Shared>, pending: Pending, applied: bool) {
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
pub(super) async fn hand_back(shared: Arc<Shared>, pending: Pending) {
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
