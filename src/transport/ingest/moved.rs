//! Messages of a tenant whose home is now another region (it was moved
//! while they waited in this region's stream): sent on, in order, to the
//! stream of its new home, then acked here.
//!
//! Owns that hand-over. It must never apply such a message here (the
//! tenant's data is no longer here), never ack one before the new home's
//! stream has stored it, and never let a later one overtake an earlier
//! one: each is published and its acknowledgement awaited before the next.

use async_nats::jetstream::AckKind;

use super::batch::BatchItem;
use super::{confirm, Shared};
use crate::names::{storage_prefix, Names};
use crate::tenant::TenantId;
use crate::transport::lanes::{Outcome, Retry};

/// Send `items` (a batch, in stream order) to `region`'s stream.
pub(super) async fn send_on(
    shared: &Shared,
    tenant: &TenantId,
    region: &str,
    items: &[BatchItem],
) -> Outcome {
    let subject = Names::new(&storage_prefix(&shared.settings.nats.prefix, Some(region)))
        .ingest_subject(tenant.as_str());
    let mut outcome = Outcome::default();
    for item in items {
        let message = item.message();
        // Written here before the move (its ack was lost): in the export,
        // so only acked.
        if item.applied() {
            if confirm(message, AckKind::Ack).await {
                outcome.settled.push(item.seq());
                continue;
            }
            outcome.retry = Some(Retry {
                after: std::time::Duration::from_secs(1),
                count: false,
            });
            return outcome;
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
            tracing::warn!(%tenant, %region, seq = item.seq(), error = %e, "cannot send an ingest message on to the tenant's new home; retrying");
            outcome.retry = Some(Retry {
                after: std::time::Duration::from_secs(1),
                count: false,
            });
            return outcome;
        }
        if confirm(message, AckKind::Ack).await {
            outcome.settled.push(item.seq());
        } else {
            // Stored there already; de-duplicated there if it has an id,
            // else the new home holds it twice (an upsert: the same
            // version again).
            outcome.retry = Some(Retry {
                after: std::time::Duration::from_secs(1),
                count: false,
            });
            return outcome;
        }
    }
    outcome
}
