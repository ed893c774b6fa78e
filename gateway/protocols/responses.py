"""OpenAI Responses' stream to and from the neutral events (its non-streamed answer:
`gateway.protocols.responses_answer`).

`ResponsesDecoder` reads Responses stream payloads into neutral events: each `output_text`
(or `refusal`) content part a text block, each `function_call` item a tool call (its
arguments from the deltas, or from `.done` when a server sends no deltas), each
`reasoning` item a reasoning block (summary and reasoning text alike, its
`encrypted_content` as the signature), usage, and the end: `response.completed`,
`response.incomplete` (a length or content-filter finish), `response.failed` and `error`.
`ResponsesEncoder` writes neutral events the way OpenAI's servers do: `response.created`,
`response.in_progress`, then per block `output_item.added` (+ `content_part.added` /
`reasoning_summary_part.added`), its deltas, its `.done` events and `output_item.done`;
then `response.completed`, or `response.incomplete` with reason `max_output_tokens` /
`content_filter`, or `response.failed`. `sequence_number` rises by one per event, and the
final `response` holds every output item, as the SDK's accumulator expects.

Deliberately not here: built-in tool items (web search, file search, code interpreter:
the upstream ran them, no other API has them), annotations and logprobs, and stored
responses (`previous_response_id`: see `gateway.protocols.requests`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.protocols.chat import as_int, core_id
from gateway.protocols.errors import error_from_openai, malformed
from gateway.protocols.events import (
    DONE,
    BlockEnd,
    Done,
    Error,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningStart,
    Start,
    TextDelta,
    TextStart,
    TokenUsage,
    ToolArgsDelta,
    ToolCallStart,
    Usage,
    new_event,
)

ECHOED = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
)
"""Request parameters a Response repeats, as OpenAI's do."""


