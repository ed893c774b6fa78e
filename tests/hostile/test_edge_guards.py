"""The edge's guards against hostile clients: no header injection, the admin route's key,
CORS off unless configured.

Header checks read the raw response bytes off a socket: an HTTP client library would parse
(and maybe reject) an injected header line before a test could see it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.hostile.hostile_support import error_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import ADMIN_KEY, KEY_A, KEY_B, GatewayProcess, test_config

HEADER_LINE = re.compile(rb"[A-Za-z0-9-]+: [\x20-\x7e]*")
SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def raw_exchange(port: int, request: bytes) -> tuple[int, list[bytes], bytes]:
    """One request on a fresh connection (closed after): status, header lines, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return 0, [], b""  # closed without an answer
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return int(status_line.split()[1]), lines, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2 :]
    return out


def request(method: bytes, target: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gw", b"Connection: close", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_clean_head(lines: list[bytes]) -> None:
    """Every response header line is a plain `name: printable value`; nothing was injected;
    the request id is a safe token."""
    for line in lines:
        assert HEADER_LINE.fullmatch(line), line
        name, _, value = line.partition(b": ")
        assert b"injected" not in line.lower(), line
        if name.lower() == b"x-request-id":
            assert SAFE_REQUEST_ID.fullmatch(value), value


AUTH = b"Authorization: Bearer " + KEY_A.encode()
INJECTIONS = [
    b"abc\rX-Injected: 1",  # a bare CR inside the value
    b"abc\xc3\xa9\xff",  # not ASCII
    b"abc%0d%0aX-Injected:%201",  # percent-encoded CRLF: a token char mix, not a header
    b"x" * 200,
    b"a b\tc",
]


@pytest.mark.parametrize("request_id", INJECTIONS)
@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        (b"GET", b"/v1/models", b""),
        (b"GET", b"/nowhere", b""),
        (b"POST", b"/v1/chat/completions", b"{"),
        (
            b"POST",
            b"/v1/chat/completions",
            b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}',
        ),
    ],
)
def test_a_hostile_request_id_never_reaches_a_response_header(
    gateway: GatewayProcess, request_id: bytes, method: bytes, target: bytes, body: bytes
) -> None:
    raw = request(method, target, [AUTH, b"X-Request-Id: " + request_id], body)
    status, lines, _ = raw_exchange(gateway.port, raw)
    assert status < 500  # 0: refused as malformed HTTP without an answer, nothing echoed
    assert_clean_head(lines)
    echoed = [line[14:] for line in lines if line.lower().startswith(b"x-request-id: ")]
    assert request_id not in echoed


MODEL_INJECTIONS = [
    "gpt\r\nX-Injected: 1",
    "gpt\nX-Injected: 1",
    "gpt\u2028X-Injected: 1",
    "g\u00e9pt-\U0001f600",
    "A" * 10_000,
]


@pytest.mark.parametrize("model", MODEL_INJECTIONS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_hostile_model_name_stays_inside_the_json_and_is_truncated(
    gateway: GatewayProcess, model: str, stream: bool
) -> None:
    body = orjson.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )
    status, lines, raw = raw_exchange(
        gateway.port, request(b"POST", b"/v1/chat/completions", [AUTH], body)
    )
    assert status == 404
    assert_clean_head(lines)
    error = error_of(raw)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert b"\r" not in raw and b"\n" not in raw, "JSON escapes what the name carried"
    assert "A" * 201 not in error["message"], "the echo of a model name is cut at 200"
    assert len(raw) < 1024


@pytest.mark.parametrize(
    "name",
    [b"gpt%0D%0AX-Injected:%201", b"%C3%A9%FF", b"a/../../etc", b"A" * 4000],
)
def test_a_hostile_model_in_the_path_stays_inside_the_json(
    gateway: GatewayProcess, name: bytes
) -> None:
    status, lines, raw = raw_exchange(gateway.port, request(b"GET", b"/v1/models/" + name, [AUTH]))
    assert status == 404
    assert_clean_head(lines)
    assert "A" * 201 not in error_of(raw)["message"]


