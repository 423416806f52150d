//! The report: the machine it ran on, and the table of one run's figures.
//!
//! Owns the report's shape. It must never print a figure the run did not
//! measure.

use serde_json::{json, Value};

pub(super) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1048576.0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_gib,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// The human table of a report.
pub fn table(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    let pair = |a: &Value, b: &Value| format!("{} / {}", f(a), f(b));
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<46} {v}\n"));
    line(
        "floor: bare NATS round trip p50 ms",
        f(&r["floor"]["latency_ms"]["p50"]),
    );
    line(
        "floor: echo QPS, concurrent",
        f(&r["floor"]["qps_concurrent"]),
    );
    line(
        "ingest: upsert docs/s",
        f(&r["ingest_upsert"]["docs_per_s"]),
    );
    line(
        "ingest: JetStream docs/s (replace)",
        f(&r["ingest_jetstream"]["committed_docs_per_second"]),
    );
    line(
        "ingest: JetStream docs/s, base64 vectors",
        f(&r["ingest_jetstream_base64"]["committed_docs_per_second"]),
    );
    for (name, key) in [
        ("search (pool, 1 client)", "search"),
        ("search (pool, C clients)", "search_concurrent"),
        ("warm search (1 client)", "warm"),
        ("warm search (2 clients)", "warm_two"),
        ("warm search (C clients)", "warm_concurrent"),
    ] {
        let s = &r[key];
        line(&format!("{name}: QPS"), f(&s["qps"]));
        line(
            &format!("{name}: p50 / p95 / p99 ms"),
            format!(
                "{} / {} / {}",
                f(&s["latency_ms"]["p50"]),
                f(&s["latency_ms"]["p95"]),
                f(&s["latency_ms"]["p99"])
            ),
        );
        line(
            &format!("{name}: recall@k unfiltered / filtered"),
            pair(&s["recall_unfiltered"], &s["recall_filtered"]),
        );
    }
    line(
        "search: cold activations",
        r["search"]["cold_activations"].to_string(),
    );
    line(
        "search: cold p50 / p99 ms",
        pair(
            &r["search"]["cold_latency_ms"]["p50"],
            &r["search"]["cold_latency_ms"]["p99"],
        ),
    );
    line(
        "search: warm p50 / p99 ms",
        pair(
            &r["search"]["warm_latency_ms"]["p50"],
            &r["search"]["warm_latency_ms"]["p99"],
        ),
    );
    line("search: pool hit rate", f(&r["search"]["pool"]["hit_rate"]));
    line(
        "worker RSS MiB after search (pool)",
        f(&r["search"]["worker_rss_mb"]["current"]),
    );
    line(
        "worker RSS MiB, warm (all queried tenants open)",
        f(&r["warm"]["worker_rss_mb"]["current"]),
    );
    let n = &r["noisy_neighbour"];
    line(
        "noisy: victim alone p50 / p99 ms",
        pair(&n["victim_alone_ms"]["p50"], &n["victim_alone_ms"]["p99"]),
    );
    line(
        "noisy: victim under flood p50 / p99 ms",
        pair(
            &n["victim_flooded_ms"]["p50"],
            &n["victim_flooded_ms"]["p99"],
        ),
    );
    line(
        "noisy: victim p99 flooded / alone; errors",
        format!("{} ; {}", f(&n["victim_p99_ratio"]), n["victim_errors"]),
    );
    line(
        "noisy: bare NATS echo p99 alone / under flood ms",
        pair(&n["echo_alone_ms"]["p99"], &n["echo_flooded_ms"]["p99"]),
    );
    line(
        "noisy: request partitions; victim's / flood's",
        format!(
            "{} ; {} / {}",
            n["request_partitions"], n["partition_of"]["nn-victim"], n["partition_of"]["nn-flood"]
        ),
    );
    line(
        "noisy: flood ok / rate_limited / unavailable",
        format!(
            "{} / {} / {}",
            n["flood"]["ok"], n["flood"]["rate_limited"], n["flood"]["unavailable"]
        ),
    );
    let i = &r["noisy_ingest"];
    line(
        "noisy ingest: victim alone p50 / max ms",
        pair(&i["victim_alone_ms"]["p50"], &i["victim_alone_max_ms"]),
    );
    line(
        "noisy ingest: victim behind backlog p50 / max ms",
        pair(
            &i["victim_behind_backlog_ms"]["p50"],
            &i["victim_behind_backlog_max_ms"],
        ),
    );
    let e = &r["embedding"];
    if !e.is_null() {
        line("embedding: model", e["model"].to_string());
        line(
            "embedding: ingest docs/s (text)",
            f(&e["ingest"]["docs_per_s"]),
        );
        line(
            "embedding: text search p50 / p99 ms (cache missed)",
            pair(&e["search_text"]["p50"], &e["search_text"]["p99"]),
        );
        line(
            "embedding: text search p50 / p99 ms (cached)",
            pair(
                &e["search_text_cached"]["p50"],
                &e["search_text_cached"]["p99"],
            ),
        );
    }
    out
}
