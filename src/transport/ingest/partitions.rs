//! A fleet member's ingest: one durable consumer per partition it holds,
//! each pulled with lanes of its own, started and stopped as partitions
//! come and go.
//!
//! Owns the running pulls of the held partitions. It must never pull a
//! partition this worker does not hold, nor stop one before its running
//! batches have finished.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::router::Router;

use super::setup::consumer_config;
use super::{max_payload, partition_share, start_with, Ingesting, PullBudget, Tenancy};
use crate::metrics::IngestCounters;
use crate::names::Names;

/// Each held partition's ingest: a durable consumer per partition
/// (`<consumer>-p<n>`, filtered to `<p>.ingest.<n>.*`), pulled only by the
/// partition's owner, each with lanes of its own. Per-tenant order holds
/// because one worker applies a partition at a time, and a backlog in one
/// partition does not hold up the others.
pub struct PartitionIngest {
    js: jetstream::Context,
    names: Names,
    settings: Settings,
    router: Router,
    counters: Arc<IngestCounters>,
    tenancy: Tenancy,
    /// One for all the partitions this worker holds: it may hold them all.
    budget: PullBudget,
    running: std::sync::Mutex<
        std::collections::HashMap<u32, (CancellationToken, Ingesting, consumer::PullConsumer)>,
    >,
}

impl PartitionIngest {
    pub fn new(
        js: jetstream::Context,
        settings: &Settings,
        router: Router,
        counters: Arc<IngestCounters>,
        tenancy: Tenancy,
    ) -> Self {
        let budget = PullBudget::new(
            &settings.ingest,
            settings.cluster.partitions as usize,
            max_payload(&js),
        );
        Self {
            budget,
            js,
            names: Names::partitioned(&settings.storage_prefix(), settings.cluster.partitions),
            settings: settings.clone(),
            router,
            counters,
            tenancy,
            running: Default::default(),
        }
    }

    /// Create (or update) the partition's consumer and pull it.
    pub async fn start(&self, partition: u32) -> anyhow::Result<()> {
        // A pull left from an earlier hold of the partition goes first.
        self.stop(partition).await;
        let (durable, filter) = self.names.partition_consumer(partition);
        let mut config = consumer_config(&self.settings.ingest, &durable);
        config.filter_subject = filter;
        let share = partition_share(
            self.settings.ingest.max_ack_pending,
            self.names.partitions().unwrap_or(1),
        );
        config.max_ack_pending = share as i64;
        let stream = self
            .js
            .get_stream_no_info(&self.names.ingest_stream)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", self.names.ingest_stream))?;
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create consumer {durable}: {e}"))?;
        let stop = CancellationToken::new();
        let ingesting = start_with(
            self.js.clone(),
            consumer.clone(),
            self.names.clone(),
            &self.settings,
            share,
            self.budget.clone(),
            self.router.clone(),
            self.counters.clone(),
            self.tenancy.clone(),
            stop.clone(),
        );
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, (stop, ingesting, consumer));
        Ok(())
    }

    /// Pull every partition (a worker alone on its prefix).
    pub async fn start_all(&self) -> anyhow::Result<()> {
        for partition in 0..self.names.partitions().unwrap_or(1) {
            self.start(partition).await?;
        }
        Ok(())
    }

    /// The consumers pulled now (for the pending figures).
    pub fn consumers(&self) -> Vec<consumer::PullConsumer> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(_, _, c)| c.clone())
            .collect()
    }

    /// Stop pulling the partition: running batches finish, held messages go
    /// back to the stream for the next owner.
    pub async fn stop(&self, partition: u32) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        if let Some((stop, ingesting, _)) = running {
            stop.cancel();
            ingesting.drain(self.settings.worker.shutdown_timeout).await;
        }
    }

    /// Stop every partition still pulled.
    pub async fn stop_all(&self) {
        let all: Vec<u32> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        join_all(all.into_iter().map(|p| self.stop(p))).await;
    }
}