def usage_of(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    given = usage.get("input_tokens_details")
    taken = usage.get("output_tokens_details")
    given = given if isinstance(given, dict) else {}
    return TokenUsage(
        as_int(usage.get("input_tokens")),
        as_int(usage.get("output_tokens")),
        cached_input_tokens=as_int(given.get("cached_tokens")),
        cache_write_tokens=as_int(given.get("cache_write_tokens")),
        reasoning_tokens=as_int(taken.get("reasoning_tokens")) if isinstance(taken, dict) else 0,
    )


def usage_body(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def error_status(code: Any) -> int:
    """The HTTP status a Responses error `code` stands for (a failed Response has none)."""
    return 429 if code in ("rate_limit_exceeded", "insufficient_quota") else 500


def _content_index(payload: dict[str, Any]) -> int:
    index = payload.get("content_index")
    return index if type(index) is int and index >= 0 else -2


def _error_code(error: Error) -> str:
    # ResponseError.code is a closed list: only these two say anything about a relay.
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


class ResponsesDecoder:
    """Responses stream payloads in, neutral events out.

    One block is open at a time (the neutral contract): a text part, a function call or a
    reasoning item, known by where it is (`output_index`, and `content_index` for a part).
    An event about anything else is not relayed; a block that opens while another is open
    closes that one first (a server that interleaves items cannot be relayed faithfully to
    APIs whose blocks come one after the other, and is not relayed unfaithfully).
    """

    __slots__ = ("_args", "_block", "_blocks", "_kind", "_tools", "_where")

    def __init__(self) -> None:
        self._blocks = 0
        self._block = -1
        """The neutral number of the open block, -1 when none is."""
        self._kind = ""
        """The open block's kind: "text", "function_call" or "reasoning"."""
        self._where: tuple[int, int] = (-1, -1)
        """The open block's (output_index, content_index); content_index -1 for items."""
        self._args = False
        """The open function call's arguments arrived as deltas."""
        self._tools = False

    def _open(self, kind: str, where: tuple[int, int], out: list[Event]) -> int:
        self._close(out)
        self._block = self._blocks
        self._blocks += 1
        self._kind, self._where, self._args = kind, where, False
        return self._block

    def _close(self, out: list[Event]) -> None:
        if self._block >= 0:
            out.append(BlockEnd(self._block))
            self._block = -1
            self._kind = ""
            self._where = (-1, -1)

    def decode(self, data: bytes, out: list[Event]) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.append(malformed("responses", "an event that is not JSON"))
            return
        if not isinstance(payload, dict):
            out.append(malformed("responses", "an event that is not a JSON object"))
            return
        kind = payload.get("type")
        index = payload.get("output_index")
        if type(index) is not int:
            index = -2  # matches no block: the event is about nothing relayed
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = payload.get("delta")
            if not delta or type(delta) is not str:
                return
            where = (index, _content_index(payload))
            if self._kind != "text" or self._where != where:
                if index < 0 or where[1] < 0:
                    return
                out.append(TextStart(self._open("text", where, out)))  # no part.added came
            out.append(new_event(TextDelta, (self._block, delta)))
        elif kind == "response.function_call_arguments.delta":
            delta = payload.get("delta")
            open_here = self._kind == "function_call" and self._where[0] == index
            if open_here and delta and type(delta) is str:
                self._args = True
                out.append(new_event(ToolArgsDelta, (self._block, delta)))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            delta = payload.get("delta")
            open_here = self._kind == "reasoning" and self._where[0] == index
            if open_here and delta and type(delta) is str:
                out.append(new_event(ReasoningDelta, (self._block, delta, None)))
        elif kind == "response.reasoning_summary_part.added":
            open_here = self._kind == "reasoning" and self._where[0] == index
            if open_here and as_int(payload.get("summary_index")) > 0:
                out.append(ReasoningDelta(self._block, "\n\n"))  # one text: parts apart
        elif kind == "response.content_part.added":
            part = payload.get("part")
            where = (index, _content_index(payload))
            if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
                if index < 0 or where[1] < 0 or (self._kind == "text" and self._where == where):
                    return
                block = self._open("text", where, out)
                out.append(TextStart(block))
                text = part.get("text") or part.get("refusal")
                if text and isinstance(text, str):
                    out.append(TextDelta(block, text))
        elif kind == "response.content_part.done":
            if self._kind == "text" and self._where == (index, _content_index(payload)):
                self._close(out)
        elif kind == "response.function_call_arguments.done":
            arguments = payload.get("arguments")
            if self._kind == "function_call" and self._where[0] == index and not self._args:
                self._args = True
                if arguments and isinstance(arguments, str):
                    out.append(ToolArgsDelta(self._block, arguments))
        elif kind == "response.output_item.added":
            self._item_added(payload, index, out)
        elif kind == "response.output_item.done":
            self._item_done(payload, index, out)
        elif kind == "response.created":
            response = payload.get("response")
            response = response if isinstance(response, dict) else {}
            out.append(Start(str(response.get("id") or ""), str(response.get("model") or "")))
        elif kind == "response.completed" or kind == "response.incomplete":
            self._close(out)
            response = payload.get("response")
            response = response if isinstance(response, dict) else {}
            usage = usage_of(response.get("usage"))
            if kind == "response.completed":
                out.append(Finish("tool_calls" if self._tools else "stop"))
            else:
                details = response.get("incomplete_details")
                reason = details.get("reason") if isinstance(details, dict) else None
                out.append(Finish("content_filter" if reason == "content_filter" else "length"))
            if usage is not None:
                out.append(Usage(usage))
            out.append(DONE)
        elif kind == "response.failed":
            response = payload.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            error = error if isinstance(error, dict) else {}
            code = error.get("code")
            message = error.get("message")
            out.append(
                Error(
                    error_status(code),
                    message if isinstance(message, str) and message else "the response failed",
                    code if isinstance(code, str) else None,
                )
            )
        elif kind == "error":
            code = payload.get("code")
            out.append(error_from_openai({"error": payload}, error_status(code)))
        # response.in_progress, annotations, built-in tool progress: nothing to say

    def _item_added(self, payload: dict[str, Any], index: int, out: list[Event]) -> None:
        item = payload.get("item")
        if not isinstance(item, dict) or index < 0:
            return
        kind = item.get("type")
        if kind == "function_call":
            self._tools = True
            call_id, name = item.get("call_id"), item.get("name")
            out.append(
                ToolCallStart(
                    self._open("function_call", (index, -1), out),
                    call_id if isinstance(call_id, str) else "",
                    name if isinstance(name, str) else "",
                )
            )
        elif kind == "reasoning":
            out.append(ReasoningStart(self._open("reasoning", (index, -1), out)))

    def _item_done(self, payload: dict[str, Any], index: int, out: list[Event]) -> None:
        if self._where[0] != index:
            return
        item = payload.get("item")
        item = item if isinstance(item, dict) else {}
        if self._kind == "function_call":
            arguments = item.get("arguments")
            if not self._args and arguments and isinstance(arguments, str):
                out.append(ToolArgsDelta(self._block, arguments))
        elif self._kind == "reasoning":
            signature = item.get("encrypted_content")
            if signature and isinstance(signature, str):
                out.append(ReasoningDelta(self._block, "", signature))
        # A message's parts end here at the latest (content_part.done may be missing).
        self._close(out)


class _Item:
    """The output item being streamed: enough to write its `.done` events."""

    __slots__ = ("call_id", "head", "index", "item_id", "kind", "name", "parts", "signature")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind
        self.index = index
        self.item_id = item_id
        self.parts: list[str] = []
        self.signature: str | None = None
        self.call_id = self.name = ""
        self.head = b""
        """The constant middle of this item's delta events (ids and indexes)."""


class ResponsesEncoder:
    """Neutral events in, Responses stream SSE bytes out."""

    __slots__ = (
        "_base",
        "_finish",
        "_item",
        "_output",
        "_seq",
        "_started",
        "_usage",
        "created_at",
    )

    def __init__(self, request: dict[str, Any] | None = None) -> None:
        self._seq = 0
        self._started = False
        self.created_at = int(time.time())
        self._base: dict[str, Any] = {
            "id": "resp_gateway",
            "object": "response",
            "created_at": self.created_at,
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": "",
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "temperature": None,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": None,
            "metadata": {},
        }
        if request:
            for key in ECHOED:
                if request.get(key) is not None:
                    self._base[key] = request[key]
        self._output: list[dict[str, Any]] = []
        self._item: _Item | None = None
        self._finish: FinishReason | None = None
        self._usage: TokenUsage | None = None

    def _event(self, kind: bytes, body: bytes, out: list[bytes]) -> None:
        """`body` is the JSON object's members after `type` and `sequence_number`."""
        out.append(
            b"event: "
            + kind
            + b'\ndata: {"type":"'
            + kind
            + b'","sequence_number":'
            + str(self._seq).encode()
            + body
            + b"}\n\n"
        )
        self._seq += 1

    def _dump(self, kind: bytes, members: dict[str, Any], out: list[bytes]) -> None:
        self._event(kind, b"," + orjson.dumps(members)[1:-1], out)

    def encode(self, event: Event, out: list[bytes]) -> None:
        # Dispatch on the exact class, most frequent first; the per-token branches read the
        # tuple by position (event[1]: the text) rather than narrow with isinstance.
        kind = type(event)
        item = self._item
        if kind is TextDelta or kind is ToolArgsDelta:
            assert item is not None
            text: str = event[1]  # type: ignore[misc]
            item.parts.append(text)
            self._event(
                b"response.output_text.delta"
                if kind is TextDelta
                else b"response.function_call_arguments.delta",
                item.head + orjson.dumps(text) + (b',"logprobs":[]' if kind is TextDelta else b""),
                out,
            )
        elif kind is ReasoningDelta:
            assert item is not None and isinstance(event, ReasoningDelta)
            if event.text:
                if not item.parts:
                    self._dump(
                        b"response.reasoning_summary_part.added",
                        {
                            "item_id": item.item_id,
                            "output_index": item.index,
                            "summary_index": 0,
                            "part": {"type": "summary_text", "text": ""},
                        },
                        out,
                    )
                item.parts.append(event.text)
                self._event(
                    b"response.reasoning_summary_text.delta",
                    item.head + orjson.dumps(event.text),
                    out,
                )
            if event.signature is not None:
                item.signature = event.signature
        elif kind is TextStart:
            item = self._open("message", "msg", {"role": "assistant", "content": []}, out)
            self._dump(
                b"response.content_part.added",
                {
                    "item_id": item.item_id,
                    "output_index": item.index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
                out,
            )
            item.head = self._head(item) + b',"content_index":0,"delta":'
        elif kind is ToolCallStart:
            assert isinstance(event, ToolCallStart)
            fields = {"call_id": event.call_id, "name": event.name, "arguments": ""}
            item = self._open("function_call", "fc", fields, out)
            item.call_id, item.name = event.call_id, event.name
            item.head = self._head(item) + b',"delta":'
        elif kind is ReasoningStart:
            item = self._open("reasoning", "rs", {"summary": []}, out)
            item.head = self._head(item) + b',"summary_index":0,"delta":'
        elif kind is BlockEnd:
            if item is not None:
                self._close(item, out)
        elif kind is Start:
            assert isinstance(event, Start)
            self._started = True
            self._base["id"] = responses_id(event.id)
            self._base["model"] = event.model
            if event.usage is not None:
                self._usage = event.usage
            self._dump(b"response.created", {"response": self._response()}, out)
            self._dump(b"response.in_progress", {"response": self._response()}, out)
        elif kind is Usage:
            assert isinstance(event, Usage)
            self._usage = event.usage
        elif kind is Finish:
            assert isinstance(event, Finish)
            self._finish = event.reason
        elif kind is Done:
            if not self._started:
                self.encode(Start("", ""), out)
            if self._finish == "length" or self._finish == "content_filter":
                reason = "max_output_tokens" if self._finish == "length" else "content_filter"
                response = self._response("incomplete", incomplete_details={"reason": reason})
                self._dump(b"response.incomplete", {"response": response}, out)
            else:
                response = self._response("completed", completed_at=int(time.time()))
                self._dump(b"response.completed", {"response": response}, out)
        elif kind is Error:
            assert isinstance(event, Error)
            if self._item is not None:
                # What the open item carried so far reaches the client before the failure
                # (a reasoning item's signature is only said in its done event).
                self._close(self._item, out)
            error = {"code": _error_code(event), "message": event.message}
            self._dump(b"response.failed", {"response": self._response("failed", error=error)}, out)

    def _head(self, item: _Item) -> bytes:
        return (
            b',"item_id":'
            + orjson.dumps(item.item_id)
            + b',"output_index":'
            + str(item.index).encode()
        )

    def _open(self, kind: str, prefix: str, fields: dict[str, Any], out: list[bytes]) -> _Item:
        if not self._started:  # an upstream that skipped its start: the client needs one
            self.encode(Start("", ""), out)
        index = len(self._output)
        item = self._item = _Item(kind, index, f"{prefix}_{core_id(self._base['id'])}_{index}")
        body = {"id": item.item_id, "type": kind, "status": "in_progress", **fields}
        if kind == "reasoning":
            del body["status"]  # a reasoning item in progress has no status yet
        self._dump(b"response.output_item.added", {"output_index": index, "item": body}, out)
        return item

    def _close(self, item: _Item, out: list[bytes]) -> None:
        self._item = None
        where = {"item_id": item.item_id, "output_index": item.index}
        text = "".join(item.parts)
        done: dict[str, Any] = {"id": item.item_id, "type": item.kind}
        if item.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            self._dump(
                b"response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
                out,
            )
            self._dump(
                b"response.content_part.done", {**where, "content_index": 0, "part": part}, out
            )
            done.update(status="completed", role="assistant", content=[part])
        elif item.kind == "function_call":
            self._dump(
                b"response.function_call_arguments.done",
                {**where, "name": item.name, "arguments": text},
                out,
            )
            done.update(status="completed", call_id=item.call_id, name=item.name, arguments=text)
        else:
            summary = []
            if item.parts:
                part = {"type": "summary_text", "text": text}
                self._dump(
                    b"response.reasoning_summary_text.done",
                    {**where, "summary_index": 0, "text": text},
                    out,
                )
                self._dump(
                    b"response.reasoning_summary_part.done",
                    {**where, "summary_index": 0, "part": part},
                    out,
                )
                summary.append(part)
            done["summary"] = summary
            if item.signature is not None:
                done["encrypted_content"] = item.signature
        self._output.append(done)
        self._dump(b"response.output_item.done", {"output_index": item.index, "item": done}, out)

    def _response(self, status: str = "in_progress", **fields: Any) -> dict[str, Any]:
        response = {**self._base, "status": status, "output": self._output, **fields}
        if status != "in_progress" and self._usage is not None:
            response["usage"] = usage_body(self._usage)
        return response


def responses_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("resp_") else "resp_" + core_id(answer_id)
