"""Move the seed application's data into tenantvec.

    python -m tenantvec.migrate USER_DATA [--dry-run] [--nats-url URL] [--prefix P]
    tenantvec-migrate USER_DATA ...

Walks ``USER_DATA/<user_id>/``. A user with a LangChain FAISS index
(``vector_store/faiss_index/index.faiss`` + ``index.pkl``, written by
``FAISS.save_local``) is moved with its own vectors: the vectors are read back
from the index, texts, metadata and ids from the docstore. A user with only
``docs.jsonl`` (``{"doc_id", "text", "metadata"}`` per line) is re-ingested
from it and the worker embeds the texts (a line's ``"vector"`` is sent when
present). Everything goes through the durable JetStream ingest, in batches,
into tenant ``<user_id>``; the command waits until the worker has committed
each user's documents.

Idempotent: documents are upserted by ``doc_id``, so a second run replaces
what the first wrote and never duplicates it (a document deleted from the
index since is not deleted from the tenant). A folder name that is not a
valid tenant id (``[a-z0-9][a-z0-9_-]{0,63}``) is reported and skipped, never
renamed. ``--dry-run`` reads and counts without connecting.

``index.pkl`` is a Python pickle, and loading a pickle can run code: the
command loads it with ``allow_dangerous_deserialization=True`` and must only
be given folders your own application wrote.

The worker's data folder (``VECTOR_STORE_FOLDER``) should not be the seed's
``user_data``: both keep a tenant's store in ``<folder>/<id>/vector_store/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import TenantVecError
from .settings import ConnectionSettings, is_valid_tenant

PICKLE_NOTICE = (
    "note: index.pkl files are Python pickles, loaded with allow_dangerous_deserialization=True; "
    "loading a pickle can run code. Only migrate folders that your own application wrote."
)
INDEX_DIR = Path("vector_store") / "faiss_index"
INDEX_NAME = "index"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _embeddings_stub() -> Any:
    from langchain_core.embeddings import Embeddings

    class ReadOnly(Embeddings):
        """The index is only read: nothing is embedded during a migration."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise RuntimeError("the migration does not embed")

        def embed_query(self, text: str) -> list[float]:
            raise RuntimeError("the migration does not embed")

    return ReadOnly()


