"""Client keys: which configured key a request presents.

Only sha256 digests of the keys are configured and kept; a presented secret is hashed, looked
up by its digest and compared in constant time, and never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Protocol

from starlette.types import Scope

from gateway.asgi import presented_secret
from gateway.config import KeyConfig
from gateway.errors import InvalidApiKey


class KeyLookup(Protocol):
    """Keys managed at runtime (`gateway.keys.store.KeyStore`): an in-memory table, so a
    lookup never waits on the database."""

    reachable: bool
    """False while the database is unreachable (the keys known are still served)."""
    unreachable_since: float | None
    """Unix time the database became unreachable; None while it is reachable."""

    def lookup(self, sha256_hex: str) -> KeyConfig | None:
        """The live key with this digest; None for unknown, expired, blocked or revoked."""

    def keys(self) -> tuple[KeyConfig, ...]:
        """Every live managed key."""


class Keys:
    """The config's keys, then (when `database_url` is set) the runtime key store's."""

    __slots__ = ("_by_hash", "_store")

    def __init__(self, keys: Iterable[KeyConfig], store: KeyLookup | None = None) -> None:
        self._by_hash = {k.key_sha256: k for k in keys}
        self._store = store

    @property
    def store(self) -> KeyLookup | None:
        return self._store

    def authenticate(self, scope: Scope) -> KeyConfig:
        """The key of `Authorization: Bearer KEY` or `x-api-key: KEY`.

        The presented secret is hashed and looked up by its sha256; the lookup's timing
        depends only on the hash, which the caller already knows, and the final comparison
        is constant-time. The secret itself is never stored, logged or echoed.
        """
        secret = presented_secret(scope)
        if not secret:
            raise InvalidApiKey(
                "Missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'."
            )
        digest = hashlib.sha256(secret).hexdigest()
        key = self._by_hash.get(digest)
        if key is None and self._store is not None:
            # The store's table holds live secrets only (a rotated one until its grace ends).
            key = self._store.lookup(digest)
        elif key is not None and not hmac.compare_digest(digest, key.key_sha256):
            key = None
        if key is None:
            raise InvalidApiKey("Incorrect API key provided.")
        return key
