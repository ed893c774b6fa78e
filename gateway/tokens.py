"""Estimating a text's token count without a tokenizer.

Used where the gateway must charge or reserve tokens before (or without) a provider's own
count: a request's prompt estimate at the edge, the mock provider's usage. Not a tokenizer:
the figure is a rule of thumb, never shown to a client as a provider's count.
"""

from __future__ import annotations

import math


def estimate_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's rule of thumb has it."""
    return max(1, math.ceil(len(text) / 4))
