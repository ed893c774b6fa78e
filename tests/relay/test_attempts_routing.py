"""Walking a request's plan (`relay/attempts.py`): failover, the client's 4xx, the upstream
account limiter's refusals and the headers it is shown, a cancelled attempt."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast

import pytest
from starlette.types import Message

from gateway.config import Limits, ModelConfig, ProviderConfig, Timeouts, parse_config
from gateway.errors import RateLimited, UpstreamError, UpstreamRejected
from gateway.limits.upstream import UpstreamTicket
from gateway.observability.metrics import Metrics
from gateway.observability.records import RequestRecord
from gateway.providers.base import Provider, UpstreamCall
from gateway.relay.attempts import Attempts
from gateway.relay.watch import StreamWatch
from gateway.routing import QUEUE_WAIT, Router
from tests.observability.obs_support import value
from tests.test_config import HASH


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """The test, run in an event loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Limiter:
    """The upstream limiter's interface, refusing the deployments in `full`."""

    def __init__(self, full: set[str]) -> None:
        self.full = full
        self.waits: list[tuple[str, float]] = []
        self.observed: list[tuple[str, dict[str, str]]] = []
        self.settled: list[int] = []

    async def acquire(
        self, deployment_key: str, limits: Limits, tokens: int, wait: float
    ) -> UpstreamTicket | None:
        self.waits.append((deployment_key, wait))
        return None if deployment_key in self.full else UpstreamTicket(deployment_key, tokens, None)

    def observe(self, deployment_key: str, headers: Mapping[str, str]) -> None:
        self.observed.append((deployment_key, dict(headers)))

    def remaining(self, deployment_key: str) -> float | None:
        return None

    def settle_soon(self, ticket: UpstreamTicket, tokens_used: int) -> None:
        self.settled.append(tokens_used)


def setup(
    limiter: Limiter | None = None, single: dict[str, Any] | None = None
) -> tuple[Router, Metrics, ModelConfig]:
    """The model `m` (deployments on a and b, both with limits); with `single`, the model
    `s` instead: one deployment on a, with the limits `single` gives (maybe none)."""
    limits = {"rpm": 10}
    deployments: list[dict[str, Any]] = [
        {"provider": "a", "upstream_model": "u", "weight": 9, "limits": limits},
        {"provider": "b", "upstream_model": "u", "limits": limits},
    ]
    if single is not None:
        deployments = [{"provider": "a", "upstream_model": "u", "limits": single}]
    name = "m" if single is None else "s"
    config = parse_config(
        {
            "providers": [
                {"name": n, "type": "openai", "base_url": "http://x/v1", "max_retries": 2}
                for n in ("a", "b")
            ],
            "models": [{"name": name, "deployments": deployments}],
            "keys": [{"id": "k", "key_sha256": HASH}],
        },
        "t.yaml",
        {},
    )
    metrics = Metrics([name], ["a", "b"], ["k"])
    model = config.model(name)
    assert model is not None
    return Router(config, metrics, limiter), metrics, model


def attempts(router: Router, metrics: Metrics, behave: dict[str, Any]) -> Attempts[str]:
    providers = {
        n: cast(Provider, type("P", (), {"config": ProviderConfig(name=n, type="openai")})())
        for n in ("a", "b")
    }

    async def attempt(provider: Provider, call: UpstreamCall, _watch: StreamWatch) -> str:
        outcome = behave[provider.config.name]
        if isinstance(outcome, list):  # one outcome per attempt
            outcome = outcome.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            await asyncio.sleep(60)
        return f"{provider.config.name}:{call.model.upstream_model}"

    def make_call(model: ModelConfig) -> UpstreamCall:
        return UpstreamCall(
            route="chat.completions",
            body={},
            model=model,
            stream=True,
            include_usage=False,
            request_id="r",
        )

    return Attempts(
        router,
        providers,
        make_call,
        attempt,
        RequestRecord("r", "chat.completions"),
        metrics,
        100,
        StreamWatch(_send, Timeouts()),
        lambda answer: {"x-ratelimit-remaining-requests": "7", "answer": answer},
    )


async def _send(_message: Message) -> None:
    pass


@in_loop
async def test_a_failed_deployment_fails_over_once_without_retrying_it() -> None:
    limiter = Limiter(set())
    router, metrics, model = setup(limiter)
    run = attempts(router, metrics, {"a": UpstreamError("down", retryable=True), "b": "ok"})
    answer, lease = await run.first_answer([model])
    assert answer == "b:u" and lease.deployment.name == "b/u"
    assert run.record.attempts == 2 and run.record.deployment == "b/u"
    body, _ = metrics.render()
    assert value(body, "gateway_deployment_requests_total", deployment="a/u") == 1
    assert limiter.observed == [("m/b/u", {"x-ratelimit-remaining-requests": "7", "answer": "b:u"})]
    router.finish(lease, 42)
    assert limiter.settled == [0, 42]  # a's failed attempt settled at 0, b's answer at 42


