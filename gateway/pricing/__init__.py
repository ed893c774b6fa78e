"""What a request costs: the price table applied to the provider's reported usage.

`Prices` resolves every configured model to its price once, at start-up (the config's
`pricing:` first, by the model's name then its upstream name; then the default table in
`gateway.pricing.default_prices`, by the same names with a trailing date such as
`-20250514` or `-2024-08-06` tried off too), so the request path does one dict lookup and a
few integer multiplications.

A request is charged at the prices of the deployment that answered it (a fallback model's,
or a deployment of another upstream model than the first). A deployment serving the same
upstream model as its model's first one costs the model's price; one serving another is
priced by its `name` then its `upstream_model` in `pricing:`, then by its upstream model in
the default table, and only when none has a price, at its model's price (an Azure
deployment's upstream name is the customer's own, e.g. `prod-4o`). A `pricing:` entry
named after the deployment (`name`, default `PROVIDER/UPSTREAM_MODEL`) overrides all.

Money is integer nano-dollars (`NANOS_PER_USD`): the limiter adds and compares the same
integers in Python and in Redis's Lua, and a price given to $0.001 per million tokens is a
whole number of nano-dollars per token.

The charge: input tokens that were neither cache reads nor cache writes at `input`, cache
reads (OpenAI's `cached_tokens`, read the same way from Gemini's OpenAI-compatible
answers; Anthropic's `cache_read_input_tokens`) at `cached_input`, cache writes at
`cache_write`, output tokens (reasoning included: every provider counts it as output) at
`output`. A model without a price costs 0; start-up names it.

Deliberately not here: currency conversion, tiered or long-context prices (a model whose
price depends on the prompt's length is priced at its base tier), batch discounts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import NANOS_PER_USD, ModelConfig, ModelPrice
from gateway.pricing.default_prices import DEFAULT_PRICES

_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


@dataclass(frozen=True, slots=True)
class Rate:
    """Nano-dollars per token."""

    input: int
    output: int
    cached_input: int
    cache_write: int


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """What one request used. `prompt` includes the cached and cache-write tokens."""

    prompt: int
    completion: int
    cached: int = 0
    cache_write: int = 0


FREE = Rate(0, 0, 0, 0)


def _per_token(usd_per_million: float) -> int:
    # USD per 1e6 tokens -> nano-dollars per token: x * 1e9 / 1e6.
    return round(usd_per_million * 1000)


def rate_of(price: ModelPrice) -> Rate:
    inp = _per_token(price.input)
    return Rate(
        input=inp,
        output=_per_token(price.output),
        cached_input=inp if price.cached_input is None else _per_token(price.cached_input),
        cache_write=inp if price.cache_write is None else _per_token(price.cache_write),
    )


def default_price(name: str) -> ModelPrice | None:
    """The default table's price of a provider model name, dated or not."""
    for candidate in (name, _DATE_SUFFIX.sub("", name)):
        row = DEFAULT_PRICES.get(candidate)
        if row is not None:
            return ModelPrice(*row)
    return None


class Prices:
    """Every configured model's rate, and each of its deployments', resolved once."""

    def __init__(self, models: Iterable[ModelConfig], pricing: Mapping[str, ModelPrice]) -> None:
        self._rates: dict[str, Rate] = {}
        self._deployed: dict[tuple[str, str], Rate] = {}
        """(model, deployment name): the rate of a deployment priced apart from its model."""
        self.unpriced: list[str] = []
        """Configured models with no price (they cost 0)."""
        for model in models:
            price = self._find(model, pricing)
            if price is None:
                self.unpriced.append(model.name)
            else:
                self._rates[model.name] = rate_of(price)
            for d in model.deployments:
                own = self._deployment_price(model, d.name, d.upstream_model, pricing)
                if own is not None:
                    self._deployed[model.name, d.name] = rate_of(own)

    @staticmethod
    def _deployment_price(
        model: ModelConfig, name: str, upstream: str, pricing: Mapping[str, ModelPrice]
    ) -> ModelPrice | None:
        """A deployment's own price; None when it costs its model's."""
        if name in pricing:
            return pricing[name]
        if upstream == (model.upstream_model or model.name):
            return None
        return pricing.get(upstream) or default_price(upstream)

    @staticmethod
    def _find(model: ModelConfig, pricing: Mapping[str, ModelPrice]) -> ModelPrice | None:
        names = (model.name, model.upstream_model or model.name)
        for name in names:
            if name in pricing:
                return pricing[name]
        for name in names:
            price = default_price(name)
            if price is not None:
                return price
        return None

    def rate(self, model: str) -> Rate:
        return self._rates.get(model, FREE)

    def cost(self, model: str, used: TokenCounts, deployment: str = "") -> int:
        """Nano-dollars for `used` tokens of `model`, as its `deployment` (the one that
        answered: its name) charges them."""
        return self.cost_of(
            model, deployment, used.prompt, used.completion, used.cached, used.cache_write
        )

    def cost_of(
        self,
        model: str,
        deployment: str,
        prompt: int,
        completion: int,
        cached: int = 0,
        cache_write: int = 0,
    ) -> int:
        """`cost` of the counts as they are: every finished request's cost is worked out,
        and a `TokenCounts` made for it took half the time (a frozen dataclass sets each
        field through `object.__setattr__`)."""
        rate = self._deployed.get((model, deployment)) if deployment else None
        if rate is None:
            rate = self._rates.get(model)
        if rate is None:
            return 0
        cached = min(cached, prompt)
        write = min(cache_write, prompt - cached)
        plain = prompt - cached - write
        return (
            plain * rate.input
            + cached * rate.cached_input
            + write * rate.cache_write
            + completion * rate.output
        )

    def reserve(self, model: str, prompt: int, completion: int) -> int:
        """Nano-dollars to reserve at admission: the whole estimate at the full prices."""
        rate = self._rates.get(model)
        if rate is None:
            return 0
        return prompt * rate.input + completion * rate.output


def usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


__all__ = ["FREE", "Prices", "Rate", "TokenCounts", "default_price", "rate_of", "usd"]
