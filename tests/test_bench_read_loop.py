"""`bench.read_loop` still drives the real read path (it reaches into the objects' set-up,
which changes with them): every read relayed, as many bytes out as in."""

from __future__ import annotations

from bench.read_loop import measure


def test_the_read_loop_relays_every_read_over_one_stream_and_several() -> None:
    for streams in (1, 3):
        runs = measure(60, streams, 2)  # asserts inside: all relayed, every token counted
        assert len(runs) == 2
        assert all(run > 0 for run in runs)
