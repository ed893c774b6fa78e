"""The default price table: USD per million tokens, as the providers list them.

Taken 2025-08 from the providers' public price pages (https://openai.com/api/pricing,
https://www.anthropic.com/pricing#api), written from memory on a machine without internet:
prices change and new models appear, so check them and override what differs with
`pricing:` in the config (it wins over this table, model by model).

Columns: input, output, cached_input (OpenAI's cached prompt tokens, Anthropic's cache
reads), cache_write (Anthropic's 5-minute cache writes; OpenAI charges cache writes as plain
input). Reasoning tokens are output tokens on both providers: they are in
`completion_tokens` / `output_tokens` already and priced as output.
"""

from __future__ import annotations

TAKEN = "2025-08"
SOURCE = "openai.com/api/pricing, anthropic.com/pricing (from memory; check before relying)"

# name: (input, output, cached_input, cache_write); None: the same as input
DEFAULT_PRICES: dict[str, tuple[float, float, float | None, float | None]] = {
    # OpenAI
    "gpt-5": (1.25, 10.0, 0.125, None),
    "gpt-5-mini": (0.25, 2.0, 0.025, None),
    "gpt-5-nano": (0.05, 0.4, 0.005, None),
    "gpt-5-chat-latest": (1.25, 10.0, 0.125, None),
    "gpt-4.1": (2.0, 8.0, 0.5, None),
    "gpt-4.1-mini": (0.4, 1.6, 0.1, None),
    "gpt-4.1-nano": (0.1, 0.4, 0.025, None),
    "gpt-4o": (2.5, 10.0, 1.25, None),
    "gpt-4o-2024-05-13": (5.0, 15.0, None, None),
    "gpt-4o-mini": (0.15, 0.6, 0.075, None),
    "chatgpt-4o-latest": (5.0, 15.0, None, None),
    "gpt-4-turbo": (10.0, 30.0, None, None),
    "gpt-4": (30.0, 60.0, None, None),
    "gpt-3.5-turbo": (0.5, 1.5, None, None),
    "o1": (15.0, 60.0, 7.5, None),
    "o1-mini": (1.1, 4.4, 0.55, None),
    "o1-pro": (150.0, 600.0, None, None),
    "o3": (2.0, 8.0, 0.5, None),
    "o3-mini": (1.1, 4.4, 0.55, None),
    "o3-pro": (20.0, 80.0, None, None),
    "o4-mini": (1.1, 4.4, 0.275, None),
    "text-embedding-3-small": (0.02, 0.0, None, None),
    "text-embedding-3-large": (0.13, 0.0, None, None),
    "text-embedding-ada-002": (0.1, 0.0, None, None),
    # Anthropic (cache_write: the 5-minute cache, 1.25 x input)
    "claude-opus-4-5": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-1": (15.0, 75.0, 1.5, 18.75),
    "claude-opus-4-0": (15.0, 75.0, 1.5, 18.75),
    "claude-opus-4": (15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4-5": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4-0": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4": (3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4-5": (1.0, 5.0, 0.1, 1.25),
    "claude-3-7-sonnet": (3.0, 15.0, 0.3, 3.75),
    "claude-3-5-sonnet": (3.0, 15.0, 0.3, 3.75),
    "claude-3-5-haiku": (0.8, 4.0, 0.08, 1.0),
    "claude-3-opus": (15.0, 75.0, 1.5, 18.75),
    "claude-3-haiku": (0.25, 1.25, 0.03, 0.3),
}
