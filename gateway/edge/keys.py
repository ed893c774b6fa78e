"""Client keys: which configured key a request presents.

Only sha256 digests of the keys are configured and kept; a presented secret is hashed, looked
up by its digest and compared in constant time, and never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import Scope

from gateway.config import KeyConfig
from gateway.errors import InvalidApiKey


def presented_secret(scope: Scope) -> bytes:
    """The key a request presents: `Authorization: Bearer KEY` or `x-api-key: KEY`,
    whichever comes first; b"" when there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return bytes(value).strip()
    return b""


class Keys:
    __slots__ = ("_by_hash",)

    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        self._by_hash = {k.key_sha256: k for k in keys}

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
        if key is None or not hmac.compare_digest(digest, key.key_sha256):
            raise InvalidApiKey("Incorrect API key provided.")
        return key
