"""Which key a request presents, and which configured key that is."""

from __future__ import annotations

import hashlib

import pytest

from gateway.asgi import presented_secret
from gateway.config import KeyConfig
from gateway.edge.keys import Keys
from gateway.errors import InvalidApiKey


def general(headers: list[tuple[bytes, bytes]]) -> bytes:
    """`presented_secret` spelled out without its shortcut for `Bearer KEY`."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return bytes(value).strip()
    return b""


HEADS: list[list[tuple[bytes, bytes]]] = [
    [],
    [(b"host", b"x"), (b"authorization", b"Bearer sk-1")],
    [(b"authorization", b"Bearer  sk-1 \t")],
    [(b"authorization", b"Bearer ")],
    [(b"authorization", b"Bearer"), (b"x-api-key", b"sk-2")],
    [(b"authorization", b"BearerX sk-1"), (b"x-api-key", b"sk-2")],
    [(b"authorization", b"bearer sk-1")],
    [(b"authorization", b"BEARER sk-1"), (b"authorization", b"Bearer sk-3")],
    [(b"authorization", b"Basic dXNlcg=="), (b"x-api-key", b" sk-2 ")],
    [(b"x-api-key", b"sk-2"), (b"authorization", b"Bearer sk-1")],
    [(b"authorization", bytearray(b"Bearer sk-1"))],  # type: ignore[list-item]
    [(b"authorization", memoryview(b"Bearer sk-1"))],  # type: ignore[list-item]
]


@pytest.mark.parametrize("headers", HEADS)
def test_the_presented_secret_is_what_the_general_way_finds(
    headers: list[tuple[bytes, bytes]],
) -> None:
    secret = presented_secret({"type": "http", "headers": headers})
    assert type(secret) is bytes
    assert secret == general(headers)


def test_a_key_is_found_by_the_sha256_of_its_secret() -> None:
    keys = Keys([KeyConfig("a", hashlib.sha256(b"sk-a").hexdigest())])
    scope = {"type": "http", "headers": [(b"authorization", b"Bearer sk-a")]}
    assert keys.authenticate(scope).id == "a"
    for wrong in ([(b"authorization", b"Bearer sk-b")], [(b"x-api-key", b"sk-ab")], []):
        with pytest.raises(InvalidApiKey):
            keys.authenticate({"type": "http", "headers": wrong})
