"""`deployments:`, `routing:` and `health:` in the config: defaults, and one line per mistake."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, DeploymentConfig, HealthConfig, Limits, parse_config
from tests.test_config import HASH


def config_with(model: dict[str, Any], **extra: Any) -> Any:
    return parse_config(
        {
            "providers": [
                {"name": "a", "type": "openai", "base_url": "http://a/v1"},
                {"name": "b", "type": "openai", "base_url": "http://b/v1"},
            ],
            "models": [model],
            "keys": [{"id": "k", "key_sha256": HASH}],
            **extra,
        },
        "gw.yaml",
        {},
    )


def error_of(model: dict[str, Any], **extra: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config_with(model, **extra)
    return str(info.value)


def test_deployments_with_their_defaults() -> None:
    config = config_with(
        {
            "name": "gpt",
            "deployments": [
                {"provider": "a", "upstream_model": "gpt-4o", "weight": 3, "limits": {"rpm": 500}},
                {"provider": "b", "upstream_model": "gpt-4o-prod", "name": "west"},
            ],
            "routing": "least_busy",
        }
    )
    model = config.model("gpt")
    assert model.routing == "least_busy"
    assert model.deployments == (
        DeploymentConfig("a", "gpt-4o", 3, Limits(rpm=500), "a/gpt-4o"),
        DeploymentConfig("b", "gpt-4o-prod", 1, Limits(), "west"),
    )
    assert (model.provider, model.upstream_model) == ("a", "gpt-4o")
    assert config.health == HealthConfig(failures=3, window=30, cooldown=30)


def test_a_model_without_deployments_is_one_deployment_and_routes_weighted() -> None:
    model = config_with({"name": "gpt", "provider": "a", "upstream_model": "x"}).model("gpt")
    assert model.deployments == (DeploymentConfig("a", "x", 1, Limits(), "a/x"),)
    assert model.routing == "weighted"


def test_health_is_read() -> None:
    config = config_with(
        {"name": "gpt", "provider": "a"}, health={"failures": 5, "window": 10, "cooldown": 2.5}
    )
    assert config.health == HealthConfig(failures=5, window=10, cooldown=2.5)


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        (
            {"name": "gpt"},
            {},
            "gw.yaml: models[0].provider: model 'gpt' names no provider: add `provider:` or "
            "`deployments:`",
        ),
        (
            # a model's only deployment, written as one: its error names it as written
            {"name": "gpt", "deployments": [{"provider": "azure", "upstream_model": "x"}]},
            {},
            "gw.yaml: models[0].deployments[0].provider: names provider 'azure', which is not "
            "in providers: add it there or use one of ['a', 'b']",
        ),
        (
            {"name": "gpt", "provider": "azure"},
            {},
            "gw.yaml: models[0].provider: names provider 'azure', which is not "
            "in providers: add it there or use one of ['a', 'b']",
        ),
        (
            {
                "name": "gpt",
                "deployments": [
                    {"provider": "a", "upstream_model": "x"},
                    {"provider": "azure", "upstream_model": "x"},
                ],
            },
            {},
            "gw.yaml: models[0].deployments[1].provider: names provider 'azure', which is not "
            "in providers: add it there or use one of ['a', 'b']",
        ),
        (
            {
                "name": "gpt",
                "deployments": [
                    {"provider": "a", "upstream_model": "x"},
                    {"provider": "a", "upstream_model": "x", "weight": 2},
                ],
            },
            {},
            "gw.yaml: models[0].deployments[1].name: model 'gpt' has two deployments named "
            "'a/x': give one a `name`",
        ),
        (
            {
                "name": "gpt",
                "provider": "a",
                "deployments": [{"provider": "b", "upstream_model": "x"}],
            },
            {},
            "gw.yaml: models[0].provider: is the deployment's: with `deployments`, say it in each "
            "one",
        ),
        (
            {"name": "gpt", "deployments": [{"provider": "a"}]},
            {},
            "gw.yaml: models[0].deployments[0].upstream_model: is required",
        ),
        (
            {"name": "gpt", "deployments": [{"provider": "a", "upstream_model": "x", "weight": 0}]},
            {},
            "gw.yaml: models[0].deployments[0].weight: must be greater than 0, got 0",
        ),
        (
            {
                "name": "gpt",
                "deployments": [
                    {"provider": "a", "upstream_model": "x", "limits": {"max_concurrent": 3}}
                ],
            },
            {},
            "gw.yaml: models[0].deployments[0].limits.max_concurrent: unknown key; check the "
            "spelling against config/example.yaml",
        ),
        (
            {"name": "gpt", "provider": "a", "routing": "random"},
            {},
            "gw.yaml: models[0].routing: must be one of weighted, least_busy, latency, got "
            "'random'",
        ),
        (
            {"name": "gpt", "provider": "a"},
            {"health": {"cooldown": 0}},
            "gw.yaml: health.cooldown: must be greater than 0",
        ),
        (
            {"name": "gpt", "provider": "a"},
            {"health": {"failure": 3}},
            "gw.yaml: health.failure: unknown key; check the spelling against config/example.yaml",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_path(
    model: dict[str, Any], extra: dict[str, Any], expected: str
) -> None:
    assert error_of(model, **extra) == expected
