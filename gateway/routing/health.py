"""One deployment's health: failures in a window cool it down, then one probe decides.

The states, per deployment and per process (each replica and each worker judges by the
attempts it made itself; nothing is shared):

- healthy: routed to by the model's `routing`;
- cooled (`failures` failed attempts within `window` s, or an upstream's `retry-after`):
  no traffic until `cooled_until`, unless every deployment of its model is cooled;
- probe-ready (the cooldown ended): the next request of its model goes to it first, one at
  a time (`probing`); success makes it healthy, failure cools it again.

Deliberately not here: the choice between deployments (`gateway.routing`), and timing of
any kind beyond the `now` the caller passes (tests drive it with a fake clock).
"""

from __future__ import annotations

import email.utils
import time
from collections import deque
from collections.abc import Mapping

from gateway.config import HealthConfig
from gateway.limits.upstream import MAX_OBSERVED_RESET_S


class Health:
    __slots__ = ("_config", "_failures", "cooled_until", "needs_probe", "probing")

    def __init__(self, config: HealthConfig) -> None:
        self._config = config
        self._failures: deque[float] = deque()
        self.cooled_until = 0.0
        self.needs_probe = False
        """Cooled: no normal traffic until a probe succeeded."""
        self.probing = False
        """A probe request is in flight (at most one)."""

    @property
    def healthy(self) -> bool:
        return not self.needs_probe

    def probe_ready(self, now: float) -> bool:
        return self.needs_probe and not self.probing and now >= self.cooled_until

    def failed(self, now: float, retry_after: float | None = None) -> bool:
        """Count a failed attempt; True when it (re)cooled the deployment."""
        self.probing = False
        if self.needs_probe:
            # A failed probe, or an attempt made because every deployment was cooled.
            self._cool(now, self._config.cooldown, retry_after)
            return True
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self._config.window:
            failures.popleft()
        if len(failures) >= self._config.failures:
            self._cool(now, self._config.cooldown, retry_after)
            return True
        if retry_after:
            self._cool(now, 0.0, retry_after)
            return True
        return False

    def succeeded(self) -> bool:
        """An attempt got its first event; True when that ended a cooldown."""
        self.probing = False
        if not self.needs_probe:
            return False
        self.needs_probe = False
        self._failures.clear()
        return True

    def _cool(self, now: float, cooldown: float, retry_after: float | None) -> None:
        self.needs_probe = True
        self._failures.clear()
        until = now + max(cooldown, min(retry_after or 0.0, MAX_OBSERVED_RESET_S))
        self.cooled_until = max(self.cooled_until, until)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds an upstream asked the gateway to wait: `retry-after-ms` (OpenAI's),
    `retry-after` in seconds or as an HTTP date; None when it said nothing usable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)
