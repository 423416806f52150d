"""The blocking facade over :class:`~tenantvec.client.TenantVecClient`.

It runs the async client on an event loop of its own, in a daemon thread,
so it works from plain scripts, threads and notebooks alike (also where an
event loop is already running). The same connection also serves coroutines
from any other event loop through :meth:`SyncTenantVecClient.run_async`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .client import (
    UNCHANGED,
    Document,
    Filter,
    Hit,
    IngestResult,
    TenantPage,
    TenantRecord,
    TenantState,
    TenantVecClient,
    Unchanged,
    Vector,
)
from .settings import ConnectionSettings

T = TypeVar("T")


class SyncTenantVecClient:
    """Blocking client of a tenantvec worker: the methods of
    :class:`TenantVecClient`, without ``await``.

    ::

        with SyncTenantVecClient(url="nats://127.0.0.1:4222") as tv:
            tv.upsert("alice", [{"doc_id": "a1", "text": "slept 8 hours"}])
            print(tv.search("alice", "sleep", top_k=3))
    """

    def __init__(self, settings: ConnectionSettings | None = None, **overrides: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tenantvec-client", daemon=True)
        self._thread.start()
        self.aclient = TenantVecClient(settings, **overrides)
        """The async client this facade runs (its coroutines run on this facade's loop)."""
        try:
            self.run(self.aclient.start())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def settings(self) -> ConnectionSettings:
        return self.aclient.settings

    @property
    def prefix(self) -> str:
        return self.aclient.prefix

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async client on the facade's loop and wait for it."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking call was made from the client's own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a coroutine of the async client from any other event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def close(self) -> None:
        """Close the connection and stop the facade's thread."""
        if self._loop.is_closed():
            return
        try:
            self.run(self.aclient.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncTenantVecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the verbs ------------------------------------------------------------

    def request(self, subject: str, body: Mapping[str, Any] | bytes, timeout: float | None = None) -> Any:
        return self.run(self.aclient.request(subject, body, timeout))

    def upsert(self, tenant: str, documents: Iterable[Mapping[str, Any]]) -> int:
        return self.run(self.aclient.upsert(tenant, list(documents)))

    def search(
        self,
        tenant: str,
        query: str | None = None,
        *,
        vector: Vector | None = None,
        top_k: int | None = None,
        filter: Filter | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        return self.run(
            self.aclient.search(tenant, query, vector=vector, top_k=top_k, filter=filter, with_vectors=with_vectors)
        )

    def get(self, tenant: str, doc_ids: Sequence[str], *, with_vectors: bool = False) -> list[Document]:
        return self.run(self.aclient.get(tenant, doc_ids, with_vectors=with_vectors))

    def delete(self, tenant: str, doc_ids: Sequence[str] | None = None, *, filter: Filter | None = None) -> int:
        return self.run(self.aclient.delete(tenant, doc_ids, filter=filter))

    def count(self, tenant: str, filter: Filter | None = None) -> int:
        return self.run(self.aclient.count(tenant, filter))

    def drop(self, tenant: str) -> bool:
        return self.run(self.aclient.drop(tenant))

    def stats(self) -> dict[str, Any]:
        return self.run(self.aclient.stats())

    def cleanup(self) -> int:
        return self.run(self.aclient.cleanup())

    def evict(self, tenant: str | None = None) -> int:
        return self.run(self.aclient.evict(tenant))

    # -- the tenant registry --------------------------------------------------

    def tenant_page(
        self,
        *,
        prefix: str | None = None,
        state: TenantState | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> TenantPage:
        return self.run(self.aclient.tenant_page(prefix=prefix, state=state, cursor=cursor, limit=limit))

    def iter_tenants(
        self, prefix: str | None = None, state: TenantState | None = None, page_size: int = 500
    ) -> Iterator[TenantRecord]:
        """Every tenant whose id starts with ``prefix`` (and in ``state``), in id
        order, a page of ``page_size`` records asked for as the iteration needs it."""
        cursor: str | None = None
        while True:
            page = self.tenant_page(prefix=prefix, state=state, cursor=cursor, limit=page_size)
            yield from page.tenants
            if page.next is None:
                return
            cursor = page.next

    def list_tenants(
        self, prefix: str | None = None, state: TenantState | None = None, page_size: int = 500
    ) -> list[TenantRecord]:
        return self.run(self.aclient.list_tenants(prefix, state, page_size))

    def tenant_info(self, tenant: str) -> TenantRecord:
        return self.run(self.aclient.tenant_info(tenant))

    def create_tenant(
        self,
        tenant: str,
        *,
        top_k: int | None = None,
        max_documents: int | None = None,
        max_rps: float | None = None,
        region: str | None = None,
        dr_region: str | None = None,
    ) -> TenantRecord:
        return self.run(
            self.aclient.create_tenant(
                tenant,
                top_k=top_k,
                max_documents=max_documents,
                max_rps=max_rps,
                region=region,
                dr_region=dr_region,
            )
        )

    def move_tenant(self, tenant: str, region: str, *, timeout: float = 3600.0) -> dict[str, Any]:
        """With regions: move the tenant's home to ``region``."""
        return self.run(self.aclient.move_tenant(tenant, region, timeout=timeout))

    def update_tenant(
        self,
        tenant: str,
        *,
        top_k: int | Unchanged | None = UNCHANGED,
        max_documents: int | Unchanged | None = UNCHANGED,
        max_rps: float | Unchanged | None = UNCHANGED,
    ) -> TenantRecord:
        """Change the tenant's settings: a value sets one, ``None`` puts it back
        to the worker's default, one left out stays as it is."""
        return self.run(self.aclient.update_tenant(tenant, top_k=top_k, max_documents=max_documents, max_rps=max_rps))

    def delete_tenant(self, tenant: str) -> None:
        self.run(self.aclient.delete_tenant(tenant))

    def ingest(
        self,
        tenant: str,
        documents: Iterable[Mapping[str, Any]],
        *,
        wait: bool = True,
        timeout: float = 120.0,
        batch_size: int = 1000,
        on_published: Callable[[int], None] | None = None,
    ) -> IngestResult:
        return self.run(
            self.aclient.ingest(
                tenant, list(documents), wait=wait, timeout=timeout, batch_size=batch_size, on_published=on_published
            )
        )


SyncTenantVecClient.__init__.__doc__ = (
    "Connect now. ``settings`` default to :meth:`ConnectionSettings.from_env`; "
    "keyword arguments override single fields (``url``, ``prefix``, ...)."
)
