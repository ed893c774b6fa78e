"""Upstream account limits (`gateway.limits.upstream`) over the memory backend, a real
redis-server and a real Redis Cluster: rpm exact across two "replicas" (two
`UpstreamLimits`, each with its own limiter, sharing one Redis), tpm counted as the estimate
fits and corrected at settle, waiting bounded and cancellable, the upstream's own headers
(OpenAI's and Anthropic's) obeyed, a burst spread by the leaky bucket, and a Redis outage
following `limits_backend_failure`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.crc import key_slot

from gateway.config import KeyConfig, Limits
from gateway.limits import upstream
from gateway.limits.base import Limiter, LimiterUnavailable
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis_store import RedisLimiter, key_names
from gateway.limits.upstream import UpstreamLimits, UpstreamTicket, account_id, parse_reset
from gateway.transports.native import FieldHeaders
from tests.limits.limits_support import run_with, running
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

Replicas = Callable[..., list[Limiter]]
"""`replicas(n, clock=None)`: n limiters sharing one account store, as n gateway replicas
have (memory: one limiter shared; Redis: one `RedisLimiter` each on the same server)."""

DEP = "openai-a/gpt-4o"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def replicas(request: pytest.FixtureRequest) -> Replicas:
    if request.param == "memory":

        def memory(n: int, clock: Callable[[], float] | None = None) -> list[Limiter]:
            shared = MemoryLimiter() if clock is None else MemoryLimiter(clock=clock)
            return [shared] * n

        return memory
    url: str = request.getfixturevalue("redis_url")

    def shared(n: int, clock: Callable[[], float] | None = None) -> list[Limiter]:
        return [RedisLimiter(url, on_backend_error=lambda: None, clock=clock) for _ in range(n)]

    return shared


def _account(limits: Limits) -> KeyConfig:
    return KeyConfig(id=account_id(DEP), key_sha256="", limits=limits)


async def _minute(store: Limiter, limits: Limits) -> tuple[int, int, int]:
    """The account's requests and tokens this minute, and its open tickets."""
    (usage,) = await store.usage((_account(limits),))
    return usage.requests_minute, usage.tokens_minute, usage.concurrent


def _granted(results: list[UpstreamTicket | None]) -> list[UpstreamTicket]:
    return [t for t in results if t is not None]


def test_rpm_is_exact_across_two_replicas_under_concurrent_acquires(replicas: Replicas) -> None:
    async def scenario() -> None:
        stores = replicas(2)
        async with running(*stores):
            # burst_seconds=60: the bucket holds a whole minute, so the shared count decides
            a, b = (UpstreamLimits(s, burst_seconds=60) for s in stores)
            limits = Limits(rpm=25)
            # each replica is admitted on its own first (a concurrent burst alone may reach
            # Redis from one replica first, which then takes the whole minute)
            results = [await up.acquire(DEP, limits, 10, wait=0) for up in (a, b)]
            assert None not in results
            results += await asyncio.gather(
                *(up.acquire(DEP, limits, 10, wait=0) for _ in range(29) for up in (a, b))
            )
            granted = _granted(results)
            # 25 in all, not 25 each: the count is shared, not per replica
            assert len(granted) == 25
            assert {t.reservation is not None and not t.degraded for t in granted} == {True}
            assert await _minute(stores[0], limits) == (25, 250, 25)
            for i, ticket in enumerate(results):
                if ticket is not None:  # each replica settles its own tickets
                    await (a, b)[i % 2].settle(ticket, 10)
            assert await a.acquire(DEP, limits, 10, wait=0) is None  # still 25 this minute
            await asyncio.sleep(0.05)  # the settles leave within 5 ms
            assert await _minute(stores[1], limits) == (25, 250, 0)

    run_with(scenario())


