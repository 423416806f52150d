#!/usr/bin/env python3
"""Side-by-side table of the seed peer's and tenantvec's benchmark reports
(the JSON that seed_faiss/bench.py and `tenantvec bench --json` print).

    bench_report.py SEED.json TENANTVEC.json [TENANTVEC.json ...]

One column (and a ratio column) per tenantvec report, named by its backend
and layout; then the noisy-neighbour phases, a column for each report that
ran them (`--noisy-only` reports too, which have no other column), and
benchmarks/notes.md (the findings written by hand) as it is.
"""
import datetime
import json
import os
import sys


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}"


def ratio(a, b, higher_is_better=True):
    if not a or not b:
        return "-"
    return f"{(a / b if higher_is_better else b / a):.2f}x"


def pair(r, a, b, digits=2):
    """`a -> b` of two figures of a report, or "-" when it has neither."""
    x, y = get(r, *a), get(r, *b)
    if x is None and y is None:
        return "-"
    return f"{fmt(x, digits)} -> {fmt(y, digits)}"


def noisy_table(runs, names):
    """The noisy-neighbour phases (tenantvec only: the seed has no network to
    flood), one column per report; nothing when no report ran them."""
    if not any(get(r, "noisy_neighbour") or get(r, "noisy_ingest") for r in runs):
        return []
    nn, ni = "noisy_neighbour", "noisy_ingest"
    rows = [
        ("request-reply victim p50 ms, alone -> under the flood",
         lambda r: pair(r, (nn, "victim_alone_ms", "p50"), (nn, "victim_flooded_ms", "p50"))),
        ("request-reply victim p99 ms, alone -> under the flood",
         lambda r: pair(r, (nn, "victim_alone_ms", "p99"), (nn, "victim_flooded_ms", "p99"))),
        ("  p99 under the flood / alone (goal <= 3x)",
         lambda r: "-" if get(r, nn, "victim_p99_ratio") is None
         else f"{get(r, nn, 'victim_p99_ratio'):.2f}x"),
        ("  bare NATS echo p99 ms beside the victim, alone -> under the flood (no worker in its path)",
         lambda r: pair(r, (nn, "echo_alone_ms", "p99"), (nn, "echo_flooded_ms", "p99"))),
        ("  request partitions (nats.request_partitions): victim's / flood's partition",
         lambda r: fmt(get(r, nn, "request_partitions")) + (
             f": {fmt(get(r, nn, 'partition_of', 'nn-victim'))} / "
             f"{fmt(get(r, nn, 'partition_of', 'nn-flood'))}"
             if get(r, nn, "request_partitions") else "")),
        ("  victim errors",
         lambda r: f"{fmt(get(r, nn, 'victim_errors'))} of {fmt(get(r, nn, 'victim_flooded_ms', 'n'))}"),
        ("  flood: ok / rate_limited / other errors",
         lambda r: " / ".join(fmt(get(r, nn, "flood", k))
                              for k in ("ok", "rate_limited", "other_errors"))),
        ("ingest victim ms, alone: p50 / max",
         lambda r: f"{fmt(get(r, ni, 'victim_alone_ms', 'p50'), 2)} / "
                   f"{fmt(get(r, ni, 'victim_alone_max_ms'), 2)}"),
        ("ingest victim ms, behind another tenant's backlog: p50 / max (goal: a few hundred ms)",
         lambda r: f"{fmt(get(r, ni, 'victim_behind_backlog_ms', 'p50'), 2)} / "
                   f"{fmt(get(r, ni, 'victim_behind_backlog_max_ms'), 2)}"),
        ("  backlog (documents) drained in s",
         lambda r: f"{fmt(get(r, ni, 'backlog_docs'))} in {fmt(get(r, ni, 'backlog_drained_seconds'), 1)}"),
    ]
    flood = next((get(r, nn, "flood") for r in runs if get(r, nn, "flood")), {}) or {}
    out = [
        "\n## Noisy neighbours (this run)\n",
        (f"One tenant floods ({flood.get('clients')} clients x {flood.get('depth')} requests in "
        f"flight, {flood.get('batch_docs')}-document upserts alternating with top_k 1000 searches "
        f"over a {fmt(flood.get('tenant_docs'))}-document tenant, "
        f"{flood.get('backoff_ms_after_refusal')} ms pause after a refusal) while a victim tenant "
        "searches at 50/s with a thread, a runtime and a connection of its own (a bare NATS echo "
        "timed beside each search: the floor under the same flood, no worker in its path); then "
        "one tenant's backlog waits in the "
        "ingest stream while another tenant publishes single messages. Same worker, same run; "
        "the columns with request partitions ran the first phase alone, on a prefix the "
        "benchmark's nats-server maps to 8.\n"),
        "| measure | " + " | ".join(f"tenantvec {n}" for n in names) + " |",
        "| --- |" + " --- |" * len(runs),
    ]
    for label, cell in rows:
        out.append(f"| {label} | " + " | ".join(cell(r) for r in runs) + " |")
    return out


