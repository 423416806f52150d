//! `[pool]`: how many tenant actors stay active, and for how long.
//!
//! Owns the section's shape and the sweep interval it implies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub size: usize,
    #[serde(with = "duration")]
    pub ttl: Duration,
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

impl PoolSettings {
    /// How often the supervisor looks for idle actors.
    pub fn sweep_every(&self) -> Duration {
        if !self.sweep_interval.is_zero() {
            return self.sweep_interval;
        }
        (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(60))
    }
}