def test_tpm_admits_what_fits_and_settle_corrects_the_estimate(replicas: Replicas) -> None:
    async def scenario() -> None:
        stores = replicas(2)
        async with running(*stores):
            a, b = (UpstreamLimits(s) for s in stores)
            limits = Limits(tpm=1000)
            first = await a.acquire(DEP, limits, 600, wait=0)
            assert first is not None
            # 600 + 600 would exceed the account's 1000: not sent (a client key would be)
            assert await b.acquire(DEP, limits, 600, wait=0) is None
            await a.settle(first, 100)  # the answer was short: 100 tokens really used
            await asyncio.sleep(0.05)
            second = await b.acquire(DEP, limits, 600, wait=0)  # 100 + 600 fits
            assert second is not None
            assert b.remaining(DEP) == pytest.approx(0.3)  # as the account's count said
            assert await a.acquire(DEP, limits, 400, wait=0) is None  # 1100 would not
            third = await a.acquire(DEP, limits, 300, wait=0)  # 1000 exactly fits
            assert third is not None
            assert await _minute(stores[0], limits) == (3, 1000, 2)
            # an estimate above the whole tpm waits for an empty window, never goes beside
            assert await b.acquire(DEP, limits, 5000, wait=0) is None
            await b.settle(second, 600)
            await a.settle(third, 250)
            await asyncio.sleep(0.05)
            assert await _minute(stores[1], limits) == (3, 950, 0)
            # each replica's last admission found the account's 1000 tokens used
            assert a.remaining(DEP) == 0.0 and b.remaining(DEP) == 0.0

    run_with(scenario())


def test_a_full_window_answers_none_at_once_when_it_cannot_clear_within_wait(
    replicas: Replicas,
) -> None:
    async def scenario() -> None:
        (store,) = replicas(1)
        async with running(store):
            up = UpstreamLimits(store, burst_seconds=None)  # the count decides, alone
            limits = Limits(rpm=2)
            assert _granted([await up.acquire(DEP, limits, 1, wait=0) for _ in range(2)])
            start = time.monotonic()
            # room comes back in ~60 s: waiting 2 s cannot help, so the answer is immediate
            assert await up.acquire(DEP, limits, 1, wait=2.0) is None
            assert time.monotonic() - start < 1.5  # not the 2 s wait

    run_with(scenario())


def test_a_full_window_is_waited_for_when_room_comes_back_within_wait(
    replicas: Replicas,
) -> None:
    """The window's requests were counted 58.5 s ago (the limiter's clock is moved back
    for them): they leave it 0.5-1.5 s later, and a waiting acquire gets in then."""

    async def scenario() -> None:
        offset = [-58.5]
        (store,) = replicas(1, clock=lambda: time.time() + offset[0])
        async with running(store):
            up = UpstreamLimits(store, burst_seconds=None)  # the count decides, alone
            limits = Limits(rpm=3)
            assert len(_granted([await up.acquire(DEP, limits, 1, wait=0) for _ in range(3)])) == 3
            assert up.remaining(DEP) == 0.0
            offset[0] = 0.0
            assert await up.acquire(DEP, limits, 1, wait=0) is None
            start = time.monotonic()
            ticket = await up.acquire(DEP, limits, 1, wait=3.0)
            waited = time.monotonic() - start
            assert ticket is not None
            assert 0 < waited < 2.5
            assert up.remaining(DEP) == pytest.approx(2 / 3)  # the old three left the window

    run_with(scenario())


def test_the_bucket_spreads_a_burst_over_time() -> None:
    """rpm 3000 is 50 a second: a burst of 100 gets 50 at once (a second's worth) and the
    rest at 50 a second, not 100 in the same millisecond."""

    async def scenario() -> None:
        up = UpstreamLimits(None)
        limits = Limits(rpm=3000)
        start = time.monotonic()
        done: list[float] = []

        async def one() -> None:
            assert await up.acquire(DEP, limits, 1, wait=5.0) is not None
            done.append(time.monotonic() - start)

        await asyncio.gather(*(one() for _ in range(100)))
        done.sort()
        assert done[49] < 0.2  # the bucket's capacity went at once
        assert sum(t < 0.5 for t in done) <= 50 + 25 + 5  # then about 50 a second
        assert 0.8 < done[-1] < 3.0  # the 100th after about a second

    run_with(scenario())


