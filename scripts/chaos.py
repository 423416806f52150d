"""The chaos run: steady load while the worker is SIGKILLed at random and the
NATS server restarted once; at the end, every acknowledged write checked.

Run by ``scripts/chaos`` (which builds the worker and finds the tools):

    scripts/chaos [--minutes 10] [--tenants 8] [--seed 1] [--out FILE]
                  [--backend qdrant --qdrant-url http://127.0.0.1:6334]

What runs, for ``--minutes``:

* a nats-server with JetStream (its store in a temporary folder, kept
  across its restart) and one worker (the release binary; the edge store
  with its data in a temporary folder, or a Qdrant server's collections
  under a prefix of the run's own);
* per tenant, a client of the Python package (it retries as users' do)
  that upserts a new version of one of its documents ``r0``..``r9`` and
  then searches, one request at a time; an acknowledged upsert is recorded
  with its version;
* per tenant, a JetStream publisher of new versions of ``i0``..``i9`` to the
  ingest stream (``<prefix>.ingest.<tenant>``); a publish JetStream
  acknowledged is recorded with its version;
* the worker SIGKILLed every 5 to 20 s (random, seeded) and started again
  at once; the NATS server stopped and started once, half-way.

Then the load stops, the ingest stream is waited empty, and every document
is read back: each must be at the last acknowledged version or a later one
that was sent (a write whose acknowledgement was lost may have landed), and
each ingest document exactly at the last version published once nothing
waits. Printed as JSON (and written to ``--out``): kills survived, writes
checked, lost (must be 0), requests that failed after the client's retries.
Exits 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NoStreamResponseError

from tenantvec import ConnectionSettings, TenantVecClient
from tenantvec.errors import TenantVecError

DIM = 8
DOCS = 10
STREAM = "TENANTVEC_INGEST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def quiet(_error: Exception) -> None:
    """Connection errors while the server restarts: expected, not printed."""


def vector(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-1.0, 1.0) for _ in range(DIM)]


@dataclass
class Ledger:
    """What was sent and what was acknowledged, per (tenant, document)."""

    acked: dict[tuple[str, str], int] = field(default_factory=dict)
    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    ingest_acked: dict[tuple[str, str], int] = field(default_factory=dict)
    ingest_sent: dict[tuple[str, str], int] = field(default_factory=dict)
    requests_ok: int = 0
    requests_failed: dict[str, int] = field(default_factory=dict)
    publishes: int = 0
    publishes_acked: int = 0
    publishes_failed: int = 0
    examples: list[str] = field(default_factory=list)

    def failed(self, kind: str, example: str) -> None:
        self.requests_failed[kind] = self.requests_failed.get(kind, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(example)


class Processes:
    """The nats-server and the worker, started and killed by the run."""

    def __init__(self, root: Path, worker_bin: str, nats_bin: str, store_env: dict[str, str]) -> None:
        self.root = root
        self.store_env = store_env
        self.worker_bin = worker_bin
        self.nats_bin = nats_bin
        self.port = free_port()
        self.nats: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.worker_log = open(root / "worker.log", "ab")  # noqa: SIM115
        self.nats_log = open(root / "nats.log", "ab")  # noqa: SIM115
        (root / "worker.toml").write_text('[ingest]\nack_wait = "5s"\n')

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start_nats(self) -> None:
        self.nats = subprocess.Popen(
            [self.nats_bin, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.root / "js")],
            stdout=self.nats_log,
            stderr=self.nats_log,
        )
        wait_port(self.port)

    def stop_nats(self) -> None:
        assert self.nats is not None
        self.nats.terminate()
        self.nats.wait()

    def start_worker(self) -> None:
        env = dict(os.environ)
        env.update(
            NATS_URL=self.url,
            VECTOR_STORE_FOLDER=str(self.root / "data"),
            EMBEDDING_DIM=str(DIM),
            TENANTVEC_METRICS_LISTEN="",
            RUST_LOG="warn",
        )
        env.update(self.store_env)
        self.worker = subprocess.Popen(
            [self.worker_bin, "--config", str(self.root / "worker.toml"), "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.worker_log,
        )

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.kills += 1

    def stop(self) -> None:
        for p in (self.worker, self.nats):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.worker_log.close()
        self.nats_log.close()


def wait_port(port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nats-server did not listen on {port}")


async def requests(client: TenantVecClient, tenant: str, ledger: Ledger, stop: asyncio.Event) -> None:
    version = 0
    while not stop.is_set():
        version += 1
        doc = f"r{version % DOCS}"
        ledger.sent[(tenant, doc)] = version
        try:
            await client.upsert(tenant, [{"doc_id": doc, "vector": vector(version), "metadata": {"v": version}}])
            ledger.acked[(tenant, doc)] = version
            await client.search(tenant, vector=vector(version), top_k=3)
            ledger.requests_ok += 2
        except TenantVecError as e:
            ledger.failed(type(e).__name__, f"{tenant} {doc} v{version}: {e}")
        except asyncio.TimeoutError as e:
            ledger.failed("Timeout", f"{tenant} {doc} v{version}: {e!r}")
        await asyncio.sleep(0.02)


async def publisher(url: str, prefix: str, tenants: list[str], ledger: Ledger, stop: asyncio.Event) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet)
    js = nc.jetstream()
    version = 0
    try:
        while not stop.is_set():
            version += 1
            for tenant in tenants:
                doc = f"i{version % DOCS}"
                body = {"documents": [{"doc_id": doc, "vector": vector(version), "metadata": {"v": version}}]}
                ledger.ingest_sent[(tenant, doc)] = version
                ledger.publishes += 1
                try:
                    await js.publish(f"{prefix}.ingest.{tenant}", json.dumps(body).encode(), timeout=5)
                    ledger.ingest_acked[(tenant, doc)] = version
                    ledger.publishes_acked += 1
                except (NoStreamResponseError, nats.errors.Error, asyncio.TimeoutError):
                    ledger.publishes_failed += 1
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def chaos(procs: Processes, minutes: float, rng: random.Random, stop: asyncio.Event) -> dict[str, Any]:
    end = time.monotonic() + minutes * 60
    nats_restart_at = time.monotonic() + minutes * 30
    nats_restarted = False
    while time.monotonic() < end:
        await asyncio.sleep(min(rng.uniform(5.0, 20.0), max(0.0, end - time.monotonic())))
        if time.monotonic() >= end:
            break
        if not nats_restarted and time.monotonic() >= nats_restart_at:
            procs.stop_nats()
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            procs.start_nats()
            nats_restarted = True
            continue
        procs.kill_worker()
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        procs.start_worker()
    stop.set()
    return {"worker_kills": procs.kills, "nats_restarts": int(nats_restarted)}


async def wait_drained(url: str, limit: float) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + limit
    try:
        while True:
            try:
                if (await js.stream_info(STREAM)).state.messages == 0:
                    return
            except nats.errors.Error:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the ingest stream still held messages after {limit:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def check(client: TenantVecClient, tenants: list[str], ledger: Ledger) -> dict[str, Any]:
    checked = lost = stale = 0
    problems: list[str] = []
    for tenant in tenants:
        ids = [f"r{i}" for i in range(DOCS)] + [f"i{i}" for i in range(DOCS)]
        found = {d["doc_id"]: int(d["metadata"]["v"]) for d in await client.get(tenant, ids)}
        for doc in ids:
            key = (tenant, doc)
            acked = (ledger.acked if doc.startswith("r") else ledger.ingest_acked).get(key)
            sent = (ledger.sent if doc.startswith("r") else ledger.ingest_sent).get(key)
            if acked is None:
                continue
            checked += 1
            got = found.get(doc)
            if got is None or got < acked:
                lost += 1
                problems.append(f"{tenant}/{doc}: acked v{acked}, found {got}")
            elif sent is not None and got > sent:
                stale += 1
                problems.append(f"{tenant}/{doc}: found v{got}, never sent past v{sent}")
    return {"writes_checked": checked, "lost": lost, "wrong": stale, "problems": problems[:10]}


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    tenants = [f"chaos{i}" for i in range(args.tenants)]
    root = Path(tempfile.mkdtemp(prefix="tenantvec-chaos-"))
    store_env: dict[str, str] = {}
    if args.backend == "qdrant":
        if not args.qdrant_url:
            raise SystemExit("--backend qdrant needs --qdrant-url (or QDRANT_URL): a Qdrant server's gRPC URL")
        store_env = {
            "TENANTVEC_BACKEND": "qdrant",
            "QDRANT_URL": args.qdrant_url,
            "QDRANT_COLLECTION_PREFIX": f"chaos{os.getpid()}_",
        }
    procs = Processes(root, args.worker, args.nats_server, store_env)
    procs.start_nats()
    procs.start_worker()
    settings = ConnectionSettings(url=procs.url, request_timeout=3.0, retry_deadline=args.retry_deadline)
    clients = [await TenantVecClient.connect(settings) for _ in tenants]
    # The worker answers before the load starts.
    await clients[0].request_retrying(clients[0].subject("admin", "stats"), {})
    ledger = Ledger()
    stop = asyncio.Event()
    started = time.monotonic()
    load = [asyncio.create_task(requests(c, t, ledger, stop)) for c, t in zip(clients, tenants, strict=True)]
    load.append(asyncio.create_task(publisher(procs.url, settings.prefix, tenants, ledger, stop)))
    events = await chaos(procs, args.minutes, rng, stop)
    await asyncio.gather(*load)
    ran = time.monotonic() - started
    await wait_drained(procs.url, 300.0)
    outcome = await check(clients[0], tenants, ledger)
    for c in clients:
        await c.close()
    procs.stop()
    report = {
        "minutes": round(ran / 60, 2),
        "tenants": len(tenants),
        "backend": args.backend,
        "seed": args.seed,
        **events,
        "requests_ok": ledger.requests_ok,
        "requests_failed_after_retries": ledger.requests_failed,
        "failed_examples": ledger.examples,
        "ingest_publishes": ledger.publishes,
        "ingest_publishes_acked": ledger.publishes_acked,
        "ingest_publishes_failed": ledger.publishes_failed,
        **outcome,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "logs": str(root),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if outcome["lost"] or outcome["wrong"] else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--tenants", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--retry-deadline", type=float, default=30.0, help="the clients' retry deadline, seconds")
    p.add_argument("--backend", choices=["edge", "qdrant"], default="edge")
    p.add_argument("--qdrant-url", default=os.environ.get("QDRANT_URL"), help="with --backend qdrant")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--worker", required=True, help="the tenantvec binary")
    p.add_argument("--nats-server", required=True, help="the nats-server binary")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
