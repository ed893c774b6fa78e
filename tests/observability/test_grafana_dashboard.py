"""The Grafana dashboard only queries metrics and labels the gateway actually exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.observability.metrics import Metrics
from tests.observability.obs_support import exercise_every_metric, families, samples

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gateway.json"

METRIC = re.compile(r"\bgateway_[a-z0-9_]+")
# `by (a, b) (` or `by (a, b) (rate(` directly before a metric name.
GROUPED = re.compile(r"\bby \(([^)]*)\)\s*\((?:rate\()?(gateway_[a-z0-9_]+)")
MATCHERS = re.compile(r"(gateway_[a-z0-9_]+)\{([^}]*)\}")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


def promql(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    exprs = [str(n["expr"]) for n in walk(dashboard) if "expr" in n]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(str(variable["definition"]))
    return exprs


@pytest.fixture
def exposition(metrics: Metrics) -> bytes:
    exercise_every_metric(metrics)
    body, _ = metrics.render()
    return body


def test_every_metric_the_dashboard_queries_is_exposed(exposition: bytes) -> None:
    sample_names = {s.name for s in samples(exposition)}
    kinds = families(exposition)
    queried: set[str] = set()
    for expr in promql(load_dashboard()):
        for name in METRIC.findall(expr):
            assert name in sample_names, f"{name} (in {expr!r}) is not exposed"
            base = name
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and kinds.get(name.removesuffix(suffix)) == "histogram":
                    base = name.removesuffix(suffix)
            queried.add(base)
    # Every metric of SPEC section 7 has a panel.
    exposed = {name for name, kind in kinds.items() if not name.endswith("_created")}
    counters = {f"{name}_total" for name in exposed if kinds[name] == "counter"}
    others = {name for name in exposed if kinds[name] != "counter"}
    assert queried == counters | others


def test_every_label_the_dashboard_groups_or_filters_by_exists(exposition: bytes) -> None:
    labels_of: dict[str, set[str]] = {}
    for sample in samples(exposition):
        labels_of.setdefault(sample.name, set()).update(sample.labels)
    checked = 0
    for expr in promql(load_dashboard()):
        for grouping, name in GROUPED.findall(expr):
            wanted = {label.strip() for label in grouping.split(",") if label.strip()}
            assert wanted <= labels_of[name], f"{expr!r} groups by a label {name} lacks"
            checked += 1
        for name, matchers in MATCHERS.findall(expr):
            wanted = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",")}
            assert wanted <= labels_of[name], f"{expr!r} filters on a label {name} lacks"
            checked += 1
    assert checked > 10


def test_latency_panels_take_quantiles_of_bucket_rates_by_le() -> None:
    quantile_exprs = [e for e in promql(load_dashboard()) if "histogram_quantile" in e]
    assert len(quantile_exprs) >= 3 * 3 + 2
    for expr in quantile_exprs:
        assert re.search(r"sum by \(le\) \(rate\(gateway_\w+_bucket(\{[^}]*\})?\[5m\]\)\)", expr)


def test_every_panel_uses_the_provisioned_prometheus_datasource() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (provisioned,) = datasource["datasources"]
    assert provisioned["url"] == "http://prometheus:9090"
    assert variables["DS_PROMETHEUS"]["current"]["value"] == provisioned["uid"] == "prometheus"
    for node in walk(dashboard["panels"]):
        if "datasource" in node:
            assert node["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))

    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/gateway.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