def test_waiting_in_the_bucket_is_bounded_by_wait() -> None:
    async def scenario() -> None:
        up = UpstreamLimits(None)
        limits = Limits(rpm=60)  # one a second, a bucket of one
        assert await up.acquire(DEP, limits, 1, wait=0) is not None
        assert await up.acquire(DEP, limits, 1, wait=0) is None
        start = time.monotonic()
        assert await up.acquire(DEP, limits, 1, wait=0.2) is None
        assert 0.15 < time.monotonic() - start < 0.9  # before the next slot (1 s)
        ticket = await up.acquire(DEP, limits, 1, wait=2.0)
        assert ticket is not None
        assert 0.6 < time.monotonic() - start < 1.9  # the slot at 1 s, not the 2 s wait

    run_with(scenario())


def test_a_cancelled_waiter_frees_its_place_in_the_bucket() -> None:
    """A and then B wait for the next of one-a-second slots; A's client leaves: B gets the
    slot A would have had (about 1 s), not the one after it (2 s)."""

    async def scenario() -> None:
        up = UpstreamLimits(None)
        limits = Limits(rpm=60)
        assert await up.acquire(DEP, limits, 1, wait=0) is not None
        start = time.monotonic()
        first = asyncio.create_task(up.acquire(DEP, limits, 1, wait=5.0))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(up.acquire(DEP, limits, 1, wait=5.0))
        await asyncio.sleep(0.05)
        first.cancel()
        assert await second is not None
        assert 0.7 < time.monotonic() - start < 1.9  # the 1 s slot, not the 2 s one
        with pytest.raises(asyncio.CancelledError):
            await first

    run_with(scenario())


@pytest.mark.redis
def test_an_admission_cancelled_on_its_way_to_redis_is_given_back(redis_url: str) -> None:
    """The caller leaves while the script runs: its tokens are refunded and its lease freed
    when the answer arrives; the request stays counted (it cannot be told apart from one
    that was sent), so the count errs on the side of the account's limit."""

    async def scenario() -> None:
        store = RedisLimiter(redis_url, on_backend_error=lambda: None)
        async with running(store):
            up = UpstreamLimits(store)
            limits = Limits(tpm=1000)
            task = asyncio.create_task(up.acquire(DEP, limits, 600, wait=0))
            await asyncio.sleep(0)  # the admission is on its way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await up.aclose()  # waits for the answer, and gives it back
            await asyncio.sleep(0.05)
            assert await _minute(store, limits) == (1, 0, 0)
            assert store._leases == {}  # nothing left for the renewal task
            assert await up.acquire(DEP, limits, 600, wait=0) is not None

    run_with(scenario())


