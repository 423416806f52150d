"""Connection settings, read like the worker's (same environment variables)."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_PREFIX = "tenantvec"

_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# Environment variable -> settings field, as the worker reads them.
ENV_VARS: dict[str, str] = {
    "NATS_URL": "url",
    "TENANTVEC_PREFIX": "prefix",
    "NATS_USER": "user",
    "NATS_PASSWORD": "password",
    "NATS_TOKEN": "token",
    "NATS_NKEY_SEED": "nkey_seed",
    "NATS_CREDS": "credentials_file",
    "NATS_TLS_CA": "tls_ca_file",
    "NATS_TLS_CERT": "tls_cert_file",
    "NATS_TLS_KEY": "tls_key_file",
    "NATS_INBOX_PREFIX": "inbox_prefix",
    "TENANTVEC_REQUEST_TIMEOUT": "request_timeout",
    "TENANTVEC_RETRY_DEADLINE": "retry_deadline",
}

_DURATIONS = frozenset({"request_timeout", "retry_deadline"})


def is_valid_tenant(tenant: str) -> bool:
    """Whether ``tenant`` follows the tenant rule ``[a-z0-9][a-z0-9_-]{0,63}``."""
    return isinstance(tenant, str) and _TENANT_RE.fullmatch(tenant) is not None


def _seconds(value: str) -> float:
    """``"30"``, ``"30s"``, ``"250ms"``, ``"2m"`` -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", value)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the worker is and how to reach it.

    Every field has the worker's default; :meth:`from_env` reads the same
    environment variables as the worker (``NATS_URL``, ``TENANTVEC_PREFIX``,
    ``NATS_USER``/``NATS_PASSWORD``, ``NATS_TOKEN``, ``NATS_NKEY_SEED``,
    ``NATS_CREDS``, ``NATS_TLS_CA``/``NATS_TLS_CERT``/``NATS_TLS_KEY``,
    ``NATS_INBOX_PREFIX``, ``TENANTVEC_REQUEST_TIMEOUT``,
    ``TENANTVEC_RETRY_DEADLINE``).
    """

    url: str = DEFAULT_URL
    """NATS server URL(s), comma separated. ``tls://`` requires TLS."""
    prefix: str = DEFAULT_PREFIX
    """Subject prefix: requests go to ``<prefix>.<verb>.<tenant>``."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    """NKey seed of the user (``SU...``); needs ``tenantvec[nkeys]``."""
    credentials_file: str | None = None
    """JWT credentials file (``.creds``); needs ``tenantvec[nkeys]``."""
    tls_ca_file: str | None = None
    """CA file to trust; turns TLS on."""
    tls_cert_file: str | None = None
    """Client certificate for mutual TLS."""
    tls_key_file: str | None = None
    inbox_prefix: str = "_INBOX"
    """Prefix of reply inboxes (``_INBOX_alice`` with per-tenant server permissions)."""
    request_timeout: float = 30.0
    """Seconds a request waits for its reply."""
    retry_deadline: float = 10.0
    """Seconds after a request's first try within which it is tried again when
    its failure may pass and it is safe to send twice (0: no retries)."""
    connect_timeout: float = 5.0
    name: str = "tenantvec-python"
    """Connection name shown by the NATS server's monitoring."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ConnectionSettings:
        """Settings from the environment (the worker's variable names), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var)
            if raw:
                values[name] = _seconds(raw) if name in _DURATIONS else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> ConnectionSettings:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown connection settings: {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with, or ``None`` to let the URL decide."""
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        if self.tls_cert_file:
            ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return ctx

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        opts: dict[str, Any] = {
            "servers": self.servers(),
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            "inbox_prefix": self.inbox_prefix,
        }
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token:
            opts["token"] = self.token
        if self.nkey_seed:
            opts["nkeys_seed_str"] = self.nkey_seed
        if self.credentials_file:
            opts["user_credentials"] = self.credentials_file
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts
