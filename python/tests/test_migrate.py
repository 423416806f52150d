"""Migration of seed-style folders made here with langchain-community's FAISS."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_tests.integration_tests.vectorstores import EMBEDDING_SIZE

from tenantvec import SyncTenantVecClient, TenantVecStore

from .conftest import Worker, new_tenant

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy


class UnitFakeEmbedding(Embeddings):
    """Deterministic fake embeddings, L2-normalised like the seed's (OpenAI) ones."""

    def __init__(self, size: int) -> None:
        self.inner = DeterministicFakeEmbedding(size=size)

    @staticmethod
    def _unit(v: list[float]) -> list[float]:
        a = np.asarray(v, dtype=np.float64)
        return (a / np.linalg.norm(a)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._unit(v) for v in self.inner.embed_documents(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self._unit(self.inner.embed_query(text))


EMB = UnitFakeEmbedding(EMBEDDING_SIZE)
TOPICS = ["sleep", "run", "swim", "oats", "tea", "yoga", "walk", "bike", "rice", "soup", "stretch", "nap"]


def seed_store(root: Path, user: str, n: int) -> list[dict[str, Any]]:
    """Write a user's FAISS index the way the seed does (save_local, inner product, doc_id in metadata)."""
    docs = [
        {
            "doc_id": f"{user}-{i}",
            "text": f"{TOPICS[i % len(TOPICS)]} note {i} of {user}",
            "metadata": {"category": ["health", "sport", "food"][i % 3], "n": i, "tags": ["a", "b"][: i % 3]},
        }
        for i in range(n)
    ]
    store = FAISS.from_texts(
        [d["text"] for d in docs],
        EMB,
        metadatas=[dict(d["metadata"], doc_id=d["doc_id"]) for d in docs],
        ids=[d["doc_id"] for d in docs],
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )
    store.save_local(str(root / user / "vector_store" / "faiss_index"), "index")
    return docs


def load_seed(root: Path, user: str) -> Any:
    return FAISS.load_local(
        str(root / user / "vector_store" / "faiss_index"),
        EMB,
        "index",
        allow_dangerous_deserialization=True,  # written by this test
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


def run_migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantvec.migrate", *args], capture_output=True, text=True, timeout=300
    )


def snapshot(client: SyncTenantVecClient, user: str, ids: list[str]) -> list[Any]:
    return [client.count(user), client.get(user, ids, with_vectors=True)]


def test_migration(vec_worker: Worker, vec_client: SyncTenantVecClient, tmp_path: Path) -> None:
    root = tmp_path / "user_data"
    alice, bob, carol = new_tenant("alice"), new_tenant("bob"), new_tenant("carol")
    seeded = {alice: seed_store(root, alice, 40), bob: seed_store(root, bob, 7)}
    seed_store(root, "Bad.User", 3)  # breaks the tenant rule: reported, skipped
    (root / carol).mkdir()
    carol_docs = [
        {"doc_id": f"c{i}", "text": f"carol's {TOPICS[i]} diary", "metadata": {"day": i}, "tenant": carol}
        for i in range(5)
    ]
    (root / carol / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in carol_docs))
    (root / "nothing-here").mkdir()
    conn = ["--nats-url", vec_worker.url, "--prefix", vec_worker.prefix, "--no-progress"]

    # Dry run, through the console script: counts, sends nothing.
    script = Path(sys.executable).with_name("tenantvec-migrate")
    dry = subprocess.run([str(script), str(root), "--dry-run", *conn], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    summary = json.loads(dry.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] and summary["users"] == 3 and summary["documents"] == 40 + 7 + 5
    assert summary["invalid_user_ids"] == ["Bad.User"] and summary["empty"] == ["nothing-here"]
    assert "pickle" in dry.stderr and "Bad.User" in dry.stderr
    assert vec_client.count(alice) == 0 and vec_client.count(carol) == 0

    # The real run, in batches of 8 documents.
    out = run_migrate(str(root), "--batch-size", "8", *conn)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["migrated"] == {
        alice: {"source": "faiss", "documents": 40},
        bob: {"source": "faiss", "documents": 7},
        carol: {"source": "docs.jsonl", "documents": 5},
    }
    assert summary["invalid_user_ids"] == ["Bad.User"] and summary["failed"] == {}
    assert "skip 'Bad.User'" in out.stderr and "allow_dangerous_deserialization" in out.stderr

    # The same queries give the same documents in the same order, with the same scores.
    for user, docs in seeded.items():
        assert vec_client.count(user) == len(docs)
        faiss_store = load_seed(root, user)
        store = TenantVecStore(user, embedding=EMB, client=vec_client)
        queries = [docs[0]["text"], docs[-1]["text"], "run and swim", "a cup of tea", "nothing alike"]
        for q in queries:
            want = faiss_store.similarity_search_with_score(q, k=5)
            got = store.similarity_search_with_score(q, k=5)
            assert [d.id for d, _ in got] == [d.id for d, _ in want], q
            assert [d.page_content for d, _ in got] == [d.page_content for d, _ in want]
            assert [d.metadata for d, _ in got] == [d.metadata for d, _ in want]
            assert [s for _, s in got] == pytest.approx([float(s) for _, s in want], abs=1e-4)
        # Filtered, as the seed did it (FAISS filters after fetching candidates).
        want_f = faiss_store.similarity_search("run", k=3, filter={"category": "sport"}, fetch_k=len(docs))
        got_f = store.similarity_search("run", k=3, filter={"category": "sport"})
        assert [d.id for d in got_f] == [d.id for d in want_f]
    assert vec_client.count(carol) == 5
    assert vec_client.get(carol, ["c2"])[0] == {"doc_id": "c2", "text": "carol's swim diary", "metadata": {"day": 2}}

    # A second run changes nothing.
    ids = {alice: [d["doc_id"] for d in seeded[alice]], bob: [d["doc_id"] for d in seeded[bob]]}
    ids[carol] = [d["doc_id"] for d in carol_docs]
    before = {u: snapshot(vec_client, u, i) for u, i in ids.items()}
    again = run_migrate(str(root), *conn)
    assert again.returncode == 0, again.stderr
    assert {u: snapshot(vec_client, u, i) for u, i in ids.items()} == before

    for user in ids:
        vec_client.drop(user)


def test_migration_reports_a_failed_user(vec_worker: Worker, vec_client: SyncTenantVecClient, tmp_path: Path) -> None:
    root = tmp_path / "user_data"
    user = new_tenant("wrongdim")
    store = FAISS.from_texts(["a", "b"], DeterministicFakeEmbedding(size=EMBEDDING_SIZE + 2), ids=["1", "2"])
    store.save_local(str(root / user / "vector_store" / "faiss_index"), "index")
    out = run_migrate(str(root), "--nats-url", vec_worker.url, "--no-progress", "--timeout", "60")
    assert out.returncode == 1
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert "DimensionMismatch" in summary["failed"][user]
    assert vec_client.count(user) == 0
