"""Fuzzing the whole HTTP surface of the real server, the way schemathesis would.

Hypothesis writes the requests: any method on the routes and on made-up paths, headers with
good, wrong and random keys, request ids and content types, bodies of random bytes, random
JSON and mutated valid requests. They go to a real `gateway serve` whose models are the
built-in mock and the fake upstream's happy path, so no answer has a reason to be a 5xx.
Every answer: below 500, OpenAI's error shape when not 2xx, no traceback or exception class
path, no secret. The process stays up and its memory flat. A second fuzz speaks malformed
HTTP/1.1 on a raw socket: the server answers 4xx or closes, and stays up.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.hostile_support import PYTHON_INTERNALS, LogWatch, Probe, error_of
from tests.hostile.strategies import VALID, json_values, mutate, mutations
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import ADMIN_KEY, KEY_A, KEY_B, GatewayProcess, test_config

MAX_BODY = 64 * 1024
ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/mock-gpt",
    "/v1/models/gpt-test",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/usage",
    "/",
]
RELAYED = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}
RELAYED["/v1/embeddings"] = "embeddings"
METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
MODELS = ["mock-gpt", "gpt-test", "gpt-tools", "claude-test", "claude-tools", "nope", ""]
UPSTREAM_SECRETS = (b"sk-upstream-secret-value", b"sk-ant-upstream-secret-value")
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Bytes h11 lets a client put in a header value (no controls, no leading/trailing space).
TOKEN = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80) or b"x"
)


@pytest.fixture(scope="module")
def fuzz_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = test_config(upstream.url, max_body_bytes=MAX_BODY)
    config["providers"][2].update(first_token_ms=0, token_ms=0, reply_tokens=4)
    with GatewayProcess(config, tmp_path_factory.mktemp("fuzz")) as proc:
        yield proc


@pytest.fixture(scope="module")
def probe(fuzz_gateway: GatewayProcess) -> Iterator[Probe]:
    probe = Probe(fuzz_gateway)
    yield probe
    probe.close()


secrets = st.sampled_from([KEY_A, KEY_B, ADMIN_KEY]).map(str.encode) | TOKEN
auth_values = st.one_of(
    secrets.map(lambda s: b"Bearer " + s),
    secrets.map(lambda s: b"bearer " + s),
    secrets,
    TOKEN.map(lambda s: b"Basic " + s),
)
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "authorization": auth_values,
        "x-api-key": secrets,
        "x-request-id": TOKEN | st.sampled_from([b"abc-123", b"x" * 200, b"a b"]),
        "content-type": TOKEN
        | st.sampled_from(
            [
                b"application/json",
                b"text/plain",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=zz",
                b"application/json; charset=latin-1",
            ]
        ),
        "origin": st.sampled_from([b"https://evil.example", b"null", b"https://app.example"]),
        "accept-encoding": st.sampled_from([b"gzip", b"br", b"identity", b"*"]),
    },
)


def _valid_body(route: str, changes: Any, model: str, stream: bool) -> bytes:
    base = {**VALID[route], "model": model, "stream": stream}  # type: ignore[index]
    if not stream:
        base.pop("stream_options", None)
    return mutate(base, changes) if changes else orjson.dumps(base)


valid_bodies = st.builds(
    _valid_body,
    st.sampled_from(list(RELAYED.values())),
    st.just([]) | mutations,
    st.sampled_from(MODELS),
    st.booleans(),
)


@st.composite
def keyed_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, bytes], bytes]:
    """A request with a good key, on the right route, for a body that is valid or nearly:
    the fuzz reaches the relay, the providers and their answers, not only the first check."""
    path = draw(st.sampled_from(list(RELAYED)))
    changes = draw(st.just([]) | mutations)
    body = _valid_body(RELAYED[path], changes, draw(st.sampled_from(MODELS)), draw(st.booleans()))
    headers = draw(header_sets)
    headers["authorization"] = b"Bearer " + draw(st.sampled_from([KEY_A, KEY_A, KEY_B])).encode()
    return "POST", path, headers, body


bodies = st.one_of(
    valid_bodies,
    valid_bodies,
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"x" * (MAX_BODY + 1)]),
)
paths = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(list(RELAYED)),
    # One leading slash: "//x:y" would be a host and port to httpx, not a path.
    st.text(st.sampled_from("abcv1/._-~%?&=:@+"), max_size=24).map(lambda t: "/" + t.lstrip("/")),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=12).map(
        lambda t: "/v1/models/" + t
    ),
)
methods = st.sampled_from(["POST", "POST", "GET", *METHODS])


def check_answer(r: httpx.Response, sent: bytes) -> None:
    raw = r.content
    assert r.status_code < 500, raw[:500]
    assert b"Traceback" not in raw
    found = PYTHON_INTERNALS.search(raw)
    # An exception path may only appear as an echo of the client's own words.
    assert found is None or found.group() in sent, raw[:500]
    for secret in UPSTREAM_SECRETS:
        assert secret not in raw
    rid = r.headers.get("x-request-id")
    assert rid is None or SAFE_REQUEST_ID.fullmatch(rid), rid
    ctype = r.headers.get("content-type", "")
    if r.status_code >= 400:
        assert ctype.startswith("application/json"), (r.status_code, ctype, raw[:300])
        error_of(raw)
    elif ctype.startswith("text/event-stream"):
        last = [line for line in raw.split(b"\n") if line.startswith(b"data: ")][-1]
        assert last == b"data: [DONE]" or error_of(last[6:]), raw[-300:]
    elif ctype.startswith("application/json"):
        orjson.loads(raw)


def rss(gateway: GatewayProcess) -> int:
    assert gateway.proc is not None
    return int(psutil.Process(gateway.proc.pid).memory_info().rss)


def warm_up(client: httpx.Client) -> None:
    """Every path the fuzz will take, a few times over, so what is left is growth."""
    auth = {"authorization": f"Bearer {KEY_A}"}
    for _ in range(40):
        for model in ("mock-gpt", "gpt-test", "claude-test", "nope"):
            for stream in (True, False):
                body = {**VALID["chat.completions"], "model": model, "stream": stream}
                if not stream:
                    body.pop("stream_options")
                client.post("/v1/chat/completions", json=body, headers=auth)
        client.post("/v1/embeddings", json={**VALID["embeddings"], "model": "mock-gpt"})
        client.post("/v1/completions", content=b"{", headers=auth)
        client.get("/v1/models", headers=auth)
        client.get("/metrics")
        client.get("/nowhere")


@pytest.fixture(scope="module")
def client(fuzz_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_gateway.url, timeout=10) as client:
        yield client


def test_fuzzing_the_http_surface_finds_no_5xx_no_leak_and_no_growth(
    fuzz_gateway: GatewayProcess,
    client: httpx.Client,
    probe: Probe,
    fuzz_counts: Counter[str],
    fuzz_notes: list[str],
) -> None:
    watch = LogWatch(fuzz_gateway)
    warm_up(client)
    watch.mark()
    before = rss(fuzz_gateway)

    @settings(
        max_examples=3000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.tuples(methods, paths, header_sets, bodies) | keyed_requests())
    def one_request(request: tuple[str, str, dict[str, bytes], bytes]) -> None:
        method, path, headers, body = request
        fuzz_counts["HTTP surface: requests"] += 1
        sent_headers = [(name.encode(), value) for name, value in headers.items()]
        r = client.request(method, path, content=body, headers=sent_headers)
        if r.status_code < 300:
            fuzz_counts["HTTP surface: 2xx answers"] += 1
        sent = method.encode() + path.encode() + b"".join(headers.values()) + body
        check_answer(r, sent)

    one_request()
    probe.assert_still_serving()
    grown = rss(fuzz_gateway) - before
    fuzz_notes.append(
        f"HTTP surface: gateway RSS {before / 2**20:.1f} MiB after warm-up, "
        f"{grown / 2**20:+.1f} MiB over the fuzz"
    )
    assert grown < 30 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB over the fuzz"
    watch.assert_clean()


# --- malformed HTTP/1.1 on a raw socket -------------------------------------------------------

GOOD_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
    + KEY_A.encode()
    + b"\r\nContent-Type: application/json\r\n"
)
CHAT = orjson.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]})

request_lines = st.tuples(
    st.sampled_from([b"GET", b"POST", b"get", b"BREW", b"", b"G\x00T", b"POST " * 3]),
    st.sampled_from([b"/healthz", b"/v1/chat/completions", b"*", b"http://x/healthz", b""]) | TOKEN,
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x", b""]),
).map(lambda t: b" ".join(t) + b"\r\nHost: gw\r\nConnection: close\r\n\r\n")
garbage = st.binary(min_size=1, max_size=300).map(lambda b: b + b"\r\n\r\n")
huge_headers = st.sampled_from([8, 64, 1024]).map(
    lambda kib: b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (kib * 1024) + b"\r\n\r\n"
) | st.sampled_from([100, 2000]).map(
    lambda n: (
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(n))
        + b"\r\n"
    )
)
bad_chunks = st.sampled_from(
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # size not hex
        b"5\r\n" + CHAT + b"\r\n0\r\n\r\n",  # more bytes than the size says
        b"ffffffffffffffffffff\r\n{}\r\n",  # size overflow
        b"-1\r\n{}\r\n0\r\n\r\n",
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT),  # valid, for contrast
        b"%x\r\n%s" % (len(CHAT) + 100, CHAT),  # never ends
        b"0\r\n\r\n",  # empty body
    ]
).map(lambda body: GOOD_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
length_lies = st.sampled_from(
    [
        b"Content-Length: 5\r\n\r\n" + CHAT,  # shorter than the body
        b"Content-Length: 99999999999999999999\r\n\r\n" + CHAT,
        b"Content-Length: -1\r\n\r\n" + CHAT,
        b"Content-Length: abc\r\n\r\n" + CHAT,
        b"Content-Length: 10\r\nContent-Length: 20\r\n\r\n" + CHAT,
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % len(CHAT),
        b"Content-Length: 100000000\r\n\r\n" + CHAT,  # over max_body_bytes: refused at once
        b"Content-Length: %d\r\n\r\n" % (len(CHAT) + 50) + CHAT,  # the rest never comes
    ]
).map(lambda rest: GOOD_HEAD + rest)
raw_requests = st.one_of(request_lines, garbage, huge_headers, bad_chunks, length_lies)
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def exchange(port: int, raw: bytes, patience: float = 1.0) -> bytes:
    """Send `raw`, return what came back until the server closed, an answer was whole, or
    `patience` ran out (the server may rightly wait for a body that never comes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        # The server may refuse mid-send (a huge header): what it answered still counts.
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        got = b""
        sock.settimeout(0.05)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if _whole(got):
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        return got


def _whole(got: bytes) -> bool:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length:
        return len(body) >= int(length.group(1))
    return body.endswith(b"0\r\n\r\n")


def test_malformed_http_is_answered_4xx_or_closed_and_the_server_stays_up(
    fuzz_gateway: GatewayProcess, probe: Probe, fuzz_counts: Counter[str]
) -> None:
    watch = LogWatch(fuzz_gateway)
    watch.mark()
    pool = ThreadPoolExecutor(8)

    @settings(
        max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(batch=st.lists(raw_requests, min_size=8, max_size=8))
    def one_batch(batch: list[bytes]) -> None:
        fuzz_counts["raw HTTP/1.1: malformed requests"] += len(batch)
        answers = pool.map(lambda r: exchange(fuzz_gateway.port, r), batch)
        for raw, got in zip(batch, answers, strict=True):
            statuses = [int(s) for s in STATUS.findall(got)]
            assert all(s < 500 for s in statuses), (raw[:200], got[:300])
            assert b"Traceback" not in got

    try:
        one_batch()
    finally:
        pool.shutdown()
    probe.assert_still_serving()
    watch.assert_clean()
