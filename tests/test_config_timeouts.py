"""Per-model and per-deployment `timeouts:`: read over the gateway's once, at load, and
refused with one line naming the path when wrong."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.config import ConfigError, GatewayConfig, Timeouts, load_config, parse_config
from gateway.observability.metrics import Metrics
from gateway.routing import Router
from tests.test_config import HASH, ROOT


def config_with(models: list[dict[str, Any]], **extra: Any) -> GatewayConfig:
    return parse_config(
        {
            "providers": [
                {"name": "a", "type": "openai", "base_url": "http://a/v1"},
                {"name": "b", "type": "openai", "base_url": "http://b/v1"},
            ],
            "models": models,
            "keys": [{"id": "k", "key_sha256": HASH}],
            **extra,
        },
        "gw.yaml",
        {},
    )


def error_of(models: list[dict[str, Any]], **extra: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config_with(models, **extra)
    return str(info.value)


GATEWAY = {"connect": 3, "first_token": 20, "idle": 10, "total": 100, "keepalive": 5}


def test_a_models_timeouts_are_its_fields_over_the_gateways() -> None:
    config = config_with(
        [
            {"name": "thinker", "provider": "a", "timeouts": {"first_token": 300, "idle": 120}},
            {"name": "fast", "provider": "a"},
        ],
        timeouts=GATEWAY,
    )
    thinker, fast = config.models
    assert thinker.timeouts == Timeouts(
        connect=3, first_token=300, idle=120, total=100, keepalive=5
    )
    assert fast.timeouts is None  # the gateway's
    assert config.timeouts == Timeouts(**GATEWAY)


def test_a_deployments_timeouts_are_its_fields_over_its_models() -> None:
    config = config_with(
        [
            {
                "name": "m",
                "timeouts": {"first_token": 300, "idle": 120},
                "deployments": [
                    {
                        "provider": "a",
                        "upstream_model": "x",
                        "timeouts": {"idle": 60, "connect": 1},
                    },
                    {"provider": "b", "upstream_model": "x"},
                ],
            }
        ],
        timeouts=GATEWAY,
    )
    model = config.models[0]
    own, inherits = model.deployments
    assert own.timeouts == Timeouts(connect=1, first_token=300, idle=60, total=100, keepalive=5)
    assert inherits.timeouts is None
    assert config.timeouts_of(model, own) is own.timeouts
    assert config.timeouts_of(model, inherits) is model.timeouts


def test_timeouts_that_change_nothing_are_the_inherited_ones() -> None:
    config = config_with(
        [
            {"name": "same", "provider": "a", "timeouts": {"idle": 10}},
            {"name": "empty", "provider": "a", "timeouts": {}},
        ],
        timeouts=GATEWAY,
    )
    assert [m.timeouts for m in config.models] == [None, None]


def test_the_router_gives_each_deployment_its_timeouts_once() -> None:
    config = config_with(
        [
            {
                "name": "m",
                "timeouts": {"first_token": 300},
                "deployments": [
                    {"provider": "a", "upstream_model": "x", "timeouts": {"idle": 60}},
                    {"provider": "b", "upstream_model": "x"},
                ],
            },
            {"name": "plain", "provider": "a"},
        ],
        timeouts=GATEWAY,
    )
    router = Router(config, Metrics(["m", "plain"], ["a", "b"], ["k"]))
    own, inherits = (d.call_model.timeouts for d in router.deployments("m"))
    assert own == Timeouts(connect=3, first_token=300, idle=60, total=100, keepalive=5)
    assert inherits is config.models[0].timeouts
    # A model of none of its own runs under the gateway's very object: the relay and the
    # providers tell it by identity and take their fast path.
    assert router.deployments("plain")[0].call_model.timeouts is config.timeouts


def test_a_programmatic_config_inherits_the_gateways_timeouts() -> None:
    config = config_with([{"name": "m", "provider": "a"}])
    tight = replace(config, timeouts=Timeouts(first_token=1))
    model = tight.models[0]
    assert tight.timeouts_of(model, model.deployments[0]) is tight.timeouts


@pytest.mark.parametrize(
    ("models", "extra", "path", "words"),
    [
        (
            [{"name": "m", "provider": "a", "timeouts": {"idel": 5}}],
            {},
            "models[0].timeouts.idel",
            "unknown key",
        ),
        (
            [{"name": "m", "provider": "a", "timeouts": {"first_token": 0}}],
            {},
            "models[0].timeouts.first_token",
            "must be greater than 0, got 0.0",
        ),
        (
            [{"name": "m", "provider": "a", "timeouts": {"total": -1}}],
            {},
            "models[0].timeouts.total",
            "must be greater than 0",
        ),
        (
            [{"name": "m", "provider": "a", "timeouts": {"idle": "long"}}],
            {},
            "models[0].timeouts.idle",
            "expected a number, got 'long'",
        ),
        (
            [{"name": "m", "provider": "a", "timeouts": 30}],
            {},
            "models[0].timeouts",
            "expected a mapping",
        ),
        (
            [
                {
                    "name": "m",
                    "deployments": [
                        {"provider": "a", "upstream_model": "x"},
                        {"provider": "b", "upstream_model": "x", "timeouts": {"keepalive": 0}},
                    ],
                }
            ],
            {},
            "models[0].deployments[1].timeouts.keepalive",
            "must be greater than 0",
        ),
        (
            [{"name": "m", "provider": "a"}],
            {"timeouts": {"idle": 0}},
            "timeouts.idle",
            "must be greater than 0",
        ),
        (
            [{"name": "m", "provider": "a"}],
            {"timeouts": {"first_tokens": 5}},
            "timeouts.first_tokens",
            "unknown key",
        ),
    ],
)
def test_wrong_timeouts_are_refused_with_their_path(
    models: list[dict[str, Any]], extra: dict[str, Any], path: str, words: str
) -> None:
    message = error_of(models, **extra)
    assert message.startswith(f"gw.yaml: {path}: "), message
    assert words in message, message


def test_the_example_config_gives_its_reasoning_model_its_own_timeouts() -> None:
    env = {"OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "sk-2"}
    config = load_config(ROOT / "config" / "example.yaml", env)
    o3, mini = config.model("o3"), config.model("gpt-4o-mini")
    assert o3 is not None and mini is not None
    assert o3.timeouts == Timeouts(connect=5, first_token=300, idle=120, total=1800)
    assert mini.timeouts is None
