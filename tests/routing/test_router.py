"""The router's choices and a deployment's health, driven by a fake clock."""

from __future__ import annotations

import email.utils
import time
from collections import Counter
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.observability.metrics import Metrics
from gateway.routing import Deployment, Router
from gateway.routing.health import retry_after
from tests.observability.obs_support import value
from tests.test_config import HASH


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(routing: str = "weighted", weights: tuple[int, ...] = (3, 1), **health: Any) -> Any:
    providers = [
        {"name": n, "type": "openai", "base_url": "http://x/v1"}
        for n in ("a", "b", "c")[: len(weights)]
    ]
    deployments = [
        {"provider": p["name"], "upstream_model": "u", "weight": w}
        for p, w in zip(providers, weights, strict=True)
    ]
    config = parse_config(
        {
            "providers": providers,
            "models": [
                {"name": "m", "deployments": deployments, "routing": routing, "fallbacks": ["f"]},
                {"name": "f", "provider": "a"},
            ],
            "keys": [{"id": "k", "key_sha256": HASH}],
            "health": {"failures": 2, "window": 10, "cooldown": 5, **health},
        },
        "t.yaml",
        {},
    )
    clock = Clock()
    metrics = Metrics(["m", "f"], ["a", "b", "c"], ["k"])
    return Router(config, metrics, clock=clock), clock, metrics, config


def first(router: Router, config: Any) -> Deployment:
    return next(router.plan([config.model("m")]))


def names(plan: Any) -> list[str]:
    return [d.name for d in plan]


def fail(router: Router, d: Deployment, headers: dict[str, str] | None = None) -> None:
    router.failed(router.start(d), headers or {}, "failed")


def test_weighted_shares_are_exact_over_each_round_and_interleaved() -> None:
    router, _, _, config = build(weights=(3, 1))
    picks = [first(router, config).name for _ in range(400)]
    assert Counter(picks) == {"a/u": 300, "b/u": 100}
    # Smooth: b is not starved for three requests in a row and then hit once.
    assert picks[:4].count("b/u") == 1 and picks[4:8].count("b/u") == 1


def test_the_plan_is_the_pick_then_the_other_deployments_then_the_fallbacks() -> None:
    router, _, _, config = build(weights=(1, 1, 1))
    plan = names(router.plan([config.model("m"), config.model("f")]))
    assert sorted(plan[:3]) == ["a/u", "b/u", "c/u"] and plan[3:] == ["a/f"]


def test_after_the_pick_the_others_follow_by_weight_ties_in_their_order() -> None:
    # Two deployments have nothing to sort behind the pick; three are sorted, stably.
    router, _, _, config = build(weights=(1, 3, 1))
    plans = [names(router.plan([config.model("m")])) for _ in range(5)]
    assert plans == [
        ["b/u", "a/u", "c/u"],
        ["a/u", "b/u", "c/u"],
        ["b/u", "a/u", "c/u"],
        ["c/u", "b/u", "a/u"],
        ["b/u", "a/u", "c/u"],
    ]
    router, _, _, config = build(weights=(1, 2))
    plans = [names(router.plan([config.model("m")])) for _ in range(3)]
    assert plans == [["b/u", "a/u"], ["a/u", "b/u"], ["b/u", "a/u"]]


def test_a_cooled_deployment_gets_no_traffic_then_exactly_one_probe() -> None:
    router, clock, metrics, config = build(weights=(1, 1))
    a = router.deployments("m")[0]
    fail(router, a)
    assert a.health.healthy  # one failure of two: still routed to
    fail(router, a)
    assert not a.health.healthy
    body, _ = metrics.render()
    assert value(body, "gateway_deployment_healthy", deployment="a/u") == 0
    for _ in range(20):
        assert names(router.plan([config.model("m")])) == ["b/u"]
    clock.now += 5
    probe = names(router.plan([config.model("m")]))
    assert probe == ["a/u", "b/u"]  # the probe first, the healthy one behind it
    # While the probe is in flight, nobody else goes to a.
    for _ in range(10):
        assert "a/u" not in names(router.plan([config.model("m")]))
    lease = router.start(a)
    router.answered(lease, None)
    assert a.health.healthy
    assert Counter(first(router, config).name for _ in range(10)) == {"a/u": 5, "b/u": 5}
    body, _ = metrics.render()
    assert value(body, "gateway_deployment_healthy", deployment="a/u") == 1


def test_a_failed_probe_cools_the_deployment_again() -> None:
    router, clock, _, config = build(weights=(1, 1))
    a = router.deployments("m")[0]
    fail(router, a)
    fail(router, a)
    clock.now += 5
    assert names(router.plan([config.model("m")]))[0] == "a/u"
    fail(router, a)
    assert "a/u" not in names(router.plan([config.model("m")]))
    clock.now += 4.9
    assert "a/u" not in names(router.plan([config.model("m")]))
    clock.now += 0.2
    assert names(router.plan([config.model("m")]))[0] == "a/u"


def test_failures_outside_the_window_do_not_add_up() -> None:
    router, clock, _, _ = build(weights=(1, 1))
    a = router.deployments("m")[0]
    fail(router, a)
    clock.now += 10.5
    fail(router, a)
    assert a.health.healthy


def test_with_every_deployment_cooled_the_one_whose_cooldown_ends_first_is_tried() -> None:
    router, clock, _, config = build(weights=(1, 1))
    a, b = router.deployments("m")
    fail(router, b)
    fail(router, b)
    clock.now += 1
    fail(router, a)
    fail(router, a)
    assert names(router.plan([config.model("m"), config.model("f")])) == ["b/u", "a/f"]


def test_a_retry_after_cools_at_once_for_at_least_that_long() -> None:
    router, clock, _, config = build(weights=(1, 1), cooldown=1)
    a = router.deployments("m")[0]
    fail(router, a, {"retry-after": "7"})
    assert not a.health.healthy
    clock.now += 6.9
    assert "a/u" not in names(router.plan([config.model("m")]))
    clock.now += 0.2
    assert names(router.plan([config.model("m")]))[0] == "a/u"


def test_least_busy_picks_the_fewest_in_flight_whatever_the_weights() -> None:
    router, _, _, config = build("least_busy", weights=(5, 1))
    leases = [router.start(first(router, config)) for _ in range(6)]
    assert Counter(lease.deployment.name for lease in leases) == {"a/u": 3, "b/u": 3}
    for lease in leases:
        if lease.deployment.name == "a/u":
            router.finish(lease, 0)
    # a's three streams ended, b's run on: the next three go to a.
    assert [router.start(first(router, config)).deployment.name for _ in range(3)] == ["a/u"] * 3


def test_latency_tries_unmeasured_deployments_first_then_the_fastest() -> None:
    router, _, _, config = build("latency", weights=(1, 1))
    a, b = router.deployments("m")
    a.ewma_ttft = 0.5
    assert first(router, config) is b  # b was never measured
    b.ewma_ttft = 0.1
    assert {first(router, config).name for _ in range(5)} == {"b/u"}


def test_a_single_deployment_model_is_always_tried_as_before() -> None:
    router, _, _, config = build(weights=(1, 1))
    only = router.deployments("f")[0]
    for _ in range(5):
        fail(router, only)
    assert names(router.plan([config.model("f")])) == ["a/f"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_and_milliseconds(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after(headers) == expected


def test_retry_after_reads_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = retry_after({"retry-after": when})
    assert seconds is not None and 27 < seconds <= 30