def test_observed_openai_headers_steer_remaining_and_block_until_their_reset() -> None:
    async def scenario() -> None:
        up = UpstreamLimits(None)
        assert up.remaining(DEP) is None  # nothing known yet
        up.observe(
            DEP,
            {
                "x-ratelimit-limit-requests": "100",
                "x-ratelimit-remaining-requests": "25",
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-limit-tokens": "10000",
                "x-ratelimit-remaining-tokens": "5000",
                "x-ratelimit-reset-tokens": "1m30.5s",
            },
        )
        assert up.remaining(DEP) == pytest.approx(0.25)
        # remaining requests 0 until the reset: full, whatever the account's own count
        up.observe(
            DEP,
            {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"},
        )
        assert up.remaining(DEP) == 0.0
        assert await up.acquire(DEP, Limits(), 1, wait=0) is None
        assert await up.acquire(DEP, Limits(), 1, wait=0.1) is None  # 300 ms do not fit
        start = time.monotonic()
        assert await up.acquire(DEP, Limits(), 1, wait=2.0) is not None
        assert 0.2 < time.monotonic() - start < 1.8  # the reset, not the 2 s wait
        assert await up.acquire(DEP, Limits(), 1, wait=0) is not None  # reset passed
        # remaining counts without a reset (Azure's) steer, never block; the configured
        # limits stand in for the missing limit headers
        up.observe("azure", {"x-ratelimit-remaining-requests": "0"})
        assert await up.acquire("azure", Limits(rpm=600), 1, wait=0) is not None
        up.observe("azure", {"x-ratelimit-remaining-requests": "150"})
        assert up.remaining("azure") == pytest.approx(0.25)
        # garbage is ignored, not trusted
        up.observe(
            "odd", {"x-ratelimit-remaining-requests": "-3", "x-ratelimit-reset-requests": "x"}
        )
        up.observe("odd", {"x-ratelimit-remaining-tokens": "9" * 100})
        assert up.remaining("odd") is None

    run_with(scenario())


def test_a_native_answers_fields_are_observed_as_the_same_fields_in_a_dict() -> None:
    # `FieldHeaders` hands `observe` only the rate-limit fields (`starting_with`): the
    # outcome must be what the whole head, looked up name by name, gives.
    lines = [
        b"Date: Sun, 06 Dec 2026 16:00:00 GMT",
        b"X-RateLimit-Limit-Requests: 100",
        b"x-ratelimit-remaining-requests:  25",
        b"x-ratelimit-reset-requests: 6m0s",
        b"x-ratelimit-remaining-tokens: 0",
        b"x-ratelimit-reset-tokens: 20ms",
        b"anthropic-ratelimit-output-tokens-remaining: 40",
        b"anthropic-ratelimit-output-tokens-limit: 400",
        b"set-cookie: a=1",
    ]
    native_up, dict_up = UpstreamLimits(None), UpstreamLimits(None)
    native_up.observe(DEP, FieldHeaders(lines))
    dict_up.observe(DEP, dict(httpx.Headers([line.split(b": ", 1) for line in lines])))
    ours, theirs = native_up._deployments[DEP].observed, dict_up._deployments[DEP].observed
    assert ours.keys() == theirs.keys() == {"requests", "tokens", "output-tokens"}
    for dimension, report in ours.items():
        expected = theirs[dimension]
        assert (report.remaining, report.limit, report.reset) == (
            expected.remaining,
            expected.limit,
            expected.reset,
        )
        assert report.until == pytest.approx(expected.until, abs=0.5)
    assert native_up.remaining(DEP) == dict_up.remaining(DEP) == 0.0


def test_observed_anthropic_headers_block_until_their_rfc3339_reset() -> None:
    async def scenario() -> None:
        up = UpstreamLimits(None)
        reset = (datetime.now(UTC) + timedelta(seconds=0.4)).isoformat().replace("+00:00", "Z")
        up.observe(
            "claude",
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "40",
                "anthropic-ratelimit-requests-reset": reset,
                "anthropic-ratelimit-output-tokens-limit": "8000",
                "anthropic-ratelimit-output-tokens-remaining": "0",
                "anthropic-ratelimit-output-tokens-reset": reset,
            },
        )
        assert up.remaining("claude") == 0.0
        assert await up.acquire("claude", Limits(), 1, wait=0) is None
        start = time.monotonic()
        assert await up.acquire("claude", Limits(), 1, wait=2.0) is not None
        assert 0.2 < time.monotonic() - start < 1.8  # the reset, not the 2 s wait
        assert up.remaining("claude") is None  # both reports reached their reset

    run_with(scenario())


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1m30.5s", 90.5),
        ("2m59.56s", 179.56),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        ("12", 12.0),
        ("0.5", 0.5),
        ("1000000010", 10.0),  # a unix time
        ("2001-09-09T01:46:50Z", 10.0),
        ("2001-09-09T01:46:50.5+00:00", 10.5),
        ("1x", None),
        ("s", None),
        ("1s2", None),
        ("-1", None),
        ("nan", None),
        ("2001-09-09T01:46:50", None),  # no zone: not a moment
        ("1s" * 40, None),
        ("", None),
    ],
)
def test_reset_headers_are_read_in_every_format_providers_send(
    value: str, seconds: float | None
) -> None:
    got = parse_reset(value, now=1_000_000_000.0)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_a_reset_duration_read_again_is_remembered_and_nothing_else_is() -> None:
    """Go durations are remembered (they do not depend on the time); unix times and RFC 3339
    moments, which do, are read afresh each time, and the memory stops at its bound."""
    upstream._DURATIONS.clear()
    try:
        assert parse_reset("6m0s", now=1_000_000_000.0) == 360.0
        assert upstream._DURATIONS == {"6m0s": 360.0}
        assert parse_reset("6m0s", now=2_000_000_000.0) == 360.0  # the same, from memory
        assert parse_reset(" 20ms ", now=0.0) == pytest.approx(0.02)  # read, kept stripped
        assert " 20ms " not in upstream._DURATIONS and "20ms" in upstream._DURATIONS
        assert parse_reset("1000000060", now=1_000_000_000.0) == 60.0
        assert parse_reset("1000000060", now=1_000_000_030.0) == 30.0
        assert parse_reset("2001-09-09T01:46:50Z", now=1_000_000_000.0) == 10.0
        assert parse_reset("2001-09-09T01:46:50Z", now=1_000_000_005.0) == 5.0
        assert set(upstream._DURATIONS) == {"6m0s", "20ms"}
        for n in range(2 * upstream._DURATIONS_KEPT):
            assert parse_reset(f"{n}s", now=0.0) == n
        assert len(upstream._DURATIONS) == upstream._DURATIONS_KEPT
    finally:
        upstream._DURATIONS.clear()


