"""The price table and the cost of a request, in nano-dollars."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, DeploymentConfig, ModelConfig, ModelPrice, parse_config
from gateway.pricing import Prices, TokenCounts, default_price
from gateway.pricing.default_prices import DEFAULT_PRICES


def test_dated_provider_names_find_their_model_s_default_price() -> None:
    assert default_price("claude-sonnet-4-20250514") == ModelPrice(3.0, 15.0, 0.3, 3.75)
    assert default_price("gpt-4o-2024-08-06") == ModelPrice(2.5, 10.0, 1.25, None)
    # a dated model with a price of its own keeps it
    assert default_price("gpt-4o-2024-05-13") == ModelPrice(5.0, 15.0, None, None)
    assert default_price("my-finetune") is None


def test_every_default_price_is_a_whole_number_of_nano_dollars_per_token() -> None:
    for name, row in DEFAULT_PRICES.items():
        for usd in row:
            if usd is not None:
                assert abs(usd * 1000 - round(usd * 1000)) < 1e-6, name


def test_every_default_row_is_sane() -> None:
    # A transposed or mistyped figure shows up as one of these (prices in docs/prices.md).
    for name, (inp, out, cached, write) in DEFAULT_PRICES.items():
        assert inp > 0, name
        if "embedding" in name:
            assert out == 0, name  # embeddings bill input only
        else:
            assert out >= inp, name
        assert cached is None or 0 < cached <= inp, name
        assert write is None or write >= inp, name


def test_current_models_and_gemini_have_default_prices() -> None:
    assert default_price("gpt-5.4-2026-03-05") == ModelPrice(2.5, 15.0, 0.25, None)
    assert default_price("claude-opus-4-7") == ModelPrice(5.0, 25.0, 0.5, 6.25)
    prices = Prices([ModelConfig("g", "gemini", upstream_model="gemini-2.5-flash")], {})
    assert prices.unpriced == []
    used = TokenCounts(prompt=1000, completion=100, cached=400)
    # 600 plain input at 0.30, 400 cached at 0.03, 100 out at 2.50 ($/M)
    assert prices.cost("g", used) == 600 * 300 + 400 * 30 + 100 * 2500


def test_the_config_wins_then_the_upstream_name_then_nothing() -> None:
    models = [
        ModelConfig("fast", "openai", upstream_model="gpt-4o-mini"),
        ModelConfig("gpt-4o", "openai"),
        ModelConfig("local", "openai", upstream_model="llama-3"),
    ]
    prices = Prices(models, {"gpt-4o": ModelPrice(input=1.0, output=2.0)})
    assert prices.unpriced == ["local"]
    used = TokenCounts(prompt=1000, completion=100)
    assert prices.cost("gpt-4o", used) == 1000 * 1000 + 100 * 2000
    assert prices.cost("fast", used) == 1000 * 150 + 100 * 600
    assert prices.cost("local", used) == 0


def test_a_deployment_is_priced_as_its_own_upstream_model() -> None:
    model = ModelConfig(
        "gpt-4o",
        deployments=(
            DeploymentConfig("openai", "gpt-4o"),
            DeploymentConfig("other", "gpt-4o-mini"),
            DeploymentConfig("azure", "prod-4o"),  # the customer's name: no price of its own
            DeploymentConfig("azure", "house", name="priced-apart"),
        ),
    )
    pricing = {"gpt-4o": ModelPrice(1.0, 2.0), "priced-apart": ModelPrice(7.0, 8.0)}
    prices = Prices([model], pricing)
    used = TokenCounts(prompt=1000, completion=100)
    model_cost = 1000 * 1000 + 100 * 2000
    assert prices.cost("gpt-4o", used, "openai/gpt-4o") == model_cost
    assert prices.cost("gpt-4o", used, "other/gpt-4o-mini") == 1000 * 150 + 100 * 600
    assert prices.cost("gpt-4o", used, "azure/prod-4o") == model_cost
    assert prices.cost("gpt-4o", used, "priced-apart") == 1000 * 7000 + 100 * 8000
    assert prices.cost("gpt-4o", used, "") == model_cost  # no deployment named: the model's
    assert prices.cost("gpt-4o", used, "unknown") == model_cost


def test_cached_and_cache_write_tokens_are_priced_apart() -> None:
    prices = Prices(
        [ModelConfig("claude", "anthropic", upstream_model="claude-3-5-haiku-20241022")], {}
    )
    used = TokenCounts(prompt=100, completion=10, cached=40, cache_write=50)
    # 10 plain input at 0.8, 40 reads at 0.08, 50 writes at 1.0, 10 out at 4.0 ($/M)
    assert prices.cost("claude", used) == 10 * 800 + 40 * 80 + 50 * 1000 + 10 * 4000
    # a report claiming more cached tokens than prompt tokens is charged no less than 0
    assert prices.cost("claude", TokenCounts(prompt=5, completion=0, cached=9)) == 5 * 80


def test_pricing_and_budgets_are_checked_at_start_up() -> None:
    base = {
        "providers": [{"name": "p", "type": "mock"}],
        "models": [{"name": "m", "provider": "p"}],
    }
    config = parse_config(
        {
            **base,
            "pricing": {"m": {"input": 1, "output": 2.5}},
            "keys": [{"id": "k", "key_sha256": "0" * 64, "budget": {"daily_usd": 5}}],
        },
        "test.yaml",
        {},
    )
    assert config.pricing["m"] == ModelPrice(1.0, 2.5)
    budget = config.keys[0].budget
    assert budget is not None and budget.daily_nanos == 5_000_000_000
    assert budget.monthly_nanos is None
    with pytest.raises(ConfigError, match=r"pricing\.m\.output: is required"):
        parse_config({**base, "pricing": {"m": {"input": 1}}}, "test.yaml", {})
    with pytest.raises(ConfigError, match=r"budget\.daily_usd: must be greater than 0"):
        parse_config(
            {**base, "keys": [{"id": "k", "key_sha256": "0" * 64, "budget": {"daily_usd": 0}}]},
            "test.yaml",
            {},
        )
    with pytest.raises(ConfigError, match="the `database` sink needs database_url"):
        parse_config({**base, "logging": {"sinks": ["stdout", "database"]}}, "test.yaml", {})
    with pytest.raises(ConfigError, match=r"logging\.sinks: expected a list of"):
        parse_config({**base, "logging": {"sinks": ["kafka"]}}, "test.yaml", {})


def test_cost_of_the_counts_as_they_are_is_the_cost_of_their_token_counts() -> None:
    model = ModelConfig(
        "claude",
        "anthropic",
        upstream_model="claude-3-5-haiku-20241022",
        deployments=(DeploymentConfig("anthropic", "house", name="apart"),),
    )
    prices = Prices([model], {"apart": ModelPrice(7.0, 8.0, 0.5, 9.0)})
    for counts in [(100, 10, 40, 50), (100, 10, 0, 0), (30, 0, 40, 0), (0, 7, 0, 0)]:
        for deployment in ("", "apart", "unknown"):
            used = TokenCounts(*counts)
            assert prices.cost_of("claude", deployment, *counts) == prices.cost(
                "claude", used, deployment
            )
    assert prices.cost_of("unpriced", "", 100, 10) == 0
