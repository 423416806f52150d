"""The async client: every verb of the wire protocol, JetStream ingest, and
the worker's tenant registry.

One :class:`TenantVecClient` holds one NATS connection. Requests of one
tenant sent on one connection are applied by the worker in the order they
were sent, across verbs, so a client may pipeline them.
"""

from __future__ import annotations

import array
import asyncio
import base64
import enum
import json
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Literal, TypedDict, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .errors import (
    CommitTimeout,
    ConnectError,
    InvalidTenant,
    NoWorker,
    RateLimited,
    ServiceError,
    TooLarge,
    Unavailable,
    error_for,
)
from .settings import ConnectionSettings, is_valid_tenant

HEADER_ERROR_CODE = "Nats-Service-Error-Code"
HEADER_ERROR = "Nats-Service-Error"

#: The worker's default limits (docs/protocol.md, "Limits"); batches are cut to fit them.
MAX_DOCUMENTS_PER_REQUEST = 1000
MAX_IDS_PER_REQUEST = 10_000
#: Most tenant records one page of ``admin.tenants.list`` may hold.
MAX_TENANTS_PAGE = 1000
#: Room left in a message for the envelope and the NATS headers.
_PAYLOAD_HEADROOM = 4096

T = TypeVar("T")

Vector = Sequence[float]
Filter = Mapping[str, Any]


class Document(TypedDict, total=False):
    """A document on the wire: ``doc_id`` and ``text`` or ``vector``, ``metadata``."""

    doc_id: str
    text: str
    metadata: dict[str, Any]
    vector: list[float]


class Hit(TypedDict, total=False):
    """One search result: ``score`` is cosine similarity (higher is closer)."""

    doc_id: str
    score: float
    text: str
    metadata: dict[str, Any]
    vector: list[float]


@dataclass
class IngestResult:
    """What :meth:`TenantVecClient.ingest` did."""

    documents: int
    """Documents published."""
    messages: int
    """JetStream messages they were sent in."""
    stream_seqs: list[int] = field(default_factory=list)
    """Sequence of each message in the ingest stream."""
    committed: bool = False
    """Whether the worker was seen to commit every message (``wait=True``)."""


TenantState = Literal["idle", "active", "dropping"]
"""Where a tenant stands: ``idle`` (known, not loaded), ``active`` (loaded by
the worker that answered), ``dropping`` (being deleted)."""


