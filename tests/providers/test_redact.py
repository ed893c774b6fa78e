"""The provider's credentials, in every form an echo takes, never come back out."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import orjson
import pytest

from gateway.config import ProviderConfig
from gateway.providers.redact import MARK, Redactor

KEY = 'sk-live/Ab+Cd"Ef\\Gh=Ij&0123456789 é'


def forms(secret: str) -> list[str]:
    escaped = orjson.dumps(secret).decode()[1:-1]
    return [
        secret,
        escaped,
        escaped.replace("/", "\\/"),
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    ]


@pytest.mark.parametrize("form", forms(KEY))
def test_every_form_of_a_secret_is_replaced(form: str) -> None:
    redact = Redactor([KEY])
    data = f'{{"error":{{"message":"bad key {form}, again: {form}"}}}}'.encode()
    clean = redact.scrub(data)
    assert clean == f'{{"error":{{"message":"bad key {MARK}, again: {MARK}"}}}}'.encode()
    assert redact.scrub_text(data.decode()) == clean.decode()


def test_a_body_spelling_the_secret_in_unicode_escapes_is_cleaned_and_stays_json() -> None:
    redact = Redactor(["sk-ant-0123456789"])
    body = b'{"error":{"message":"key \\u0073k-ant-0123456789 refused","n":[1,{"k":"x"}]}}'
    clean = redact.scrub_body(body)
    assert orjson.loads(clean) == {
        "error": {"message": f"key {MARK} refused", "n": [1, {"k": "x"}]}
    }
    plain = b'{"message":"caf\\u00e9 and no secret"}'
    assert redact.scrub_body(plain) is plain  # decoded, found clean, left as it came


def test_nothing_to_replace_returns_the_same_bytes() -> None:
    redact = Redactor([KEY])
    data = b'data: {"choices":[{"delta":{"content":"sk-live/ but not the key"}}]}\n\n'
    assert redact.scrub(data) is data
    assert Redactor([]).scrub_body(data) is data
    assert not Redactor(["", "short"])  # too short to be a credential: nothing to scrub


def test_a_providers_secrets_are_its_key_and_credential_headers() -> None:
    config = ProviderConfig(
        name="p",
        type="openai",
        api_key="sk-provider-key-1",
        headers={
            "X-Org-Token": "Bearer tok-0123456789",
            "Anthropic-Version": "2023-06-01",
            "X-Title": "My Application",
            "X-Short": "abc",
        },
    )
    redact = Redactor.for_provider(config)
    said = (
        "sk-provider-key-1 / Bearer tok-0123456789 / tok-0123456789 / 2023-06-01 / My Application"
    )
    assert redact.scrub_text(said) == f"{MARK} / {MARK} / {MARK} / 2023-06-01 / My Application"


def test_credentials_in_the_base_url_are_secrets_too() -> None:
    config = ProviderConfig(
        name="p",
        type="openai",
        base_url="https://bot:pa%2Fss-0123456789@llm.example/v1?api-version=2024-10-21&api-key=k-0123456789",
    )
    redact = Redactor.for_provider(config)
    said = "pa/ss-0123456789 / Ym90OnBhL3NzLTAxMjM0NTY3ODk= / k-0123456789 / 2024-10-21"
    assert redact.scrub_text(said) == f"{MARK} / {MARK} / {MARK} / 2024-10-21"
