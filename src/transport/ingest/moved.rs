//! Messages of a tenant whose home is now another region: moved while they
//! waited in this region's stream, they are sent on, in order, to the
//! stream of its new home, then acked here; failed over to its DR region
//! (this region's copy superseded), they are set aside as dead letters.
//!
//! Owns that hand-over. It must never apply such a message here (the
//! tenant's data is no longer served here), never ack one before the new
//! home's stream has stored it, never let a later one overtake an earlier
//! one (each is published and its acknowledgement awaited before the
//! next), and never send a superseded copy's messages on: the failed-over
//! tenant has lived on from a backup since, and an old write arriving now
//! would overwrite a newer one. They stay here, replayable.

use async_nats::jetstream::AckKind;

use super::{confirm, Shared};
use crate::names::{storage_prefix, Names};
use crate::tenant::TenantId;
use crate::transport::lanes::{Outcome, Retry};

/// A message of a batch, as the hand-over sees it.
pub(super) struct Handed<'a> {
    pub message: &'a async_nats::jetstream::Message,
    pub seq: u64,
    /// Written here already (its ack was lost).
    pub applied: bool,
}

/// Send `items` (a batch, in stream order) to `region`'s stream.
pub(super) async fn send_on(
    shared: &Shared,
    tenant: &TenantId,
    region: &str,
    items: &[Handed<'_>],
) -> Outcome {
    let subject = Names::new(&storage_prefix(&shared.settings.nats.prefix, Some(region)))
        .ingest_subject(tenant.as_str());
    let mut outcome = Outcome::default();
    for item in items {
        let message = item.message;
        // Written here before the move (its ack was lost): in the export,
        // so only acked.
        if item.applied {
            if confirm(message, AckKind::Ack).await {
                outcome.settled.push(item.seq);
                continue;
            }
            return again_soon(outcome);
        }
        let headers = message.headers.clone().unwrap_or_default();
        let stored = match shared
            .js
            .publish_with_headers(subject.clone(), headers, message.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::warn!(%tenant, %region, seq = item.seq, error = %e, "cannot send an ingest message on to the tenant's new home; retrying");
            return again_soon(outcome);
        }
        if confirm(message, AckKind::Ack).await {
            outcome.settled.push(item.seq);
        } else {
            // Stored there already; de-duplicated there if it has an id,
            // else the new home holds it twice (an upsert: the same
            // version again).
            return again_soon(outcome);
        }
    }
    outcome
}

/// What was settled so far; the rest tried again in a second (a failure
/// that does not count as a try of the message).
fn again_soon(mut outcome: Outcome) -> Outcome {
    outcome.retry = Some(Retry {
        after: std::time::Duration::from_secs(1),
        count: false,
    });
    outcome
}

/// Dead-letter `items` of a tenant that `winner` took over in a failover.
pub(super) async fn set_aside(
    shared: &Shared,
    tenant: &TenantId,
    winner: &str,
    items: &[Handed<'_>],
) -> Outcome {
    let error = crate::protocol::ServiceError::bad_request(format!(
        "tenant {tenant} failed over to region {winner}; this message was stored in its old \
         home before the failover and was never applied there (replay it if it should still \
         apply: it then goes to the tenant's home)"
    ));
    let mut outcome = Outcome::default();
    for item in items {
        if super::deadletter::dead_letter(shared, item.message, Some(tenant), item.seq, &error)
            .await
        {
            outcome.settled.push(item.seq);
        } else {
            return again_soon(outcome);
        }
    }
    outcome
}
