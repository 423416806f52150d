"""Exceptions raised by the client.

Every error reply of the worker (docs/protocol.md, "Errors") becomes one subclass
of :class:`ServiceError` that carries the protocol's ``code``, the HTTP-like
``status`` and the worker's ``message``. ``retryable`` says whether sending
the same request again later may succeed.
"""

from __future__ import annotations

from typing import ClassVar


class TenantVecError(Exception):
    """Base of every exception this package raises."""

    retryable: ClassVar[bool] = False


class ServiceError(TenantVecError):
    """The worker answered with an error reply."""

    code: ClassVar[str] = ""
    status: ClassVar[int] = 0

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        subject: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.retry_after = retry_after
        """Seconds the worker asks to wait before a retry (``rate_limited``), if it says."""
        if code is not None and code != type(self).code:
            # An unknown code (a newer worker): keep it on the instance.
            self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        hint = " (retryable: try again later)" if self.retryable else ""
        return f"{self.code}: {self.message}{hint}"


class InvalidTenant(ServiceError):
    """The tenant id breaks the rule ``[a-z0-9][a-z0-9_-]{0,63}``."""

    code = "invalid_tenant"
    status = 400


class UnknownTenant(ServiceError):
    """The tenant has no record in the worker's tenant registry.

    Raised for any request of such a tenant when the worker creates tenants
    only on demand (``tenants.auto_create`` off), and by
    :meth:`~tenantvec.TenantVecClient.tenant_info`,
    :meth:`~tenantvec.TenantVecClient.update_tenant` and
    :meth:`~tenantvec.TenantVecClient.delete_tenant` of a tenant without one.
    Create it with :meth:`~tenantvec.TenantVecClient.create_tenant`.
    """

    code = "unknown_tenant"
    status = 404


class BadRequest(ServiceError):
    """The request is malformed: unknown verb, bad JSON, unknown or mistyped field, bad filter."""

    code = "bad_request"
    status = 400


class DimensionMismatch(ServiceError):
    """A vector (given, or made by the worker's embedder) has another length than the tenant's."""

    code = "dimension_mismatch"
    status = 400


class TooLarge(ServiceError):
    """Over a configured limit (documents per request, top_k, text bytes, ids, metadata)."""

    code = "too_large"
    status = 413


class QuotaExceeded(ServiceError):
    """The tenant would hold more documents than its quota (``max_documents``)."""

    code = "quota_exceeded"
    status = 429


class RateLimited(ServiceError):
    """The tenant sent more requests per second than its limit (``max_rps``); retry later."""

    code = "rate_limited"
    status = 429
    retryable = True


class Unavailable(ServiceError):
    """The worker is overloaded, shutting down or cannot reach its store; retry later."""

    code = "unavailable"
    status = 503
    retryable = True


class Internal(ServiceError):
    """Anything else; the worker logged it with the tenant and request id."""

    code = "internal"
    status = 500


ERRORS_BY_CODE: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidTenant,
        UnknownTenant,
        BadRequest,
        DimensionMismatch,
        TooLarge,
        QuotaExceeded,
        RateLimited,
        Unavailable,
        Internal,
    )
}


def error_for(code: str, message: str, subject: str | None = None, retry_after: float | None = None) -> ServiceError:
    """The exception for an error ``code`` of the protocol (``ServiceError`` if unknown)."""
    cls = ERRORS_BY_CODE.get(code, ServiceError)
    return cls(message, code=code, subject=subject, retry_after=retry_after)


class NoWorker(TenantVecError):
    """No worker answered: nobody serves the subject (no responders) or the reply timed out.

    Usually no worker runs with this prefix on this NATS server, or the client
    uses another prefix than the worker. ``timed_out`` tells the two apart.
    """

    retryable = True

    def __init__(self, message: str, *, subject: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.subject = subject
        self.timed_out = timed_out


class ConnectError(TenantVecError):
    """The NATS server cannot be reached or refused the connection."""

    retryable = True


class CommitTimeout(TenantVecError):
    """Ingest: JetStream stored the messages, but the worker did not commit them in time.

    Nothing is lost: the messages stay in the stream and a worker applies them
    when it can. ``pending`` holds the stream sequences still waiting.
    """

    retryable = True

    def __init__(self, message: str, *, pending: list[int]) -> None:
        super().__init__(message)
        self.pending = pending
