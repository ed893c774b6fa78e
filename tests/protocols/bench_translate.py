"""Micro benchmark: microseconds per upstream event for each decoder -> encoder pair.

`python -m tests.protocols.bench_translate [--rounds N]` (not collected by pytest). The
stream is what a model sends most: 600 text deltas of a few characters, then one tool call
with 100 argument deltas, usage and the end, in the upstream API's own bytes, already cut
into SSE events (framing is the relay's cost either way). Reported beside two floors
measured in the same run: `orjson.loads` of every event (what any translation must at
least do) and `loads` + `dumps` (a translation that writes one event per event), and, for
messages -> chat, the translator the gateway runs today (`gateway.providers.anthropic`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import httpx
import orjson

from gateway.protocols import APIS, Api, stream_translator
from gateway.protocols.events import (
    DONE,
    BlockEnd,
    Event,
    Finish,
    Start,
    TextDelta,
    TextStart,
    TokenUsage,
    ToolArgsDelta,
    ToolCallStart,
    Usage,
)
from gateway.providers.anthropic import AnthropicStream
from gateway.sse import SSEDecoder, SSEEvent
from tests.protocols.streams import encode


def stream() -> list[Event]:
    events: list[Event] = [Start("msg_bench", "model-x"), TextStart(0)]
    events += [TextDelta(0, f" tok{n % 10}") for n in range(600)]
    events += [BlockEnd(0), ToolCallStart(1, "call_1", "lookup")]
    events += [ToolArgsDelta(1, '"ab", ') for _ in range(100)]
    events += [BlockEnd(1), Finish("tool_calls"), Usage(TokenUsage(1000, 700, 200)), DONE]
    return events


def upstream_events(api: Api) -> list[bytes]:
    events = SSEDecoder().feed(encode(api, stream()))
    return [event.data for event in events if event.data and event.data != b"[DONE]"]


def best_of(rounds: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    print(f"{'pair':<22}{'events':>7}{'us/event':>10}{'x loads':>9}{'x loads+dumps':>15}")
    for source in APIS:
        data = upstream_events(source)
        loads = best_of(rounds, lambda data=data: [orjson.loads(d) for d in data])
        both = best_of(rounds, lambda data=data: [orjson.dumps(orjson.loads(d)) for d in data])
        per = 1e6 / len(data)
        print(f"{source + ' loads (floor)':<22}{len(data):>7}{loads * per:>10.2f}")
        for target in APIS:
            if target == source:
                continue

            def run(data: list[bytes] = data, source: Api = source, target: Api = target) -> None:
                translator = stream_translator(source, target, include_usage=True)
                for item in data:
                    translator.feed(item)

            took = best_of(rounds, run)
            print(
                f"{source + ' -> ' + target:<22}{len(data):>7}{took * per:>10.2f}"
                f"{took / loads:>9.2f}{took / both:>15.2f}"
            )
        if source == "messages":
            events = [SSEEvent(item, None, b"") for item in data]

            def today(events: list[SSEEvent] = events) -> None:
                stream = AnthropicStream(
                    httpx.Response(200, stream=httpx.ByteStream(b"")), "bench", include_usage=True
                )
                out: list[bytes] = []
                for event in events:
                    stream.translate([event], out)

            took = best_of(rounds, today)
            print(
                f"{'  (providers today)':<22}{len(data):>7}{took * per:>10.2f}"
                f"{took / loads:>9.2f}{took / both:>15.2f}"
            )


if __name__ == "__main__":
    main()
