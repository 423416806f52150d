#!/usr/bin/env bash
# The worker's start-up with N tenants registered and on disk, against the
# same worker with none: the time from its start to "serving" in its log, to
# the first answer of a tenant's request, and to its index of the registry
# being complete (its log says when). Also how long `tenants import-files`
# takes to register the N tenants of the folder, and what the folder holds.
#
#     benchmarks/registry_startup.sh TENANTS [WORKDIR]
#
# Each tenant is a copy of one tenant of 5 documents written by the worker
# (edge backend, per_tenant layout, 8 dimensions). Needs the release build
# and the tools of scripts/setup; WORKDIR (a temporary folder by default)
# needs about 110 kB of disk a tenant.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
N=${1:?usage: registry_startup.sh TENANTS [WORKDIR]}
WORK=${2:-$(mktemp -d)}
mkdir -p "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$NATS_SERVER_BIN" -js -sd "$WORK/js" -a 127.0.0.1 -p "$PORT" > "$WORK/nats.log" 2>&1 &
NATS_PID=$!
WORKER_PID=
cleanup() {
    [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null || true
    kill "$NATS_PID" 2>/dev/null || true
}
trap cleanup EXIT
export NATS_URL="nats://127.0.0.1:$PORT" EMBEDDING_DIM=8 TENANTVEC_METRICS_LISTEN= RUST_LOG=info
sleep 0.5

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

start_worker() { # data folder, log
    VECTOR_STORE_FOLDER="$1" "$TENANTVEC_BIN" serve > "$2" 2>&1 &
    WORKER_PID=$!
}
stop_worker() {
    kill -TERM "$WORKER_PID"
    wait "$WORKER_PID" || true
    WORKER_PID=
}
wait_log() { # log, needle
    for _ in $(seq 1 6000); do
        grep -q "$2" "$1" && return 0
        sleep 0.01
    done
    echo "no '$2' in $1" >&2
    exit 1
}

# One tenant of 5 documents, as the worker writes it.
python3 -c '
import json
for i in range(5):
    print(json.dumps({"doc_id": f"d{i}", "text": f"note {i}", "vector": [float((i * 7 + j) % 5) + 0.5 for j in range(8)]}))' > "$WORK/docs.jsonl"
TENANTVEC_REGISTRY=false start_worker "$WORK/data" "$WORK/template.log"
wait_log "$WORK/template.log" "tenantvec worker serving"
RUST_LOG=error "$TENANTVEC_BIN" upsert --tenant template "$WORK/docs.jsonl" > /dev/null
stop_worker

# N copies of it, then every one registered from its files.
t0=$(now)
for i in $(seq -f "%07g" 0 $((N - 1))); do
    cp -a --sparse=always "$WORK/data/template" "$WORK/data/user-$i"
done
rm -rf "$WORK/data/template"
copied=$(elapsed "$t0" "$(now)")
t0=$(now)
VECTOR_STORE_FOLDER="$WORK/data" RUST_LOG=error "$TENANTVEC_BIN" tenants import-files > "$WORK/import.json" 2> /dev/null
imported=$(elapsed "$t0" "$(now)")

# Start-up: to "serving", to the first answer of a tenant, to the index.
startup() { # data folder, log, tenant
    local t0 served answered
    t0=$(now)
    start_worker "$1" "$2"
    wait_log "$2" "tenantvec worker serving"
    served=$(elapsed "$t0" "$(now)")
    until RUST_LOG=error "$TENANTVEC_BIN" count --tenant "$3" > /dev/null 2>&1; do sleep 0.005; done
    answered=$(elapsed "$t0" "$(now)")
    wait_log "$2" "tenant registry read"
    stop_worker
    echo "serving after $served s, first answer after $answered s, $(grep -o 'tenant registry read.*' "$2" | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
}
mkdir -p "$WORK/empty"
with=$(startup "$WORK/data" "$WORK/start.log" "user-$(printf %07d $((N / 2)))")
without=$(TENANTVEC_PREFIX=empty startup "$WORK/empty" "$WORK/start-empty.log" "user-0000001")

echo "tenants: $N of 5 documents; copied in $copied s; tenants import-files: $imported s: $(tr -d '\n ' < "$WORK/import.json")"
echo "data folder: $(du -sh "$WORK/data" | cut -f1) on disk, $(du -sh --apparent-size "$WORK/data" | cut -f1) apparent; registry bucket: $(du -sh "$WORK/js" | cut -f1)"
echo "start-up with $N tenants registered and on disk: $with"
echo "start-up with none: $without"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