def test_a_deployment_without_limits_gets_a_ticket_without_counting() -> None:
    async def scenario() -> None:
        store = MemoryLimiter()
        up = UpstreamLimits(store)
        ticket = await up.acquire(DEP, Limits(), 100, wait=0)
        assert ticket is not None and ticket.reservation is None
        await up.settle(ticket, 50)
        await up.settle(ticket, 50)  # a second settle is ignored
        assert await _minute(store, Limits()) == (0, 0, 0)

    run_with(scenario())


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_follows_limits_backend_failure(
    redis_server: RedisServer, redis_url: str, mode: str
) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        store = RedisLimiter(
            redis_url,
            on_backend_error=lambda: errors.append("error"),
            failure_mode=mode,  # type: ignore[arg-type]
        )
        async with running(store):
            up = UpstreamLimits(store)
            redis_server.stop()
            limits = Limits(rpm=100, tpm=1000)
            if mode == "open":
                ticket = await up.acquire(DEP, limits, 10, wait=0)
                assert ticket is not None and ticket.degraded
                await up.settle(ticket, 10)
            else:
                with pytest.raises(LimiterUnavailable):
                    await up.acquire(DEP, limits, 10, wait=0)
            assert errors  # counted, as a client admission is
            redis_server.start()

    run_with(scenario())


def test_all_keys_of_a_deployment_share_one_cluster_slot() -> None:
    names = key_names("gw", account_id("azure-west/gpt-4o-prod"))
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert names[0] == "gw:{dep/azure-west/gpt-4o-prod}:rpm"


