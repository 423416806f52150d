//! The process's own series (resident and virtual memory), read from
//! `/proc/self/status` at scrape time.
//!
//! Owns those two series. It must never fail a scrape: on a system without
//! `/proc` they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// The process's memory, read from `/proc/self/status` at scrape time
/// (Linux; elsewhere the metrics are left out).
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return Ok(());
        };
        for (field, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            ),
            (
                "VmSize:",
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
            ),
        ] {
            if let Some(bytes) =
                crate::memory::status_kib(&status, field).map(|kib| kib.saturating_mul(1024))
            {
                let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\ttenantvec\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(crate::memory::status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(crate::memory::status_kib(status, "VmSize:"), Some(123456));
        assert_eq!(crate::memory::status_kib(status, "VmHWM:"), None);
    }
}
