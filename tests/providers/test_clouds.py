"""The Azure and Gemini flavours of the OpenAI provider: which Azure events are dropped, and
Google's error documents in OpenAI's shape (the wire is tested in
tests/integration/test_clouds_e2e.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.providers.azure import _annotation_only
from gateway.providers.gemini import openai_error, openai_error_body

FILTER = {"hate": {"filtered": False, "severity": "safe"}}


def data(chunk: dict[str, Any]) -> bytes:
    return orjson.dumps(chunk)


@pytest.mark.parametrize(
    ("chunk", "dropped"),
    [
        ({"choices": [], "prompt_filter_results": [{"content_filter_results": FILTER}]}, True),
        ({"choices": [{"index": 0, "content_filter_results": FILTER}]}, True),
        # News rides along: relayed.
        (
            {
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                "prompt_filter_results": [{"content_filter_results": FILTER}],
            },
            False,
        ),
        ({"choices": [{"index": 0, "finish_reason": "stop", "content_filter_results": {}}]}, False),
        ({"choices": [], "usage": {"prompt_tokens": 1}, "prompt_filter_results": []}, False),
        ({"choices": [{"index": 0, "text": "x", "content_filter_results": FILTER}]}, False),
        ({"choices": [], "id": "chatcmpl-1"}, False),  # no annotation named: not Azure's
    ],
)
def test_azure_drops_only_annotation_only_chunks(chunk: dict[str, Any], dropped: bool) -> None:
    assert _annotation_only(data(chunk)) is dropped


def test_a_malformed_annotation_is_left_for_the_stream_to_report() -> None:
    assert _annotation_only(b'{"prompt_filter_results": [') is False


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            [{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}],
            ("bad", "invalid_request_error", "invalid_argument"),
        ),
        (
            {"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}},
            ("slow", "rate_limit_error", "resource_exhausted"),
        ),
        ([{"error": {"code": 503, "message": "down"}}], ("down", "api_error", "503")),
        ([{"error": {"code": 500}}], ("Gemini error 500", "api_error", "500")),
    ],
)
def test_google_errors_become_openai_errors(document: Any, expected: tuple[str, str, str]) -> None:
    error = openai_error(document)
    assert error is not None
    assert (error["message"], error["type"], error["code"]) == expected
    assert error["param"] is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "m", "type": "invalid_request_error", "param": null}}',
        b"<html>502</html>",
        b"[]",
        b'{"detail": "x"}',
    ],
)
def test_other_error_bodies_pass_as_they_came(body: bytes) -> None:
    assert openai_error_body(body) is body
