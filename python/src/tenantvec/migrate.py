"""Move the seed application's data into tenantvec.

    python -m tenantvec.migrate USER_DATA [--dry-run] [--id-from auto|metadata|docstore] [--replace] ...
    tenantvec-migrate USER_DATA ...

Walks ``USER_DATA/<user_id>/``. A user with a LangChain FAISS index
(``vector_store/faiss_index/index.faiss`` + ``index.pkl``, written by
``FAISS.save_local``) is moved with its own vectors: the vectors are read back
from the index, texts and metadata from the docstore. A user with only
``docs.jsonl`` (``{"doc_id", "text", "metadata"}`` per line) is re-ingested
from it and the worker embeds the texts (a line's ``"vector"`` is sent when
present). Everything goes through the durable JetStream ingest, in batches,
into tenant ``<user_id>``; the command waits until the worker has committed
each user's documents.

Ids: a document keeps the application's own id. LangChain's FAISS gives
every document a docstore id of its own (a random UUID unless the caller
passed ``ids``), while the seed keeps the application's ``doc_id`` in the
document's metadata. With ``--id-from auto`` (the default) a user's documents
take their metadata ``doc_id`` when every one of them has one, else their
docstore ids; ``--id-from metadata`` refuses a user with a document without
one (nothing is written for that user), ``--id-from docstore`` always takes
the docstore ids. A ``docs.jsonl`` line's ``doc_id`` is the application's id
and is used whatever ``--id-from`` says.

Duplicates: the seed's ``add_documents`` appended to the index instead of
replacing, so an index may hold several documents with one ``doc_id``. The
one added last (the highest position in the index) is kept, the others are
dropped and counted.

Reruns: documents are upserted by ``doc_id``, so a second run with the same
ids replaces what the first wrote and never duplicates it. A run whose ids
would leave other documents beside its own (the tenant holds ids this run
does not write: an earlier run under the other id source, documents deleted
from the index or written to the tenant since) stops for that user before
writing anything and says so; ``--replace`` erases the tenant's documents
first (the worker's ``drop``: the tenant's ``config/``, its quota and rate
limit, stays).

A folder name that is not a valid tenant id (``[a-z0-9][a-z0-9_-]{0,63}``) is
reported and skipped, never renamed. ``--dry-run`` reads and counts without
connecting. The summary is one JSON line on stdout: per user the documents
read and written, the duplicates dropped, where the ids came from, and the
error of a user that failed; the exit code is 1 when a user failed.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .client import MAX_IDS_PER_REQUEST
from .errors import TenantVecError
from .settings import ConnectionSettings, is_valid_tenant
from .sync import SyncTenantVecClient

PICKLE_NOTICE = (
    "note: index.pkl files are Python pickles, loaded with allow_dangerous_deserialization=True; "
    "loading a pickle can run code. Only migrate folders that your own application wrote."
)
INDEX_DIR = Path("vector_store") / "faiss_index"
INDEX_NAME = "index"
#: The metadata key where the seed keeps the application's id.
METADATA_ID_KEY = "doc_id"
#: The worker's bound on a ``doc_id`` (docs/protocol.md, "Documents and hits").
MAX_DOC_ID_BYTES = 256
#: Bytes of documents asked for in one ``get`` while checking a tenant's ids
#: (a quarter of nats-server's default ``max_payload``, the bound of a reply).
CHECK_REPLY_BUDGET = 256 * 1024

IdFrom = Literal["auto", "metadata", "docstore"]
ID_FROM_CHOICES: tuple[str, ...] = get_args(IdFrom)


class MigrationError(Exception):
    """A user that cannot be migrated as asked; nothing was written for it."""


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
    """Documents (with vectors) of a LangChain FAISS index, in the index's
    order, and notes about it. A document's ``doc_id`` is its docstore id."""
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


def metadata_id(metadata: Mapping[str, Any] | None) -> str | None:
    """The application's id kept in a document's metadata (``doc_id``): a
    non-empty string, or an integer (as its decimal string), of at most
    :data:`MAX_DOC_ID_BYTES` bytes; ``None`` when there is no such id."""
    value = (metadata or {}).get(METADATA_ID_KEY)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and 0 < len(value.encode("utf-8")) <= MAX_DOC_ID_BYTES:
        return value
    return None


