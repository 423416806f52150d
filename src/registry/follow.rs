//! The registry followed: a watch of its bucket that reads every record
//! into the registry's index, then keeps it up to date and hands each
//! record written to whoever follows (a worker passes it to its tenants).
//!
//! Owns the watch and its restarts. It must never make a caller wait for
//! the index (until it is complete, lists scan the bucket), and never stop
//! for a failed watch: it is made again, and the index read anew.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::registry::{Index, Registry, TenantRecord};

impl Registry {
    /// Read every record into the index, then follow every change, handing
    /// each record written to `on_record`, until `shutdown`.
    pub async fn follow(&self, on_record: impl Fn(TenantRecord), shutdown: CancellationToken) {
        let registry = self;
        loop {
            let watch = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = registry.watch_all() => w,
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
                                        on_record(record);
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
}

fn complete(index: &Index, started: std::time::Instant) {
    index.mark_complete();
    tracing::info!(
        tenants = index.len(),
        seconds = started.elapsed().as_secs_f64(),
        "tenant registry read"
    );
}
