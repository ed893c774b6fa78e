"""What a new user meets first, through the real `gateway` command: the banner's SDK snippet
runs as pasted, a busy port is one line, a scheme-less `base_url` is a config error, every
answer carries `x-request-id`, an unknown model is named in its log line, and `make run`
installs what serving needs only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import hash_key
from tests.integration.test_stream_semantics import metric
from tests.support.gateway_proc import KEY_A, GatewayProcess

AUTH = {"authorization": f"Bearer {KEY_A}"}
ROOT = Path(__file__).resolve().parents[2]


def gateway_command(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    environ.pop("GATEWAY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
        check=False,
    )


def console_snippet(banner: str) -> str:
    """The lines after "Or with the OpenAI SDK:" up to the next blank line, as printed."""
    lines = banner.splitlines()
    start = lines.index("Or with the OpenAI SDK:") + 1
    while not lines[start].strip():
        start += 1
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return "\n".join(lines[start:end])


def run_snippet(snippet: str) -> str:
    code = compile(snippet, "<banner snippet>", "exec")  # IndentationError before the fix
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    return out.getvalue()


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_the_banners_sdk_snippet_runs_as_pasted(tmp_path: Path, log_format: str) -> None:
    env = {"GATEWAY_LOG_FORMAT": log_format}
    with GatewayProcess(None, tmp_path, env=env, split_stderr=True) as gw:  # embedded default
        banner = gw.errors()
        if log_format == "console":
            snippet = console_snippet(banner)
        else:
            first = json.loads(banner.splitlines()[0])
            assert first["event"] == "listening"
            snippet = first["try_openai_sdk"]
        assert snippet.startswith("from openai import OpenAI")
        reply = run_snippet(snippet)
    assert len(reply.split()) >= 3, reply


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_busy_port_is_one_clear_line_and_a_failed_exit(log_format: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gateway_command(
            "serve", "--port", str(port), env={"GATEWAY_LOG_FORMAT": log_format}
        )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    expected = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    if log_format == "console":
        assert lines[0] == f"gateway: {expected}"
    else:
        line = json.loads(lines[0])
        assert (line["event"], line["level"]) == (expected, "error")


def test_a_base_url_without_a_scheme_fails_check_config_with_the_fix(tmp_path: Path) -> None:
    config = {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": "api.openai.com/v1", "api_key": "k"}
        ],
        "models": [{"name": "gpt", "provider": "openai"}],
        "keys": [{"id": "team", "key_sha256": hash_key("sk-team")}],
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    result = gateway_command("check-config", "--config", str(path))
    assert result.returncode == 2, result.stdout
    assert result.stderr == (
        f"gateway: config error: {path}: providers[0].base_url: 'api.openai.com/v1' is not an "
        "http(s) URL: write https://api.openai.com/v1\n"
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/models", 200),
        ("GET", "/v1/models/gpt-test", 200),
        ("GET", "/v1/models/no-such-model", 404),
        ("GET", "/no/such/route", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/models", 405),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/", 200),
    ],
)
def test_every_answer_carries_the_request_id(
    gateway: GatewayProcess, method: str, path: str, status: int
) -> None:
    given = httpx.request(
        method, gateway.url + path, headers={**AUTH, "x-request-id": "trace-42"}, timeout=10
    )
    assert given.status_code == status
    assert given.headers.get_list("x-request-id") == ["trace-42"]
    minted = httpx.request(
        method,
        gateway.url + path,
        headers={**AUTH, "x-request-id": "bad id;" + "x" * 300},
        timeout=10,
    )
    (rid,) = minted.headers.get_list("x-request-id")
    # Minted: 32 hex digits ("bad" alone would be no proof: it is hex, and turned up by chance).
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid


def logged(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gateway.output().splitlines():
            if line.startswith("{") and request_id in line:
                record = json.loads(line)
                if record.get("request_id") == request_id:
                    return dict(record)
        time.sleep(0.05)
    raise AssertionError(f"no request log line for {request_id}")


def test_an_unknown_models_log_line_names_it_within_bounds(gateway: GatewayProcess) -> None:
    before = metric(gateway, "gateway_requests_total", model="other", status="404")
    for rid, model in (("unknown-short", "gpt-nope"), ("unknown-long", "m" * 5000)):
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            headers={**AUTH, "x-request-id": rid},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert answer.status_code == 404
    assert logged(gateway, "unknown-short")["model"] == "gpt-nope"
    assert logged(gateway, "unknown-long")["model"] == "m" * 200
    assert metric(gateway, "gateway_requests_total", model="other", status="404") == before + 2
    assert "gpt-nope" not in httpx.get(gateway.url + "/metrics").text


PARENT_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV", "CONSTRAINTS")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "-n", "run", f"VENV={venv}"],
        cwd=ROOT,
        # As from a shell, also when the suite itself runs under make (CI, `make test-min`):
        # a parent make's variables (exported to its commands) and its "Entering directory"
        # lines stay out of the plan.
        env={k: v for k, v in os.environ.items() if k not in PARENT_MAKE},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    # The project without its dev extra, at the versions CI tested.
    assert installs == [f"{venv}/bin/python -m pip install -q -e . -c .ci/constraints-new.txt"], (
        plan
    )
    assert plan.splitlines()[-1] == f"{venv}/bin/gateway serve"
