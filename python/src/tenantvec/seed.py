"""The seed application's call shapes, on a tenantvec worker.

The seed (a LangChain/FAISS app with a folder per user and an in-process
LRU pool) builds its stores with ``create_vector_store(tenant_manager)``,
adds ``{"doc_id", "text", "metadata"}`` dicts, searches with
``search(query, top_k=5)`` and reads ``get_vector_store_pool().get_stats()``.
This module keeps those shapes so that only the imports change::

    from tenantvec.seed import create_vector_store, get_vector_store_pool

    store = create_vector_store("alice")          # or tenant_manager=<object with .user_id>
    store.add_documents([{"doc_id": "a1", "text": "Morning run, 5 km", "metadata": {"category": "sport"}}])
    store.search("run", top_k=5)                  # [{"doc_id", "text", "metadata", "score"}]
    get_vector_store_pool().get_stats()           # {"hits", "misses", "evictions", ...}

The pool now lives in the worker: its statistics come from ``admin.stats``.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStoreRetriever

from .client import Filter
from .errors import InvalidTenant
from .settings import ConnectionSettings, is_valid_tenant
from .sync import SyncTenantVecClient
from .vectorstore import TenantVecStore

__all__ = [
    "SeedStore",
    "WorkerPool",
    "configure",
    "create_vector_store",
    "get_vector_store_pool",
]

#: The keys of the seed's pool statistics, in its order.
POOL_STAT_KEYS = ("hits", "misses", "evictions", "expirations", "size", "max_size", "keys", "hit_rate")


class HasUserId(Protocol):
    user_id: str


_lock = threading.Lock()
_client: SyncTenantVecClient | None = None
_settings: ConnectionSettings | None = None
_embeddings: Embeddings | None = None


def configure(
    client: SyncTenantVecClient | None = None,
    settings: ConnectionSettings | None = None,
    embeddings: Embeddings | None = None,
) -> None:
    """Set the connection (a client, or settings to make one) and the
    embeddings used by :func:`create_vector_store` when it is given none.

    Without a call, the connection is made on first use from the
    environment (``NATS_URL``, ``TENANTVEC_PREFIX``, credentials, TLS: the
    worker's variable names), and the worker embeds texts.
    """
    global _client, _settings, _embeddings
    with _lock:
        if client is not None or settings is not None:
            _client, _settings = client, settings
        if embeddings is not None:
            _embeddings = embeddings


def default_client() -> SyncTenantVecClient:
    """The shared connection of this module, made on first use."""
    global _client
    with _lock:
        if _client is None:
            _client = SyncTenantVecClient(_settings)
            atexit.register(_client.close)
        return _client


def _user_id(tenant_manager: HasUserId | str | None, user_id: str | None) -> str:
    if user_id is None:
        if tenant_manager is None:
            raise TypeError("create_vector_store needs a tenant_manager or a user_id")
        user_id = tenant_manager if isinstance(tenant_manager, str) else tenant_manager.user_id
    if not is_valid_tenant(user_id):
        raise InvalidTenant(
            f"invalid user_id {user_id!r}: tenantvec tenant ids are 1 to 64 characters of "
            "[a-z0-9_-] starting with a letter or digit (lower case only)"
        )
    return user_id


class SeedStore:
    """One user's store with the seed's methods. :attr:`vectorstore` is the
    same tenant as a LangChain ``VectorStore`` (:class:`TenantVecStore`)."""

    def __init__(self, user_id: str, client: SyncTenantVecClient, embeddings: Embeddings | None = None) -> None:
        self.user_id = user_id
        self.vectorstore = TenantVecStore(user_id, embedding=embeddings, client=client)

    def add_documents(self, documents: Iterable[Mapping[str, Any] | Document], persist: bool = True) -> list[str]:
        """Add ``{"doc_id", "text", "metadata"}`` dicts (or LangChain
        ``Document`` objects with an ``id``); returns the doc ids.

        As in the seed, ``doc_id`` is also put into each document's metadata.
        A doc_id that exists is replaced. ``persist`` is accepted for the
        seed's signature: every write is durable when this returns.
        """
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        ids: list[str | None] = []
        for d in documents:
            meta: Mapping[str, Any] | None
            if isinstance(d, Document):
                doc_id, text, meta = d.id, d.page_content, d.metadata
            else:
                doc_id, text, meta = d["doc_id"], d["text"], d.get("metadata")
            if not doc_id:
                raise ValueError("every document needs a doc_id")
            texts.append(text)
            metas.append(dict(meta or {}, doc_id=doc_id))
            ids.append(doc_id)
        return self.vectorstore.add_texts(texts, metas, ids=ids)

    def search(
        self, query: str | Sequence[float], top_k: int = 5, filter: Filter | None = None, fetch_k: int | None = None
    ) -> list[dict[str, Any]]:
        """The ``top_k`` best matches of a query text or vector, best first:
        ``[{"doc_id", "text", "metadata", "score"}]``, ``score`` the cosine
        similarity. The filter is applied by the store before ranking, so
        ``fetch_k`` (the seed's over-fetch for post-filtering) is not needed
        and is ignored."""
        if isinstance(query, str):
            pairs = self.vectorstore.similarity_search_with_score(query, k=top_k, filter=filter)
        else:
            pairs = self.vectorstore.similarity_search_with_score_by_vector(list(query), k=top_k, filter=filter)
        return [{"doc_id": d.id, "text": d.page_content, "metadata": d.metadata, "score": s} for d, s in pairs]

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many existed."""
        return self.vectorstore._sync(lambda c: c.delete(self.user_id, list(doc_ids)))

    def save(self) -> None:
        """Nothing to do: the worker makes every write durable before it answers."""

    def as_retriever(self, **kwargs: Any) -> VectorStoreRetriever:
        return self.vectorstore.as_retriever(**kwargs)

    def __len__(self) -> int:
        return self.vectorstore.count()


def create_vector_store(
    tenant_manager: HasUserId | str | None = None,
    pool: Any = None,
    embeddings: Embeddings | None = None,
    *,
    user_id: str | None = None,
    client: SyncTenantVecClient | None = None,
) -> SeedStore:
    """The store of one user: ``tenant_manager`` is the seed's tenant manager
    (anything with a ``user_id``) or the user id itself. ``pool`` is accepted
    for the seed's signature and ignored (the worker pools). ``embeddings``:
    embed here and send vectors; default: the worker embeds.

    Raises :class:`~tenantvec.errors.InvalidTenant` for a user id that is
    not a tenant id (the seed also allowed upper case; tenant ids are lower case).
    """
    uid = _user_id(tenant_manager, user_id)
    return SeedStore(uid, client or default_client(), embeddings if embeddings is not None else _embeddings)


class WorkerPool:
    """The worker's pool of loaded tenant stores, with the seed pool's methods."""

    def __init__(self, client: SyncTenantVecClient) -> None:
        self.client = client

    def get_stats(self) -> dict[str, Any]:
        """``{"hits", "misses", "evictions", "expirations", "size", "max_size",
        "keys", "hit_rate"}`` from the worker's ``admin.stats``."""
        raw = self.client.stats()
        return {k: raw.get(k, [] if k == "keys" else 0) for k in POOL_STAT_KEYS}

    stats = get_stats

    def clear(self) -> None:
        """Stop every tenant actor (data stays)."""
        self.client.evict()

    def evict(self, user_id: str) -> int:
        return self.client.evict(user_id)

    def cleanup(self) -> int:
        """Stop actors idle longer than the TTL now."""
        return self.client.cleanup()


def get_vector_store_pool(client: SyncTenantVecClient | None = None) -> WorkerPool:
    """The worker's pool, for its statistics."""
    return WorkerPool(client or default_client())