def name(r):
    """A report's column: backend and layout, and its request partitions
    when it had some."""
    n = f"{get(r, 'args', 'backend') or 'edge'} {get(r, 'args', 'layout')}"
    k = get(r, "noisy_neighbour", "request_partitions")
    return n + (f", {k} request partitions" if k else "")


def main():
    seed = json.load(open(sys.argv[1]))
    reports = [json.load(open(p)) for p in sys.argv[2:]]
    # Noisy-only reports have nothing for the main table.
    runs = [r for r in reports if get(r, "search") is not None]
    per = runs[0]
    # (label, seed value, tenantvec path, higher is better, digits)
    rows = [
        ("ingest docs/s (seed: in-process store only; tenantvec: upsert over NATS, JSON included)",
         get(seed, "ingest", "docs_per_s"), ("ingest_upsert", "docs_per_s"), True, 0),
        ("ingest docs/s, seed incl. JSON parsing / tenantvec JetStream (replace)",
         get(seed, "ingest", "docs_per_s_incl_json_parse"),
         ("ingest_jetstream", "committed_docs_per_second"), True, 0),
        ("ingest docs/s, tenantvec JetStream with base64 vectors (replace)",
         get(seed, "ingest", "docs_per_s_incl_json_parse"),
         ("ingest_jetstream_base64", "committed_docs_per_second"), True, 0),
        ("Zipf search, pool 10, 1 client: QPS", get(seed, "search", "qps"), ("search", "qps"), True, 0),
        ("  p50 ms", get(seed, "search", "latency_ms", "p50"), ("search", "latency_ms", "p50"), False, 2),
        ("  p99 ms", get(seed, "search", "latency_ms", "p99"), ("search", "latency_ms", "p99"), False, 2),
        ("  cold (pool miss) p50 ms", get(seed, "search", "miss_latency_ms", "p50"),
         ("search", "cold_latency_ms", "p50"), False, 2),
        ("  cold (pool miss) p99 ms", get(seed, "search", "miss_latency_ms", "p99"),
         ("search", "cold_latency_ms", "p99"), False, 2),
        ("  warm (pool hit) p50 ms", get(seed, "search", "hit_latency_ms", "p50"),
         ("search", "warm_latency_ms", "p50"), False, 3),
        ("  pool hit rate", get(seed, "search", "pool", "hit_rate"), ("search", "pool", "hit_rate"), True, 3),
        ("Zipf search, pool 10, 8 clients: QPS", None, ("search_concurrent", "qps"), True, 0),
        ("  p99 ms", None, ("search_concurrent", "latency_ms", "p99"), False, 2),
        ("warm search, 1 client: QPS", get(seed, "warm", "qps"), ("warm", "qps"), True, 0),
        ("  p50 ms", get(seed, "warm", "latency_ms", "p50"), ("warm", "latency_ms", "p50"), False, 3),
        ("warm search, 2 clients: QPS", None, ("warm_two", "qps"), True, 0),
        ("warm search, 8 clients: QPS", None, ("warm_concurrent", "qps"), True, 0),
        ("recall@5 unfiltered", get(seed, "search", "recall_unfiltered"), ("search", "recall_unfiltered"), True, 3),
        ("recall@5 filtered", get(seed, "search", "recall_filtered"), ("search", "recall_filtered"), True, 3),
        ("memory MB after Zipf search, pool 10 (seed: process RSS; tenantvec: worker RSS)",
         get(seed, "search", "rss_end_mb"), ("search", "worker_rss_mb", "current"), False, 1),
        ("  of which anonymous (heap) MB", None, ("search", "worker_rss_mb", "anon"), False, 1),
        ("memory MB, every queried tenant open",
         get(seed, "warm", "rss_after_preload_mb"), ("warm", "worker_rss_mb", "current"), False, 1),
        ("  of which anonymous (heap) MB", None, ("warm", "worker_rss_mb", "anon"), False, 1),
    ]
    machine = per.get("machine", {})
    ds = per.get("dataset", {})
    out = []
    out.append("# Benchmark results\n")
    out.append(f"Written by `scripts/bench` on {datetime.date.today().isoformat()}. Machine: "
               f"{machine.get('cores')} cores of {machine.get('cpu') or 'an unnamed CPU'}, "
               f"{fmt(machine.get('memory_gib'))} GiB, Linux {machine.get('kernel')}. "
               f"Workload: {ds.get('tenants')} tenants x {ds.get('docs_per_tenant')} docs, "
               f"{ds.get('dim')} dims, {ds.get('queries')} queries (Zipf {ds.get('zipf')}, "
               f"{ds.get('filtered_queries')} filtered), top_k {ds.get('top_k')}.\n")
    out.append("The seed peer runs in-process (no network); tenantvec is measured end to end "
               "over NATS on loopback, the worker a separate process. Ratios are tenantvec "
               "against the seed, > 1 is better for tenantvec. Bare NATS round trip in this run "
               f"(the floor of any request): p50 {fmt(get(per, 'floor', 'latency_ms', 'p50'), 3)} ms, "
               f"{fmt(get(per, 'floor', 'qps_concurrent'), 0)} echo requests/s with 8 clients.\n")
    for r in runs:
        q = r.get("qdrant")
        if q:
            build = os.environ.get("QDRANT_BUILD")
            out.append(f"The qdrant columns use Qdrant server {q.get('version')} at {q.get('url')}"
                       + (f" ({build})" if build else "")
                       + ", on the same machine: its CPU is shared with the worker, nats-server "
                       "and the client, and its memory is not in the worker's figures.\n")
            break
    names = [name(r) for r in runs]
    out.append("| measure | seed (FAISS, in-process) | "
               + " | ".join(f"tenantvec {n} | ratio" for n in names) + " |")
    out.append("| --- | --- |" + " --- | --- |" * len(runs))
    for label, s, path, hib, digits in rows:
        cells = []
        for r in runs:
            v = get(r, *path)
            cells.append(f"{fmt(v, digits)} | {ratio(v, s, hib)}")
        out.append(f"| {label} | {fmt(s, digits)} | " + " | ".join(cells) + " |")
    noisy = [r for r in reports if get(r, "noisy_neighbour") or get(r, "noisy_ingest")]
    out.extend(noisy_table(noisy, [name(r) for r in noisy]))
    out.append("\nThe same figures as charts (`scripts/bench_charts.py`, written by `scripts/bench`):\n")
    out.append("![Search and ingest throughput, seed vs tenantvec](benchmarks/throughput.png)\n")
    out.append("![Latency percentiles per phase, seed vs tenantvec](benchmarks/latency.png)")
    # Findings written by hand (profiles, earlier runs, what was tried) live
    # in benchmarks/notes.md and follow the generated tables, so a new run
    # does not erase them.
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "notes.md")
    if os.path.exists(notes):
        out.append("\n" + open(notes).read().rstrip())
    print("\n".join(out))


if __name__ == "__main__":
    main()
