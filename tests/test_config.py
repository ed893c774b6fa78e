"""The config loader: expansion, defaults, and one clear line per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    GatewayConfig,
    UpstreamPoolConfig,
    hash_key,
    load_config,
    parse_config,
    resolve_config,
)
from gateway.runtime import start_budget
from gateway.transports import build_transport
from gateway.transports.native import NativeTransport

ROOT = Path(__file__).resolve().parent.parent
HASH = hash_key("secret")


def minimal(**extra: object) -> dict[str, object]:
    return {
        "providers": [{"name": "p", "type": "openai", "base_url": "http://x/v1", "api_key": "k"}],
        "models": [{"name": "m", "provider": "p"}],
        "keys": [{"id": "a", "key_sha256": HASH}],
        **extra,
    }


def test_example_configs_load() -> None:
    env = {"OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "sk-2"}
    config = load_config(ROOT / "config" / "example.yaml", env)
    assert config.provider("openai").api_key == "sk-1"
    assert config.model("gpt-4o-mini").fallbacks == ("claude-haiku",)  # type: ignore[union-attr]
    assert config.keys[0].limits.rpm == 60
    assert config.timeouts.first_token == 60
    assert load_config(ROOT / "config" / "minimal.yaml", {"OPENAI_API_KEY": "x"}).models


def test_variables_expand_with_defaults() -> None:
    data = minimal(redis_url="${REDIS_URL:-redis://localhost:6379/0}")
    data["providers"][0]["api_key"] = "${KEY}"  # type: ignore[index]
    config = parse_config(data, "c.yaml", {"KEY": "sk-env"})
    assert config.redis_url == "redis://localhost:6379/0"
    assert config.providers[0].api_key == "sk-env"
    assert "sk-env" not in repr(config)


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"surprise": 1}, "surprise", "unknown key"),
        ({"models": [{"name": "m", "provider": "nope"}]}, "models[0].provider", "not in providers"),
        ({"limits_backend_failure": "maybe"}, "limits_backend_failure", "one of open, closed"),
        ({"timeouts": {"idle": "soon"}}, "timeouts.idle", "expected a number"),
        ({"keys": [{"id": "a", "key_sha256": "abc"}]}, "keys[0].key_sha256", "64 hex digits"),
        (
            {"keys": [{"id": "a", "key_sha256": HASH, "limits": {"rpm": 0}}]},
            "keys[0].limits.rpm",
            "greater than 0",
        ),
        (
            {"keys": [{"id": "a", "key_sha256": HASH, "models": ["x"]}]},
            "keys[0].models[0]",
            "not a model",
        ),
        ({"redis_url": "${NOPE}"}, "redis_url", "${NOPE} is not set"),
        ({"redis_url": "http://:pw@h"}, "redis_url", "scheme 'http' is not redis"),
        ({"redis_url": "redis://h/zero"}, "redis_url", "database 'zero' is not a number"),
        ({"max_requests_per_loop_turn": -1}, "max_requests_per_loop_turn", "must be 0 or more"),
        ({"upstream_transport": "curl"}, "upstream_transport", "one of native, aiohttp, httpx"),
        ({"upstream_pool": {"max_idle": -1}}, "upstream_pool.max_idle", "must be 0 or more"),
        ({"upstream_pool": {"idle_timeout": 0}}, "upstream_pool.idle_timeout", "greater than 0"),
        ({"upstream_pool": {"max_idle": "all"}}, "upstream_pool.max_idle", "expected"),
        ({"upstream_pool": {"size": 8}}, "upstream_pool.size", "unknown key"),
        (
            {"providers": [{"name": "p", "type": "openai", "base_url": "api.openai.com/v1"}]},
            "providers[0].base_url",
            "is not an http(s) URL: write https://api.openai.com/v1",
        ),
        (
            {"providers": [{"name": "p", "type": "openai", "base_url": "localhost:8000/v1"}]},
            "providers[0].base_url",
            "write https://localhost:8000/v1",
        ),
        (
            {"providers": [{"name": "p", "type": "anthropic", "base_url": "ftp://h"}]},
            "providers[0].base_url",
            "use http:// or https://",
        ),
        (
            {"providers": [{"name": "p", "type": "openai", "base_url": "https:///v1"}]},
            "providers[0].base_url",
            "names no host",
        ),
        (
            {"providers": [{"name": "p", "type": "openai", "base_url": "http://h:80x/v1"}]},
            "providers[0].base_url",
            "port that is not a number",
        ),
        (
            {
                "providers": [
                    {"name": "p", "type": "openai", "base_url": "http://h/v1", "apis": ["x"]}
                ]
            },
            "providers[0].apis",
            "must list chat",
        ),
        (
            {
                "providers": [
                    {
                        "name": "p",
                        "type": "openai",
                        "base_url": "http://h/v1",
                        "apis": ["responses"],
                    }
                ]
            },
            "providers[0].apis",
            "[chat, responses]",
        ),
        (
            {
                "providers": [
                    {"name": "p", "type": "anthropic", "base_url": "http://h", "apis": ["chat"]}
                ]
            },
            "providers[0].apis",
            "for providers of type openai",
        ),
    ],
)
def test_each_mistake_is_one_clear_line(change: dict[str, object], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(**change), "gw.yaml", {})
    message = str(info.value)
    assert message.startswith(f"gw.yaml: {path}: ")
    assert words in message
    assert "\n" not in message


def test_openai_providers_say_which_apis_they_serve() -> None:
    data = minimal()
    assert parse_config(data, "c.yaml", {}).providers[0].apis == ("chat",)
    data["providers"][0]["apis"] = ["chat", "responses"]  # type: ignore[index]
    assert parse_config(data, "c.yaml", {}).providers[0].apis == ("chat", "responses")


def test_a_file_gets_the_same_defaults_as_the_dataclass() -> None:
    config = parse_config(minimal(), "gw.yaml", {})
    assert config.upstream_transport == "native"
    assert config.max_requests_per_loop_turn == GatewayConfig.max_requests_per_loop_turn == 48
    for given in (8, 0):
        parsed = parse_config(minimal(max_requests_per_loop_turn=given), "gw.yaml", {})
        assert parsed.max_requests_per_loop_turn == given


def test_upstream_pool_defaults_and_settings_reach_every_transport() -> None:
    config = parse_config(minimal(), "gw.yaml", {})
    assert config.upstream_pool == UpstreamPoolConfig(max_idle=1024, idle_timeout=30.0)
    pool = {"max_idle": 0, "idle_timeout": 5}
    native = build_transport(parse_config(minimal(upstream_pool=pool), "gw.yaml", {}))
    assert isinstance(native, NativeTransport)
    assert (native._max_keepalive, native._expiry) == (0, 5.0)
    via_httpx = parse_config(minimal(upstream_pool=pool, upstream_transport="httpx"), "g", {})
    limits = build_transport(via_httpx)._pool  # type: ignore[attr-defined]  # httpcore's
    assert (limits._max_keepalive_connections, limits._keepalive_expiry) == (0, 5.0)


def test_requests_start_48_per_loop_turn_unless_the_config_says_0() -> None:
    budget = start_budget(parse_config(minimal(), "gw.yaml", {}))
    assert budget is not None and budget.per_turn == 48
    off = parse_config(minimal(max_requests_per_loop_turn=0), "gw.yaml", {})
    assert start_budget(off) is None


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "none.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, {})


def test_embedded_default_needs_nothing() -> None:
    config = resolve_config(None, {})
    assert config.embedded_default
    assert config.providers[0].type == "mock"
    assert not config.redis_url


def test_cli_refuses_a_bad_config_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("providers: []\nmodels: []\nkeys: []\nnope: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nope: unknown key" in result.stderr


def test_hash_key_prints_the_sha256() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key", "secret"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == HASH


def test_database_url_from_the_file_or_the_environment_and_never_echoed() -> None:
    url = "postgresql://gw:pw-in-url@db:5432/keys"
    assert parse_config(minimal(database_url=url), "t.yaml", {}).database_url == url
    assert parse_config(minimal(), "t.yaml", {"DATABASE_URL": url}).database_url == url
    assert parse_config(minimal(), "t.yaml", {}).database_url == ""
    with pytest.raises(ConfigError, match="database_url: use postgresql") as caught:
        parse_config(minimal(database_url="mysql://u:pw-in-url@h/db"), "t.yaml", {})
    assert "pw-in-url" not in str(caught.value)
    assert "pw-in-url" not in repr(parse_config(minimal(database_url=url), "t.yaml", {}))
