//! The memory of a process as the kernel reports it in `/proc/<pid>/status`:
//! for the benchmark's reports, the metrics endpoint and the examples.
//!
//! Owns the reading and nothing else; it must never fail (a figure the
//! kernel does not give is 0, or absent).

use serde::Serialize;

/// Memory of a process in MiB, from `/proc/<pid>/status`: RSS now and at
/// peak, and what RSS is made of now: anonymous (heap) and file-backed
/// (mmapped shards, which the kernel can drop and read again).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub current: f64,
    pub peak: f64,
    pub anon: f64,
    pub file: f64,
}

impl Memory {
    /// Of process `pid`; 0 where the kernel does not say.
    pub fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mib = |name: &str| status_kib(&status, name).unwrap_or(0) as f64 / 1024.0;
        Self {
            current: mib("VmRSS:"),
            peak: mib("VmHWM:"),
            anon: mib("RssAnon:"),
            file: mib("RssFile:"),
        }
    }
}

/// A `Field:   1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let m = Memory::of(std::process::id());
        assert!(m.current > 0.0 && m.peak >= m.current, "{m:?}");
        assert_eq!(status_kib("VmRSS:\t  1234 kB\n", "VmRSS:"), Some(1234));
        assert_eq!(status_kib("", "VmRSS:"), None);
    }
}