@pytest.mark.redis
def test_rpm_is_exact_across_two_replicas_on_a_redis_cluster(
    redis_cluster: RedisCluster,
) -> None:
    async def scenario() -> None:
        stores = [RedisLimiter(redis_cluster.url, on_backend_error=lambda: None) for _ in range(2)]
        async with running(*stores):
            a, b = (UpstreamLimits(s, burst_seconds=60) for s in stores)
            limits = Limits(rpm=7)
            deployment = f"cluster-{time.time_ns()}"  # the cluster is shared by the session
            results = await asyncio.gather(
                *(up.acquire(deployment, limits, 1, wait=0) for _ in range(10) for up in (a, b))
            )
            granted = _granted(results)
            assert len(granted) == 7 and not any(t.degraded for t in granted)
            for ticket in granted:
                await a.settle(ticket, 1)

    run_with(scenario())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_real_head_is_observed_alike_in_every_mapping_that_carries_it(provider: str) -> None:
    # `observe` finds the remaining counts that came with one `keys() &` and reads only
    # their dimensions: `FieldHeaders`, `httpx.Headers` (mixed-case names) and a dict of
    # lower-cased names must all give the reports the names, looked up one by one, give.
    from bench.upstream import HEADS

    lines = HEADS[provider][:-4].split(b"\r\n")[1:]
    pairs = [line.split(b": ", 1) for line in lines]
    wall = datetime(2026, 12, 6, 16, tzinfo=UTC).timestamp()  # a second before the resets
    heads = {
        "fields": FieldHeaders(lines),
        "httpx": httpx.Headers(pairs),
        "dict": {name.decode().lower(): value.decode() for name, value in pairs},
    }
    seen = {}
    for kind, headers in heads.items():
        up = UpstreamLimits(None, wall_clock=lambda: wall)
        up.observe(DEP, headers)
        seen[kind] = {
            dimension: (report.remaining, report.limit, report.reset, report.until)
            for dimension, report in up._deployments[DEP].observed.items()
        }
    dimensions = (
        {"requests", "tokens"}
        if provider == "openai"
        else {"requests", "tokens", "input-tokens", "output-tokens"}
    )
    expected = {}
    for dimension in dimensions:
        prefix, names = (
            ("x-ratelimit-", ("remaining-{}", "limit-{}"))
            if provider == "openai"
            else ("anthropic-ratelimit-", ("{}-remaining", "{}-limit"))
        )
        remaining, limit = (int(heads["dict"][prefix + n.format(dimension)]) for n in names)
        expected[dimension] = (remaining, limit, True)
    for kind, reports in seen.items():
        assert {d: r[:3] for d, r in reports.items()} == expected, kind
        for dimension, report in reports.items():
            assert report[3] == pytest.approx(seen["dict"][dimension][3], abs=0.5)
    if provider == "anthropic":  # an RFC 3339 reset a second after the wall clock
        now = time.monotonic()
        assert seen["fields"]["requests"][3] == pytest.approx(now + 1.0, abs=0.5)


def test_nothing_readable_observed_leaves_no_state_and_limits_stand_in() -> None:
    up = UpstreamLimits(None)
    # limits and resets without a remaining count, or an unreadable count: nothing kept
    up.observe(DEP, FieldHeaders([b"x-ratelimit-limit-requests: 10", b"Server: x"]))
    up.observe(DEP, {"x-ratelimit-remaining-tokens": "many", "x-ratelimit-limit-tokens": "9"})
    up.observe(DEP, FieldHeaders([b"content-type: text/event-stream"]))
    assert DEP not in up._deployments
    # without limit headers the configured rpm / tpm stand in, for those two dimensions
    # only (an input-tokens count without its limit says nothing)
    up._deployment(DEP).limits = Limits(rpm=100, tpm=1000)
    up.observe(
        DEP,
        {
            "anthropic-ratelimit-tokens-remaining": "500",
            "anthropic-ratelimit-input-tokens-remaining": "1",
        },
    )
    assert up.remaining(DEP) == pytest.approx(0.5)
    up.observe(DEP, {"x-ratelimit-remaining-requests": "10"})
    assert up.remaining(DEP) == pytest.approx(0.1)
    up.observe(DEP, {"x-ratelimit-remaining-requests": "0"})  # 0: spent, limit or not
    assert up.remaining(DEP) == 0.0


def test_of_both_providers_sets_anthropics_report_of_a_dimension_is_kept() -> None:
    fields = {
        "anthropic-ratelimit-requests-remaining": "7",
        "anthropic-ratelimit-requests-limit": "70",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-limit-requests": "90",
        "x-ratelimit-remaining-tokens": "5",
        "x-ratelimit-limit-tokens": "50",
    }
    for order in (fields, dict(reversed(fields.items()))):
        up = UpstreamLimits(None)
        up.observe(DEP, order)
        up.observe(
            "native", FieldHeaders([b"%s: %s" % (k.encode(), v.encode()) for k, v in order.items()])
        )
        for key in (DEP, "native"):
            observed = up._deployments[key].observed
            assert (observed["requests"].remaining, observed["requests"].limit) == (7, 70)
            assert (observed["tokens"].remaining, observed["tokens"].limit) == (5, 50)
