//! The registry's changes passed on to the tenants active here: the
//! registry followed (its index kept), each record written handed to the
//! supervisor, whose tenant actor (when it holds one) takes its settings.
//!
//! Owns that hand-over. It must never be what makes a change take effect
//! for the worker that made it (that worker passes it on before it
//! replies); this is how the other workers of a fleet learn of it, a moment
//! later.

use actix::Addr;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::supervisor::{NewRecord, Supervisor};

/// Follow the registry until shutdown, passing every record written to
/// `supervisor`.
pub async fn pass_on(
    registry: Registry,
    supervisor: Addr<Supervisor>,
    shutdown: CancellationToken,
) {
    registry
        .follow(|record| supervisor.do_send(NewRecord(record)), shutdown)
        .await
}
