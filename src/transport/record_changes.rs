//! The registry's changes passed on to the tenants active here: a watch of
//! the registry's bucket, each new record handed to the supervisor, whose
//! tenant actor (when it holds one) takes its settings.
//!
//! Owns the watch and its restarts. It must never be what makes a change
//! take effect for the worker that made it (that worker passes it on
//! before it replies); this is how the other workers of a fleet learn of
//! it, a moment later.

use std::time::Duration;

use actix::Addr;
use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::registry::{Registry, TenantRecord};
use crate::supervisor::{NewRecord, Supervisor};

/// Pass every record written from now on to `supervisor`, until shutdown;
/// a watch that fails is made again.
pub async fn pass_on(
    registry: Registry,
    supervisor: Addr<Supervisor>,
    shutdown: CancellationToken,
) {
    loop {
        let watch = tokio::select! {
            _ = shutdown.cancelled() => return,
            w = registry.watch() => w,
        };
        match watch {
            Ok(mut changes) => loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = changes.next() => c,
                };
                match change {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        match TenantRecord::decode(&entry.key, &entry.value) {
                            Ok(record) => supervisor.do_send(NewRecord(record)),
                            Err(e) => {
                                tracing::warn!(key = %entry.key, error = %e, "registry change unreadable")
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "registry watch interrupted; watching again");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::debug!(error = %e, "cannot watch the registry; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