def assign_ids(docs: Sequence[dict[str, Any]], id_from: IdFrom) -> tuple[list[dict[str, Any]], str, list[str]]:
    """Give FAISS documents (``doc_id`` = docstore id) their tenant ids:
    the documents, the id source used (``"metadata"`` or ``"docstore"``) and
    notes. Raises :class:`MigrationError` for ``id_from="metadata"`` when a
    document has no usable ``doc_id`` in its metadata."""
    if id_from == "docstore":
        return list(docs), "docstore", []
    ids = [metadata_id(d.get("metadata")) for d in docs]
    missing = [i for i, doc_id in enumerate(ids) if doc_id is None]
    if not missing:
        return [dict(d, doc_id=doc_id) for d, doc_id in zip(docs, ids, strict=True)], "metadata", []
    first = docs[missing[0]]
    what = (
        f"{len(missing)} of {len(docs)} documents have no usable {METADATA_ID_KEY!r} in their metadata "
        f"(a non-empty string or integer of at most {MAX_DOC_ID_BYTES} bytes; "
        f"the first is docstore id {first['doc_id']!r})"
    )
    if id_from == "metadata":
        raise MigrationError(f"--id-from metadata: {what}; nothing was written for this user")
    return list(docs), "docstore", [f"{what}: the docstore ids are used (--id-from metadata refuses such a user)"]


def keep_last(docs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One document per ``doc_id``: the last in index order (the one added
    last), the kept documents in that order; and how many were dropped."""
    last = {d["doc_id"]: i for i, d in enumerate(docs)}
    kept = [d for i, d in enumerate(docs) if last[d["doc_id"]] == i]
    return kept, len(docs) - len(kept)


def _reply_size(doc: Mapping[str, Any]) -> int:
    """About the bytes of a document in a ``get`` reply without vectors."""
    text = doc.get("text") or ""
    meta = json.dumps(doc.get("metadata") or {}, ensure_ascii=False)
    return len(doc["doc_id"].encode()) + len(text.encode()) + len(meta.encode()) + 64


def other_documents(client: SyncTenantVecClient, tenant: str, docs: Sequence[dict[str, Any]]) -> int:
    """How many of the tenant's documents have ids that are not the
    ``doc_id`` of one of ``docs`` (whose ids are unique).

    The worker has no verb that lists a tenant's ids, and needs none here:
    the tenant's ``count`` minus how many of these ids ``get`` finds is
    exact, since ids are unique in a tenant and in ``docs``. An empty tenant
    (a first run) costs the one ``count``. Otherwise the ids are looked up
    without vectors, in requests whose replies are sized by the documents
    read (what an earlier run wrote under the same ids), so that each reply
    stays well inside the server's ``max_payload``.
    """
    held = client.count(tenant)
    if held == 0:
        return 0
    found = 0
    chunk: list[str] = []
    size = 0
    for doc in docs:
        doc_size = _reply_size(doc)
        if chunk and (size + doc_size > CHECK_REPLY_BUDGET or len(chunk) >= MAX_IDS_PER_REQUEST):
            found += len(client.get(tenant, chunk))
            chunk, size = [], 0
        chunk.append(doc["doc_id"])
        size += doc_size
    if chunk:
        found += len(client.get(tenant, chunk))
    return held - found


@dataclass
class UserReport:
    """What the migration did for one user (a value of the summary's
    ``migrated`` or ``failed``)."""

    source: str
    """``"faiss"`` or ``"docs.jsonl"``."""
    id_source: str | None = None
    """Where the ids came from: ``"metadata"``, ``"docstore"`` or ``"docs.jsonl"``."""
    read: int = 0
    """Documents read from the source."""
    written: int = 0
    """Documents the worker committed."""
    duplicates_dropped: int = 0
    """Earlier versions of a ``doc_id`` left out (the last added is kept)."""
    erased: int | None = None
    """With ``--replace``: the tenant's documents erased before writing."""
    error: str | None = None
    """Why the user failed."""

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "id_source"}


@dataclass
class Options:
    """The command's choices for every user."""

    id_from: IdFrom = "auto"
    replace: bool = False
    batch_size: int = 500
    timeout: float = 600.0
    progress: bool = True


@dataclass
class Summary:
    dry_run: bool
    options: Options
    migrated: dict[str, UserReport] = field(default_factory=dict)
    failed: dict[str, UserReport] = field(default_factory=dict)
    invalid_user_ids: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        reports = [*self.migrated.values(), *self.failed.values()]
        return {
            "dry_run": self.dry_run,
            "id_from": self.options.id_from,
            "replace": self.options.replace,
            "users": len(reports),
            "read": sum(r.read for r in reports),
            "written": sum(r.written for r in reports),
            "duplicates_dropped": sum(r.duplicates_dropped for r in reports),
            "migrated": {u: r.as_json() for u, r in self.migrated.items()},
            "failed": {u: r.as_json() for u, r in self.failed.items()},
            "invalid_user_ids": self.invalid_user_ids,
            "empty": self.empty,
        }


def read_user(folder: Path, user: str, id_from: IdFrom, report: UserReport) -> list[dict[str, Any]]:
    """A user's documents with their tenant ids, one per id; fills ``report``
    (id source, read, duplicates) and logs notes."""
    if report.source == "faiss":
        docs, notes = read_faiss(folder / INDEX_DIR)
        report.read = len(docs)
        report.id_source = None if id_from == "auto" else id_from  # what was asked, should assign_ids refuse
        docs, report.id_source, id_notes = assign_ids(docs, id_from)
        notes += id_notes
    else:
        docs = read_jsonl(folder / "docs.jsonl", user)
        report.read, report.id_source = len(docs), "docs.jsonl"
        notes = ["no FAISS index: re-ingested from docs.jsonl, the worker embeds"]
    for note in notes:
        log(f"{user}: {note}")
    docs, report.duplicates_dropped = keep_last(docs)
    if report.duplicates_dropped:
        log(
            f"{user}: {report.duplicates_dropped} earlier versions of a doc_id dropped "
            "(the index held several documents with one id; the last added is kept)"
        )
    return docs


