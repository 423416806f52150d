"""The tenant registry through the client, against real workers: create, list
page by page, show, change, reset, delete, and a worker that serves only the
tenants it knows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tenantvec import (
    UNCHANGED,
    BadRequest,
    InvalidTenant,
    SyncTenantVecClient,
    TenantRecord,
    TenantSettings,
    TenantVecClient,
    TenantVecStore,
    UnknownTenant,
)

from .conftest import TEXT_DIM, NatsServer, Worker, new_tenant, start_worker

#: The worker's default top_k (config/default.toml, [search] default_top_k).
DEFAULT_TOP_K = 5


def notes(n: int) -> list[dict[str, object]]:
    return [{"doc_id": f"d{i}", "text": f"note {i} about running"} for i in range(n)]


def hits(tv: SyncTenantVecClient, tenant: str) -> int:
    """Results of a search that gives no top_k: the tenant's top_k."""
    return len(tv.search(tenant, "running"))


def test_create_show_update_reset_delete(text_client: SyncTenantVecClient, tenant: str) -> None:
    tv = text_client
    before = datetime.now(timezone.utc).replace(microsecond=0)
    record = tv.create_tenant(tenant, top_k=2, max_documents=8)
    assert isinstance(record, TenantRecord)
    assert record.id == tenant
    assert record.state == "idle"
    assert record.settings == TenantSettings(top_k=2, max_documents=8, max_rps=None)
    assert record.created >= before
    assert record.created.tzinfo is not None
    assert record.embedder is None
    assert record.documents is None
    assert record.raw["id"] == tenant
    assert "home_region" in record.raw
    assert tv.tenant_info(tenant) == record
    with pytest.raises(BadRequest, match="exists"):
        tv.create_tenant(tenant)

    # The tenant's own settings hold, and a change holds on the next request
    # of the now active tenant.
    assert tv.upsert(tenant, notes(8)) == 8
    assert hits(tv, tenant) == 2
    assert tv.tenant_info(tenant).state == "active"
    changed = tv.update_tenant(tenant, top_k=3)
    assert changed.settings == TenantSettings(top_k=3, max_documents=8)
    assert changed.updated >= record.updated
    assert hits(tv, tenant) == 3

    # None puts a setting back to the worker's default; the others stay.
    reset = tv.update_tenant(tenant, top_k=None)
    assert reset.settings == TenantSettings(top_k=None, max_documents=8)
    assert hits(tv, tenant) == DEFAULT_TOP_K
    assert tv.update_tenant(tenant, max_documents=None, max_rps=UNCHANGED).settings == TenantSettings()
    assert tv.upsert(tenant, [{"doc_id": "d9", "text": "past the old quota"}]) == 1

    with pytest.raises(BadRequest, match="top_k"):
        tv.update_tenant(tenant, top_k=0)
    with pytest.raises(ValueError, match="at least one"):
        tv.update_tenant(tenant)

    # An unloaded tenant's record holds its figures.
    tv.evict(tenant)
    closed = tv.tenant_info(tenant)
    assert closed.state == "idle"
    assert closed.documents == 9
    assert closed.bytes is not None and closed.bytes > 0
    assert closed.embedder is not None
    assert (closed.embedder.model, closed.embedder.dimension) == ("hashing", TEXT_DIM)
    assert closed.last_active is not None

    tv.delete_tenant(tenant)
    with pytest.raises(UnknownTenant) as caught:
        tv.tenant_info(tenant)
    assert (caught.value.code, caught.value.status, caught.value.retryable) == ("unknown_tenant", 404, False)
    with pytest.raises(UnknownTenant):
        tv.delete_tenant(tenant)
    with pytest.raises(UnknownTenant):
        tv.update_tenant(tenant, top_k=2)
    assert tv.count(tenant) == 0  # its data went with it


def test_list_page_by_page(text_client: SyncTenantVecClient) -> None:
    tv = text_client
    stem = new_tenant("ls")
    ids = [f"{stem}-{i}" for i in range(5)]
    for t in reversed(ids):
        tv.create_tenant(t)
    tv.create_tenant(f"{stem}x")  # starts with the stem too
    other = new_tenant("other")
    tv.create_tenant(other)

    first = tv.tenant_page(prefix=f"{stem}-", limit=2)
    assert [r.id for r in first.tenants] == ids[:2]
    assert first.next is not None
    second = tv.tenant_page(prefix=f"{stem}-", cursor=first.next, limit=2)
    assert [r.id for r in second.tenants] == ids[2:4]

    assert [r.id for r in tv.list_tenants(prefix=f"{stem}-", page_size=2)] == ids
    assert [r.id for r in tv.iter_tenants(prefix=stem, page_size=2)] == [*ids, f"{stem}x"]
    assert [r.id for r in tv.list_tenants(prefix=f"{stem}-", page_size=1000)] == ids
    everyone = [r.id for r in tv.list_tenants(page_size=2)]
    assert {*ids, other} <= set(everyone)
    assert everyone == sorted(everyone)

    tv.upsert(ids[3], notes(1))
    assert [r.id for r in tv.list_tenants(prefix=f"{stem}-", state="active", page_size=2)] == [ids[3]]
    assert [r.id for r in tv.list_tenants(prefix=f"{stem}-", state="idle", page_size=2)] == [
        t for t in ids if t != ids[3]
    ]
    with pytest.raises(BadRequest, match="state"):
        tv.list_tenants(state="sleeping")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 to 1000"):
        tv.list_tenants(page_size=0)
    with pytest.raises(ValueError, match="1 to 1000"):
        tv.tenant_page(limit=1001)


