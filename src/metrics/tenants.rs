//! The registry's census as series: tenants by state and the histogram of
//! documents per tenant, read at scrape time from the worker's index of the
//! registry (through a function the worker hands over, so this layer never
//! knows the registry).
//!
//! Owns those series. It must never name a tenant in a label, nor make a
//! scrape wait: the census is a walk of memory, never a read of JetStream.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;

use crate::protocol::RegistryStats;

/// Where the census comes from: the registry's index, with no tenant
/// counted active (the pool's gauge says how many are).
pub(super) type CensusSource = Box<dyn Fn() -> RegistryStats + Send + Sync>;

pub(super) struct TenantsCollector {
    pub(super) source: Arc<OnceLock<CensusSource>>,
    /// `tenantvec_pool_active`: the tenants counted active.
    pub(super) pool_active: Gauge,
}

impl std::fmt::Debug for TenantsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantsCollector").finish_non_exhaustive()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for TenantsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(census) = self.source.get() else {
            return Ok(());
        };
        let stats = census();
        gauge(
            &mut encoder,
            "tenantvec_registry_complete",
            "1 once this worker has read the whole tenant registry (the registry figures are partial before)",
            u64::from(stats.complete),
        )?;
        let idle = stats.states.get("idle").copied().unwrap_or(0);
        let held = u64::try_from(self.pool_active.get()).unwrap_or(0).min(idle);
        let mut family = encoder.encode_descriptor(
            "tenantvec_registry_tenants",
            "Tenants with a record in the registry, by state (active: held by this worker's pool)",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [
            ("idle", idle - held),
            ("active", held),
            (
                "dropping",
                stats.states.get("dropping").copied().unwrap_or(0),
            ),
            ("moving", stats.states.get("moving").copied().unwrap_or(0)),
        ] {
            let labels = [("state", state)];
            let metric = family.encode_family(&labels)?;
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)?;
        }
        gauge(
            &mut encoder,
            "tenantvec_registry_tenants_size_unknown",
            "Tenants whose size is not known yet (no actor closed since their record was made); left out of the histogram",
            stats.documents_unknown,
        )?;
        let buckets: Vec<(f64, u64)> = stats
            .documents
            .iter()
            .map(|b| (b.le.map_or(f64::INFINITY, |le| le as f64), b.tenants))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let mut metric = encoder.encode_descriptor(
            "tenantvec_registry_tenant_documents",
            "Tenants by their documents as last seen (when their actor last closed)",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(stats.documents_total as f64, count, &buckets, None)
    }
}
