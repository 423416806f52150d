//! The registry followed: a watch of its bucket that keeps the registry's
//! index (every record's id, state and size) and hands each record written
//! to the supervisor, whose tenant actor (when it holds one) takes its
//! settings.
//!
//! Owns the watch and its restarts. It must never be what makes a change
//! take effect for the worker that made it (that worker passes it on
//! before it replies); this is how the other workers of a fleet learn of
//! it, a moment later. It never makes a worker wait for the index at start:
//! until the index is complete, lists scan the bucket.

use std::time::Duration;

use actix::Addr;
use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::registry::{Index, Registry, TenantRecord};
use crate::supervisor::{NewRecord, Supervisor};

/// Read every record into the registry's index, then follow every change,
/// passing each record to `supervisor`, until shutdown; a watch that fails
/// is made again (and the index read anew).
pub async fn pass_on(
    registry: Registry,
    supervisor: Addr<Supervisor>,
    shutdown: CancellationToken,
) {
    loop {
        let watch = tokio::select! {
            _ = shutdown.cancelled() => return,
            w = registry.follow() => w,
        };
        let index = registry.index();
        index.restart();
        let started = std::time::Instant::now();
        match watch {
            Ok((mut changes, empty)) => loop {
                if empty && !index.is_complete() {
                    complete(index, started);
                }
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = changes.next() => c,
                };
                match change {
                    Some(Ok(entry)) => {
                        if entry.operation == kv::Operation::Put {
                            match TenantRecord::decode(&entry.key, &entry.value) {
                                Ok(record) => {
                                    index.put(&record, entry.revision);
                                    supervisor.do_send(NewRecord(record));
                                }
                                Err(e) => {
                                    tracing::warn!(key = %entry.key, error = %e, "registry record unreadable")
                                }
                            }
                        } else {
                            index.remove(&entry.key, Some(entry.revision));
                        }
                        if entry.seen_current && !index.is_complete() {
                            complete(index, started);
                        }
                    }
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

fn complete(index: &Index, started: std::time::Instant) {
    index.mark_complete();
    tracing::info!(
        tenants = index.len(),
        seconds = started.elapsed().as_secs_f64(),
        "tenant registry read"
    );
}
