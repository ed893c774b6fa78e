"""Host names of new upstream connections, looked up once for a burst and kept a few seconds.

asyncio resolves the host of every `create_connection` in the loop's thread pool (uvloop as
well; only an address needs no lookup). A burst of 3,000 new streams to `api.openai.com`
would make 3,000 lookups of the same name, queued on a handful of threads ahead of the
connections, and as many queries to the system's resolver. `Resolver` makes one lookup for
all the connections that need a name at the same time, and keeps its answer for `ttl`
seconds (aiohttp's default, 10): long enough for a burst, short enough to follow a
provider's DNS changes, since `getaddrinfo` does not say a record's own TTL. A failed lookup
is not kept: the next connection asks again. Addresses (`127.0.0.1`, `[::1]`) are never
looked up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

Address = tuple[Any, ...]
"""A socket address as `getaddrinfo` gives it: (host, port) or (host, port, flow, scope)."""

TTL_S = 10.0
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class Resolver:
    """The addresses to try, in order, for a host and port (see the module's docstring)."""

    def __init__(self, ttl: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._known: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._asking: dict[tuple[str, int], asyncio.Task[list[Address]]] = {}
        self._numeric: dict[str, bool] = {}
        self.lookups = 0
        """Lookups made (for tests and debugging)."""

    def is_address(self, host: str) -> bool:
        known = self._numeric.get(host)
        if known is None:
            try:
                ipaddress.ip_address(host)
                known = True
            except ValueError:
                known = False
            if len(self._numeric) < 1024:  # hosts are the configured providers'
                self._numeric[host] = known
        return known

    def at_hand(self, host: str, port: int) -> list[Address] | None:
        """`to_try`'s answer when it needs no waiting: the host itself when it is an address,
        the last `ttl` seconds' lookup for a name; None when a lookup is needed. A new
        connection's caller takes it from here without `to_try`'s and `addresses`'
        coroutines (a burst opens a connection per stream)."""
        if self.is_address(host):
            return [(host, port)]
        return self._kept(host, port)

    async def to_try(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Address]:
        """The addresses to connect to for `host` and `port`: `at_hand`'s, else `addresses`'."""
        addresses = self.at_hand(host, port)
        if addresses is not None:
            return addresses
        return await self.addresses(loop, host, port)

    async def addresses(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> list[Address]:
        """`host`'s addresses for `port`, from the last `ttl` seconds' lookup or a new one
        shared by every caller that asks meanwhile. Raises `OSError` as `getaddrinfo` does.
        A caller cancelled while waiting leaves the lookup running for the others."""
        kept = self._kept(host, port)
        if kept is not None:
            return kept
        key = (host, port)
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = loop.create_task(self._look_up(loop, host, port))
            asking.add_done_callback(_retrieve)  # its callers may all have been cancelled
        return await asyncio.shield(asking)

    def _kept(self, host: str, port: int) -> list[Address] | None:
        """The last `ttl` seconds' lookup of `host` for `port`, if there was one."""
        known = self._known.get((host, port))
        if known is not None and known[0] > self._clock():
            return known[1]
        return None

    async def _look_up(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> list[Address]:
        key = (host, port)
        self.lookups += 1
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        finally:
            del self._asking[key]
        addresses = list(dict.fromkeys(info[4] for info in infos))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
        self._known[key] = (self._clock() + self.ttl, addresses)
        return addresses


def connect_first(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], _P],
    addresses: list[Address],
    **kw: Any,
) -> Awaitable[tuple[asyncio.Transport, _P]]:
    """`loop.create_connection(factory, ...)` to the first of `addresses` that takes one (in
    the resolver's order, as `create_connection` tries a name's); the last one's error when
    none does. `kw`: create_connection's (ssl, server_hostname)."""
    if len(addresses) == 1:
        # One address (an IP literal, or a name with one): `create_connection`'s own
        # awaitable, which raises that address's error, without a coroutine around it.
        address = addresses[0]
        return loop.create_connection(factory, address[0], address[1], **kw)
    return _connect_each(loop, factory, addresses, **kw)


async def _connect_each(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], _P],
    addresses: list[Address],
    **kw: Any,
) -> tuple[asyncio.Transport, _P]:
    error: OSError | None = None
    for address in addresses:
        try:
            return await loop.create_connection(factory, address[0], address[1], **kw)
        except OSError as exc:
            error = exc
    assert error is not None  # the resolver never answers with no address
    raise error


def _retrieve(task: asyncio.Task[list[Address]]) -> None:
    if not task.cancelled():
        task.exception()
