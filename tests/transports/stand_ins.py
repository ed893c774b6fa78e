"""Stand-ins for what a native `http11.Connection` talks to, for tests that feed it bytes."""

from __future__ import annotations

from gateway.transports import http11


class StandInPool:
    """What a connection asks of its transport (`http11.Pool`): nothing is kept."""

    def lost(self, conn: http11.Connection) -> None:
        pass

    def release(self, conn: http11.Connection) -> None:
        pass


class StandInWire:
    """A stand-in asyncio transport: requests are dropped, a close is remembered."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