@in_loop
async def test_a_429s_headers_reach_the_limiter_and_its_retry_after_cools_it() -> None:
    limiter = Limiter(set())
    router, metrics, model = setup(limiter)
    limited = UpstreamRejected("slow down", status=429)
    limited.upstream_headers = {"retry-after": "20", "x-ratelimit-remaining-tokens": "0"}
    run = attempts(router, metrics, {"a": limited, "b": "ok"})
    await run.first_answer([model])
    assert limiter.observed[0] == ("m/a/u", limited.upstream_headers)
    assert not router.deployments("m")[0].health.healthy


@in_loop
async def test_a_client_caused_4xx_is_the_answer_at_once() -> None:
    router, metrics, model = setup()
    run = attempts(router, metrics, {"a": UpstreamRejected("bad param", status=400), "b": "ok"})
    with pytest.raises(UpstreamRejected):
        await run.first_answer([model])
    assert run.record.attempts == 1
    assert all(d.health.healthy and d.in_flight == 0 for d in router.deployments("m"))


@in_loop
async def test_a_deployment_over_its_account_limit_is_skipped() -> None:
    limiter = Limiter({"m/a/u"})
    router, metrics, model = setup(limiter)
    answer, _ = await attempts(router, metrics, {"a": "ok", "b": "ok"}).first_answer([model])
    assert answer == "b:u"
    assert limiter.waits == [("m/a/u", 0.0), ("m/b/u", 0.0)]
    body, _ = metrics.render()
    assert value(body, "gateway_deployment_requests_total", outcome="over_limit") == 1


@in_loop
async def test_with_no_room_anywhere_it_waits_briefly_then_answers_429() -> None:
    limiter = Limiter({"m/a/u", "m/b/u"})
    router, metrics, model = setup(limiter)
    with pytest.raises(RateLimited):
        await attempts(router, metrics, {"a": "ok", "b": "ok"}).first_answer([model])
    assert limiter.waits[-1] == ("m/a/u", QUEUE_WAIT)


@in_loop
async def test_a_cancelled_attempt_leaves_nothing_in_flight_and_frees_its_probe() -> None:
    router, metrics, model = setup()
    a = router.deployments("m")[0]
    a.health.needs_probe = True  # cooled, its cooldown over: the next request probes it
    task = asyncio.ensure_future(
        attempts(router, metrics, {"a": "hang", "b": "ok"}).first_answer([model])
    )
    await asyncio.sleep(0.01)
    assert a.health.probing and a.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not a.health.probing and a.in_flight == 0
    assert next(router.plan([model])) is a  # probe-able again


@in_loop
async def test_a_single_unlimited_deployment_takes_the_fast_path_with_every_semantic() -> None:
    """One deployment, no limits, no fallbacks (`Router.single`): no limiter call and its
    headers unread, yet retried on `max_retries`, cooled by failures, healed by an answer,
    counted, timed, and out of flight when its answer ends."""
    limiter = Limiter(set())
    router, metrics, model = setup(limiter, single={})
    (d,) = router.deployments("s")
    assert router.single == {"s": d}
    down = UpstreamError("down", retryable=True)
    with pytest.raises(UpstreamError):  # three attempts (max_retries 2), each failed
        await attempts(router, metrics, {"a": [down, down, down]}).first_answer([model])
    assert not d.health.healthy and d.in_flight == 0
    body, _ = metrics.render()
    assert value(body, "gateway_deployment_healthy", model="s") == 0
    run = attempts(router, metrics, {"a": [down, "ok"]})
    answer, lease = await run.first_answer([model])  # cooled, but the only one: tried
    assert answer == "a:u" and run.record.attempts == 2 and run.record.deployment == "a/u"
    assert d.health.healthy and d.in_flight == 1 and d.ewma_ttft is not None
    router.finish(lease, 42)
    assert d.in_flight == 0
    body, _ = metrics.render()
    assert value(body, "gateway_deployment_healthy", model="s") == 1
    assert value(body, "gateway_deployment_requests_total", outcome="failed") == 4
    assert value(body, "gateway_deployment_requests_total", outcome="ok") == 1
    assert limiter.waits == [] and limiter.observed == [] and limiter.settled == []


@in_loop
async def test_a_single_deployment_with_limits_still_takes_a_ticket_and_reads_headers() -> None:
    limiter = Limiter(set())
    router, metrics, model = setup(limiter, single={"rpm": 10})
    assert router.single == {}
    answer, lease = await attempts(router, metrics, {"a": "ok"}).first_answer([model])
    router.finish(lease, 42)
    assert answer == "a:u" and limiter.waits == [("s/a/u", 0.0)] and limiter.settled == [42]
    assert limiter.observed == [("s/a/u", {"x-ratelimit-remaining-requests": "7", "answer": "a:u"})]
