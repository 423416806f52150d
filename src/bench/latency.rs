//! Latency figures: HDR histograms of the measured durations and the
//! percentiles the report gives.
//!
//! Owns the arithmetic. It must never drop a measured sample.

use std::time::Duration;

use serde_json::{json, Value};

/// Latencies in an HDR histogram: nanoseconds to 3 significant digits
/// (0.1% resolution), growing as needed.
pub(super) fn histogram(xs: &[Duration]) -> hdrhistogram::Histogram<u64> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits are valid");
    for x in xs {
        let ns = u64::try_from(x.as_nanos()).unwrap_or(u64::MAX);
        // `record` grows the histogram to fit; `saturating_record` would
        // clamp to its current top (a new histogram's is 2 ns).
        if h.record(ns).is_err() {
            h.saturating_record(ns);
        }
    }
    h
}

/// The `q` quantile of latencies, in seconds; `None` for none.
pub(super) fn quantile(xs: &[Duration], q: f64) -> Option<f64> {
    (!xs.is_empty()).then(|| histogram(xs).value_at_quantile(q) as f64 / 1e9)
}

/// p50/p95/p99/mean of latencies, in milliseconds.
pub(super) fn percentiles(xs: Vec<Duration>) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    let h = histogram(&xs);
    let ms = |ns: u64| ns as f64 / 1e6;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "mean": h.mean() / 1e6,
        "n": h.len(),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn percentiles_are_those_of_the_latencies() {
        use std::time::Duration;
        let xs: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let p = super::percentiles(xs.clone());
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(p["p50"].as_f64().unwrap(), 0.5), "{p}");
        assert!(close(p["p99"].as_f64().unwrap(), 0.99), "{p}");
        assert!(close(p["mean"].as_f64().unwrap(), 0.5005), "{p}");
        assert_eq!(p["n"], 1000);
        assert!(close(super::quantile(&xs, 0.95).unwrap(), 0.000_95));
    }
}
