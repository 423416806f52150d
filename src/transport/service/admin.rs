//! The admin verbs on `<p>.admin.*`: statistics, cleanup and eviction,
//! asked of the supervisor.
//!
//! Owns their bodies and replies. It must never change a tenant's data.

use bytes::Bytes;
use futures::FutureExt;

use super::{Pending, Shared};
use crate::protocol::{decode, AdminVerb, EmptyRequest, EvictRequest, ServiceError};
use crate::supervisor::{Cleanup, Evict, GetStats};
use crate::tenant::TenantId;

/// An admin verb: decoded here, and its message to the supervisor queued
/// here too (`send` queues at once unless the supervisor's mailbox is over
/// its capacity, then on the first poll); the future awaits the answer.
pub(super) fn admin(
    verb: AdminVerb,
    body: &[u8],
    shared: &Shared,
) -> Result<Pending, ServiceError> {
    let unavailable = |e: actix::MailboxError| {
        ServiceError::unavailable(format!("the supervisor is not running: {e}"))
    };
    match verb {
        AdminVerb::Stats => {
            decode::<EmptyRequest>(body)?;
            let stats = shared.router.supervisor().send(GetStats);
            let ingest = shared.ingest.clone();
            let metrics = shared.metrics.clone();
            let cluster = shared.cluster.clone();
            let registry = shared.registry.clone();
            let regions = shared.regions.clone();
            Ok(async move {
                let mut stats = stats.await.map_err(unavailable)?;
                stats.ingest = ingest.as_ref().map(|c| c.snapshot());
                stats.cluster = cluster.map(|c| crate::protocol::ClusterStats {
                    member: c.member.clone(),
                    partitions: c.partitions,
                    serving: c.served(),
                    owners: c.owners(),
                });
                stats.errors = metrics.error_counts();
                stats.registry = registry.map(|r| r.index().census(&stats.keys));
                stats.regions = regions.map(|r| {
                    let mut tenants = r.directory().homes();
                    for region in r.all() {
                        tenants.entry(region.clone()).or_insert(0);
                    }
                    crate::protocol::RegionStats {
                        region: r.own().to_owned(),
                        tenants,
                        complete: r.directory().is_complete(),
                        unlinked: r.directory().unlinked(),
                    }
                });
                to_json(&stats)
            }
            .boxed())
        }
        AdminVerb::Cleanup => {
            decode::<EmptyRequest>(body)?;
            let n = shared.router.supervisor().send(Cleanup);
            Ok(async move {
                let n = n.await.map_err(unavailable)?;
                to_json(&serde_json::json!({ "expired": n }))
            }
            .boxed())
        }
        AdminVerb::Evict => {
            let req = decode::<EvictRequest>(body)?;
            let tenant = req.tenant.as_deref().map(TenantId::parse).transpose()?;
            let n = shared.router.supervisor().send(Evict(tenant));
            Ok(async move {
                let n = n.await.map_err(unavailable)?;
                to_json(&serde_json::json!({ "evicted": n }))
            }
            .boxed())
        }
    }
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<Bytes, ServiceError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ServiceError::internal(format!("cannot encode the reply: {e}")))
}
