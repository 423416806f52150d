"""TenantVecStore beyond the standard suite: filters, scores, retrievers,
constructors, an async client, both ways of embedding."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests.vectorstores import EMBEDDING_SIZE

from tenantvec import InvalidTenant, SyncTenantVecClient, TenantVecClient, TenantVecStore

from .conftest import Worker, new_tenant

NOTES = [
    Document(page_content="slept 8 hours, deep sleep", metadata={"category": "health", "hours": 8}, id="n1"),
    Document(page_content="morning run in the park", metadata={"category": "sport", "km": 5}, id="n2"),
    Document(page_content="evening run along the river", metadata={"category": "sport", "km": 10}, id="n3"),
    Document(page_content="oats with blueberries", metadata={"category": "food"}),
]


def test_worker_embeds(text_client: SyncTenantVecClient, tenant: str) -> None:
    store = TenantVecStore(tenant, client=text_client)
    assert store.embeddings is None
    before = [d.model_copy(deep=True) for d in NOTES]
    ids = store.add_documents(NOTES)
    assert before == NOTES  # inputs never changed
    assert ids[:3] == ["n1", "n2", "n3"] and ids[3]  # the last one generated
    assert store.count() == 4

    pairs = store.similarity_search_with_score("run in the park", k=2)
    assert [d.id for d, _ in pairs] == ["n2", "n3"]
    assert pairs[0][1] > pairs[1][1]
    assert pairs[0][0] == NOTES[1]
    assert [d.id for d in store.similarity_search("run", k=5, filter={"km": {"gt": 6}})] == ["n3"]
    assert {d.id for d in store.similarity_search("x", k=5, filter={"category": ["food", "health"]})} == {"n1", ids[3]}

    relevance = store.similarity_search_with_relevance_scores("run in the park", k=1)
    assert 0.0 <= relevance[0][1] <= 1.0

    vector = text_client.get(tenant, ["n1"], with_vectors=True)[0]["vector"]
    assert store.similarity_search_by_vector(vector, k=1)[0].id == "n1"

    retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"category": "sport"}})
    assert [d.id for d in retriever.invoke("river")] == ["n3"]

    assert [d.id for d in store.get_by_ids(["n3", "zzz", "n1"])] == ["n3", "n1"]
    store.delete(["n1"])
    store.delete(filter={"category": "sport"})
    assert store.count() == 1
    store.delete()  # everything
    assert store.count() == 0


async def test_async_methods_on_a_sync_client(text_client: SyncTenantVecClient, tenant: str) -> None:
    store = TenantVecStore(tenant, client=text_client)
    ids = await store.aadd_texts(["red apple", "green pear"], [{"k": 1}, {"k": 2}], ids=["a", None])
    assert ids[0] == "a" and len(ids) == 2
    docs = await store.asimilarity_search("apple", k=1)
    assert docs == [Document(id="a", page_content="red apple", metadata={"k": 1})]
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert len(await retriever.ainvoke("pear")) == 2
    assert [d.id for d in await store.aget_by_ids([ids[1], "a"])] == [ids[1], "a"]
    await store.adelete(["a"])
    assert await store.acount() == 1


async def test_store_on_an_async_client(vec_worker: Worker, tenant: str) -> None:
    emb = DeterministicFakeEmbedding(size=EMBEDDING_SIZE)
    async with TenantVecClient(url=vec_worker.url, prefix=vec_worker.prefix) as tv:
        store = TenantVecStore(tenant, embedding=emb, client=tv)
        await store.aadd_documents(NOTES[:3])
        hits = await store.asimilarity_search_with_score("morning run in the park", k=3)
        assert hits[0][0].id == "n2" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        by_vector = await store.asimilarity_search_by_vector(emb.embed_query("evening run along the river"), k=1)
        assert by_vector[0].id == "n3"
        with pytest.raises(RuntimeError, match="async"):
            store.similarity_search("x")
        await tv.drop(tenant)


def test_from_texts(vec_worker: Worker, text_worker: Worker) -> None:
    t1, t2 = new_tenant("ft"), new_tenant("ft")
    emb = DeterministicFakeEmbedding(size=EMBEDDING_SIZE)
    with TenantVecStore.from_texts(
        ["a", "b"], emb, [{"i": 1}, {"i": 2}], ids=["1", "2"], tenant=t1, url=vec_worker.url, prefix=vec_worker.prefix
    ) as s1:
        assert s1.similarity_search("b", k=1)[0] == Document(id="2", page_content="b", metadata={"i": 2})
        s1.delete()
    with TenantVecStore.from_texts(["hello world"], None, tenant=t2, url=text_worker.url, prefix="tvtext") as s2:
        assert s2.similarity_search("hello", k=1)[0].page_content == "hello world"
        s2.delete()


async def test_afrom_texts(text_worker: Worker) -> None:
    tenant = new_tenant("aft")
    store = await TenantVecStore.afrom_texts(["x y z"], None, tenant=tenant, url=text_worker.url, prefix="tvtext")
    try:
        assert (await store.asimilarity_search("x", k=1))[0].page_content == "x y z"
        await store.adelete()
    finally:
        store.close()


def test_bad_tenant_is_refused_before_anything_is_sent(text_client: SyncTenantVecClient) -> None:
    with pytest.raises(InvalidTenant):
        TenantVecStore("Alice", client=text_client)
    with pytest.raises(InvalidTenant):
        TenantVecStore("../etc", client=text_client)
