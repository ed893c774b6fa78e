"""The config of the `azure` and `gemini` provider types: defaults and refused mistakes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gateway.config import AZURE_API_VERSION, ConfigError, ModelPrice, hash_key, parse_config
from gateway.pricing import Prices, rate_of

HASH = hash_key("secret")


def config_with(provider: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": [{"name": "p", **provider}],
        "models": [{"name": "m", "provider": "p", "upstream_model": "my-deployment"}],
        "keys": [{"id": "a", "key_sha256": HASH}],
    }


AZURE = {"type": "azure", "base_url": "https://res.openai.azure.com", "api_key": "k"}


def test_azure_defaults_to_the_ga_api_version_and_the_api_key_header() -> None:
    provider = parse_config(config_with(AZURE), "c.yaml", {}).providers[0]
    assert (provider.api_version, provider.auth) == (AZURE_API_VERSION, "api-key")
    assert AZURE_API_VERSION == "2024-10-21"


def test_azure_api_version_may_be_an_unquoted_yaml_date_or_v1() -> None:
    text = (
        "providers:\n"
        "  - {name: p, type: azure, base_url: 'https://r.openai.azure.com', api_key: k,\n"
        "     api_version: 2025-04-01, auth: bearer}\n"
        "  - {name: q, type: azure, base_url: 'https://r.openai.azure.com', api_version: v1}\n"
        "  - {name: r, type: azure, base_url: 'https://r.openai.azure.com',\n"
        "     api_version: 2025-04-01-preview, apis: [chat, responses]}\n"
        f"models: [{{name: m, provider: p}}]\nkeys: [{{id: a, key_sha256: {HASH}}}]\n"
    )
    p, q, r = parse_config(yaml.safe_load(text), "c.yaml", {}).providers
    assert (p.api_version, p.auth) == ("2025-04-01", "bearer")
    assert q.api_version == "v1"
    assert (r.api_version, r.apis) == ("2025-04-01-preview", ("chat", "responses"))


def test_azure_behind_a_proxy_path_is_taken() -> None:
    data = config_with({**AZURE, "base_url": "https://apim.example.com/openai-eu"})
    assert parse_config(data, "c.yaml", {}).providers[0].base_url.endswith("/openai-eu")


def test_gemini_needs_no_base_url() -> None:
    provider = parse_config(config_with({"type": "gemini", "api_key": "k"}), "c.yaml", {})
    assert provider.providers[0].base_url == (
        "https://generativelanguage.googleapis.com/v1beta/openai"
    )


@pytest.mark.parametrize(
    ("provider", "path", "words"),
    [
        ({**AZURE, "api_version": "latest"}, "api_version", "is not an Azure api-version"),
        ({**AZURE, "api_version": "2024-10"}, "api_version", "or v1 for the /openai/v1/ route"),
        ({**AZURE, "auth": "oauth"}, "auth", "one of api-key, bearer"),
        (
            {**AZURE, "base_url": "https://res.openai.azure.com/openai/v1/"},
            "base_url",
            "without /openai",
        ),
        ({**AZURE, "base_url": "https://res.openai.azure.com/openai/"}, "base_url", "without"),
        (
            {**AZURE, "base_url": "https://r.openai.azure.com/openai/deployments/d"},
            "base_url",
            "without /openai",
        ),
        ({"type": "azure", "api_key": "k"}, "base_url", "is required for a provider of type azure"),
        ({**AZURE, "apis": ["responses"]}, "apis", "must list chat"),
        (
            {"type": "openai", "base_url": "http://x/v1", "api_version": "v1"},
            "api_version",
            "is for providers of type azure, not openai",
        ),
        ({"type": "gemini", "auth": "bearer"}, "auth", "is for providers of type azure"),
        ({"type": "gemini", "apis": ["chat", "responses"]}, "apis", "serves chat only"),
        ({"type": "anthropic", "base_url": "http://x", "apis": ["chat"]}, "apis", "anthropic"),
        ({"type": "vertex", "base_url": "http://x"}, "type", "openai, anthropic, mock, azure"),
    ],
)
def test_cloud_provider_mistakes_name_the_field(
    provider: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(provider), "c.yaml", {})
    message = str(info.value)
    assert f"providers[0].{path}" in message, message
    assert words in message, message


def test_an_azure_deployment_is_priced_by_its_model_name_or_the_config() -> None:
    """A deployment name is the account's own word: the price is found by the gateway's
    model name (the default table's `gpt-4o`) or a `pricing:` entry of that name."""
    data = config_with(AZURE)
    data["models"] = [
        {"name": "gpt-4o", "provider": "p", "upstream_model": "prod-4o-eastus"},
        {"name": "house-model", "provider": "p", "upstream_model": "ft-2291"},
        {"name": "unpriced", "provider": "p", "upstream_model": "dep-x"},
    ]
    data["pricing"] = {"house-model": {"input": 1.0, "output": 2.0}}
    config = parse_config(data, "c.yaml", {})
    prices = Prices(config.models, config.pricing)
    assert prices.rate("gpt-4o") == rate_of(ModelPrice(2.5, 10.0, 1.25))
    assert prices.rate("house-model") == rate_of(ModelPrice(1.0, 2.0))
    assert prices.unpriced == ["unpriced"]
