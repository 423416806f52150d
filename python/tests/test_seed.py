"""The seed application's call shapes, end to end, and the README's snippet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests.vectorstores import EMBEDDING_SIZE

from tenantvec import InvalidTenant, SyncTenantVecClient, TenantVecStore
from tenantvec.seed import create_vector_store, get_vector_store_pool

from .conftest import REPO, Worker, new_tenant


@dataclass
class TenantManager:  # the seed's own class has more; the factory reads user_id
    user_id: str


DOCS = [
    {"doc_id": "a1", "text": "Morning run, 5 km in the park", "metadata": {"category": "sport"}},
    {"doc_id": "a2", "text": "Breakfast: oats with blueberries", "metadata": {"category": "food"}},
    {"doc_id": "a3", "text": "Evening run along the river", "metadata": {"category": "sport", "km": 8}},
]


def test_seed_call_shapes(text_client: SyncTenantVecClient) -> None:
    user = new_tenant("user")
    store = create_vector_store(tenant_manager=TenantManager(user), client=text_client)
    assert store.add_documents(DOCS) == ["a1", "a2", "a3"]
    assert store.add_documents(DOCS[:1], persist=True) == ["a1"]  # replaces, never duplicates
    assert len(store) == 3

    results = store.search("run in the park", top_k=2)
    assert [r["doc_id"] for r in results] == ["a1", "a3"]
    for r in results:
        assert set(r) == {"doc_id", "text", "metadata", "score"}
        assert isinstance(r["score"], float)
        assert r["metadata"]["doc_id"] == r["doc_id"]  # as the seed stored it
    assert results[0]["text"] == DOCS[0]["text"]
    assert results[0]["metadata"] == {"category": "sport", "doc_id": "a1"}
    assert results[0]["score"] >= results[1]["score"]
    assert [r["doc_id"] for r in store.search("run", top_k=5, filter={"category": "food"})] == ["a2"]

    same = create_vector_store(user, client=text_client)  # a user id works too
    assert [r["doc_id"] for r in same.search("breakfast", top_k=1)] == ["a2"]
    assert isinstance(same.vectorstore, TenantVecStore)
    assert [d.id for d in same.as_retriever(search_kwargs={"k": 1}).invoke("river")] == ["a3"]

    stats = get_vector_store_pool(text_client).get_stats()
    assert list(stats) == ["hits", "misses", "evictions", "expirations", "size", "max_size", "keys", "hit_rate"]
    assert user in stats["keys"]
    assert 0.0 <= stats["hit_rate"] <= 1.0
    assert stats["max_size"] >= stats["size"] >= 1

    assert store.delete(["a2"]) == 1
    text_client.drop(user)


def test_seed_with_client_embeddings(vec_client: SyncTenantVecClient) -> None:
    user = new_tenant("user")
    emb = DeterministicFakeEmbedding(size=EMBEDDING_SIZE)
    store = create_vector_store(user, embeddings=emb, client=vec_client)
    store.add_documents(DOCS)
    assert store.search(DOCS[1]["text"], top_k=1)[0]["doc_id"] == "a2"
    assert store.search(emb.embed_query(DOCS[2]["text"]), top_k=1)[0]["doc_id"] == "a3"  # a vector query
    vec_client.drop(user)


def test_seed_user_id_rules(text_client: SyncTenantVecClient) -> None:
    with pytest.raises(InvalidTenant, match="lower case"):
        create_vector_store(TenantManager("Alice"), client=text_client)
    with pytest.raises(TypeError):
        create_vector_store(client=text_client)


def readme_after_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From the seed application", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the section has a before and an after snippet"
    assert "from tenantvec" in blocks[1]
    return blocks[1]


def test_readme_snippet_runs_as_printed(text_worker: Worker, text_client: SyncTenantVecClient) -> None:
    text_client.drop("alice")
    env = {**os.environ, "NATS_URL": text_worker.url, "TENANTVEC_PREFIX": text_worker.prefix}
    out = subprocess.run(
        [sys.executable, "-c", readme_after_snippet()], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("a1 ") and lines[1].startswith("a2 ")
    assert "'hit_rate'" in lines[-1] and "'alice'" in lines[-1]
    text_client.drop("alice")
