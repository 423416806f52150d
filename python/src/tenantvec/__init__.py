"""Python client and LangChain ``VectorStore`` for tenantvec, a multi-tenant
vector store worker served over NATS."""

from .client import Document, Hit, IngestResult, TenantVecClient
from .errors import (
    BadRequest,
    CommitTimeout,
    ConnectError,
    DimensionMismatch,
    Internal,
    InvalidTenant,
    NoWorker,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    TenantVecError,
    TooLarge,
    Unavailable,
)
from .settings import ConnectionSettings, is_valid_tenant
from .sync import SyncTenantVecClient
from .vectorstore import TenantVecStore

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "CommitTimeout",
    "ConnectError",
    "ConnectionSettings",
    "DimensionMismatch",
    "Document",
    "Hit",
    "IngestResult",
    "Internal",
    "InvalidTenant",
    "NoWorker",
    "QuotaExceeded",
    "RateLimited",
    "ServiceError",
    "SyncTenantVecClient",
    "TenantVecClient",
    "TenantVecError",
    "TenantVecStore",
    "TooLarge",
    "Unavailable",
    "is_valid_tenant",
]
