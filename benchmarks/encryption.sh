#!/usr/bin/env bash
# Encryption at rest on against off, edge per_tenant, in one run on one
# machine: `tenantvec bench` (without its noisy phase) on a data folder on
# an ext4 filesystem with the `encrypt` feature, made here in an image file
# and loop-mounted (root), alternately without and with encryption.enabled.
#
#   benchmarks/encryption.sh WORKLOAD_DIR [ROUNDS] [WORKDIR]
#
# WORKLOAD_DIR is a workload made by the benchmark material's workload.py
# (scripts/bench makes one in .tools/bench/workload). ROUNDS (default 2) is
# how many times each of off and on runs, alternating. Prints each run's
# figures and the ratios of the medians (on / off).
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
workload="${1:?usage: benchmarks/encryption.sh WORKLOAD_DIR [ROUNDS] [WORKDIR]}"
rounds="${2:-2}"
work="${3:-$(mktemp -d)}"
[ "$(id -u)" = 0 ] || { echo "encryption.sh: needs root (it loop-mounts an ext4 image)" >&2; exit 1; }
mkdir -p "$work/mnt"
truncate -s 8G "$work/fs.img"
mkfs.ext4 -q -F -O encrypt "$work/fs.img"
mount -o loop "$work/fs.img" "$work/mnt"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$NATS_SERVER_BIN" -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
nats_pid=$!
trap 'kill $nats_pid 2>/dev/null || true; sleep 1; umount "$work/mnt" || umount -l "$work/mnt"' EXIT
sleep 1
rm -f "$work/master.key"
"$TENANTVEC_BIN" keys new --out "$work/master.key" >/dev/null
for round in $(seq 1 "$rounds"); do
  for mode in off on; do
    echo "encryption.sh: round $round, encryption $mode" >&2
    data="$work/mnt/data-$mode-$round"
    enc=false
    [ "$mode" = on ] && enc=true
    TENANTVEC_ENCRYPTION=$enc TENANTVEC_MASTER_KEY_FILE="$work/master.key" \
      TENANTVEC_PREFIX="encbench_${mode}_$round" NATS_URL="nats://127.0.0.1:$port" \
      "$TENANTVEC_BIN" bench --workload "$workload" --data "$data" --layout per_tenant \
      --skip-noisy --json >"$work/$mode-$round.json"
    rm -rf "$data"
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def pick(r):
    return {
        "zipf_qps": r["search"]["qps"],
        "cold_p50_ms": r["search"]["cold_latency_ms"]["p50"],
        "cold_p99_ms": r["search"]["cold_latency_ms"]["p99"],
        "warm_p50_ms": r["search"]["warm_latency_ms"]["p50"],
        "jetstream_ingest_docs_s": r["ingest_jetstream"]["committed_docs_per_second"],
        "upsert_docs_s": r["ingest_upsert"]["docs_per_s"],
    }
runs = {m: [pick(json.load(open(f"{work}/{m}-{i}.json"))) for i in range(1, rounds + 1)] for m in ("off", "on")}
for m in ("off", "on"):
    for i, r in enumerate(runs[m], 1):
        print(f"encryption {m}, round {i}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
print("median on / off: " + ", ".join(
    f"{k} {statistics.median(r[k] for r in runs['on']) / statistics.median(r[k] for r in runs['off']):.3f}"
    for k in runs["off"][0]))
PY
