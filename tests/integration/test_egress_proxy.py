"""The egress proxy through the real server: HTTPS_PROXY, HTTP_PROXY and NO_PROXY, honoured
alike by the three upstream transports, against a real proxy (Debian's tinyproxy).

One fake upstream speaks http, another https (a CA made by the test, trusted by the gateway
through SSL_CERT_FILE). The proxy asks for Basic credentials, so every request it carries
proves the gateway sent them; its log proves it carried the request (a CONNECT for https,
an absolute-form POST for http). A third provider names the http upstream as `localhost`,
which NO_PROXY sends straight there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream, text_tokens
from tests.support.gateway_proc import KEY_A, GatewayProcess
from tests.support.redis_server import free_port
from tests.support.tinyproxy import Tinyproxy
from tests.support.tls import TestCA

TRANSPORTS = ["native", "aiohttp", "httpx"]
AUTH = {"authorization": f"Bearer {KEY_A}"}
USER, PASSWORD = "gw", "pr0xy-s3cret-pass"
WRONG = "wr0ng-s3cret-pass"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def plain() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def secure(ca: TestCA) -> Iterator[FakeUpstream]:
    with FakeUpstream(tls=ca.server_context()) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy() -> Iterator[Tinyproxy]:
    with Tinyproxy(user=USER, password=PASSWORD) as tinyproxy:
        yield tinyproxy


def config(plain: FakeUpstream, secure: FakeUpstream, transport: str) -> dict[str, Any]:
    def provider(name: str, base_url: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "openai",
            "base_url": base_url + "/v1",
            "api_key": "sk-upstream",
            "max_retries": 0,
        }

    return {
        "providers": [
            provider("plain", plain.url),
            provider("secure", secure.url),
            provider("direct", f"http://localhost:{plain.port}"),
        ],
        "models": [
            {"name": name, "provider": name, "upstream_model": "text?n=5"}
            for name in ("plain", "secure", "direct")
        ],
        "keys": [{"id": "team-a", "key_sha256": hash_key(KEY_A)}],
        "timeouts": {"connect": 5, "first_token": 10, "idle": 10, "total": 30},
        "upstream_transport": transport,
    }


def gateway_env(ca: TestCA, http_proxy: str, https_proxy: str) -> dict[str, str]:
    # Lower-case names for http (they win over upper-case ones, set here to be overridden).
    return {
        "SSL_CERT_FILE": str(ca.ca_file),
        "http_proxy": http_proxy,
        "HTTP_PROXY": "http://127.0.0.1:1",
        "HTTPS_PROXY": https_proxy,
        "NO_PROXY": "localhost,.example.internal",
    }


def stream(gateway: GatewayProcess, model: str) -> httpx.Response:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=30)


def streamed_text(response: httpx.Response) -> str:
    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requests_go_through_the_proxy_unless_no_proxy_says(
    transport: str,
    tmp_path: Path,
    ca: TestCA,
    plain: FakeUpstream,
    secure: FakeUpstream,
    proxy: Tinyproxy,
) -> None:
    with_credentials = f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
    env = gateway_env(ca, with_credentials, with_credentials)
    with GatewayProcess(config(plain, secure, transport), tmp_path, env=env) as gateway:
        carried = len(proxy.requests())
        for model in ("secure", "plain", "direct"):
            response = stream(gateway, model)
            assert response.status_code == 200, (model, response.text)
            assert streamed_text(response) == "".join(text_tokens(5)), model
        log = gateway.output()

    # https: one CONNECT tunnel to the TLS upstream; http: the request in absolute form;
    # localhost: not through the proxy at all.
    assert proxy.requests()[carried:] == [
        f"CONNECT 127.0.0.1:{secure.port} HTTP/1.1",
        f"POST http://127.0.0.1:{plain.port}/v1/chat/completions HTTP/1.1",
    ]
    # tinyproxy marks what it forwards with a Via header: the direct request has none.
    assert "via" in plain.seen[-2].headers
    assert "via" not in plain.seen[-1].headers
    assert plain.seen[-1].headers["host"] == f"localhost:{plain.port}"
    # The start-up line says which proxy is used, never its credentials.
    assert f"egress proxy: https via http://127.0.0.1:{proxy.port} (with credentials)" in log
    assert PASSWORD not in log


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_proxy_that_refuses_or_is_down_is_a_clear_502(
    transport: str,
    tmp_path: Path,
    ca: TestCA,
    plain: FakeUpstream,
    secure: FakeUpstream,
    proxy: Tinyproxy,
) -> None:
    wrong = f"http://{USER}:{WRONG}@127.0.0.1:{proxy.port}"
    none = f"http://127.0.0.1:{proxy.port}"
    down = f"http://{USER}:{WRONG}@127.0.0.1:{free_port()}"
    seen = len(plain.seen) + len(secure.seen)

    # The proxy refuses: CONNECT with wrong credentials (tinyproxy answers 401 to those), a
    # request in absolute form with none (407, which only a proxy sends).
    with GatewayProcess(
        config(plain, secure, transport), tmp_path, env=gateway_env(ca, none, wrong)
    ) as gateway:
        refused = {model: stream(gateway, model) for model in ("secure", "plain")}
        log = gateway.output()
    # Nothing listens where the proxy should be.
    with GatewayProcess(
        config(plain, secure, transport), tmp_path, env=gateway_env(ca, down, down)
    ) as gateway:
        unreachable = {model: stream(gateway, model) for model in ("secure", "plain")}
        log += gateway.output()

    for model, response in [*refused.items(), *unreachable.items()]:
        assert response.status_code == 502, (model, response.text)
        error = response.json()["error"]
        assert "egress proxy" in error["message"], (model, error)
        assert error["code"] == "upstream_error"
        assert WRONG not in response.text
    assert len(plain.seen) + len(secure.seen) == seen  # no request got past the proxy
    assert WRONG not in log
