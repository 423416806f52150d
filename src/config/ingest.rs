//! `[ingest]`: the durable ingest stream, its consumer and its retries.
//!
//! Owns the section's shape.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{duration, durations};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub enabled: bool,
    #[serde(with = "duration")]
    pub ack_wait: Duration,
    pub max_deliver: i64,
    #[serde(with = "durations")]
    pub backoff: Vec<Duration>,
    pub max_ack_pending: usize,
    pub pull_batch: usize,
    /// Bytes of ingest messages a worker asks the server for at once, over
    /// all the consumers it pulls (each pull asks for an equal share, and
    /// never less than the largest message the server takes); the order
    /// checks' stream reads in flight are bounded by as many bytes again.
    /// Twice it is kept under the server's `max_pending` (64 MiB by
    /// default), past which the server drops the worker's connection as a
    /// slow consumer.
    pub pull_max_bytes: usize,
    /// Most tries of a message that fails `internal` before it is
    /// dead-lettered (`unavailable` and `rate_limited` wait without limit).
    pub max_retries: u32,
    /// Most messages of one tenant a worker holds while that tenant's
    /// ingest is stalled (retrying, or waiting for an earlier message);
    /// past it they go back to the stream for later.
    pub stalled_tenant_messages: usize,
    #[serde(with = "duration")]
    pub deadletter_max_age: Duration,
    /// One worker at a time takes ingest messages (JetStream's pinned
    /// client), so a tenant's messages are applied in stream order even with
    /// several workers; the others stand by and take over when it stops
    /// pulling for `pin_timeout`.
    pub ordered: bool,
    #[serde(with = "duration")]
    pub pin_timeout: Duration,
}

impl IngestSettings {
    /// Whether the stream files messages by partition, a consumer each (the
    /// default, and always in a fleet); `ordered` keeps the single pinned
    /// consumer.
    pub fn partitioned(&self) -> bool {
        !self.ordered
    }
}
