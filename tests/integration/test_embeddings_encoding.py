"""Embeddings' `encoding_format` and `dimensions` through the real server, with the official
OpenAI SDK (which asks for base64 by default and decodes it, as the Node SDK does).

On the mock provider (the embedded default) the gateway makes the answer itself: base64 must
be base64 of the same float32 numbers the float form lists. In front of an OpenAI-type
provider it relays the upstream's answer untouched, base64 or floats, and still reads its
usage.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.config import DEMO_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`gateway serve` with no config: the embedded default, whose `mock-embed` is the mock."""
    with GatewayProcess(None, tmp_path_factory.mktemp("embedded")) as proc:
        yield proc


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def raw_embeddings(gateway: GatewayProcess, key: str, **body: object) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/embeddings",
        headers={"authorization": f"Bearer {key}"},
        json={"input": ["hello", "world"], **body},
        timeout=10,
    )


def floats_of(encoded: str) -> list[float]:
    data = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


@pytest.mark.parametrize("dimensions", [None, 16, 3072])
def test_mock_embeddings_come_as_the_sdk_asks(
    embedded: GatewayProcess, dimensions: int | None
) -> None:
    client = sdk(embedded, DEMO_KEY)
    extra = {} if dimensions is None else {"dimensions": dimensions}
    by_default = client.embeddings.create(model="mock-embed", input=["hello", "world"], **extra)
    as_floats = client.embeddings.create(
        model="mock-embed", input=["hello", "world"], encoding_format="float", **extra
    )

    size = dimensions or 64
    assert [len(d.embedding) for d in by_default.data] == [size, size]
    assert [d.embedding for d in by_default.data] == [d.embedding for d in as_floats.data]
    assert by_default.data[0].embedding != by_default.data[1].embedding
    assert any(v != 0 for v in by_default.data[0].embedding)
    assert by_default.usage.prompt_tokens > 0

    # What went over the wire: base64 of little-endian float32 when asked, a list otherwise.
    sent = raw_embeddings(embedded, DEMO_KEY, model="mock-embed", encoding_format="base64", **extra)
    listed = raw_embeddings(embedded, DEMO_KEY, model="mock-embed", **extra)
    encoded = sent.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert floats_of(encoded) == listed.json()["data"][0]["embedding"]
    assert len(base64.b64decode(encoded)) == 4 * size


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("encoding_format", "hex"),
        ("encoding_format", 1),
        ("dimensions", 0),
        ("dimensions", 3073),
        ("dimensions", "64"),
        ("dimensions", True),
    ],
)
def test_mock_embeddings_refuse_other_values_naming_the_param(
    embedded: GatewayProcess, param: str, value: object
) -> None:
    response = raw_embeddings(embedded, DEMO_KEY, model="mock-embed", **{param: value})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert param in error["message"]
    with pytest.raises(openai.BadRequestError):
        sdk(embedded, DEMO_KEY).embeddings.create(
            model="mock-embed",
            input="hello",
            **{param: value},  # type: ignore[arg-type]
        )


def prompt_tokens(gateway: GatewayProcess, model: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_tokens_total{")
        and f'model="{model}"' in line
        and 'direction="prompt"' in line
    )


def test_an_openai_provider_s_embeddings_are_relayed_untouched(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    client = sdk(gateway, KEY_A)
    before = prompt_tokens(gateway, "gpt-test")
    by_default = client.embeddings.create(model="gpt-test", input=["a", "b"])
    assert upstream.seen[-1].body["encoding_format"] == "base64"  # the SDK's default, passed on
    as_floats = client.embeddings.create(
        model="gpt-test", input=["a", "b"], encoding_format="float"
    )

    # The fake upstream's vector is [0.5, -0.25, 0.125], exact in float32.
    assert [d.embedding for d in by_default.data] == [[0.5, -0.25, 0.125]] * 2
    assert [d.embedding for d in as_floats.data] == [[0.5, -0.25, 0.125]] * 2
    sent = raw_embeddings(gateway, KEY_A, model="gpt-test", encoding_format="base64")
    assert (
        sent.json()["data"][0]["embedding"]
        == base64.b64encode(struct.pack("<3f", 0.5, -0.25, 0.125)).decode()
    )

    # Usage is read from the upstream's answer (5 prompt tokens each) whatever the format.
    deadline = time.monotonic() + 5
    while prompt_tokens(gateway, "gpt-test") < before + 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert prompt_tokens(gateway, "gpt-test") == before + 15