def test_a_first_write_creates_the_record(text_client: SyncTenantVecClient, tenant: str) -> None:
    with pytest.raises(UnknownTenant):
        text_client.tenant_info(tenant)
    assert text_client.count(tenant) == 0  # a read creates nothing
    with pytest.raises(UnknownTenant):
        text_client.tenant_info(tenant)
    text_client.upsert(tenant, notes(2))
    assert text_client.tenant_info(tenant).settings == TenantSettings()


def test_tenant_ids_are_checked_before_sending(text_client: SyncTenantVecClient) -> None:
    for call in (
        lambda: text_client.tenant_info("Alice"),
        lambda: text_client.create_tenant("a.b", top_k=2),
        lambda: text_client.update_tenant("", top_k=2),
        lambda: text_client.delete_tenant("-x"),
    ):
        with pytest.raises(InvalidTenant):
            call()


async def test_async_client(text_worker: Worker) -> None:
    stem = new_tenant("as")
    async with TenantVecClient(url=text_worker.url, prefix=text_worker.prefix) as tv:
        created = await tv.create_tenant(f"{stem}-a", max_rps=50)
        assert isinstance(created, TenantRecord)
        assert created.settings.max_rps == 50.0
        await tv.create_tenant(f"{stem}-b")
        await tv.create_tenant(f"{stem}-c")
        assert [r.id async for r in tv.iter_tenants(prefix=stem, page_size=2)] == [
            f"{stem}-a",
            f"{stem}-b",
            f"{stem}-c",
        ]
        assert [r.id for r in await tv.list_tenants(prefix=f"{stem}-b")] == [f"{stem}-b"]
        updated = await tv.update_tenant(f"{stem}-a", max_rps=None, top_k=4)
        assert updated.settings == TenantSettings(top_k=4)
        assert (await tv.tenant_info(f"{stem}-a")).settings.top_k == 4
        await tv.delete_tenant(f"{stem}-a")
        assert [r.id for r in await tv.list_tenants(prefix=stem)] == [f"{stem}-b", f"{stem}-c"]


def test_store_lists_its_tenants(text_client: SyncTenantVecClient) -> None:
    stem = new_tenant("st")
    with TenantVecStore(f"{stem}-a", client=text_client) as store:
        with pytest.raises(UnknownTenant):
            store.tenant_info()
        store.add_texts(["a morning run"])
        text_client.create_tenant(f"{stem}-b", top_k=1)
        assert [r.id for r in store.list_tenants(prefix=stem, page_size=1)] == [f"{stem}-a", f"{stem}-b"]
        assert store.tenant_info().id == f"{stem}-a"
        other = TenantVecStore(store.list_tenants(prefix=f"{stem}-b")[0].id, client=store.client)
        other.add_texts(["an evening run", "a long run"])
        assert len(other.similarity_search("run", k=5)) == 2
        assert other.tenant_info().settings.top_k == 1


async def test_store_lists_its_tenants_async(text_worker: Worker) -> None:
    stem = new_tenant("sa")
    async with TenantVecClient(url=text_worker.url, prefix=text_worker.prefix) as tv:
        store = TenantVecStore(f"{stem}-a", client=tv)
        await store.aadd_texts(["a morning run"])
        assert [r.id for r in await store.alist_tenants(prefix=stem)] == [f"{stem}-a"]
        assert (await store.atenant_info()).documents is None  # not unloaded yet


# -- a worker that serves only the tenants it knows ------------------------------


@pytest.fixture(scope="module")
def strict_worker(nats_server: NatsServer, tmp_root: Path) -> Iterator[Worker]:
    w = start_worker(nats_server, tmp_root, "tvstrict", TEXT_DIM, TENANTVEC_AUTO_CREATE="false")
    yield w
    w.stop()


def test_without_auto_create_an_unknown_tenant_is_refused(strict_worker: Worker, tenant: str) -> None:
    with strict_worker.client() as tv:
        with pytest.raises(UnknownTenant) as caught:
            tv.upsert(tenant, notes(1))
        assert tenant in caught.value.message
        with pytest.raises(UnknownTenant):
            tv.search(tenant, "running")
        with pytest.raises(UnknownTenant):
            tv.tenant_info(tenant)
        assert not (strict_worker.data / tenant).exists()

        tv.create_tenant(tenant, max_documents=2)
        assert tv.upsert(tenant, notes(2)) == 2
        assert [h["doc_id"] for h in tv.search(tenant, "note 1 about running", top_k=1)] == ["d1"]
        assert [r.id for r in tv.list_tenants(prefix=tenant)] == [tenant]
        tv.delete_tenant(tenant)
        with pytest.raises(UnknownTenant):
            tv.count(tenant)
