"""The default price table: USD per million tokens, as the providers list them.

Checked 2026-12 against LiteLLM's maintained price file
(`model_prices_and_context_window.json`, BerriAI/litellm, as shipped in litellm 1.110.2,
uploaded to PyPI 2026-11-20), cross-checked with Anthropic's pricing page
(docs.anthropic.com/en/docs/about-claude/pricing) and dated third-party price pages; every
row's source and the rows left out are in docs/prices.md. Prices change and new models
appear: `pricing:` in the config wins over this table, model by model.

Columns: input, output, cached_input (OpenAI's cached prompt tokens, Anthropic's cache
reads, Gemini's cached content), cache_write (Anthropic's 5-minute cache writes, and the
cache writes LiteLLM lists for OpenAI's gpt-6 models; other OpenAI models and Gemini charge
none, so None: the same as input). Reasoning and thinking tokens are output tokens on every
provider here and are priced as output.

Deliberately not in the table: the standard tier is the only tier. Batch, flex and
priority processing, the long-context premium (Anthropic's >200k-token Sonnet 4/4.5 rate,
OpenAI's >272k rate on gpt-5.4 and later, Gemini's >200k rate on the Pro models), 1-hour
cache writes, regional and data-residency uplifts, Gemini's audio-input rate and
cache-storage fee are not modelled: such requests are priced at the base row.
"""

from __future__ import annotations

TAKEN = "2026-12"
SOURCE = (
    "LiteLLM model_prices_and_context_window.json (litellm 1.110.2, 2026-11-20), "
    "docs.anthropic.com pricing; per-row sources in docs/prices.md"
)

# name: (input, output, cached_input, cache_write); None: the same as input
DEFAULT_PRICES: dict[str, tuple[float, float, float | None, float | None]] = {
    # OpenAI
    "gpt-6.1-sol": (2.0, 10.0, 0.1, 2.5),
    "gpt-6.1-terra": (1.0, 5.0, 0.05, 1.25),
    "gpt-6-astra": (10.0, 50.0, 1.0, 12.5),
    "gpt-6-sol": (2.0, 10.0, 0.2, 2.5),
    "gpt-6-luna": (0.1, 0.5, 0.01, 0.125),
    "gpt-5.5": (5.0, 30.0, 0.5, None),
    "gpt-5.5-pro": (30.0, 180.0, None, None),
    "gpt-5.4": (2.5, 15.0, 0.25, None),
    "gpt-5.4-pro": (30.0, 180.0, None, None),
    "gpt-5.4-mini": (0.75, 4.5, 0.075, None),
    "gpt-5.4-nano": (0.2, 1.25, 0.02, None),
    "gpt-5.3-codex": (1.75, 14.0, 0.175, None),
    "gpt-5.2": (1.75, 14.0, 0.175, None),
    "gpt-5.2-pro": (21.0, 168.0, None, None),
    "gpt-5.1": (1.25, 10.0, 0.125, None),
    "gpt-5": (1.25, 10.0, 0.125, None),
    "gpt-5-pro": (15.0, 120.0, None, None),
    "gpt-5-mini": (0.25, 2.0, 0.025, None),
    "gpt-5-nano": (0.05, 0.4, 0.005, None),
    "gpt-5-chat-latest": (1.25, 10.0, 0.125, None),
    "gpt-4.1": (2.0, 8.0, 0.5, None),
    "gpt-4.1-mini": (0.4, 1.6, 0.1, None),
    "gpt-4.1-nano": (0.1, 0.4, 0.025, None),
    "gpt-4o": (2.5, 10.0, 1.25, None),
    "gpt-4o-2024-05-13": (5.0, 15.0, None, None),
    "gpt-4o-mini": (0.15, 0.6, 0.075, None),
    "gpt-4-turbo": (10.0, 30.0, None, None),
    "gpt-4": (30.0, 60.0, None, None),
    "gpt-3.5-turbo": (0.5, 1.5, None, None),
    "o1": (15.0, 60.0, 7.5, None),
    "o1-pro": (150.0, 600.0, None, None),
    "o3": (2.0, 8.0, 0.5, None),
    "o3-mini": (1.1, 4.4, 0.55, None),
    "o3-pro": (20.0, 80.0, None, None),
    "o4-mini": (1.1, 4.4, 0.275, None),
    "text-embedding-3-small": (0.02, 0.0, None, None),
    "text-embedding-3-large": (0.13, 0.0, None, None),
    "text-embedding-ada-002": (0.1, 0.0, None, None),
    # Anthropic (cache_write: the 5-minute cache, 1.25 x input)
    "claude-mythos-5-1": (10.0, 50.0, 0.25, 12.5),
    "claude-mythos-5": (10.0, 50.0, 1.0, 12.5),
    "claude-fable-5-1": (10.0, 50.0, 0.25, 12.5),
    "claude-fable-5": (10.0, 50.0, 1.0, 12.5),
    "claude-opus-5-5": (4.0, 20.0, 0.2, 5.0),
    "claude-opus-5": (5.0, 25.0, 0.5, 6.25),
    "claude-sonnet-5-5": (2.0, 10.0, 0.1, 2.5),
    "claude-sonnet-5": (2.0, 10.0, 0.2, 2.5),
    "claude-haiku-5-5": (0.1, 0.5, 0.01, 0.125),
    "claude-opus-4-8": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-7": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-6": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-5": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-1": (15.0, 75.0, 1.5, 18.75),
    "claude-opus-4-0": (15.0, 75.0, 1.5, 18.75),
    "claude-opus-4": (15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4-6": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4-5": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4-0": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4": (3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4-5": (1.0, 5.0, 0.1, 1.25),
    "claude-3-7-sonnet": (3.0, 15.0, 0.3, 3.75),
    "claude-3-5-sonnet": (3.0, 15.0, 0.3, 3.75),
    "claude-3-5-haiku": (0.8, 4.0, 0.08, 1.0),
    "claude-3-opus": (15.0, 75.0, 1.5, 18.75),
    "claude-3-haiku": (0.25, 1.25, 0.03, 0.3),
    # Google Gemini (cached_input: context-cache reads; no cache-write charge)
    "gemini-4-argon": (2.0, 10.0, 0.1, None),
    "gemini-4-hydrogen": (1.5, 7.5, 0.075, None),
    "gemini-3.8-flash": (0.75, 3.75, 0.075, None),
    "gemini-3.7-flash": (0.75, 3.75, 0.075, None),
    "gemini-3.6-flash": (0.75, 3.75, 0.075, None),
    "gemini-3.5-flash": (1.5, 9.0, 0.15, None),
    "gemini-3.5-flash-lite": (0.3, 2.5, 0.03, None),
    "gemini-3.1-pro-preview": (2.0, 12.0, 0.2, None),
    "gemini-3.1-flash-lite": (0.25, 1.5, 0.025, None),
    "gemini-3-flash-preview": (0.5, 3.0, 0.05, None),
    "gemini-2.5-pro": (1.25, 10.0, 0.125, None),
    "gemini-2.5-flash": (0.3, 2.5, 0.03, None),
    "gemini-2.5-flash-lite": (0.1, 0.4, 0.01, None),
    "gemini-embedding-2": (0.2, 0.0, None, None),
    "gemini-embedding-001": (0.15, 0.0, None, None),
}
