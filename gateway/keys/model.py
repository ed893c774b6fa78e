"""What the admin API and the store share without the database libraries: the managed key's
shape, the store's errors, new secrets. Importing this loads no SQLAlchemy (a gateway without
`database_url` never does)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.config import Limits

SECRET_PREFIX = "sk-gw-"


class StoreUnavailable(Exception):
    """The database could not be reached or answered with an error."""


class KeyConflict(Exception):
    """The id is taken (by a live key or a revoked one)."""


class KeyNotFound(Exception):
    pass


@dataclass(frozen=True)
class ManagedKey:
    """One row of `gateway_keys`, as the admin API shows it (never its hashes)."""

    id: str
    key_sha256: str = field(repr=False)
    models: tuple[str, ...] | None
    limits: Limits
    budget: Mapping[str, float] | None
    metadata: Mapping[str, Any]
    expires_at: float | None
    blocked: bool
    revoked_at: float | None
    created_at: float
    updated_at: float
    revision: int
    previous_sha256: str | None = field(default=None, repr=False)
    previous_valid_until: float | None = None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.blocked:
            return "blocked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        grace = self.previous_valid_until
        return {
            "object": "key",
            "id": self.id,
            "source": "database",
            "status": self.status(now),
            "models": list(self.models) if self.models is not None else None,
            "limits": limits_json(self.limits),
            "budget": dict(self.budget) if self.budget is not None else None,
            "expires_at": self.expires_at,
            "blocked": self.blocked,
            "revoked_at": self.revoked_at,
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "previous_secret_valid_until": grace if grace is not None and grace > now else None,
        }


def limits_json(limits: Limits) -> dict[str, int | None]:
    return {f.name: getattr(limits, f.name) for f in fields(Limits)}


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


UNSET: Any = object()
"""A field an update leaves as it is."""
