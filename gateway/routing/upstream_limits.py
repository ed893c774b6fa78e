"""The interface the router uses to keep each deployment under its upstream account's own
rpm/tpm, and a default that limits nothing.

TODO(L): the real limiter is `gateway.limits.upstream.UpstreamLimits` (helper L's branch):
when it lands, build it in `gateway.app` and pass it to `Router`; `NoUpstreamLimits` then
goes. The Protocol below is that class's interface, so the router needs no change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.config import Limits


class UpstreamTicket:
    """What `acquire` hands out and `settle` takes back."""

    __slots__ = ()


class UpstreamLimiter(Protocol):
    async def acquire(
        self, deployment_key: str, limits: Limits, tokens: int, wait: float
    ) -> UpstreamTicket | None:
        """A ticket, or None: over the limit even after waiting up to `wait` s."""

    def observe(self, deployment_key: str, headers: Mapping[str, str]) -> None:
        """An upstream's response headers (x-ratelimit-remaining-*, x-ratelimit-reset-*)."""

    def remaining(self, deployment_key: str) -> float | None:
        """What the upstream last said remains; None: unknown."""

    async def settle(self, ticket: UpstreamTicket, tokens_used: int) -> None: ...


_TICKET = UpstreamTicket()


class NoUpstreamLimits:
    """Admits everything (TODO(L): replaced by `gateway.limits.upstream.UpstreamLimits`)."""

    def __init__(self, store_or_none: object = None) -> None:
        self._store = store_or_none

    async def acquire(
        self, deployment_key: str, limits: Limits, tokens: int, wait: float
    ) -> UpstreamTicket | None:
        return _TICKET

    def observe(self, deployment_key: str, headers: Mapping[str, str]) -> None:
        return None

    def remaining(self, deployment_key: str) -> float | None:
        return None

    async def settle(self, ticket: UpstreamTicket, tokens_used: int) -> None:
        return None
