"""Python client and LangChain ``VectorStore`` for tenantvec, a multi-tenant
vector store worker served over NATS."""

from .client import (
    UNCHANGED,
    Document,
    EmbedderInfo,
    Hit,
    IngestResult,
    TenantPage,
    TenantRecord,
    TenantSettings,
    TenantVecClient,
)
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
    UnknownTenant,
)
from .settings import ConnectionSettings, is_valid_tenant
from .sync import SyncTenantVecClient
from .vectorstore import TenantVecStore

__version__ = "0.1.0"

__all__ = [
    "UNCHANGED",
    "BadRequest",
    "CommitTimeout",
    "ConnectError",
    "ConnectionSettings",
    "DimensionMismatch",
    "Document",
    "EmbedderInfo",
    "Hit",
    "IngestResult",
    "Internal",
    "InvalidTenant",
    "NoWorker",
    "QuotaExceeded",
    "RateLimited",
    "ServiceError",
    "SyncTenantVecClient",
    "TenantPage",
    "TenantRecord",
    "TenantSettings",
    "TenantVecClient",
    "TenantVecError",
    "TenantVecStore",
    "TooLarge",
    "Unavailable",
    "UnknownTenant",
    "is_valid_tenant",
]
