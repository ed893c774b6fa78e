"""The one error class the transports add to httpx's: a malformed answer.

Every transport raises only httpx's exceptions (httpx's `map_httpcore_exceptions` is the
model), so the providers map one exception tree to the gateway's (`upstream_errors`),
whichever transport is configured. httpx has no class of its own for a server whose bytes
are not HTTP; `MalformedResponse` is that case, a `RemoteProtocolError` to anything that
does not ask. The native and aiohttp transports raise it for a head or chunk framing their
parser rejects; httpx's own transport cannot tell that from a connection that ended early
(h11 says RemoteProtocolError for both), and raises RemoteProtocolError as it always did.
"""

from __future__ import annotations

import httpx


class MalformedResponse(httpx.RemoteProtocolError):
    """The server's bytes are not a valid HTTP/1.1 response (bad status line, headers or
    chunk framing), as opposed to a connection that ended early."""
