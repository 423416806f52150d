//! `[worker]`, `[cluster]`, `[metrics]` and `[log]`: the process, the
//! fleet, the metrics endpoint and the log filter.
//!
//! Owns those sections' shapes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub threads: usize,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Partition tenants over every worker of the prefix (docs/scaling.md, "Scaling
    /// out"); off: one worker serves the prefix alone.
    pub enabled: bool,
    /// Partitions of the prefix; fixed once the fleet first starts.
    pub partitions: u32,
    /// How long a partition's lease lasts without renewal: the longest a
    /// crashed worker's partitions stay without an owner.
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// This worker's name in the fleet (a subject token); empty: the host
    /// name, the process id and a random suffix, new at every start.
    pub member: String,
}

impl ClusterSettings {
    /// How often leases and membership are renewed and the assignment
    /// looked at again: a fifth of the lease, so that four renewals in a
    /// row may fail before the lease is at risk.
    pub fn tick(&self) -> Duration {
        self.lease_ttl / 5
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `address:port` of the Prometheus endpoint (`/metrics`); empty: none.
    pub listen: String,
}

impl MetricsSettings {
    /// The address to serve `/metrics` on, `None` when turned off.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            format!(
                "{listen:?} is not an address:port (e.g. \"127.0.0.1:9464\", \"[::1]:9464\"); \
                 empty turns the endpoint off"
            )
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
}
