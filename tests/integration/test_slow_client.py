"""A client that reads a few hundred bytes a second must not make the gateway buffer.

The gateway stops reading the upstream while a send is blocked (backpressure down to the
provider's socket), holds at most `stream_buffer_bytes` per connection, and ends a stream
whose client read nothing for `timeouts.idle` seconds with the outcome `slow_client`.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import psutil

from tests.integration.test_stream_semantics import metric
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

TOKENS = 200_000  # ~30 MB of events if nothing held the upstream back


def test_slow_reader_gets_backpressure_flat_memory_and_a_slow_client_outcome(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = test_config(
        upstream.url,
        stream_buffer_bytes=16384,
        timeouts={"connect": 2, "first_token": 10, "idle": 3, "keepalive": 1, "total": 120},
    )
    config["models"].append(
        {"name": "gpt-firehose", "provider": "fake", "upstream_model": f"text?n={TOKENS}"}
    )
    with GatewayProcess(config, tmp_path) as gw:
        assert gw.proc is not None
        proc = psutil.Process(gw.proc.pid)
        rss_before = proc.memory_info().rss
        body = json.dumps(
            {
                "model": "gpt-firehose",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
        ).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {KEY_A}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        curve: list[tuple[float, float, int]] = []
        started = time.monotonic()
        received = 0
        seen = None
        # Read 256 bytes every 0.2 s (~1.3 KB/s) for 2.5 s, then not at all.
        while time.monotonic() - started < 2.5:
            received += len(sock.recv(256))
            time.sleep(0.2)
            seen = seen or next(
                (s for s in reversed(upstream.seen) if "n=200000" in str(s.body.get("model"))), None
            )
            curve.append(
                (
                    time.monotonic() - started,
                    proc.memory_info().rss / 2**20,
                    seen.chunks_sent if seen else 0,
                )
            )
        assert seen is not None
        stalled_at = seen.chunks_sent
        while time.monotonic() - started < 5.5:
            time.sleep(0.5)
            curve.append(
                (time.monotonic() - started, proc.memory_info().rss / 2**20, seen.chunks_sent)
            )
        print("\nslow client: t (s), gateway RSS (MB), upstream events written")
        for t, rss, sent in curve:
            print(f"  {t:5.1f}  {rss:6.1f}  {sent}")
        # Backpressure: once the socket buffers between them were full (the kernel's, not
        # the gateway's), the upstream could write nothing more.
        assert seen.chunks_sent < TOKENS
        assert seen.chunks_sent == stalled_at
        # Flat memory: the gateway did not buffer what the client did not read.
        assert proc.memory_info().rss - rss_before < 20 * 2**20
        # Ended on its own: counted, the upstream released.
        assert upstream.wait_for(lambda: seen.ended is not None, timeout=10)
        assert upstream.wait_for(
            lambda: metric(gw, "gateway_requests_total", outcome="slow_client") == 1, timeout=5
        )
        assert metric(gw, "gateway_active_streams") == 0
        sock.close()
