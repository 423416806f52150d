//! A request of a partition this worker does not serve: forwarded to its
//! owner, or held until the partition has one.
//!
//! Owns the hop count and the wait for an owner. It must never forward a
//! request more than [`MAX_HOPS`](super::MAX_HOPS) times, nor hold one past
//! the wait without answering it.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::{busy, dispatch_with, reply_now, Incoming, Shared, HEADER_HOPS, MAX_HOPS};
use crate::cluster::{Cluster, Place};
use crate::protocol::ServiceError;

/// How many times `message` was forwarded already.
pub(super) fn hops(message: &async_nats::Message) -> u32 {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_HOPS))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// Send the request on to its partition's owner through the relay, which
/// passes the owner's reply on to the client (see [`relay`]).
pub(super) fn forward(
    request: Incoming,
    owner: &str,
    cluster: &Cluster,
    shared: &Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let message = request.into_message();
    let Some(relay) = &shared.relay else {
        return;
    };
    let subject = cluster.forward_subject(owner, message.subject.as_str());
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(HEADER_HOPS, (hops(&message) + 1).to_string().as_str());
    relay.forward(subject, owner, headers, message, permit, &shared.runtime);
}

/// Hold a request whose partition nobody serves at this moment (a
/// hand-over in progress, or a worker that died and whose lease has not
/// expired) until an owner is known, then take it again from the top. It
/// holds an in-flight permit meanwhile, so a stop waits for it; past the
/// wait it is answered `unavailable`, which a client may retry. `avoid`: a
/// worker that proved gone (its forward came back undelivered); the request
/// waits until its partition has another owner.
pub(super) fn park(
    request: Incoming,
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    avoid: Option<String>,
    carried: Option<OwnedSemaphorePermit>,
) {
    // Two leases: a dead owner's lease runs out within one, and a NATS
    // cluster that lost the leader of the lease bucket elects another in
    // about as long again (4-9 s measured), during which no lease moves.
    let limit = 2 * shared.settings.cluster.lease_ttl + shared.settings.cluster.tick();
    let permit = match carried {
        Some(p) => Ok(p),
        None => shared.in_flight.clone().try_acquire_owned(),
    };
    let mut changes = cluster.changes();
    let runtime = shared.runtime.clone();
    let task = async move {
        let Ok(permit) = permit else {
            return reply_now(request, &shared, busy(&shared));
        };
        let token = crate::protocol::tenant_token(request.message().subject.as_str()).to_owned();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Looked at before the first wait too: owners may have changed
            // since the request was placed.
            let settled = match cluster.place(&token) {
                Place::Local(_) => true,
                Place::Remote(owner) => {
                    hops(request.message()) < MAX_HOPS && Some(&owner) != avoid.as_ref()
                }
                Place::Unowned => false,
            };
            if settled {
                return dispatch_with(request, &shared, Some(permit));
            }
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let p = crate::partition::partition_of(&token, cluster.partitions);
                return reply_now(
                    request,
                    &shared,
                    ServiceError::unavailable(format!(
                        "no worker serves partition {p} of tenant {token:?} now (a hand-over, \
                         or a worker that stopped); retry"
                    )),
                );
            }
        }
    };
    runtime.spawn(task);
}
