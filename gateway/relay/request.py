"""What the relay consumes: a client's request, already checked by an ingress.

Each ingress API (the edge's routes) parses its own body into a `ClientRequest`; the relay
reads only these fields and never looks at how the request arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.protocols import Api
from gateway.providers.base import Route


@dataclass(slots=True)
class ClientRequest:
    """Not frozen, though nothing changes one after its parse (`dataclasses.replace` makes
    a new one): a frozen dataclass's `__init__` sets each of its nine fields through
    `object.__setattr__`, about 2 µs per request more than plain slots."""

    route: Route
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_estimate: int
    api: Api = "chat"
    """The API the client speaks: `body` is in its shape, and so is the answer."""
    passed_headers: tuple[tuple[str, str], ...] = ()
    """Headers passed on to an upstream of the client's own API (`anthropic-version`)."""
