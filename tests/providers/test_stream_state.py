"""`StreamState`: made per stream with only its text list and scrub set; every other field
reads as its default until the stream sets it, and no stream's state is shared."""

from __future__ import annotations

import dataclasses

from gateway.providers.base import StreamState, Usage


def test_a_new_state_reads_as_the_defaults_and_shares_nothing() -> None:
    first, second = StreamState(), StreamState(str.upper)
    for field in dataclasses.fields(StreamState):
        if field.name not in ("text", "scrub"):
            assert getattr(first, field.name) == field.default, field.name
    assert first.text == [] and first.scrub is None
    assert second.scrub is str.upper
    first.text.append("secret")
    first.usage = Usage(prompt_tokens=1)
    first.finished = True
    assert second.text == [] and first.text is not second.text
    assert second.usage is None and second.finished is False
    assert StreamState.usage is None and StreamState.finished is False
    assert StreamState(scrub=str.upper).kept_text() == ""
    second.text.append("a secret")
    assert second.kept_text() == "A SECRET"
    assert StreamState() == StreamState()
    assert first != StreamState()
