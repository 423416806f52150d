#!/usr/bin/env python3
"""Charts of the side-by-side benchmark: the same JSON reports as
bench_report.py (seed_faiss/bench.py's and `tenantvec bench --json`'s),
drawn as PNG files for BENCHMARKS.md and docs/performance.md.

    bench_charts.py OUT_DIR SEED.json TENANTVEC.json [TENANTVEC.json ...]

Writes OUT_DIR/throughput.png (search QPS and ingest docs/s per phase) and
OUT_DIR/latency.png (p50, p95, p99 per phase), the seed and each tenantvec
report (named by its backend and layout) side by side. Needs matplotlib
(scripts/bench installs its pinned version into the bench venv).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def name(report):
    if report.get("peer") == "seed_faiss":
        return "seed (FAISS, in-process)"
    return f"tenantvec {get(report, 'args', 'backend') or 'edge'} {get(report, 'args', 'layout')}"


# (phase label, seed path, tenantvec path)
QPS = [
    ("Zipf, pool 10\n1 client", ("search", "qps"), ("search", "qps")),
    ("Zipf, pool 10\n8 clients", None, ("search_concurrent", "qps")),
    ("warm\n1 client", ("warm", "qps"), ("warm", "qps")),
    ("warm\n2 clients", None, ("warm_two", "qps")),
    ("warm\n8 clients", None, ("warm_concurrent", "qps")),
]
INGEST = [
    ("seed: store only\ntenantvec: upsert over NATS", ("ingest", "docs_per_s"), ("ingest_upsert", "docs_per_s")),
    ("seed: incl. JSON parsing\ntenantvec: JetStream", ("ingest", "docs_per_s_incl_json_parse"),
     ("ingest_jetstream", "committed_docs_per_second")),
    ("seed: incl. JSON parsing\ntenantvec: JetStream, base64", ("ingest", "docs_per_s_incl_json_parse"),
     ("ingest_jetstream_base64", "committed_docs_per_second")),
]
LATENCY = [
    ("Zipf search, pool 10, 1 client", ("search", "latency_ms"), ("search", "latency_ms")),
    ("Zipf search: cold (pool miss)", ("search", "miss_latency_ms"), ("search", "cold_latency_ms")),
    ("Zipf search: warm (pool hit)", ("search", "hit_latency_ms"), ("search", "warm_latency_ms")),
    ("Zipf search, pool 10, 8 clients", None, ("search_concurrent", "latency_ms")),
    ("warm search, 1 client", ("warm", "latency_ms"), ("warm", "latency_ms")),
    ("warm search, 8 clients", None, ("warm_concurrent", "latency_ms")),
]
PERCENTILES = ["p50", "p95", "p99"]


def value(report, seed_path, tv_path):
    path = seed_path if report.get("peer") == "seed_faiss" else tv_path
    return get(report, *path) if path else None


def label_bars(ax, bars, values, fmt):
    for bar, v in zip(bars, values):
        if v is None:
            # Not measured by that peer: said at the foot of the axes (a log axis has no 0).
            ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0.01), xycoords=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=7, color="#555")
        else:
            ax.annotate(fmt(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)


def grouped(ax, groups, reports, pick, fmt, log=False):
    width = 0.8 / len(reports)
    for i, report in enumerate(reports):
        values = [pick(report, g) for g in groups]
        xs = [g + (i - (len(reports) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=name(report), color=COLORS[i % len(COLORS)])
        label_bars(ax, bars, values, fmt)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def subtitle(report):
    ds, machine = report.get("dataset", {}), report.get("machine", {})
    return (f"{ds.get('tenants')} tenants x {ds.get('docs_per_tenant')} docs, {ds.get('dim')} dims, "
            f"{ds.get('queries')} queries (Zipf {ds.get('zipf')}); {machine.get('cores')} cores of "
            f"{machine.get('cpu') or 'an unnamed CPU'}")


def throughput(reports, out):
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]})
    grouped(left, range(len(QPS)), reports, lambda r, g: value(r, QPS[g][1], QPS[g][2]), lambda v: f"{v:,.0f}")
    left.set_xticks(range(len(QPS)), [p[0] for p in QPS])
    left.set_ylabel("queries per second (higher is better)")
    left.set_title("Search throughput")
    grouped(right, range(len(INGEST)), reports, lambda r, g: value(r, INGEST[g][1], INGEST[g][2]),
            lambda v: f"{v:,.0f}")
    right.set_xticks(range(len(INGEST)), [p[0] for p in INGEST], fontsize=8)
    right.set_ylabel("documents per second (higher is better)")
    right.set_title("Ingest throughput")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(reports), frameon=False)
    fig.suptitle(f"Throughput, seed vs tenantvec ({subtitle(reports[1])})", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency(reports, out):
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharey=True)
    for ax, (title, seed_path, tv_path) in zip(axes.flat, LATENCY):
        grouped(ax, range(len(PERCENTILES)), reports,
                lambda r, g, s=seed_path, t=tv_path: get(value(r, s, t), PERCENTILES[g]),
                lambda v: f"{v:.2f}" if v < 10 else f"{v:.0f}", log=True)
        ax.set_xticks(range(len(PERCENTILES)), PERCENTILES)
        ax.set_title(title, fontsize=10)
    for ax in axes[:, 0]:
        ax.set_ylabel("ms, log scale (lower is better)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(reports), frameon=False)
    fig.suptitle(f"Latency percentiles per phase: the seed in-process, tenantvec end to end over NATS\n"
                 f"({subtitle(reports[1])})", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    reports = [json.load(open(p)) for p in sys.argv[2:]]
    os.makedirs(out_dir, exist_ok=True)
    throughput(reports, os.path.join(out_dir, "throughput.png"))
    latency(reports, os.path.join(out_dir, "latency.png"))


if __name__ == "__main__":
    main()
