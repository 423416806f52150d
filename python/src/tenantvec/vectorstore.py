"""``TenantVecStore``: a LangChain ``VectorStore`` over one tenant of a worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from .client import Filter, TenantRecord, TenantState, TenantVecClient, check_tenant
from .settings import ConnectionSettings
from .sync import SyncTenantVecClient

T = TypeVar("T")


class TenantVecStore(VectorStore):
    """The documents of one tenant, as a LangChain ``VectorStore``.

    Two ways to embed:

    * ``embedding=None``: texts go over the wire and the worker embeds them
      (its configured embedder; the built-in one is lexical hashing);
    * ``embedding=<an Embeddings>``: documents and queries are embedded here
      and the vectors are sent; the worker's tenant dimension must match.

    ``Document.id`` is the worker's ``doc_id``: adding a document whose id
    exists replaces it; documents without an id get a new UUID (the
    documents passed in are never changed). ``filter`` takes the protocol's
    form: ``{"k": "v"}`` equals, ``{"k": ["a", "b"]}`` any of,
    ``{"k": {"gte": 1, "lt": 5}}`` range, all keys must hold. Scores are
    cosine similarity, higher is closer.

    ``client`` is a :class:`SyncTenantVecClient` (sync and async methods both
    work, from any thread or event loop) or a :class:`TenantVecClient` (async
    methods only: ``aadd_documents``, ``asimilarity_search``, ...). Without
    one, a :class:`SyncTenantVecClient` is made from ``settings`` or the
    environment plus the ``connection`` keywords, and closed by :meth:`close`.
    """

    def __init__(
        self,
        tenant: str,
        *,
        embedding: Embeddings | None = None,
        client: SyncTenantVecClient | TenantVecClient | None = None,
        settings: ConnectionSettings | None = None,
        **connection: Any,
    ) -> None:
        check_tenant(tenant)
        self.tenant = tenant
        self._embedding = embedding
        self._owns_client = client is None
        if client is None:
            client = SyncTenantVecClient(settings, **connection)
        elif settings is not None or connection:
            raise TypeError("give either a client or connection settings, not both")
        self._client = client

    # -- plumbing -------------------------------------------------------------

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    @property
    def client(self) -> SyncTenantVecClient | TenantVecClient:
        return self._client

    @property
    def _aclient(self) -> TenantVecClient:
        c = self._client
        return c.aclient if isinstance(c, SyncTenantVecClient) else c

    def _sync(self, make: Callable[[TenantVecClient], Coroutine[Any, Any, T]]) -> T:
        if not isinstance(self._client, SyncTenantVecClient):
            raise RuntimeError(
                "this TenantVecStore runs on an async TenantVecClient: use the async methods "
                "(aadd_documents, asimilarity_search, ...) or give it a SyncTenantVecClient"
            )
        return self._client.run(make(self._client.aclient))

    async def _async(self, make: Callable[[TenantVecClient], Coroutine[Any, Any, T]]) -> T:
        if isinstance(self._client, SyncTenantVecClient):
            return await self._client.run_async(make(self._client.aclient))
        return await make(self._client)

    def close(self) -> None:
        """Close the connection if this store made it."""
        if self._owns_client and isinstance(self._client, SyncTenantVecClient):
            self._client.close()

    def __enter__(self) -> TenantVecStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Cosine similarity in [-1, 1] -> relevance in [0, 1].
        return lambda score: (1.0 + score) / 2.0

    # -- adding -----------------------------------------------------------------

    @staticmethod
    def _prepare(
        texts: Iterable[str], metadatas: Sequence[dict[str, Any]] | None, ids: Sequence[str | None] | None
    ) -> tuple[list[str], list[dict[str, Any]], list[str]]:
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        metas = [dict(m or {}) for m in metadatas] if metadatas is not None else [{} for _ in texts]
        doc_ids = (
            [i if i else str(uuid.uuid4()) for i in ids] if ids is not None else [str(uuid.uuid4()) for _ in texts]
        )
        return texts, metas, doc_ids

    @staticmethod
    def _wire(
        texts: list[str], metas: list[dict[str, Any]], ids: list[str], vectors: list[list[float]] | None
    ) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = [
            {"doc_id": i, "text": t, "metadata": m} for i, t, m in zip(ids, texts, metas, strict=True)
        ]
        if vectors is not None:
            for doc, vec in zip(docs, vectors, strict=True):
                doc["vector"] = vec
        return docs

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed (here or by the worker) and upsert texts; returns their ids."""
        texts_, metas, doc_ids = self._prepare(texts, metadatas, ids)
        if not texts_:
            return []
        vectors = self._embedding.embed_documents(texts_) if self._embedding is not None else None
        docs = self._wire(texts_, metas, doc_ids, vectors)
        self._sync(lambda c: c.upsert(self.tenant, docs))
        return doc_ids

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts_, metas, doc_ids = self._prepare(texts, metadatas, ids)
        if not texts_:
            return []
        vectors = await self._embedding.aembed_documents(texts_) if self._embedding is not None else None
        docs = self._wire(texts_, metas, doc_ids, vectors)
        await self._async(lambda c: c.upsert(self.tenant, docs))
        return doc_ids

    @staticmethod
    def _split_documents(
        documents: list[Document], kwargs: dict[str, Any]
    ) -> tuple[list[str], list[dict[str, Any]], list[str | None]]:
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [doc.id for doc in documents]
        return [d.page_content for d in documents], [d.metadata for d in documents], list(ids)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Upsert documents; ``Document.id`` (or ``ids=``) is the ``doc_id``."""
        texts, metas, ids = self._split_documents(documents, kwargs)
        return self.add_texts(texts, metas, ids=ids, **kwargs)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        texts, metas, ids = self._split_documents(documents, kwargs)
        return await self.aadd_texts(texts, metas, ids=ids, **kwargs)

    # -- searching ----------------------------------------------------------------

    @staticmethod
    def _document(hit: Mapping[str, Any]) -> Document:
        return Document(id=hit["doc_id"], page_content=hit.get("text", ""), metadata=hit.get("metadata") or {})

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` nearest documents to ``query`` with their cosine similarity."""
        if k <= 0:
            return []
        if self._embedding is not None:
            return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter)
        hits = self._sync(lambda c: c.search(self.tenant, query, top_k=k, filter=filter))
        return [(self._document(h), float(h["score"])) for h in hits]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if k <= 0:
            return []
        if self._embedding is not None:
            vector = await self._embedding.aembed_query(query)
            return await self.asimilarity_search_with_score_by_vector(vector, k, filter)
        hits = await self._async(lambda c: c.search(self.tenant, query, top_k=k, filter=filter))
        return [(self._document(h), float(h["score"])) for h in hits]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if k <= 0:
            return []
        hits = self._sync(lambda c: c.search(self.tenant, vector=embedding, top_k=k, filter=filter))
        return [(self._document(h), float(h["score"])) for h in hits]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if k <= 0:
            return []
        hits = await self._async(lambda c: c.search(self.tenant, vector=embedding, top_k=k, filter=filter))
        return [(self._document(h), float(h["score"])) for h in hits]

    def similarity_search(self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any) -> list[Document]:
        """The ``k`` documents nearest to ``query``, best first."""
        return [d for d, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents nearest to a vector of the tenant's dimension."""
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score_by_vector(embedding, k, filter)]

    # -- reading and deleting -----------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order given; unknown ids are left out."""
        docs = self._sync(lambda c: c.get(self.tenant, list(ids)))
        return [self._document(d) for d in docs]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        docs = await self._async(lambda c: c.get(self.tenant, list(ids)))
        return [self._document(d) for d in docs]

    def delete(self, ids: list[str] | None = None, *, filter: Filter | None = None, **kwargs: Any) -> bool:
        """Delete by ids (unknown ids are fine), or by ``filter``; with neither,
        delete every document of the tenant (``drop``)."""
        if ids is not None and filter is not None:
            raise ValueError("delete takes ids or a filter, not both")
        if ids is not None:
            if ids:
                self._sync(lambda c: c.delete(self.tenant, list(ids)))
        elif filter is not None:
            self._sync(lambda c: c.delete(self.tenant, filter=filter))
        else:
            self._sync(lambda c: c.drop(self.tenant))
        return True

    async def adelete(self, ids: list[str] | None = None, *, filter: Filter | None = None, **kwargs: Any) -> bool:
        if ids is not None and filter is not None:
            raise ValueError("delete takes ids or a filter, not both")
        if ids is not None:
            if ids:
                await self._async(lambda c: c.delete(self.tenant, list(ids)))
        elif filter is not None:
            await self._async(lambda c: c.delete(self.tenant, filter=filter))
        else:
            await self._async(lambda c: c.drop(self.tenant))
        return True

    def count(self, filter: Filter | None = None) -> int:
        """How many documents the tenant holds (that match ``filter``)."""
        return self._sync(lambda c: c.count(self.tenant, filter))

    async def acount(self, filter: Filter | None = None) -> int:
        return await self._async(lambda c: c.count(self.tenant, filter))

    # -- the tenant registry -------------------------------------------------------

    def tenant_info(self) -> TenantRecord:
        """This store's tenant as the worker's registry keeps it: its settings,
        embedder and size (:class:`UnknownTenant` before its first write)."""
        return self._sync(lambda c: c.tenant_info(self.tenant))

    async def atenant_info(self) -> TenantRecord:
        return await self._async(lambda c: c.tenant_info(self.tenant))

    def list_tenants(
        self, prefix: str | None = None, state: TenantState | None = None, page_size: int = 500
    ) -> list[TenantRecord]:
        """Every tenant of the store's worker whose id starts with ``prefix``
        (and in ``state``), in id order, through the store's connection; make a
        store of one with ``TenantVecStore(record.id, client=store.client)``."""
        return self._sync(lambda c: c.list_tenants(prefix, state, page_size))

    async def alist_tenants(
        self, prefix: str | None = None, state: TenantState | None = None, page_size: int = 500
    ) -> list[TenantRecord]:
        return await self._async(lambda c: c.list_tenants(prefix, state, page_size))

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> TenantVecStore:
        """A store for ``tenant`` with ``texts`` added. ``embedding=None``: the
        worker embeds. Other keywords go to the constructor (``client``,
        ``settings``, ``url``, ``prefix``, ...)."""
        if tenant is None:
            raise TypeError("from_texts needs tenant=...")
        store = cls(tenant, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=list(ids) if ids is not None else None)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> TenantVecStore:
        if tenant is None:
            raise TypeError("afrom_texts needs tenant=...")
        if "client" in kwargs:
            store = cls(tenant, embedding=embedding, **kwargs)
        else:  # connecting blocks: not on the caller's event loop
            store = await asyncio.to_thread(lambda: cls(tenant, embedding=embedding, **kwargs))
        await store.aadd_texts(texts, metadatas, ids=list(ids) if ids is not None else None)
        return store
