"""The Azure and Gemini flavours of the OpenAI provider: which Azure events are dropped, and
Google's error documents in OpenAI's shape (the wire is tested in
tests/integration/test_clouds_e2e.py)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.config import ProviderConfig, Timeouts
from gateway.providers.azure import AzureProvider, _annotation_only
from gateway.providers.gemini import fix_tool_finish, openai_error, openai_error_body

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


@pytest.mark.parametrize(
    ("version", "route", "url"),
    [
        ("2024-10-21", "chat.completions", "/openai/deployments/dep%2F1/chat/completions"),
        ("2024-10-21", "completions", "/openai/deployments/dep%2F1/completions"),
        ("2024-10-21", "embeddings", "/openai/deployments/dep%2F1/embeddings"),
        ("2025-04-01-preview", "responses", "/openai/responses"),
        ("v1", "chat.completions", "/openai/v1/chat/completions"),
        ("v1", "embeddings", "/openai/v1/embeddings"),
        ("v1", "responses", "/openai/v1/responses"),
    ],
)
def test_azure_urls(version: str, route: str, url: str) -> None:
    config = ProviderConfig(
        name="az", type="azure", base_url="https://r.openai.azure.com", api_version=version
    )
    provider = AzureProvider(config, httpx.AsyncHTTPTransport(), Timeouts())
    query = "" if version == "v1" else f"?api-version={version}"
    assert provider._url(route, "dep/1") == "https://r.openai.azure.com" + url + query


def test_gemini_plain_answer_with_a_tool_call_finishes_with_tool_calls() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = {"choices": [{"index": 0, "message": {"tool_calls": [call]}, "finish_reason": "stop"}]}
    assert fix_tool_finish(answer, False) == (True, True)
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    text = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    assert fix_tool_finish(text, False) == (False, False)
