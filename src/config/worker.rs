//! `[worker]`, `[cluster]`, `[metrics]` and `[log]`: the process, the
//! fleet, the metrics endpoint and the log filter.
//!
//! Owns those sections' shapes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{duration, keys};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub threads: usize,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// This worker's region (docs/regions.md), which is also the JetStream
    /// domain of the NATS servers it connects to; empty: no regions.
    pub region: String,
    /// Every region of the deployment (this one among them): the regions
    /// whose tenants this one's directory lists. Empty: this one alone.
    #[serde(with = "keys")]
    pub regions: Vec<String>,
}

impl WorkerSettings {
    /// The region, when regions are on.
    pub fn region(&self) -> Option<&str> {
        Some(self.region.as_str()).filter(|r| !r.is_empty())
    }

    /// Every region, this one first (empty without regions).
    pub fn all_regions(&self) -> Vec<String> {
        let Some(own) = self.region() else {
            return Vec::new();
        };
        let mut all = vec![own.to_owned()];
        for r in &self.regions {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        all
    }
}

/// Whether `name` can name a region: a subject token and a JetStream
/// domain, which also goes into stream and bucket names.
pub fn check_region(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a region name: 1 to 32 of a-z, 0-9 and '-', starting with a letter"
        )),
    }
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