def write_user(
    client: SyncTenantVecClient,
    user: str,
    docs: list[dict[str, Any]],
    options: Options,
    report: UserReport,
    on_published: Callable[[int], None] | None = None,
) -> None:
    """Make the tenant hold ``docs``: erase it first with ``replace``, else
    refuse when it holds documents under other ids; then ingest and wait."""
    if options.replace:
        report.erased = client.count(user)
        client.drop(user)
        if report.erased:
            log(f"{user}: --replace: {report.erased} documents erased (the tenant's config stays)")
    else:
        others = other_documents(client, user, docs)
        if others:
            raise MigrationError(
                f"the tenant already holds {others} documents under ids this run does not write (an "
                "earlier migration under other ids, or documents removed from the index or written to the "
                "tenant since); writing beside them would leave both, so nothing was written: run again "
                "with --replace to erase the tenant's documents first"
            )
    result = client.ingest(
        user, docs, wait=True, timeout=options.timeout, batch_size=options.batch_size, on_published=on_published
    )
    report.written = result.documents
    log(
        f"{user}: {result.documents} documents from {report.source} committed "
        f"({result.messages} messages, ids from {report.id_source})"
    )


def migrate_user(client: SyncTenantVecClient | None, folder: Path, options: Options, summary: Summary) -> None:
    """Migrate one ``user_data/<user_id>/`` folder (``client`` ``None``: a dry run)."""
    user = folder.name
    if not is_valid_tenant(user):
        log(
            f"skip {user!r}: not a valid tenant id ([a-z0-9][a-z0-9_-]{{0,63}}); "
            "rename the folder and run again for this user (--user NAME)"
        )
        summary.invalid_user_ids.append(user)
        return
    index = folder / INDEX_DIR
    if (index / f"{INDEX_NAME}.faiss").is_file() and (index / f"{INDEX_NAME}.pkl").is_file():
        report = UserReport(source="faiss")
    elif (folder / "docs.jsonl").is_file():
        report = UserReport(source="docs.jsonl")
    else:
        summary.empty.append(user)
        return
    try:
        docs = read_user(folder, user, options.id_from, report)
        if client is None:
            log(
                f"{user}: {len(docs)} documents from {report.source}, ids from {report.id_source} "
                "(dry run: nothing sent)"
            )
        else:
            from tqdm import tqdm

            bar = tqdm(
                total=len(docs), desc=user, unit="doc", disable=None if options.progress else True, file=sys.stderr
            )
            try:
                write_user(client, user, docs, options, report, on_published=bar.update)
            finally:
                bar.close()
    except (MigrationError, TenantVecError, OSError, ValueError, RuntimeError) as e:
        report.error = str(e) if isinstance(e, MigrationError) else f"{type(e).__name__}: {e}"
        log(f"{user}: failed: {report.error}")
        if report.erased:
            log(f"{user}: its {report.erased} earlier documents were erased (--replace): run again to write them")
        summary.failed[user] = report
    else:
        summary.migrated[user] = report


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
    ap.add_argument(
        "--id-from",
        choices=ID_FROM_CHOICES,
        default="auto",
        help="a document's tenant id: the doc_id in its metadata, or its FAISS docstore id; "
        "auto (default): metadata when every document of the user has a doc_id, else docstore",
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="erase each tenant's documents before writing (its config stays); needed when a tenant "
        "holds documents under ids this run does not write, e.g. from a run with other ids",
    )
    ap.add_argument("--batch-size", type=int, default=500, help="documents per ingest message (≤ 1000)")
    ap.add_argument("--user", action="append", help="migrate only this user (repeatable)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker per user")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)

    if not a.user_data.is_dir():
        log(f"error: {a.user_data} is not a folder")
        return 2
    log(PICKLE_NOTICE)
    options = Options(
        id_from=a.id_from, replace=a.replace, batch_size=a.batch_size, timeout=a.timeout, progress=not a.no_progress
    )
    client = None
    if not a.dry_run:
        try:
            client = SyncTenantVecClient(ConnectionSettings.from_env(url=a.nats_url, prefix=a.prefix))
        except TenantVecError as e:
            log(f"error: {e}")
            return 2

    summary = Summary(dry_run=a.dry_run, options=options)
    try:
        for folder in user_folders(a.user_data, a.user):
            migrate_user(client, folder, options, summary)
    finally:
        if client is not None:
            client.close()
    print(json.dumps(summary.as_json()), flush=True)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
