"""The egress-proxy resolver: which proxy each origin goes through, from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.config import ConfigError, parse_config, resolve_config
from gateway.egress import EgressProxies, Proxy

PROXY = Proxy(host="proxy.corp", port=3128)


def route(env: dict[str, str], url: str) -> Proxy | None:
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    return EgressProxies.from_env(env).route(scheme, host.strip("[]"), int(port))


def test_each_scheme_has_its_own_variable_and_all_proxy_fills_in() -> None:
    env = {"HTTPS_PROXY": "http://proxy.corp:3128", "ALL_PROXY": "http://other:8080"}
    assert route(env, "https://api.openai.com:443") == PROXY
    assert route(env, "http://vllm:8000") == Proxy(host="other", port=8080)
    assert route({"HTTPS_PROXY": "http://proxy.corp:3128"}, "http://vllm:8000") is None
    assert route({}, "https://api.openai.com:443") is None


def test_lower_case_wins_and_empty_is_unset() -> None:
    env = {"https_proxy": "proxy.corp:3128", "HTTPS_PROXY": "http://other:1"}
    assert route(env, "https://api.openai.com:443") == PROXY  # no scheme: http://
    assert route({"https_proxy": " ", "HTTPS_PROXY": "proxy.corp:3128"}, "https://a:443") == PROXY
    assert route({"HTTP_PROXY": "http://proxy.corp"}, "http://a:80") == Proxy("proxy.corp", 80)


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("*", "https://api.openai.com:443", True),
        ("openai.com", "https://api.openai.com:443", True),
        ("openai.com", "https://openai.com:443", True),
        (".openai.com", "https://openai.com:443", True),
        ("openai.com", "https://notopenai.com:443", False),
        ("OpenAI.COM.", "https://API.openai.com:443", True),
        ("localhost, internal", "https://vllm.internal:443", True),
        ("openai.com:8443", "https://api.openai.com:443", False),
        ("openai.com:8443", "https://api.openai.com:8443", True),
        ("10.0.0.0/8", "http://10.1.2.3:80", True),
        ("10.0.0.0/8", "http://11.1.2.3:80", False),
        ("10.0.0.0/8", "http://ten.corp:80", False),  # names are not resolved
        ("192.168.1.7", "http://192.168.1.7:80", True),
        ("192.168.1.7:8000", "http://192.168.1.7:80", False),
        ("::1", "http://[::1]:80", True),
        ("[::1]:8000", "http://[::1]:8000", True),
        ("fd00::/8", "http://[fd12::1]:80", True),
        ("fd00::/8", "http://10.1.2.3:80", False),
        ("", "https://api.openai.com:443", False),
    ],
)
def test_no_proxy_matches_as_curl_does(no_proxy: str, url: str, bypassed: bool) -> None:
    env = {"HTTP_PROXY": "http://proxy.corp:3128", "HTTPS_PROXY": "http://proxy.corp:3128"}
    assert route({**env, "no_proxy": no_proxy}, url) == (None if bypassed else PROXY)


def test_credentials_are_sent_but_never_shown() -> None:
    egress = EgressProxies.from_env({"HTTPS_PROXY": "http://us%40er:p%3Ass@proxy.corp:3128"})
    proxy = egress.https
    assert proxy is not None
    assert (proxy.username, proxy.password) == ("us@er", "p:ss")
    assert proxy.authorization == "Basic dXNAZXI6cDpzcw=="  # base64 of us@er:p:ss
    assert proxy.shown == "http://proxy.corp:3128"
    for text in (repr(egress), egress.describe()):
        assert "p:ss" not in text and "p%3Ass" not in text
    assert egress.describe() == "egress proxy: https via http://proxy.corp:3128 (with credentials)"
    assert EgressProxies.from_env({}).describe() == ""


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"HTTPS_PROXY": "socks5://u:secret@proxy:1080"}, "socks5:// proxies are not supported"),
        ({"https_proxy": "https://proxy:443"}, "https_proxy: https:// proxies are not supported"),
        ({"HTTP_PROXY": "http://proxy:notaport"}, "HTTP_PROXY is not a proxy URL"),
        ({"HTTP_PROXY": "http://:3128"}, "HTTP_PROXY names no proxy host"),
        ({"NO_PROXY": "10.0.0.0/33"}, "NO_PROXY: '10.0.0.0/33' is not a valid CIDR block"),
        ({"no_proxy": "host:0"}, "no_proxy: 'host:0' has an invalid port"),
    ],
)
def test_a_wrong_variable_is_a_config_error_naming_it(env: dict[str, str], problem: str) -> None:
    config = {
        "providers": [{"name": "p", "type": "mock"}],
        "models": [{"name": "m", "provider": "p"}],
        "keys": [{"id": "a", "key_sha256": "0" * 64}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(config, "gateway.yaml", env)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigError):
        resolve_config(None, env)  # the embedded default reads them too


def test_the_config_carries_the_environment_s_proxies() -> None:
    config = resolve_config(None, {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "x"})
    assert config.egress.https == PROXY
    assert config.egress.route("https", "x", 443) is None


def test_gateway_serve_refuses_a_proxy_it_cannot_use_with_one_line() -> None:
    env = {**os.environ, "HTTPS_PROXY": "socks5://user:s3cret@proxy.corp:1080"}
    env.pop("GATEWAY_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "HTTPS_PROXY: socks5:// proxies are not supported" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
