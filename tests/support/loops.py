"""Shared by the tests of the gateway's own protocols (the RESP client, the native HTTP
transport): every async test on both event loops, and a self-signed TLS certificate.

Both loops because the server runs uvloop, whose transports differ from asyncio's (they are
not `asyncio.Transport` subclasses: an isinstance check passed every asyncio test and failed
every request under uvloop, twice).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test's scenario on the loop of this parameter, within 5 s: a hang fails with
    TimeoutError (and the scenario's own cleanup runs) instead of blocking the suite."""
    runner: Run = asyncio.run if request.param == "asyncio" else uvloop.run

    def guarded(scenario: Coroutine[Any, Any, None]) -> None:
        async def within() -> None:
            async with asyncio.timeout(5):
                await scenario

        runner(within())

    return guarded


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl in `directory`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
