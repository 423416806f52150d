//! The order check: whether a batch is the tenant's oldest messages still
//! in the stream, with none between them, asked of the stream itself.
//!
//! Owns that question and its answer. It must never clear a batch while an
//! older message of its tenant may still be applied.

use futures::future::join_all;

use crate::tenant::TenantId;
use crate::transport::lanes::{self};

use super::setup::next_message;
use super::Shared;

/// Ask the stream whether a batch may be applied in its order: nothing of
/// the tenant older than its first message, nothing between its messages
/// (see [`lanes::order_questions`]). In a work-queue stream a message stays
/// until it is acked or terminated, so this sees what other workers hold,
/// what waits for redelivery and what has not reached this lane yet. The
/// questions go out together: one round trip, and none at all between
/// adjacent sequences (a burst of one tenant).
pub(super) async fn order_in_stream(
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
