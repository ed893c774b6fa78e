"""Keeping a provider's credentials out of everything it sends back.

Some upstreams echo the credential they received ("Incorrect API key provided: sk-...");
relayed as it came, that hands the gateway's upstream key to a client and writes it into
the request log. A `Redactor` is built once per provider from what the gateway sends it as
credentials (`api_key`, the values of the configured `headers`, the token of a
`<scheme> <token>` value, a password or a key-like query value in `base_url`) and replaces
each of them with `[redacted]`, in the forms an echo takes: as sent, JSON-escaped (also
with `\\/` and `\\u` escapes), and URL-encoded. The providers apply it at the upstream
boundary: to every upstream body they read (error bodies before they become a
`GatewayError`, non-streamed answers), to the bytes of every relayed stream read, to
messages taken from error events, and to the text kept for `log_bodies`.

The check is a substring search (`bytes.partition`) per secret (`_probes`), so the per-read
cost on a stream is a scan or two of bytes already in cache (about 0.15 µs for a 240-byte
event per secret).
A relayed read is whole SSE events (`SSEDecoder` keeps a partial event buffered), so a
secret inside one event is never split between two reads.

Deliberately not caught: values shorter than `MIN_SECRET` characters (scrubbing them would
maul ordinary text), masked echoes (`sk-abc...xyz`, as upstreams mask keys themselves),
and a secret spread over several events (a model spelling it out token by token) or
re-encoded otherwise (base64 other than Basic auth's, `\\u`-escaped ASCII in a relayed
stream). Configured headers known to carry no credential (`_PUBLIC_HEADERS`: API
versions, beta flags, attribution) are left alone.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

import orjson

from gateway.config import ProviderConfig

MARK = "[redacted]"
MIN_SECRET = 8
"""Shorter values are not treated as secrets: real credentials are far longer."""

_PUBLIC_HEADERS = frozenset(
    {
        "accept",
        "anthropic-beta",
        "anthropic-version",
        "content-type",
        "http-referer",
        "openai-beta",
        "user-agent",
        "x-title",
    }
)
"""Configured headers whose values are not credentials (API versions, beta flags, the
attribution some providers ask for): scrubbing them would alter ordinary answers."""

_CREDENTIAL_PARAM = re.compile(r"key|token|secret|sig|pass|auth|code", re.IGNORECASE)
"""A `base_url` query parameter named like this carries a credential (`?api-key=`)."""


class Redactor:
    """Replaces a provider's credentials with `[redacted]` in bytes and text."""

    __slots__ = ("_forms", "_probes", "_texts")

    def __init__(self, secrets: list[str]) -> None:
        forms: dict[bytes, None] = {}
        for text in secrets:
            if len(text) < MIN_SECRET:
                continue
            for form in _encodings(text):
                forms.setdefault(form, None)
        # Longest first: a secret that contains another is replaced whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        # What a read is searched for: a form that contains another one ("Bearer tok-..."
        # holds "tok-...") is found by looking for the shorter, so it costs no scan of its own.
        self._probes = tuple(f for f in self._forms if not any(o in f for o in forms if o != f))
        # Decoded text holds the forms a body spelt (a URL-encoded key in a JSON message).
        self._texts = tuple(form.decode() for form in self._forms)

    @classmethod
    def for_provider(cls, config: ProviderConfig) -> Redactor:
        secrets = [config.api_key]
        for name, value in config.headers.items():
            if name.lower() in _PUBLIC_HEADERS:
                continue
            secrets.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.isalpha():  # "Bearer sk-...": the token alone is echoed too
                secrets.append(token.strip())
        url = urlsplit(config.base_url)
        if url.password:
            user, password = unquote(url.username or ""), unquote(url.password)
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            secrets += [password, f"{user}:{password}", basic]
        secrets += [v for k, v in parse_qsl(url.query) if _CREDENTIAL_PARAM.search(k)]
        return cls(secrets)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def scrub(self, data: bytes) -> bytes:
        """`data` with every form of every secret replaced (the same object if none)."""
        for probe in self._probes:
            # `partition`, whose middle part is the probe where found, else b"": on Python
            # 3.11 the cheapest search for a substring, its one argument taken as such,
            # where `find` parses its arguments the general way (~550 instructions more on
            # a 240-byte read) and `probe in data` first tries the probe as an int. It makes
            # no copies where the probe is not found.
            if data.partition(probe)[1]:
                break
        else:
            return data
        for form in self._forms:
            if form in data:
                data = data.replace(form, _MARK_BYTES)
        return data

    def scrub_text(self, text: str) -> str:
        """`text` (already decoded: a message, relayed content) with every secret replaced."""
        for secret in self._texts:
            if secret in text:
                text = text.replace(secret, MARK)
        return text

    def scrub_body(self, body: bytes) -> bytes:
        """A whole upstream body (an error, a non-streamed answer): `scrub`, and when it is
        JSON with `\\u` escapes (which can spell a secret in forms too many to list), the
        decoded strings too, re-serialising the body only if one of them held a secret."""
        if not self._forms:
            return body
        body = self.scrub(body)
        if b"\\u" not in body:
            return body
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        clean, changed = self._scrub_value(data)
        return orjson.dumps(clean) if changed else body

    def _scrub_value(self, value: object) -> tuple[object, bool]:
        if isinstance(value, str):
            clean = self.scrub_text(value)
            return clean, clean is not value
        if isinstance(value, dict):
            pairs = [(self._scrub_value(k), self._scrub_value(v)) for k, v in value.items()]
            if any(k[1] or v[1] for k, v in pairs):
                return {k[0]: v[0] for k, v in pairs}, True
        elif isinstance(value, list):
            items = [self._scrub_value(v) for v in value]
            if any(changed for _, changed in items):
                return [v for v, _ in items], True
        return value, False


_MARK_BYTES = MARK.encode()


def _encodings(secret: str) -> list[bytes]:
    """The byte forms an echo of `secret` takes: as sent, JSON-escaped (orjson's, and with
    `/` escaped as some servers do), non-ASCII as `\\u` escapes, URL-encoded."""
    escaped = orjson.dumps(secret)[1:-1]
    ascii_escaped = json.dumps(secret)[1:-1].encode()  # the stdlib's ensure_ascii form
    return [
        form
        for form in (
            secret.encode(),
            escaped,
            escaped.replace(b"/", b"\\/"),
            ascii_escaped,
            quote(secret, safe="").encode(),
            quote_plus(secret, safe="").encode(),
        )
        if form
    ]