class Unchanged(enum.Enum):
    """The type of :data:`UNCHANGED`."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED
"""The default of :meth:`TenantVecClient.update_tenant`'s settings: leave
this setting as it is (``None`` puts it back to the worker's default)."""


@dataclass(frozen=True)
class TenantSettings:
    """A tenant's own settings; ``None`` means the worker's default (``[tenants]``
    and ``[search]`` in its settings)."""

    top_k: int | None = None
    """Results of a search that gives no ``top_k``."""
    max_documents: int | None = None
    """Most documents the tenant may hold (past it: :class:`QuotaExceeded`); 0: no limit."""
    max_rps: float | None = None
    """Most requests per second (past it: :class:`RateLimited`); 0: no limit."""


@dataclass(frozen=True)
class EmbedderInfo:
    """The embedder that made a tenant's vectors, as the worker last saw it."""

    model: str
    dimension: int


@dataclass(frozen=True)
class TenantRecord:
    """A tenant as the worker's registry keeps it (docs/registry.md).

    ``documents``, ``bytes``, ``embedder`` and ``last_active`` are the figures
    of when the tenant was last unloaded (``None`` before that). ``raw`` is
    the record as the worker sent it, with any field this version of the
    package does not know.
    """

    id: str
    state: str
    """``idle``, ``active`` (loaded by the worker that answered) or ``dropping``;
    a later worker may report other states."""
    settings: TenantSettings
    created: datetime
    updated: datetime
    """When the record was last written (UTC)."""
    embedder: EmbedderInfo | None = None
    documents: int | None = None
    bytes: int | None = None
    """Bytes of the tenant's store folder (``None`` where tenants share a store)."""
    last_active: datetime | None = None
    """When the tenant was last unloaded after serving requests."""
    home_region: str | None = None
    """With regions: the region whose workers alone hold the tenant's data."""
    dr_region: str | None = None
    """With regions: its disaster-recovery region, where its backups are copied."""
    home_epoch: int = 0
    """With regions: how many times it was failed over."""
    schema: int = 1
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TenantRecord:
        """A record from its JSON form; raises ``KeyError``, ``TypeError`` or
        ``ValueError`` when ``data`` is not one."""
        settings = data.get("settings") or {}
        embedder = data.get("embedder")
        return cls(
            id=str(data["id"]),
            state=str(data.get("state") or "idle"),
            settings=TenantSettings(
                top_k=_optional(int, settings.get("top_k")),
                max_documents=_optional(int, settings.get("max_documents")),
                max_rps=_optional(float, settings.get("max_rps")),
            ),
            created=_timestamp(data["created"]),
            updated=_timestamp(data["updated"]),
            embedder=(
                EmbedderInfo(model=str(embedder["model"]), dimension=int(embedder["dimension"]))
                if embedder is not None
                else None
            ),
            documents=_optional(int, data.get("documents")),
            bytes=_optional(int, data.get("bytes")),
            last_active=_timestamp(data["last_active"]) if data.get("last_active") else None,
            home_region=_optional(str, data.get("home_region")),
            dr_region=_optional(str, data.get("dr_region")),
            home_epoch=int(data.get("home_epoch") or 0),
            schema=int(data.get("schema", 1)),
            raw=dict(data),
        )


@dataclass(frozen=True)
class TenantPage:
    """One page of :meth:`TenantVecClient.tenant_page`."""

    tenants: list[TenantRecord]
    next: str | None
    """The cursor of the next page; ``None`` on the last one."""


def _optional(kind: Callable[[Any], T], value: Any) -> T | None:
    return None if value is None else kind(value)


_FRACTION = re.compile(r"\.(\d+)")


def _timestamp(text: str) -> datetime:
    """An RFC 3339 time (``2026-12-07T05:00:00Z``) as an aware ``datetime``."""
    text = str(text).strip().upper().replace("Z", "+00:00")
    # Python 3.10 reads 3 or 6 digits of fraction only.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def encode_vector_base64(vector: Any) -> str:
    """A vector in the protocol's base64 form: little-endian IEEE-754 f32.

    How the client sends every vector: a 384-float vector is 2 KB this way
    against ~7.6 KB as Python writes JSON floats, and encodes 5x (a list) to
    18x (numpy) faster; the worker reads both forms.
    """
    if hasattr(vector, "astype") and hasattr(vector, "tobytes"):  # numpy, without importing it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    arr = array.array("f", (float(x) for x in vector))
    if sys.byteorder == "big":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_vector_base64(text: str) -> list[float]:
    """The floats of a vector in the protocol's base64 form."""
    arr = array.array("f")
    arr.frombytes(base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tolist()


def _with_array_vectors(items: list[Any]) -> list[Any]:
    """Replies asked for with base64 vectors, given back with float lists."""
    for item in items:
        if isinstance(item.get("vector"), str):
            item["vector"] = decode_vector_base64(item["vector"])
    return items


def wire_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A document for the wire: its vector as base64 (a string is taken to be
    base64 already and sent as it is), ``None`` fields and a ``"tenant"``
    field (as in ``docs.jsonl`` lines) left out; other fields are sent as
    they are, so the worker names any it does not know."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if value is None or key == "tenant":
            continue
        out[key] = encode_vector_base64(value) if key == "vector" and not isinstance(value, str) else value
    return out


def check_tenant(tenant: str) -> None:
    """Raise :class:`InvalidTenant` unless ``tenant`` follows the tenant rule."""
    if not is_valid_tenant(tenant):
        raise InvalidTenant(
            f"invalid tenant id {tenant!r}: tenant ids are 1 to 64 characters of "
            "[a-z0-9_-], starting with a letter or digit"
        )


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def document_batches(
    documents: Iterable[Mapping[str, Any]],
    max_documents: int = MAX_DOCUMENTS_PER_REQUEST,
    max_bytes: int = 1024 * 1024 - _PAYLOAD_HEADROOM,
) -> Iterator[tuple[int, bytes]]:
    """Cut documents into ``{"documents": [...]}`` bodies of at most
    ``max_documents`` documents and ``max_bytes`` bytes (a document larger than
    that alone goes in a body of its own, and the server refuses it)."""
    head, tail = b'{"documents":[', b"]}"
    parts: list[bytes] = []
    size = len(head) + len(tail)
    for doc in documents:
        part = _json(wire_document(doc))
        if parts and (len(parts) >= max_documents or size + len(part) + 1 > max_bytes):
            yield len(parts), head + b",".join(parts) + tail
            parts, size = [], len(head) + len(tail)
        parts.append(part)
        size += len(part) + 1
    if parts:
        yield len(parts), head + b",".join(parts) + tail


class TenantVecClient:
    """Async client of a tenantvec worker.

    ::

        async with TenantVecClient(url="nats://127.0.0.1:4222") as tv:
            await tv.upsert("alice", [{"doc_id": "a1", "text": "slept 8 hours"}])
            hits = await tv.search("alice", "sleep", top_k=3)

    Settings default to :meth:`ConnectionSettings.from_env`; keyword
    arguments (``url``, ``prefix``, ``user``, ``password``, ``token``,
    ``nkey_seed``, ``credentials_file``, ``tls_ca_file``, ``tls_cert_file``,
    ``tls_key_file``, ``inbox_prefix``, ``request_timeout``) override them.
    """

    def __init__(self, settings: ConnectionSettings | None = None, **overrides: Any) -> None:
        base = settings if settings is not None else ConnectionSettings.from_env()
        self.settings = base.with_(**overrides)
        self._nc: NATS | None = None
        self._owns_connection = True

    # -- connection -------------------------------------------------------

    @classmethod
    async def connect(cls, settings: ConnectionSettings | None = None, **overrides: Any) -> TenantVecClient:
        """A connected client."""
        client = cls(settings, **overrides)
        await client.start()
        return client

    @classmethod
    def from_nats(cls, nc: NATS, prefix: str | None = None, request_timeout: float | None = None) -> TenantVecClient:
        """A client over a nats-py connection you already hold (not closed by :meth:`close`)."""
        client = cls(ConnectionSettings(), prefix=prefix, request_timeout=request_timeout)
        client._nc = nc
        client._owns_connection = False
        return client

    async def start(self) -> None:
        """Connect to NATS (done by :meth:`connect` and ``async with``)."""
        if self._nc is not None:
            return
        options = self.settings.connect_options()
        # nats-py's reconnect limit also bounds the first connection: try each
        # server twice, then fail; once connected, reconnect without end.
        options["max_reconnect_attempts"] = 1
        try:
            nc = await nats.connect(**options)
        except Exception as e:  # nats-py raises several kinds; one message for all
            raise ConnectError(f"cannot connect to NATS at {self.settings.url}: {e!r}") from e
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc

    async def close(self) -> None:
        """Flush and close the connection."""
        nc, self._nc = self._nc, None
        if nc is not None and self._owns_connection and not nc.is_closed:
            await nc.drain()

    async def __aenter__(self) -> TenantVecClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def nats(self) -> NATS:
        """The underlying nats-py connection."""
        if self._nc is None:
            raise ConnectError("the client is not connected (use `await TenantVecClient.connect(...)`)")
        return self._nc

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    def subject(self, verb: str, tenant: str) -> str:
        """``<prefix>.<verb>.<tenant>``; admin verbs are ``subject("admin", "stats")``."""
        return f"{self.prefix}.{verb}.{tenant}"

    def _max_bytes(self) -> int:
        return max(1024, self.nats.max_payload - _PAYLOAD_HEADROOM)

    # -- requests ---------------------------------------------------------

    async def request(self, subject: str, body: Mapping[str, Any] | bytes, timeout: float | None = None) -> Any:
        """Send one request and return its decoded reply; error replies raise
        the matching :class:`ServiceError`, silence raises :class:`NoWorker`."""
        payload = body if isinstance(body, bytes) else _json(body)
        timeout = self.settings.request_timeout if timeout is None else timeout
        try:
            reply = await self.nats.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoWorker(
                f"no tenantvec worker answers on {subject} "
                f"(is one running with prefix {self.prefix!r} on {self.settings.url}?)",
                subject=subject,
            ) from None
        except nats.errors.TimeoutError:
            raise NoWorker(
                f"no reply on {subject} within {timeout:g}s (the worker is busy or gone)",
                subject=subject,
                timed_out=True,
            ) from None
        except nats.errors.MaxPayloadError as e:
            raise TooLarge(
                f"request of {len(payload)} bytes is over the NATS server's max_payload "
                f"({self.nats.max_payload} bytes): {e}",
                subject=subject,
            ) from None
        return _decode_reply(subject, reply)

    async def request_retrying(self, subject: str, body: Mapping[str, Any] | bytes) -> Any:
        """:meth:`request`, tried again while its failure may pass: no worker
        answers or no reply in time (:class:`NoWorker`), :class:`Unavailable`,
        :class:`RateLimited` (after at least the wait the worker asks). The
        waits are jittered, from 50 ms doubling to 1 s, and a try starts only
        within ``retry_deadline`` seconds of the first (0: no retries). Only
        for requests that are safe to send twice: not ``export``, not
        ``tenants.create`` or ``tenants.delete``."""
        started = time.monotonic()
        tries = 0
        while True:
            try:
                return await self.request(subject, body)
            except (NoWorker, Unavailable, RateLimited) as e:
                tries += 1
                hint = e.retry_after if isinstance(e, RateLimited) else None
                wait = retry_wait(tries, random.random(), hint)
                if time.monotonic() - started + wait > self.settings.retry_deadline:
                    raise
                await asyncio.sleep(wait)

    async def _tenant(self, verb: str, tenant: str, body: Mapping[str, Any] | bytes) -> Any:
        return await self.request_retrying(self.subject(verb, tenant), body)

    async def upsert(self, tenant: str, documents: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace documents (by ``doc_id``), acknowledged once durable.

        Sent in as many requests as the worker's limits need (1,000 documents
        and the server's ``max_payload`` per request), in order. Each document
        is ``{"doc_id", "text", "metadata", "vector"}``; without ``vector`` the
        worker embeds ``text``. Returns the number of documents upserted.
        """
        upserted = 0
        for _, body in document_batches(documents, max_bytes=self._max_bytes()):
            reply = await self._tenant("upsert", tenant, body)
            upserted += int(reply.get("upserted", 0))
        return upserted

    async def search(
        self,
        tenant: str,
        query: str | None = None,
        *,
        vector: Vector | None = None,
        top_k: int | None = None,
        filter: Filter | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """The ``top_k`` documents nearest to ``query`` (text, embedded by the
        worker) or ``vector``, best first, that match ``filter``."""
        if (query is None) == (vector is None):
            raise ValueError("search takes a query text or a vector, not both")
        body: dict[str, Any] = {"query": query} if query is not None else {"vector": encode_vector_base64(vector)}
        if top_k is not None:
            body["top_k"] = top_k
        if filter is not None:
            body["filter"] = dict(filter)
        if with_vectors:
            body["with_vectors"] = True
            body["vector_encoding"] = "base64"
        reply = await self._tenant("search", tenant, body)
        return _with_array_vectors(list(reply.get("results", [])))

    async def get(self, tenant: str, doc_ids: Sequence[str], *, with_vectors: bool = False) -> list[Document]:
        """The documents with these ids, in the order asked; unknown ids are left out."""
        found: dict[str, Document] = {}
        ids = list(doc_ids)
        for i in range(0, len(ids), MAX_IDS_PER_REQUEST):
            chunk = ids[i : i + MAX_IDS_PER_REQUEST]
            body: dict[str, Any] = {"doc_ids": chunk}
            if with_vectors:
                body["with_vectors"] = True
                body["vector_encoding"] = "base64"
            reply = await self._tenant("get", tenant, body)
            for doc in _with_array_vectors(list(reply.get("documents", []))):
                found[doc["doc_id"]] = doc
        return [found[i] for i in ids if i in found]

    async def delete(self, tenant: str, doc_ids: Sequence[str] | None = None, *, filter: Filter | None = None) -> int:
        """Delete by ids or by a (non-empty) filter; returns how many existed."""
        if (doc_ids is None) == (filter is None):
            raise ValueError("delete takes doc_ids or a filter, not both (erase a whole tenant with drop)")
        if filter is not None:
            reply = await self._tenant("delete", tenant, {"filter": dict(filter)})
            return int(reply.get("deleted", 0))
        ids = list(doc_ids or [])
        deleted = 0
        for i in range(0, len(ids), MAX_IDS_PER_REQUEST):
            reply = await self._tenant("delete", tenant, {"doc_ids": ids[i : i + MAX_IDS_PER_REQUEST]})
            deleted += int(reply.get("deleted", 0))
        return deleted

    async def count(self, tenant: str, filter: Filter | None = None) -> int:
        """Documents of the tenant (that match ``filter``)."""
        reply = await self._tenant("count", tenant, {"filter": dict(filter)} if filter is not None else {})
        return int(reply["count"])

    async def drop(self, tenant: str) -> bool:
        """Erase every document and store file of the tenant (its ``config/`` stays)."""
        reply = await self._tenant("drop", tenant, {})
        return bool(reply.get("dropped", False))

    async def stats(self) -> dict[str, Any]:
        """The worker's pool statistics (``admin.stats``)."""
        return dict(await self.request_retrying(self.subject("admin", "stats"), {}))

    async def cleanup(self) -> int:
        """Stop every tenant actor idle longer than the TTL now; returns how many."""
        reply = await self.request_retrying(self.subject("admin", "cleanup"), {})
        return int(reply.get("expired", 0))

    async def evict(self, tenant: str | None = None) -> int:
        """Stop the actor of ``tenant`` (or of every tenant), keeping its data."""
        reply = await self.request_retrying(self.subject("admin", "evict"), {"tenant": tenant} if tenant else {})
        return int(reply.get("evicted", 0))

    # -- the tenant registry ----------------------------------------------

    async def _tenants(self, op: str, body: Mapping[str, Any]) -> Any:
        subject = f"{self.prefix}.admin.tenants.{op}"
        if op in _NOT_SAFE_TO_REPEAT:
            return await self.request(subject, body)
        return await self.request_retrying(subject, body)

    def _record(self, op: str, reply: Any) -> TenantRecord:
        try:
            return TenantRecord.from_json(reply)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self._unreadable(op, e) from None

    def _unreadable(self, op: str, error: Exception) -> ServiceError:
        subject = f"{self.prefix}.admin.tenants.{op}"
        return ServiceError(f"unreadable reply on {subject}: {error!r}", code="internal", subject=subject)

    async def tenant_page(
        self,
        *,
        prefix: str | None = None,
        state: TenantState | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> TenantPage:
        """One page of the registry (``admin.tenants.list``): at most ``limit``
        records (1 to 1,000, the worker's default 100) in id order, after
        ``cursor``, whose id starts with ``prefix``. Ask again with
        ``cursor=page.next`` until it is ``None``. With ``state``, the
        records of other states are left out of the page, so it may hold
        fewer (even none) while more follow."""
        if limit is not None and not 1 <= limit <= MAX_TENANTS_PAGE:
            raise ValueError(f"a page holds 1 to {MAX_TENANTS_PAGE} tenants, not {limit}")
        body: dict[str, Any] = {}
        if prefix:
            body["prefix"] = prefix
        if state is not None:
            body["state"] = state
        if cursor is not None:
            body["cursor"] = cursor
        if limit is not None:
            body["limit"] = limit
        reply = await self._tenants("list", body)
        try:
            records, next_cursor = reply["tenants"], reply.get("next")
        except (KeyError, TypeError, AttributeError) as e:
            raise self._unreadable("list", e) from None
        return TenantPage([self._record("list", r) for r in records], None if next_cursor is None else str(next_cursor))

    async def iter_tenants(
        self, prefix: str | None = None, state: TenantState | None = None, page_size: int = 500
    ) -> AsyncIterator[TenantRecord]:
        """Every tenant of the registry whose id starts with ``prefix`` (and in
        ``state``), in id order, asking ``page_size`` records at a time.

        ::

            async for record in tv.iter_tenants(prefix="acme-"):
                print(record.id, record.documents)
        """
        cursor: str | None = None
        while True:
            page = await self.tenant_page(prefix=prefix, state=state, cursor=cursor, limit=page_size)
            for record in page.tenants:
                yield record
            if page.next is None:
                return
            cursor = page.next

    async def list_tenants(
        self, prefix: str | None = None, state: TenantState | None = None, page_size: int = 500
    ) -> list[TenantRecord]:
        """Every tenant whose id starts with ``prefix`` (and in ``state``), in id
        order: :meth:`iter_tenants`, collected."""
        return [record async for record in self.iter_tenants(prefix, state, page_size)]

    async def tenant_info(self, tenant: str) -> TenantRecord:
        """The tenant's record; :class:`UnknownTenant` if it has none."""
        check_tenant(tenant)
        return self._record("show", await self._tenants("show", {"tenant": tenant}))

    async def create_tenant(
        self,
        tenant: str,
        *,
        top_k: int | None = None,
        max_documents: int | None = None,
        max_rps: float | None = None,
        region: str | None = None,
        dr_region: str | None = None,
    ) -> TenantRecord:
        """Create the tenant's record, with settings of its own (``None``: the
        worker's default); returns the new record. With regions, ``region`` is
        its home (by default the region of the worker that answers) and
        ``dr_region`` its disaster-recovery region. :class:`BadRequest` if it
        exists already, or a setting or region is not valid."""
        check_tenant(tenant)
        given = {"top_k": top_k, "max_documents": max_documents, "max_rps": max_rps}
        settings = {key: value for key, value in given.items() if value is not None}
        body: dict[str, Any] = {"tenant": tenant}
        if settings:
            body["settings"] = settings
        if region is not None:
            body["region"] = region
        if dr_region is not None:
            body["dr_region"] = dr_region
        return self._record("create", await self._tenants("create", body))

    async def move_tenant(self, tenant: str, region: str, *, timeout: float = 3600.0) -> dict[str, Any]:
        """With regions: move the tenant's home to ``region`` (its data copied
        there, the old copy erased; its writes wait meanwhile, refused with
        :class:`Unavailable`, which :meth:`request_retrying` retries). Returns
        what was moved. Never retried: run it again after a failure, which
        leaves the tenant where it was."""
        check_tenant(tenant)
        subject = f"{self.prefix}.admin.tenants.move"
        reply: dict[str, Any] = await self.request(subject, {"tenant": tenant, "region": region}, timeout=timeout)
        return reply

    async def update_tenant(
        self,
        tenant: str,
        *,
        top_k: int | Unchanged | None = UNCHANGED,
        max_documents: int | Unchanged | None = UNCHANGED,
        max_rps: float | Unchanged | None = UNCHANGED,
    ) -> TenantRecord:
        """Change the tenant's settings; returns the changed record.

        A setting given a value takes it, one given ``None`` goes back to
        the worker's default, one left out stays as it is::

            await tv.update_tenant("alice", top_k=10, max_rps=None)

        The change holds from the tenant's next request, loaded or not.
        :class:`UnknownTenant` if the tenant has no record,
        :class:`BadRequest` if a setting is out of range (nothing changes).
        """
        check_tenant(tenant)
        given = {"top_k": top_k, "max_documents": max_documents, "max_rps": max_rps}
        settings = {key: value for key, value in given.items() if value is not UNCHANGED}
        if not settings:
            raise ValueError("update_tenant needs at least one of top_k, max_documents, max_rps")
        reply = await self._tenants("set", {"tenant": tenant, "settings": settings})
        return self._record("set", reply)

    async def delete_tenant(self, tenant: str) -> None:
        """Erase the tenant: its documents (as :meth:`drop`), its settings and
        its record. :class:`UnknownTenant` if it has no record."""
        check_tenant(tenant)
        await self._tenants("delete", {"tenant": tenant})

    # -- durable ingest -----------------------------------------------------

    async def ingest(
        self,
        tenant: str,
        documents: Iterable[Mapping[str, Any]],
        *,
        wait: bool = True,
        timeout: float = 120.0,
        batch_size: int = MAX_DOCUMENTS_PER_REQUEST,
        on_published: Callable[[int], None] | None = None,
    ) -> IngestResult:
        """Publish documents to the durable ingest stream (``<prefix>.ingest.<tenant>``).

        Each message holds up to ``batch_size`` documents (and fits the
        server's ``max_payload``); it returns once JetStream has stored them.
        With ``wait`` it also waits until the worker has committed every
        message: the ingest stream keeps a message (work-queue retention)
        until a worker acks it, which it does only once the documents are
        durable in the tenant's store, so a message that left the stream is
        committed, unless the worker dead-lettered it. Dead-letter records are
        watched on ``<prefix>.deadletter.<tenant>`` from before the first
        publish; one for a message of ours raises its error (e.g.
        :class:`DimensionMismatch`, :class:`QuotaExceeded`). After ``timeout``
        seconds :class:`CommitTimeout` is raised; the messages stay in the
        stream and are applied when a worker can. ``on_published`` is called
        with the number of documents of each message JetStream has stored
        (for a progress bar).

        Needs permission to publish on ``$JS.API.STREAM.MSG.GET.<stream>`` and
        to subscribe to the dead-letter subject when ``wait`` is true.
        """
        check_tenant(tenant)
        js = self.nats.jetstream()
        subject = self.subject("ingest", tenant)
        deadletters: list[Any] = []
        if wait:
            # Without regions on <prefix>.deadletter.<tenant>; with them, the
            # home region's <prefix>.<region>.deadletter.<tenant>.
            deadletters.append(await self.nats.subscribe(self.subject("deadletter", tenant)))
            deadletters.append(await self.nats.subscribe(f"{self.prefix}.*.deadletter.{tenant}"))
            await self.nats.flush()
        try:
            result = IngestResult(documents=0, messages=0)
            stream = ""
            domain: str | None = None
            for n, body in document_batches(documents, min(batch_size, MAX_DOCUMENTS_PER_REQUEST), self._max_bytes()):
                try:
                    ack = await js.publish(subject, body, timeout=self.settings.request_timeout)
                except nats.errors.NoRespondersError:
                    raise NoWorker(
                        f"no JetStream stream takes {subject}: start a worker with ingest enabled "
                        f"and prefix {self.prefix!r} (it creates the stream)",
                        subject=subject,
                    ) from None
                except nats.errors.MaxPayloadError as e:
                    raise TooLarge(f"ingest message over the server's max_payload: {e}", subject=subject) from None
                stream = ack.stream
                # With regions, the home region's JetStream domain.
                domain = ack.domain or None
                result.stream_seqs.append(ack.seq)
                result.documents += n
                result.messages += 1
                if on_published is not None:
                    on_published(n)
            if deadletters and result.stream_seqs:
                await self._wait_committed(stream, result.stream_seqs, timeout, domain)
                await self._raise_dead_letters(deadletters, set(result.stream_seqs), result.messages)
                result.committed = True
            elif wait:
                result.committed = True
            return result
        finally:
            for sub in deadletters:
                await sub.unsubscribe()

    async def _wait_committed(self, stream: str, seqs: list[int], timeout: float, domain: str | None) -> None:
        js = self.nats.jetstream(domain=domain) if domain else self.nats.jetstream()
        pending = sorted(seqs)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while pending:
            # Newest first: a tenant's messages are applied in stream order,
            # so once its newest is gone the older ones mostly are too.
            while pending and await self._left_stream(js, stream, pending[-1]):
                pending.pop()
            if not pending:
                return
            if time.monotonic() > deadline:
                raise CommitTimeout(
                    f"{len(pending)} ingest messages not committed within {timeout:g}s "
                    f"(they stay in {stream} and are applied when a worker can)",
                    pending=pending,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    @staticmethod
    async def _left_stream(js: Any, stream: str, seq: int) -> bool:
        try:
            await js.get_msg(stream, seq=seq)
        except nats.js.errors.NotFoundError:
            return True
        return False

    async def _raise_dead_letters(self, subs: list[Any], seqs: set[int], messages: int) -> None:
        # A record is stored (and so delivered to these subscriptions) before
        # its message is terminated, so every record of ours is queued here.
        failed: list[dict[str, Any]] = []
        for sub in subs:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.05)
                except nats.errors.TimeoutError:
                    break
                try:
                    record = json.loads(msg.data)
                except ValueError:
                    continue
                if record.get("stream_seq") in seqs:
                    failed.append(record)
        if failed:
            first = failed[0]
            err = first.get("error") or {}
            raise error_for(
                str(err.get("code", "internal")),
                f"{err.get('message', 'dead-lettered')} ({len(failed)} of {messages} ingest messages "
                f"dead-lettered; first at stream sequence {first.get('stream_seq')})",
                subject=first.get("subject"),
            )


_NOT_SAFE_TO_REPEAT: Final = frozenset({"create", "delete", "move", "failover"})
"""Registry operations a retry could turn into a wrong answer: a second
``create`` finds the tenant the first made, a second ``delete`` finds none."""

_FIRST_WAIT: Final = 0.05
_MAX_WAIT: Final = 1.0


def retry_wait(tries: int, jitter: float, hint: float | None = None) -> float:
    """Seconds to wait before try ``tries + 1`` after ``tries`` failed ones: a
    uniform draw (``jitter`` in [0, 1)) up to 50 ms doubled each try, at most
    1 s, and never less than the worker's ``hint``."""
    cap = min(_MAX_WAIT, _FIRST_WAIT * 2.0 ** max(0, min(tries - 1, 16)))
    return max(cap * min(max(jitter, 0.0), 1.0), hint or 0.0)


def _decode_reply(subject: str, reply: Msg) -> Any:
    headers = reply.headers or {}
    if HEADER_ERROR_CODE in headers:
        retry_after: float | None = None
        try:
            err = json.loads(reply.data)["error"]
            code, message = str(err["code"]), str(err["message"])
            if isinstance(err.get("retry_after_ms"), int):
                retry_after = err["retry_after_ms"] / 1000.0
        except (ValueError, KeyError, TypeError):
            code = {
                "400": "bad_request",
                "404": "unknown_tenant",
                "413": "too_large",
                "429": "rate_limited",
                "503": "unavailable",
            }.get(headers.get(HEADER_ERROR_CODE, ""), "internal")
            message = headers.get(HEADER_ERROR, "") or reply.data.decode(errors="replace")
        raise error_for(code, message, subject=subject, retry_after=retry_after)
    try:
        return json.loads(reply.data)
    except ValueError as e:
        raise ServiceError(f"unreadable reply on {subject}: {e}", code="internal", subject=subject) from None