# --- the admin route --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer sk-wrong"},
        {"authorization": f"Bearer {KEY_A}"},
        {"authorization": f"Bearer {KEY_B}"},
        {"x-api-key": KEY_A},
        {"authorization": f"Basic {ADMIN_KEY}"},
        {"authorization": "Bearer " + ADMIN_KEY + "x"},
        {"authorization": "Bearer " + ADMIN_KEY[:-1]},
    ],
    ids=[
        "no-key",
        "wrong-key",
        "client-key",
        "other-client-key",
        "client-x-api-key",
        "basic-scheme",
        "longer",
        "shorter",
    ],
)
def test_the_admin_route_refuses_anything_but_the_admin_key(
    gateway: GatewayProcess, headers: dict[str, str]
) -> None:
    r = httpx.get(gateway.url + "/admin/usage", headers=headers)
    assert r.status_code == 401
    assert error_of(r.content)["code"] == "invalid_api_key"
    assert ADMIN_KEY not in r.text


@pytest.mark.parametrize(
    "headers",
    [{"authorization": f"Bearer {ADMIN_KEY}"}, {"x-api-key": ADMIN_KEY}],
    ids=["bearer", "x-api-key"],
)
def test_the_admin_route_answers_the_admin_key(
    gateway: GatewayProcess, headers: dict[str, str]
) -> None:
    r = httpx.get(gateway.url + "/admin/usage", headers=headers)
    assert r.status_code == 200
    assert r.json()["object"] == "list"


def test_the_admin_route_survives_a_key_that_is_not_ascii(gateway: GatewayProcess) -> None:
    for value in (b"Bearer \xff\xfe\xc3", b"\xe9", b"Bearer " + b"k" * 8000):
        status, lines, raw = raw_exchange(
            gateway.port, request(b"GET", b"/admin/usage", [b"Authorization: " + value])
        )
        assert status == 401, raw
        assert_clean_head(lines)
        error_of(raw)


# --- CORS -------------------------------------------------------------------------------------

PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


def test_cors_is_off_by_default(gateway: GatewayProcess) -> None:
    origin = {"origin": "https://app.example"}
    r = httpx.options(gateway.url + "/v1/chat/completions", headers={**origin, **PREFLIGHT})
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code == 405
    error_of(r.content)
    for path in ("/v1/models", "/healthz"):
        r = httpx.get(gateway.url + path, headers={**origin, "authorization": f"Bearer {KEY_A}"})
        assert r.status_code == 200
        assert not any(h.startswith("access-control-") for h in r.headers)


@pytest.fixture(scope="module")
def cors_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = test_config(upstream.url, cors_origins=["https://app.example"])
    with GatewayProcess(config, tmp_path_factory.mktemp("cors")) as proc:
        yield proc


def test_cors_allows_the_configured_origin_only(cors_gateway: GatewayProcess) -> None:
    url = cors_gateway.url + "/v1/chat/completions"
    r = httpx.options(url, headers={"origin": "https://app.example", **PREFLIGHT})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()

    for origin in ("https://evil.example", "https://app.example.evil", "null"):
        r = httpx.options(url, headers={"origin": origin, **PREFLIGHT})
        assert r.status_code == 400
        assert "access-control-allow-origin" not in r.headers

    auth = {"authorization": f"Bearer {KEY_A}"}
    r = httpx.get(
        cors_gateway.url + "/v1/models", headers={"origin": "https://app.example", **auth}
    )
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.get(
        cors_gateway.url + "/v1/models", headers={"origin": "https://evil.example", **auth}
    )
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


# --- bodies nested too deep to forward ----------------------------------------------------


@pytest.mark.parametrize("model", ["mock-gpt", "gpt-test", "claude-test"])
@pytest.mark.parametrize("where", ["metadata", "tool_arguments"])
def test_a_body_nested_too_deep_to_forward_is_a_400(
    gateway: GatewayProcess, model: str, where: str
) -> None:
    """orjson reads 1024 levels and writes 254: before the fix a provider's re-serialising
    of such a body raised TypeError (a 500). A tool call's arguments are a JSON string the
    Anthropic translation parses, so their depth shows only there."""
    deep = b"[" * 600 + b"]" * 600
    messages: list[dict[str, object]] = [{"role": "user", "content": "hi"}]
    if where == "tool_arguments":
        arguments = '{"a": ' + deep.decode() + "}"
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    raw = orjson.dumps({"model": model, "messages": messages})
    if where == "metadata":
        raw = raw[:-1] + b',"metadata":' + deep + b"}"  # orjson itself cannot write this
    # Only the Anthropic translation parses tool arguments; the others pass the string on.
    expected = 200 if where == "tool_arguments" and model != "claude-test" else 400
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY_A}"},
        content=raw,
        timeout=10,
    )
    assert r.status_code == expected, r.text[:300]
    if expected == 400:
        assert error_of(r.content)["type"] == "invalid_request_error"
