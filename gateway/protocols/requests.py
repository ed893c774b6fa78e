"""Requests of one API as requests of another: Responses and Messages to and from Chat, and
Responses to and from Messages through Chat.

Chat is the pivot: `translate_request` goes client API -> Chat -> upstream API, so four
converters serve the six directions. The pivot carries one thing Chat itself cannot say,
for the Responses <-> Messages directions: the reasoning of earlier assistant turns
(`PIVOT_REASONING` on an assistant message: Anthropic's thinking blocks with their
signatures, which Anthropic needs back during a tool-use loop). It is removed before a
request goes to a Chat or Responses upstream; it never leaves the gateway.

What the upstream's API cannot say is refused with `InvalidRequest` (400) naming the field
(`param`), never dropped: stored state (`previous_response_id`, `store: true`,
`conversation`, `background`, `prompt`, `item_reference` items), built-in or server tools,
file and audio inputs, `top_k`, stop sequences to Responses, penalties, `logit_bias`,
logprobs, `n` other than 1, output formats and verbosity (other than their defaults) to
Messages, unknown input item or content part types (Chat -> Messages in full:
`messages_request`). What carries no meaning for the answer is dropped, as each API's own
compatibility layer does:
`cache_control`, `metadata` (labels for stored objects), `include`, `truncation`,
`service_tier` across vendors, `seed` (best effort by definition), `stream_options`
(every upstream reports usage; the gateway asks for it), a tool result's `is_error`
(Chat and Responses have no such flag: the result's text says it), earlier reasoning
going to a Chat or Responses upstream (neither takes it back without its own ids), and
Responses' `reasoning.summary` (the encoders always write summaries).

Reasoning effort and Anthropic's thinking budget map through one table (`EFFORT_BUDGETS`).

Deliberately not here: the model name (the router sets it), limits, and validating what
the upstream validates itself (its 400 reaches the client in the client's error shape).
"""

from __future__ import annotations

from typing import Any

from gateway.protocols.messages_request import chat_from_messages, messages_from_chat
from gateway.protocols.request_parts import PIVOT_REASONING
from gateway.protocols.responses_request import chat_from_responses, responses_from_chat

__all__ = ["PIVOT_REASONING", "translate_request", "without_pivot"]


def translate_request(body: dict[str, Any], client: str, upstream: str) -> dict[str, Any]:
    """The client's request `body` (of API `client`) as a request of API `upstream`.

    The same API returns `body` itself: relayed as it came. Raises `InvalidRequest` (400,
    `param` naming the field) for what the upstream's API cannot say.
    """
    if client == upstream:
        return body
    if client == "chat":
        pivot = body
    elif client == "responses":
        pivot = chat_from_responses(body, upstream)
    else:
        pivot = chat_from_messages(body, upstream)
    if upstream == "messages":
        return messages_from_chat(pivot, reasoning=client != "chat")
    if upstream == "responses":
        return responses_from_chat(pivot)
    return without_pivot(pivot)


def without_pivot(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(
        isinstance(m, dict) and PIVOT_REASONING in m for m in messages
    ):
        return body
    cleaned = [
        {k: v for k, v in m.items() if k != PIVOT_REASONING} if isinstance(m, dict) else m
        for m in messages
    ]
    return {**body, "messages": cleaned}
