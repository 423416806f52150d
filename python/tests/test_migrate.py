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

from tenantvec import QuotaExceeded, SyncTenantVecClient, TenantVecStore
from tenantvec.seed import create_vector_store

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


def summary_of(out: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(source: str, id_source: str, written: int, read: int | None = None, dropped: int = 0) -> dict[str, Any]:
    """A user's entry in the summary's ``migrated``."""
    return {
        "source": source,
        "id_source": id_source,
        "read": written if read is None else read,
        "written": written,
        "duplicates_dropped": dropped,
    }


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
    assert summary["dry_run"] and summary["users"] == 3 and summary["read"] == 40 + 7 + 5
    assert summary["written"] == 0 and summary["id_from"] == "auto"
    assert {u: r["id_source"] for u, r in summary["migrated"].items()} == {
        alice: "metadata",
        bob: "metadata",
        carol: "docs.jsonl",
    }
    assert summary["invalid_user_ids"] == ["Bad.User"] and summary["empty"] == ["nothing-here"]
    assert "pickle" in dry.stderr and "Bad.User" in dry.stderr
    assert vec_client.count(alice) == 0 and vec_client.count(carol) == 0

    # The real run, in batches of 8 documents.
    out = run_migrate(str(root), "--batch-size", "8", *conn)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["migrated"] == {
        alice: report("faiss", "metadata", 40),
        bob: report("faiss", "metadata", 7),
        carol: report("docs.jsonl", "docs.jsonl", 5),
    }
    assert (summary["read"], summary["written"], summary["duplicates_dropped"]) == (52, 52, 0)
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
    assert "DimensionMismatch" in summary["failed"][user]["error"]
    assert vec_client.count(user) == 0


# -- indexes written with LangChain's defaults: random docstore ids, the application's doc_id in the metadata


Seeded = tuple[str | None, str, dict[str, Any]]
"""A document as the application added it: its doc_id (``None``: none), text, metadata."""


def langchain_index(root: Path, user: str, *batches: list[Seeded]) -> Any:
    """Write a user's index as LangChain does by default: ``FAISS.from_embeddings``
    for the first batch, ``add_embeddings`` for each later one (the seed's
    upsert appends), no ``ids`` (random UUID docstore ids), the default
    distance strategy, unit vectors; the doc_id only in the metadata."""

    def parts(batch: list[Seeded]) -> tuple[list[tuple[str, list[float]]], list[dict[str, Any]]]:
        texts = [text for _, text, _ in batch]
        metas = [dict(meta, doc_id=doc_id) if doc_id is not None else dict(meta) for doc_id, _, meta in batch]
        return list(zip(texts, EMB.embed_documents(texts), strict=True)), metas

    pairs, metas = parts(batches[0])
    store = FAISS.from_embeddings(pairs, EMB, metadatas=metas)
    for batch in batches[1:]:
        store.add_embeddings(*parts(batch))
    assert store.distance_strategy == DistanceStrategy.EUCLIDEAN_DISTANCE
    store.save_local(str(root / user / "vector_store" / "faiss_index"), "index")
    return store


def docstore_ids(store: Any) -> list[str]:
    return [store.index_to_docstore_id[i] for i in range(store.index.ntotal)]


def notes(n: int, stem: str = "doc") -> list[Seeded]:
    return [
        (f"{stem}{i}", f"{TOPICS[i % len(TOPICS)]} note {i}", {"category": ["health", "sport", "food"][i % 3], "n": i})
        for i in range(n)
    ]


def test_langchain_defaults_keep_the_applications_ids(
    vec_worker: Worker, vec_client: SyncTenantVecClient, tmp_path: Path
) -> None:
    root = tmp_path / "user_data"
    user = new_tenant("lc")
    seeded = notes(14)
    faiss_store = langchain_index(root, user, seeded[:10], seeded[10:])
    uuids = docstore_ids(faiss_store)
    assert not set(uuids) & {doc_id for doc_id, _, _ in seeded}  # the docstore ids are LangChain's own

    out = run_migrate(str(root), "--nats-url", vec_worker.url, "--prefix", vec_worker.prefix, "--no-progress")
    assert out.returncode == 0, out.stderr
    summary = summary_of(out)
    assert summary["migrated"] == {user: report("faiss", "metadata", 14)} and summary["failed"] == {}
    assert "ids from metadata" in out.stderr

    # get by the application's ids: each document with its text and metadata (as the seed stored it).
    ids = [doc_id for doc_id, _, _ in seeded]
    got = vec_client.get(user, ids)
    assert got == [{"doc_id": d, "text": t, "metadata": dict(m, doc_id=d)} for d, t, m in seeded]
    assert vec_client.get(user, uuids) == []
    assert vec_client.count(user) == 14

    # Searches name the application's ids, in FAISS's order.
    store = TenantVecStore(user, embedding=EMB, client=vec_client)
    for q in [seeded[0][1], seeded[-1][1], "run and swim", "a cup of tea", "nothing alike"]:
        want = [d.metadata["doc_id"] for d in faiss_store.similarity_search(q, k=5)]
        assert [d.id for d in store.similarity_search(q, k=5)] == want, q
    want_f = faiss_store.similarity_search("tea", k=3, filter={"category": "food"}, fetch_k=14)
    got_f = store.similarity_search("tea", k=3, filter={"category": "food"})
    assert [d.id for d in got_f] == [d.metadata["doc_id"] for d in want_f]

    # The application's next add_documents of an existing id replaces the migrated document.
    app = create_vector_store(user, embeddings=EMB, client=vec_client)
    app.add_documents([{"doc_id": "doc1", "text": "run 10 km, rewritten", "metadata": {"category": "sport"}}])
    assert vec_client.count(user) == 14
    assert vec_client.get(user, ["doc1"]) == [
        {"doc_id": "doc1", "text": "run 10 km, rewritten", "metadata": {"category": "sport", "doc_id": "doc1"}}
    ]
    assert [r["doc_id"] for r in app.search("run 10 km, rewritten", top_k=14)].count("doc1") == 1
    assert app.delete(["doc3"]) == 1 and vec_client.count(user) == 13
    vec_client.drop(user)


def test_the_last_version_of_a_doc_id_is_kept(
    vec_worker: Worker, vec_client: SyncTenantVecClient, tmp_path: Path
) -> None:
    root = tmp_path / "user_data"
    user = new_tenant("dups")
    a1 = ("a", "oats for breakfast", {"v": 1})
    a2 = ("a", "oats with honey", {"v": 2})
    a3 = ("a", "oats with blueberries", {"v": 3})
    langchain_index(root, user, [a1, ("b", "evening run", {})], [a2], [("c", "green tea", {})], [a3])

    conn = ["--nats-url", vec_worker.url, "--prefix", vec_worker.prefix, "--no-progress"]
    dry = summary_of(run_migrate(str(root), "--dry-run", *conn))
    assert dry["migrated"][user] == report("faiss", "metadata", 0, read=5, dropped=2)
    out = run_migrate(str(root), *conn)
    assert out.returncode == 0, out.stderr
    summary = summary_of(out)
    assert summary["migrated"] == {user: report("faiss", "metadata", 3, read=5, dropped=2)}
    assert summary["duplicates_dropped"] == 2 and "2 earlier versions" in out.stderr
    assert vec_client.count(user) == 3
    [a] = vec_client.get(user, ["a"], with_vectors=True)
    assert (a["text"], a["metadata"]) == ("oats with blueberries", {"v": 3, "doc_id": "a"})
    assert a["vector"] == pytest.approx(EMB.embed_query("oats with blueberries"), abs=1e-6)
    hits = vec_client.search(user, vector=EMB.embed_query("oats with honey"), top_k=3)
    assert sorted(h["doc_id"] for h in hits) == ["a", "b", "c"]
    vec_client.drop(user)


def test_rerun_after_a_migration_under_docstore_ids(
    vec_worker: Worker, vec_client: SyncTenantVecClient, tmp_path: Path
) -> None:
    root = tmp_path / "user_data"
    user = new_tenant("rerun")
    seeded = notes(6)
    uuids = docstore_ids(langchain_index(root, user, seeded))
    ids = [doc_id for doc_id, _, _ in seeded]
    vec_worker.tenant_config(user, {"max_documents": 6})  # a setting, which --replace keeps
    conn = [str(root), "--nats-url", vec_worker.url, "--prefix", vec_worker.prefix, "--no-progress"]

    first = run_migrate(*conn, "--id-from", "docstore")
    assert first.returncode == 0, first.stderr
    assert summary_of(first)["migrated"] == {user: report("faiss", "docstore", 6)}
    assert [d["doc_id"] for d in vec_client.get(user, uuids)] == uuids

    # Without --replace, the rerun under the application's ids stops for the user and writes nothing.
    refused = run_migrate(*conn)
    assert refused.returncode == 1
    summary = summary_of(refused)
    assert summary["migrated"] == {}
    failed = summary["failed"][user]
    assert (failed["id_source"], failed["read"], failed["written"]) == ("metadata", 6, 0)
    assert "holds 6 documents under ids this run does not write" in failed["error"]
    assert "--replace" in failed["error"] and "--replace" in refused.stderr
    assert vec_client.count(user) == 6 and vec_client.get(user, ids) == []

    # With --replace: the application's ids only, and the tenant's settings still hold.
    replaced = run_migrate(*conn, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    summary = summary_of(replaced)
    assert summary["replace"] is True
    assert summary["migrated"] == {user: {**report("faiss", "metadata", 6), "erased": 6}}
    assert vec_client.count(user) == 6
    assert [d["doc_id"] for d in vec_client.get(user, ids)] == ids and vec_client.get(user, uuids) == []
    with pytest.raises(QuotaExceeded):
        vec_client.upsert(user, [{"doc_id": "extra", "vector": EMB.embed_query("extra")}])

    # Run again under the same ids: nothing to replace, so no --replace needed.
    again = run_migrate(*conn)
    assert again.returncode == 0, again.stderr
    assert summary_of(again)["migrated"] == {user: report("faiss", "metadata", 6)}
    assert vec_client.count(user) == 6
    vec_client.drop(user)


def test_documents_without_a_doc_id(vec_worker: Worker, vec_client: SyncTenantVecClient, tmp_path: Path) -> None:
    root = tmp_path / "user_data"
    user = new_tenant("mixed")
    mixed: list[Seeded] = [*notes(4), (None, "a note added without an id", {"category": "food"})]
    uuids = docstore_ids(langchain_index(root, user, mixed))
    conn = [str(root), "--nats-url", vec_worker.url, "--prefix", vec_worker.prefix, "--no-progress"]

    # --id-from metadata: the user fails, nothing is written for it.
    strict = run_migrate(*conn, "--id-from", "metadata")
    assert strict.returncode == 1
    failed = summary_of(strict)["failed"][user]
    assert (failed["id_source"], failed["read"], failed["written"]) == ("metadata", 5, 0)
    assert "1 of 5 documents have no usable 'doc_id'" in failed["error"]
    assert uuids[4] in failed["error"] and "nothing was written" in failed["error"]
    assert vec_client.count(user) == 0

    # auto falls back to the docstore ids, and says so.
    auto = run_migrate(*conn)
    assert auto.returncode == 0, auto.stderr
    assert summary_of(auto)["migrated"] == {user: report("faiss", "docstore", 5)}
    assert "the docstore ids are used" in auto.stderr
    assert [d["doc_id"] for d in vec_client.get(user, uuids)] == uuids
    vec_client.drop(user)
