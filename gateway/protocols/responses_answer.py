"""OpenAI Responses' non-streamed answer: a Response object to and from a neutral `Message`.

Reading (`message_from_answer`) takes what the stream decoder takes from the same items:
text and refusal parts, function calls, reasoning (summary and reasoning text, its
`encrypted_content` as the signature), usage, and the finish from `status`. Writing
(`answer_from_message`) runs the message through `ResponsesEncoder` and keeps its final
`response`, so a non-streamed Response is exactly what the stream's last event holds.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocols.errors import error_from_openai, openai_error_body
from gateway.protocols.events import Block, Error, Message, events_of, tool_call_block
from gateway.protocols.responses import ResponsesEncoder, error_status, usage_of


def message_from_answer(body: Any) -> Message:
    """A Response object (or OpenAI error body) as a neutral `Message`."""
    message = Message()
    if not isinstance(body, dict):
        return message
    if "error" in body and body.get("object") != "response":
        message.error = error_from_openai(body)
        return message
    message.id, message.model = str(body.get("id") or ""), str(body.get("model") or "")
    message.usage = usage_of(body.get("usage"))
    output = body.get("output")
    tools = False
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
                    text = part.get("text") or part.get("refusal")
                    message.blocks.append(Block("text", text if isinstance(text, str) else ""))
        elif kind == "function_call":
            tools = True
            message.blocks.append(
                tool_call_block(item.get("arguments"), item.get("call_id"), item.get("name"))
            )
        elif kind == "reasoning":
            texts = [
                part["text"]
                for key in ("summary", "content")
                for part in (item.get(key) or ())
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
            signature = item.get("encrypted_content")
            message.blocks.append(
                Block(
                    "reasoning",
                    "\n\n".join(texts),
                    signature=signature if isinstance(signature, str) and signature else None,
                )
            )
    status = body.get("status")
    if status == "failed":
        error = body.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        message.error = Error(
            error_status(code), str(error.get("message") or "the response failed"), code
        )
        return message
    message.done = True
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        message.finish = "content_filter" if reason == "content_filter" else "length"
    else:
        message.finish = "tool_calls" if tools else "stop"
    return message


def answer_from_message(message: Message, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """A neutral `Message` as a Response object (an error as OpenAI's error body: a
    non-streamed failure is an HTTP error, not a failed Response)."""
    if message.error is not None:
        error = message.error
        return openai_error_body(error.status, error.message, code=error.code)
    encoder = ResponsesEncoder(request)
    out: list[bytes] = []
    for event in events_of(message):
        encoder.encode(event, out)
    last = out[-1]
    payload = orjson.loads(last[last.index(b"data: ") + 6 :])
    response: dict[str, Any] = payload["response"]
    return response
