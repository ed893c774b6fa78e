"""Fixtures for the observability tests. Helpers live in `obs_support`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.observability.metrics import MULTIPROC_ENV, Metrics
from tests.observability.obs_support import KEY_IDS, MODELS, PROVIDERS


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[Metrics]:
    """A single-process Metrics, whatever the environment of the test run says."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    yield Metrics(MODELS, PROVIDERS, KEY_IDS)
