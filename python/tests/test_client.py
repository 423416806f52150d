"""The client against a real worker: every verb, ingest, typed errors, isolation."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import nats
import pytest

from tenantvec import (
    BadRequest,
    ConnectError,
    DimensionMismatch,
    InvalidTenant,
    NoWorker,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    SyncTenantVecClient,
    TenantVecClient,
    TooLarge,
    Unavailable,
)
from tenantvec.client import encode_vector_base64, retry_wait

from .conftest import NatsServer, Worker, _stop, free_port, new_tenant, start_worker

DOCS = [
    {"doc_id": "n1", "text": "slept 8 hours, deep sleep", "metadata": {"category": "health", "hours": 8}},
    {"doc_id": "n2", "text": "morning run in the park", "metadata": {"category": "sport", "km": 5}},
    {"doc_id": "n3", "text": "evening run along the river", "metadata": {"category": "sport", "km": 10}},
    {"doc_id": "n4", "text": "oats with blueberries for breakfast", "metadata": {"category": "food"}},
]


def test_every_verb(text_client: SyncTenantVecClient, tenant: str) -> None:
    tv = text_client
    assert tv.count(tenant) == 0
    assert tv.search(tenant, "run") == []
    assert tv.upsert(tenant, DOCS) == 4
    assert tv.count(tenant) == 4
    assert tv.count(tenant, {"category": "sport"}) == 2

    hits = tv.search(tenant, "run in the park", top_k=2)
    assert [h["doc_id"] for h in hits] == ["n2", "n3"]
    assert hits[0]["score"] >= hits[1]["score"]
    assert hits[0]["text"] == "morning run in the park"
    assert hits[0]["metadata"] == {"category": "sport", "km": 5}
    assert [h["doc_id"] for h in tv.search(tenant, "run", filter={"km": {"gte": 6}})] == ["n3"]
    assert {h["doc_id"] for h in tv.search(tenant, "run", filter={"category": ["food", "health"]})} == {"n1", "n4"}
    with_vec = tv.search(tenant, "run", top_k=1, with_vectors=True)
    assert len(with_vec[0]["vector"]) == 64

    got = tv.get(tenant, ["n3", "missing", "n1"])
    assert [d["doc_id"] for d in got] == ["n3", "n1"]
    assert "vector" not in got[0]
    assert len(tv.get(tenant, ["n2"], with_vectors=True)[0]["vector"]) == 64

    # Replace by doc_id.
    tv.upsert(tenant, [{"doc_id": "n4", "text": "porridge", "metadata": {"category": "food", "v": 2}}])
    assert tv.get(tenant, ["n4"])[0]["metadata"] == {"category": "food", "v": 2}
    assert tv.count(tenant) == 4

    assert tv.delete(tenant, ["n1", "nope"]) == 1
    assert tv.delete(tenant, filter={"category": "sport"}) == 2
    assert tv.count(tenant) == 1

    stats = tv.stats()
    for key in ("hits", "misses", "evictions", "expirations", "size", "max_size", "keys", "hit_rate"):
        assert key in stats
    assert tenant in stats["keys"]
    assert tv.evict(tenant) == 1
    assert tenant not in tv.stats()["keys"]
    assert isinstance(tv.cleanup(), int)
    assert tv.count(tenant) == 1  # evicting keeps the data

    assert tv.drop(tenant) is True
    assert tv.count(tenant) == 0
    assert tv.drop(tenant) is True  # idempotent


def test_vectors_sent_by_the_client(vec_client: SyncTenantVecClient, tenant: str) -> None:
    docs = [
        {"doc_id": "x", "text": "x", "vector": [1, 0, 0, 0, 0, 0]},
        {"doc_id": "y", "text": "y", "vector": [0.9, 0.1, 0, 0, 0, 0]},
        {"doc_id": "z", "vector": [0, 0, 0, 0, 0, 1], "metadata": {"k": 1}},
    ]
    assert vec_client.upsert(tenant, docs) == 3
    hits = vec_client.search(tenant, vector=[1, 0, 0, 0, 0, 0], top_k=3)
    assert [h["doc_id"] for h in hits] == ["x", "y", "z"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # Vectors travel as base64 both ways; the caller sees lists of floats,
    # L2-normalised by the store.
    norm = math.hypot(0.9, 0.1)
    back = vec_client.get(tenant, ["y"], with_vectors=True)[0]["vector"]
    assert back == pytest.approx([0.9 / norm, 0.1 / norm, 0, 0, 0, 0], abs=1e-6)
    hit = vec_client.search(tenant, vector=[1, 0, 0, 0, 0, 0], top_k=1, with_vectors=True)[0]
    assert hit["vector"] == pytest.approx([1, 0, 0, 0, 0, 0], abs=1e-6)
    # A string is taken to be base64 already.
    vec_client.upsert(tenant, [{"doc_id": "s", "vector": encode_vector_base64([0, 1, 0, 0, 0, 0])}])
    assert vec_client.search(tenant, vector=[0, 1, 0, 0, 0, 0], top_k=1)[0]["doc_id"] == "s"
    with pytest.raises(DimensionMismatch) as e:
        vec_client.upsert(tenant, [{"doc_id": "w", "vector": [1.0, 2.0]}])
    assert e.value.code == "dimension_mismatch" and e.value.status == 400
    with pytest.raises(ValueError):
        vec_client.search(tenant, "text", vector=[1.0] * 6)


async def test_async_client(text_worker: Worker, tenant: str) -> None:
    async with TenantVecClient(url=text_worker.url, prefix=text_worker.prefix) as tv:
        assert await tv.upsert(tenant, DOCS) == 4
        # Pipelined on one connection: applied in the order sent.
        results = await asyncio.gather(
            tv.upsert(tenant, [{"doc_id": "p", "text": "first"}]),
            tv.delete(tenant, ["p"]),
            tv.count(tenant),
        )
        assert results == [1, 1, 4]
        hits = await tv.search(tenant, "breakfast oats", top_k=1)
        assert hits[0]["doc_id"] == "n4"
        assert [d["doc_id"] for d in await tv.get(tenant, ["n2", "n1"])] == ["n2", "n1"]
        assert await tv.drop(tenant)


def test_typed_errors(text_client: SyncTenantVecClient, text_worker: Worker, tenant: str) -> None:
    tv = text_client
    with pytest.raises(InvalidTenant) as e:
        tv.count("Alice")
    assert e.value.code == "invalid_tenant" and e.value.status == 400 and not e.value.retryable
    assert isinstance(e.value, ServiceError)
    assert "Alice" in str(e.value) or "tenant" in str(e.value)
    with pytest.raises(BadRequest):
        tv.count(tenant, {})  # an empty filter
    with pytest.raises(BadRequest) as bad:
        tv.request(f"{text_worker.prefix}.frobnicate.{tenant}", {})  # an unknown verb
    assert "frobnicate" in bad.value.message or "verb" in bad.value.message
    with pytest.raises(BadRequest) as unknown:
        tv.request(f"{text_worker.prefix}.search.{tenant}", {"query": "x", "topk": 3})
    assert "topk" in unknown.value.message
    with pytest.raises(TooLarge) as big:
        tv.search(tenant, "x", top_k=100_000)
    assert big.value.status == 413
    with pytest.raises(InvalidTenant):
        tv.ingest("Not/Valid", [{"doc_id": "a", "text": "a"}])
    assert Unavailable.retryable and RateLimited.retryable and not QuotaExceeded.retryable
    assert Unavailable("x").code == "unavailable" and Unavailable.status == 503


def test_quota(text_client: SyncTenantVecClient, text_worker: Worker) -> None:
    tenant = new_tenant("quota")
    text_worker.tenant_config(tenant, {"max_documents": 2})
    with pytest.raises(QuotaExceeded) as e:
        text_client.upsert(tenant, DOCS[:3])
    assert e.value.code == "quota_exceeded" and e.value.status == 429 and not e.value.retryable
    assert text_client.count(tenant) == 0
    assert text_client.upsert(tenant, DOCS[:2]) == 2
    with pytest.raises(QuotaExceeded):
        text_client.upsert(tenant, DOCS[2:3])
    # Through JetStream ingest the refusal comes back from the dead-letter record.
    with pytest.raises(QuotaExceeded) as dl:
        text_client.ingest(tenant, DOCS[2:4], timeout=30)
    assert "dead-lettered" in dl.value.message
    assert text_client.count(tenant) == 2


def test_rate_limit(text_worker: Worker) -> None:
    tenant = new_tenant("rate")
    text_worker.tenant_config(tenant, {"max_rps": 2})
    limited = None
    with SyncTenantVecClient(url=text_worker.url, prefix=text_worker.prefix, retry_deadline=0) as once:
        for _ in range(50):
            try:
                once.count(tenant)
            except RateLimited as e:
                limited = e
                break
        assert limited is not None, "50 requests at once never hit a limit of 2 per second"
        assert limited.code == "rate_limited" and limited.status == 429 and limited.retryable
        # The worker says when a token is back: within half a second at 2 per second.
        assert limited.retry_after is not None and 0 < limited.retry_after <= 0.5
        time.sleep(1.1)
        assert once.count(tenant) == 0  # the bucket refills


def test_a_retrying_client_rides_out_the_rate_limit(text_worker: Worker) -> None:
    tenant = new_tenant("paced")
    text_worker.tenant_config(tenant, {"max_rps": 4})
    with SyncTenantVecClient(url=text_worker.url, prefix=text_worker.prefix, retry_deadline=10) as tv:
        started = time.monotonic()
        for _ in range(12):
            assert tv.count(tenant) == 0  # none refused: each waits its turn
        took = time.monotonic() - started
    # 12 requests at 4 per second, 4 of them at once from a full bucket.
    assert took >= 1.5, took


def test_retry_wait() -> None:
    assert retry_wait(1, 1.0) == pytest.approx(0.05)
    assert retry_wait(2, 1.0) == pytest.approx(0.1)
    assert retry_wait(3, 0.5) == pytest.approx(0.1)
    assert retry_wait(30, 1.0) == pytest.approx(1.0)
    assert retry_wait(1, 0.0) == 0.0
    assert retry_wait(1, 1.0, hint=0.7) == pytest.approx(0.7)


def test_no_worker(nats_server: object, vec_worker: Worker) -> None:
    with (
        SyncTenantVecClient(url=vec_worker.url, prefix="nobody-here", retry_deadline=0) as tv,
        pytest.raises(NoWorker) as e,
    ):
        tv.count("alice")
    assert "nobody-here" in str(e.value) and not e.value.timed_out and e.value.retryable
    with pytest.raises(ConnectError):
        SyncTenantVecClient(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=1)


async def test_a_request_sent_before_its_worker_starts_lands_once_it_is_up(
    nats_server: NatsServer, tmp_root: Path
) -> None:
    prefix = "tvlate"
    async with TenantVecClient(url=nats_server.url, prefix=prefix, retry_deadline=30) as tv:
        asked = asyncio.create_task(tv.count("alice"))
        await asyncio.sleep(0.5)
        assert not asked.done()  # no worker yet: tried again and again
        worker = await asyncio.to_thread(start_worker, nats_server, tmp_root, prefix, 8)
        try:
            assert await asyncio.wait_for(asked, timeout=30) == 0
        finally:
            _stop(worker.proc)


async def test_reply_timeout(vec_worker: Worker) -> None:
    nc = await nats.connect(vec_worker.url)
    try:
        await nc.subscribe("silent.count.alice")  # takes the request, never replies
        await nc.flush()
        async with TenantVecClient(url=vec_worker.url, prefix="silent", request_timeout=0.3, retry_deadline=0) as tv:
            with pytest.raises(NoWorker) as e:
                await tv.count("alice")
        assert e.value.timed_out
    finally:
        await nc.close()


def test_ingest_waits_for_the_commit(vec_client: SyncTenantVecClient, tenant: str) -> None:
    docs = [
        {"doc_id": f"d{i}", "text": f"doc {i}", "vector": [1.0, i % 7, 0, 0, 1, (i % 3) + 0.5]} for i in range(2500)
    ]
    published: list[int] = []
    result = vec_client.ingest(tenant, docs, batch_size=1000, on_published=published.append)
    assert result.committed and result.documents == 2500 and result.messages == 3
    assert published == [1000, 1000, 500]
    assert len(result.stream_seqs) == 3
    assert vec_client.count(tenant) == 2500  # committed: visible at once
    # A second ingest of the same ids replaces them.
    vec_client.ingest(tenant, docs[:10])
    assert vec_client.count(tenant) == 2500


def test_ingest_without_wait(vec_client: SyncTenantVecClient, tenant: str) -> None:
    result = vec_client.ingest(tenant, [{"doc_id": "a", "vector": [1, 2, 3, 4, 5, 6]}], wait=False)
    assert not result.committed and result.messages == 1
    deadline = time.monotonic() + 20
    while vec_client.count(tenant) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_ingest_dead_letter_is_an_error(vec_client: SyncTenantVecClient, tenant: str) -> None:
    good = [{"doc_id": "ok", "vector": [1, 2, 3, 4, 5, 6]}]
    vec_client.ingest(tenant, good)
    with pytest.raises(DimensionMismatch) as e:
        vec_client.ingest(tenant, [{"doc_id": "bad", "vector": [1.0, 2.0, 3.0]}])
    assert "dead-lettered" in e.value.message
    assert vec_client.count(tenant) == 1


def test_tenants_are_isolated(text_client: SyncTenantVecClient) -> None:
    alice, bob = new_tenant("alice"), new_tenant("bob")
    text_client.upsert(alice, [{"doc_id": "a1", "text": "morning run in the park", "metadata": {"who": "alice"}}])
    text_client.upsert(bob, [{"doc_id": "b1", "text": "evening run along the river", "metadata": {"who": "bob"}}])
    text_client.upsert(bob, [{"doc_id": "a1", "text": "bob's own a1", "metadata": {"who": "bob"}}])
    assert [h["doc_id"] for h in text_client.search(alice, "run", top_k=10)] == ["a1"]
    assert {h["metadata"]["who"] for h in text_client.search(bob, "run", top_k=10)} == {"bob"}
    assert text_client.get(alice, ["a1", "b1"])[0]["text"] == "morning run in the park"
    assert len(text_client.get(alice, ["a1", "b1"])) == 1
    assert text_client.delete(alice, ["b1"]) == 0
    text_client.drop(bob)
    assert text_client.count(bob) == 0 and text_client.count(alice) == 1
    text_client.drop(alice)
