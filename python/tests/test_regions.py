"""The Python client against two regions: a hub nats-server and, per region,
a nats-server with a JetStream domain of its own joined to the hub as a leaf
node, with a worker. The client changes nothing but its URL: it reaches a
tenant homed in the other region, its ingest waits for the commit in that
region, and a dead letter written there is an error here."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tenantvec import DimensionMismatch, SyncTenantVecClient

from .conftest import _missing, _stop, free_port, nats_server_bin, new_tenant, worker_bin

DIM = 6


def _listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start on port {port}", pytrace=False)
            time.sleep(0.02)


def _server(binary: Path, root: Path, name: str, config: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = root / f"{name}.conf"
    conf.write_text(config)
    args = [str(binary), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]
    if "jetstream" in config:
        args += ["-js", "-sd", str(root / f"js-{name}")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _listening(port, proc, f"nats-server {name}")
    return proc, port


async def _serving(url: str) -> bool:
    nc = await nats.connect(url)
    try:
        reply = await nc.request("tenantvec.admin.stats", b"{}", timeout=2)
        import json

        stats = json.loads(reply.data)
        return stats.get("regions", {}).get("unlinked") == []
    except Exception:
        return False
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def regions(tmp_root: Path) -> Iterator[dict[str, str]]:
    binary = nats_server_bin()
    if binary is None or not binary.exists():
        _missing("nats-server not found")
    assert binary is not None
    if not worker_bin().exists():
        _missing(f"the worker binary {worker_bin()} does not exist")
    root = tmp_root / "regions"
    root.mkdir()
    leaf = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    hub, _ = _server(binary, root, "hub", f'server_name: hub\nleafnodes {{ listen: "127.0.0.1:{leaf}" }}\n')
    procs.append(hub)
    urls: dict[str, str] = {}
    for name in ("eu", "us"):
        proc, port = _server(
            binary,
            root,
            name,
            f"server_name: {name}\njetstream {{ domain: {name} }}\n"
            f'leafnodes {{ remotes [ {{ url: "nats-leaf://127.0.0.1:{leaf}" }} ] }}\n',
        )
        procs.append(proc)
        urls[name] = f"nats://127.0.0.1:{port}"
    time.sleep(1.5)  # the leaf connections, before the workers make their directories
    for name, url in urls.items():
        data = root / f"data-{name}"
        data.mkdir()
        env = {
            **os.environ,
            "NATS_URL": url,
            "VECTOR_STORE_FOLDER": str(data),
            "EMBEDDING_DIM": str(DIM),
            "EMBEDDING_MODEL": "hashing",
            "RUST_LOG": "warn",
            "TENANTVEC_METRICS_LISTEN": "",
            "TENANTVEC_REGION": name,
            "TENANTVEC_REGIONS": "eu,us",
        }
        with (root / f"worker-{name}.log").open("wb") as out:
            procs.append(subprocess.Popen([str(worker_bin()), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 60
    for name, url in urls.items():
        while not asyncio.run(_serving(url)):
            if time.monotonic() > deadline:
                log = (root / f"worker-{name}.log").read_text()
                pytest.fail(f"the {name} worker does not serve with every region linked:\n{log}", pytrace=False)
            time.sleep(0.2)
    yield urls
    for proc in reversed(procs):
        _stop(proc)


def test_a_tenant_of_the_other_region_is_reached_and_ingested_there(regions: dict[str, str]) -> None:
    tenant = new_tenant("far")
    with SyncTenantVecClient(url=regions["eu"], request_timeout=20.0) as eu:
        record = eu.create_tenant(tenant, region="us", dr_region="eu")
        assert record.home_region == "us" and record.dr_region == "eu"
        eu.upsert(tenant, [{"doc_id": "r", "vector": [1, 2, 3, 4, 5, 6]}])
        result = eu.ingest(tenant, [{"doc_id": f"i{k}", "vector": [1, k, 0, 0, 1, 2]} for k in range(50)])
        assert result.committed
        assert eu.count(tenant) == 51
        with pytest.raises(DimensionMismatch) as e:
            eu.ingest(tenant, [{"doc_id": "bad", "vector": [1.0, 2.0]}])
        assert "dead-lettered" in e.value.message
    with SyncTenantVecClient(url=regions["us"], request_timeout=20.0) as us:
        assert us.count(tenant) == 51
        assert us.tenant_info(tenant).home_region == "us"


def test_a_tenant_moves_between_regions(regions: dict[str, str]) -> None:
    tenant = new_tenant("mover")
    with SyncTenantVecClient(url=regions["us"], request_timeout=20.0) as us:
        us.create_tenant(tenant)
        us.upsert(tenant, [{"doc_id": f"d{k}", "vector": [1, k, 0, 0, 1, 2]} for k in range(20)])
        moved = us.move_tenant(tenant, "eu")
        assert moved["moved"] == tenant and moved["to"] == "eu" and moved["erased"] is True
        assert us.count(tenant) == 20
        assert us.tenant_info(tenant).home_region == "eu"
