"""Every YAML block in README.md that shows gateway config loads.

Most blocks are partial (a `models:` entry, a `pricing:` table): each is completed with
the least it needs to stand alone (a stub provider for each provider it names, a stub
model for each fallback, a key) and read by the same parser `gateway serve` and
`gateway check-config` use, so a renamed key, a wrong type or a value out of range in an
example fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import GatewayConfig, HealthConfig, UpstreamPoolConfig, parse_config
from tests.test_config import HASH

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)
_CONFIG_KEYS = frozenset(
    {
        "providers",
        "models",
        "keys",
        "pricing",
        "tracing",
        "health",
        "limits",
        "logging",
        "upstream_pool",
    }
)


def config_blocks() -> list[tuple[int, str]]:
    """(line, text) of each YAML block whose top level is gateway config."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        data = yaml.safe_load(match[1])
        if isinstance(data, dict) and set(data) & _CONFIG_KEYS:
            blocks.append((text.count("\n", 0, match.start()) + 1, match[1]))
    return blocks


def completed(data: dict[str, Any]) -> dict[str, Any]:
    """A partial config made loadable without changing what it says."""
    providers = data.setdefault("providers", [])
    known = {p["name"] for p in providers}
    models = data.setdefault("models", [])
    if not models:
        models.append({"name": "stub-model", "provider": "stub"})
    named = [m.get("provider") for m in models]
    named += [d.get("provider") for m in models for d in m.get("deployments", [])]
    for name in dict.fromkeys(n for n in named if n and n not in known):
        providers.append({"name": name, "type": "openai", "base_url": "http://127.0.0.1:9/v1"})
    model_names = {m["name"] for m in models}
    for fallback in {f for m in models for f in m.get("fallbacks", [])} - model_names:
        models.append({"name": fallback, "provider": providers[0]["name"]})
    keys = data.setdefault("keys", [{"id": "stub-key", "key_sha256": HASH}])
    for key in keys:
        if key.get("key_sha256") == "...":  # README's placeholder for a real hash
            key["key_sha256"] = HASH
    return data


def env_for(block: str) -> dict[str, str]:
    return {name: "x" for name in re.findall(r"\$\{(\w+)", block)}


def test_readme_shows_config_blocks() -> None:
    # The sections with config examples: clouds, deployments, spend, traces.
    assert len(config_blocks()) >= 4


@pytest.mark.parametrize(("line", "block"), config_blocks(), ids=lambda v: str(v)[:12])
def test_each_readme_config_block_loads(line: int, block: str) -> None:
    data = yaml.safe_load(block)
    config = parse_config(completed(data), f"README.md:{line}", env_for(block))
    assert isinstance(config, GatewayConfig)
    written = yaml.safe_load(block)
    if "health" in written:  # what the block sets is what was read
        assert config.health == HealthConfig(**written["health"])
    if "upstream_pool" in written:
        assert config.upstream_pool == UpstreamPoolConfig(**written["upstream_pool"])
    if "tracing" in written:
        assert config.tracing.otlp_endpoint == written["tracing"]["otlp_endpoint"]