def read_faiss(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Documents (with vectors) of a LangChain FAISS index, and notes about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy

    store = FAISS.load_local(
        str(folder),
        _embeddings_stub(),
        INDEX_NAME,
        allow_dangerous_deserialization=True,  # trusted local files only: see PICKLE_NOTICE
    )
    index = store.index
    n = int(index.ntotal)
    notes: list[str] = []
    if n == 0:
        return [], notes
    try:
        vectors = index.reconstruct_n(0, n)
    except RuntimeError:  # IVF indexes keep no id -> vector map until asked
        import faiss

        faiss.extract_index_ivf(index).make_direct_map()
        vectors = index.reconstruct_n(0, n)
    if store.distance_strategy not in (DistanceStrategy.MAX_INNER_PRODUCT, DistanceStrategy.COSINE):
        import numpy as np

        norms = np.linalg.norm(vectors, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            notes.append(
                f"the index ranks by {store.distance_strategy.value} and its vectors are not normalised: "
                "tenantvec ranks by cosine similarity, so the order of results may differ"
            )
    docs: list[dict[str, Any]] = []
    for i in range(n):
        doc_id = store.index_to_docstore_id.get(i)
        if doc_id is None:
            notes.append(f"vector {i} has no docstore id: skipped")
            continue
        doc = store.docstore.search(doc_id)
        if isinstance(doc, str):  # InMemoryDocstore answers a message when missing
            notes.append(f"{doc_id}: {doc}: skipped")
            continue
        docs.append({"doc_id": str(doc_id), "text": doc.page_content, "metadata": doc.metadata, "vector": vectors[i]})
    return docs, notes


def read_jsonl(path: Path, user_id: str) -> list[dict[str, Any]]:
    """Documents of a ``docs.jsonl`` (lines of another ``"tenant"`` are skipped)."""
    docs: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            if d.get("tenant") not in (None, user_id):
                continue
            if not d.get("doc_id"):
                raise ValueError(f"{path}:{n}: no doc_id")
            doc = {"doc_id": str(d["doc_id"]), "text": d.get("text"), "metadata": d.get("metadata") or {}}
            if d.get("vector") is not None:
                doc["vector"] = d["vector"]
            docs.append(doc)
    return docs


def user_folders(root: Path, only: list[str] | None) -> Iterator[Path]:
    for p in sorted(root.iterdir()):
        if p.is_dir() and (not only or p.name in only):
            yield p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tenantvec-migrate",
        description="Move the seed application's user_data/ (LangChain FAISS indexes, docs.jsonl) "
        "into tenantvec, one tenant per user, through the durable JetStream ingest.",
        epilog=PICKLE_NOTICE,
    )
    ap.add_argument("user_data", type=Path, help="the seed's user_data folder")
    ap.add_argument("--dry-run", action="store_true", help="read and count, send nothing")
    ap.add_argument("--nats-url", help="NATS server URL (default: NATS_URL or nats://127.0.0.1:4222)")
    ap.add_argument("--prefix", help="subject prefix (default: TENANTVEC_PREFIX or tenantvec)")
    ap.add_argument("--batch-size", type=int, default=500, help="documents per ingest message (≤ 1000)")
    ap.add_argument("--user", action="append", help="migrate only this user (repeatable)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker per user")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)

    if not a.user_data.is_dir():
        log(f"error: {a.user_data} is not a folder")
        return 2
    log(PICKLE_NOTICE)
    from tqdm import tqdm

    client = None
    if not a.dry_run:
        from .sync import SyncTenantVecClient

        try:
            client = SyncTenantVecClient(ConnectionSettings.from_env(url=a.nats_url, prefix=a.prefix))
        except TenantVecError as e:
            log(f"error: {e}")
            return 2

    summary: dict[str, Any] = {
        "dry_run": a.dry_run,
        "users": 0,
        "documents": 0,
        "migrated": {},
        "invalid_user_ids": [],
        "empty": [],
        "failed": {},
    }
    try:
        for folder in user_folders(a.user_data, a.user):
            user = folder.name
            if not is_valid_tenant(user):
                log(
                    f"skip {user!r}: not a valid tenant id ([a-z0-9][a-z0-9_-]{{0,63}}); "
                    "rename the folder and run again for this user (--user NAME)"
                )
                summary["invalid_user_ids"].append(user)
                continue
            index = folder / INDEX_DIR
            jsonl = folder / "docs.jsonl"
            try:
                if (index / f"{INDEX_NAME}.faiss").is_file() and (index / f"{INDEX_NAME}.pkl").is_file():
                    source = "faiss"
                    docs, notes = read_faiss(index)
                elif jsonl.is_file():
                    source = "docs.jsonl"
                    docs, notes = (
                        read_jsonl(jsonl, user),
                        ["no FAISS index: re-ingested from docs.jsonl, the worker embeds"],
                    )
                else:
                    summary["empty"].append(user)
                    continue
                for note in notes:
                    log(f"{user}: {note}")
                summary["users"] += 1
                summary["documents"] += len(docs)
                if client is None:
                    log(f"{user}: {len(docs)} documents from {source} (dry run: nothing sent)")
                    summary["migrated"][user] = {"source": source, "documents": len(docs)}
                    continue
                bar = tqdm(
                    total=len(docs), desc=user, unit="doc", disable=True if a.no_progress else None, file=sys.stderr
                )
                try:
                    result = client.ingest(
                        user, docs, wait=True, timeout=a.timeout, batch_size=a.batch_size, on_published=bar.update
                    )
                finally:
                    bar.close()
                log(f"{user}: {result.documents} documents from {source} committed ({result.messages} messages)")
                summary["migrated"][user] = {"source": source, "documents": result.documents}
            except (TenantVecError, OSError, ValueError, RuntimeError) as e:
                log(f"{user}: failed: {type(e).__name__}: {e}")
                summary["failed"][user] = f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            client.close()
    print(json.dumps(summary), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
