"""The gateway's Prometheus metrics (README, "Observability"), built once per app.

`Metrics` owns every metric object and the registry they are exposed from; the request
path calls its small synchronous methods (`record`, `stream_opened`, ...) and GET /metrics
calls `render()`. Label values stay bounded whatever a client sends: model, provider and
key id only take configured names ("other" for anything else, "none" for empty), status is
the HTTP status as a string, outcome and the other enumerations are capped to known sets.

Two modes, chosen by prometheus_client's own switch, the PROMETHEUS_MULTIPROC_DIR
environment variable:

- single process: each `Metrics` owns a private `CollectorRegistry`, so several apps can be
  built in one process (tests) without "Duplicated timeseries" errors;
- multiprocess (`gateway serve --workers N`): values live in per-process mmap files in that
  directory and `render()` merges every worker's files with `MultiProcessCollector`. Gauges
  use `livesum`, so a dead worker's streams and queue drop out of the totals (after
  `mark_process_dead`), while its counters keep counting towards the sums.

The request path's values (requests, latencies, tokens, active streams, attempts, refusals,
spend) are kept in plain Python by `gateway.observability.tally` and handed to their
prometheus_client children when rendered (with --workers: at the end of the loop turn they
change in), so an update takes no lock; the exposition is the same to the last bit.

Deliberately not here: timing. Callers measure with `perf_counter()` and hand over the
durations in a `RequestRecord`; prometheus `.time()` is never used (it mis-times coroutines).
Nor is there any module-level registry: importing this module registers nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client import values as _values

from gateway.errors import Outcome
from gateway.limits.base import LimitName
from gateway.observability.records import INTER_TOKEN_BUCKETS, RequestRecord
from gateway.observability.tally import Cell, Tally

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (to an emptied directory) before the workers start to switch multiprocess mode on."""

OTHER = "other"
"""The label value of anything outside the configured or known set."""
NONE = "none"
"""The label value of an empty model, provider or key id (e.g. a request refused early)."""

TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0,
    20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)  # fmt: skip

UPSTREAM_ERROR_KINDS = frozenset(
    {
        "connect",
        "connect_timeout",
        "proxy",
        "connection",
        "timeout",
        "idle_timeout",
        "transport",
        "auth",
        "http_error",
        "http_4xx",
        "http_429",
        "http_5xx",
        "malformed",
        "error_event",
        "truncated",
    }
)
"""The `kind` values gateway_upstream_errors_total keeps; anything else counts as "other"."""

_OUTCOMES = frozenset(get_args(Outcome))
_APIS = {
    "chat.completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
    "messages": "messages",
    "messages.count_tokens": "messages",
}
"""A record's route -> the `api` label: the API the client called."""
_LIMITS = frozenset(get_args(LimitName))
_RECORD_KINDS_KEPT = 1024
"""Combinations of a record's labelled fields whose cells `Metrics.record` remembers (the
model as asked is a client's string: past the bound, the rest are looked up each time)."""


class _Timings(NamedTuple):
    """The per-(model, provider) histogram children, looked up once per record."""

    ttft: Tally
    inter_token: Tally
    duration: Tally


class _Tokens(NamedTuple):
    prompt: Cell
    completion: Cell


def multiprocess_dir() -> str | None:
    """The multiprocess directory when that mode is on, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: str) -> None:
    """Create `path` and remove the metric files a previous run left in it.

    Call it in the parent before the workers start (then export MULTIPROC_ENV=path): stale
    files from an old run would otherwise be summed into the new run's counters.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (active streams, log queue depth) from the sums."""
    path = multiprocess_dir()
    if path is not None:
        _multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _use_value_class(multiprocess: bool) -> None:
    """Make prometheus_client store values the way this process's mode needs.

    prometheus_client picks in-memory or mmap-backed values once, when it is first imported,
    from the environment at that moment. A process that imported it before the CLI exported
    MULTIPROC_ENV (or that unset it since) would otherwise keep the wrong kind: values that
    never reach the files render() reads, or files written to a directory that is gone.
    """
    current: Any = _values.ValueClass
    if bool(getattr(current, "_multiprocess", False)) == multiprocess:
        return
    chosen: Any = _values.MultiProcessValue() if multiprocess else _values.MutexValue  # type: ignore[no-untyped-call]
    _values.ValueClass = chosen


def _bounded(names: Iterable[str]) -> dict[str, str]:
    # name -> the same str object: one dict lookup maps a raw value to its label.
    return {name: name for name in names if name}


class Metrics:
    """Every gateway metric, for one app (one worker process).

    In multiprocess mode build one per process: two instances in one process would share
    the same mmap entries, each overwriting the other's counts.
    """

    def __init__(
        self, models: Iterable[str], providers: Iterable[str], key_ids: Iterable[str]
    ) -> None:
        self._models = _bounded(models)
        self._providers = _bounded(providers)
        self._key_ids = _bounded(key_ids)
        self._multiproc_dir = multiprocess_dir()
        _use_value_class(self._multiproc_dir is not None)
        # In multiprocess mode nothing is registered here: render() reads the files.
        self._registry = CollectorRegistry() if self._multiproc_dir is None else None
        reg = self._registry

        self._requests, self._tokens, self._active = _traffic_metrics(reg)
        self._ttft, self._inter_token, self._duration, self._overhead = _latency_metrics(reg)
        self._rate_limited, self._upstream_errors, self._limiter_errors = _refusal_metrics(reg)
        self._log_depth, self._log_dropped = _request_log_metrics(reg)
        self._spans_dropped = Counter(
            "gateway_trace_spans_dropped",
            "Trace spans dropped: the export queue was full or the collector did not take them.",
            registry=reg,
        )
        self._deployment_requests, self._deployment_healthy = _deployment_metrics(reg)

        # The request path's values live in these cells and tallies (gateway.observability.
        # tally), one per labelled child, created on first use and kept: an update is a few
        # attribute adds, with no lock and no labels() call. Keys are label values already
        # bounded, so the caches are bounded too. `_publish_all` hands them to
        # prometheus_client before a render. With --workers another worker's scrape reads
        # this one's files, so what changed is published at the end of the loop turn
        # (`_changed`): one file write per value per turn rather than one per update (each
        # behind a lock and a getpid()), however many requests ended in the turn.
        self._eager = self._multiproc_dir is not None
        self._unpublished: set[Cell | Tally] = set()
        self._publish_scheduled = False
        self._requests_by: dict[tuple[str, str, int, str, str], Cell] = {}
        self._cells_by_record: dict[tuple[str, str, int, str, str], tuple[Cell, _Timings, str]]
        self._cells_by_record = {}
        self._timings_by: dict[tuple[str, str], _Timings] = {}
        self._tokens_by: dict[tuple[str, str], _Tokens] = {}
        self._active_by: dict[str, Cell] = {}
        self._rate_limited_by: dict[tuple[str, str], Cell] = {}
        self._upstream_errors_by: dict[tuple[str, str], Cell] = {}
        self._deployment_requests_by: dict[tuple[str, str, str], Cell] = {}
        self._spend_by: dict[tuple[str, str], Cell] = {}
        self._overhead_tally = Tally(self._overhead)
        for model in self._models:
            # Configured models show 0 active streams rather than no series.
            self._active_by[model] = Cell(self._active.labels(model))
        self._active_of = dict(self._active_by)
        """A configured model's active-streams cell by the model's name, which is every
        relayed stream's: one lookup instead of `_model`'s and `_active_by`'s. Only the
        configured ones: a stream of another model named like a label ("other", "none")
        takes `_active_child`'s way."""

    # --- label bounding --------------------------------------------------------------------

    def _model(self, value: str) -> str:
        return self._models.get(value) or (OTHER if value else NONE)

    def _provider(self, value: str) -> str:
        return self._providers.get(value) or (OTHER if value else NONE)

    def _key_id(self, value: str) -> str:
        return self._key_ids.get(value) or (OTHER if value else NONE)

    def register_key_id(self, key_id: str) -> None:
        """A key created at runtime gets its own `key_id` label: the labels stay bounded by
        the keys that exist, as they are by the config's."""
        if key_id:
            self._key_ids.setdefault(key_id, key_id)

    def set_key_store_reachable(self, up: bool) -> None:
        """gateway_key_store_up: 0 while the key database cannot be read (the keys known
        are still served). Created on first use: only gateways with a database have it."""
        gauge = getattr(self, "_key_store_up", None)
        if gauge is None:
            gauge = self._key_store_up = Gauge(
                "gateway_key_store_up",
                "1 while the database of keys managed at runtime is reachable, else 0.",
                multiprocess_mode="min",
                registry=self._registry,
            )
        gauge.set(1 if up else 0)

    # --- the request path ------------------------------------------------------------------

    def stream_opened(self, model: str) -> None:
        self._add(self._active_of.get(model) or self._active_child(model), 1)

    def stream_closed(self, model: str) -> None:
        self._add(self._active_of.get(model) or self._active_child(model), -1)

    def _active_child(self, model: str) -> Cell:
        label = self._model(model)
        cell = self._active_by.get(label)
        if cell is None:
            cell = self._active_by[label] = Cell(self._active.labels(label))
        return cell

    def _add(self, cell: Cell, amount: float) -> None:
        cell.value += amount
        if self._eager:
            self._changed(cell)

    def _changed(self, *held: Cell | Tally) -> None:
        """With --workers: publish these at the end of this loop turn (at once outside a
        loop: a script, a test)."""
        self._unpublished.update(held)
        if self._publish_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._publish_unpublished()
            return
        self._publish_scheduled = True
        loop.call_soon(self._publish_unpublished)

    def _publish_unpublished(self) -> None:
        self._publish_scheduled = False
        held, self._unpublished = self._unpublished, set()
        _publish(*held)

    def record(self, rec: RequestRecord) -> None:
        """Count one finished request: status and outcome, latencies, tokens."""
        # Most requests have one of a few combinations of these fields: their cells are
        # remembered by the fields as they are (model and provider labels are fixed at
        # start, unlike key ids), so a record bounds and looks up its labels once per
        # combination rather than each time.
        raw = (rec.model, rec.provider, rec.status, rec.outcome, rec.route)
        cells = self._cells_by_record.get(raw)
        if cells is None:
            cells = self._cells_of(rec)
            if len(self._cells_by_record) < _RECORD_KINDS_KEPT:
                self._cells_by_record[raw] = cells
        requests, timings, model = cells
        requests.value += 1

        if rec.ttft_s is not None:
            timings.ttft.observe(rec.ttft_s)
        timings.duration.observe(rec.duration_s)
        gaps = rec.inter_token_s
        if gaps.total or any(gaps.counts):
            timings.inter_token.add(gaps)
        self._overhead_tally.observe(rec.overhead_s)

        tokens = None
        if rec.prompt_tokens > 0 or rec.completion_tokens > 0:
            key_id = self._key_id(rec.key_id)
            tokens = self._tokens_by.get((model, key_id))
            if tokens is None:
                tokens = self._tokens_by[(model, key_id)] = _Tokens(
                    Cell(self._tokens.labels(model, key_id, "prompt")),
                    Cell(self._tokens.labels(model, key_id, "completion")),
                )
            if rec.prompt_tokens > 0:
                tokens.prompt.value += rec.prompt_tokens
            if rec.completion_tokens > 0:
                tokens.completion.value += rec.completion_tokens
        if self._eager:
            self._changed(requests, *timings, self._overhead_tally, *(tokens or ()))

    def _cells_of(self, rec: RequestRecord) -> tuple[Cell, _Timings, str]:
        """A record's requests counter and timings children, and its model label."""
        model = self._model(rec.model)
        provider = self._provider(rec.provider)
        status = rec.status if 0 <= rec.status <= 599 else -1
        outcome: str = rec.outcome if rec.outcome in _OUTCOMES else OTHER
        api = _APIS.get(rec.route, OTHER)
        key = (model, provider, status, outcome, api)
        requests = self._requests_by.get(key)
        if requests is None:
            status_label = str(status) if status >= 0 else OTHER
            requests = self._requests_by[key] = Cell(
                self._requests.labels(model, provider, status_label, outcome, api)
            )
        timings = self._timings_by.get((model, provider))
        if timings is None:
            timings = self._timings_by[(model, provider)] = self._new_timings(model, provider)
        return requests, timings, model

    def _new_timings(self, model: str, provider: str) -> _Timings:
        inter_token = Tally(self._inter_token.labels(model, provider))
        # Gaps counts per bucket of INTER_TOKEN_BUCKETS: the same bounds, or miscounted.
        if inter_token.bounds != INTER_TOKEN_BUCKETS:
            raise RuntimeError("gateway_inter_token_latency_seconds: bounds are not Gaps'")
        return _Timings(
            Tally(self._ttft.labels(model, provider)),
            inter_token,
            Tally(self._duration.labels(model, provider)),
        )

    def count_spend(self, rec: RequestRecord) -> None:
        """gateway_spend_usd_total{key_id, model}: what finished requests cost (a handler of
        `Finished`, beside `record`). Created on first use, children cached per labels."""
        if not rec.cost_nanos:
            return
        if rec.cost_nanos < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        spend = getattr(self, "_spend", None)
        if spend is None:
            spend = self._spend = Counter(
                "gateway_spend_usd",
                "USD spent, by key and model: the price table applied to the usage.",
                ("key_id", "model"),
                registry=self._registry,
            )
        labels = (self._key_id(rec.key_id), self._model(rec.model))
        cell = self._spend_by.get(labels)
        if cell is None:
            cell = self._spend_by[labels] = Cell(spend.labels(*labels))
        self._add(cell, rec.cost_nanos / 1e9)

    def rate_limited(self, key_id: str, limit: str) -> None:
        key = (self._key_id(key_id), limit if limit in _LIMITS else OTHER)
        cell = self._rate_limited_by.get(key)
        if cell is None:
            cell = self._rate_limited_by[key] = Cell(self._rate_limited.labels(*key))
        self._add(cell, 1)

    def upstream_error(self, provider: str, kind: str) -> None:
        key = (self._provider(provider), kind if kind in UPSTREAM_ERROR_KINDS else OTHER)
        cell = self._upstream_errors_by.get(key)
        if cell is None:
            cell = self._upstream_errors_by[key] = Cell(self._upstream_errors.labels(*key))
        self._add(cell, 1)

    def deployment_attempt(self, model: str, deployment: str, outcome: str) -> None:
        """gateway_deployment_requests_total: one attempt on one deployment and how it went
        (`ok`, `failed`, `rate_limited`, `refused`, `cancelled`, `over_limit`). The router
        passes configured names only."""
        key = (self._model(model), deployment, outcome)
        cell = self._deployment_requests_by.get(key)
        if cell is None:
            cell = self._deployment_requests_by[key] = Cell(self._deployment_requests.labels(*key))
        self._add(cell, 1)

    def set_deployment_healthy(self, model: str, deployment: str, healthy: bool) -> None:
        """gateway_deployment_healthy: 0 while this process has the deployment cooled down."""
        self._deployment_healthy.labels(self._model(model), deployment).set(1 if healthy else 0)

    def limiter_backend_error(self) -> None:
        self._limiter_errors.inc()

    def set_log_queue_depth(self, depth: int) -> None:
        self._log_depth.set(depth)

    def log_record_dropped(self, count: int = 1) -> None:
        if count > 0:
            self._log_dropped.inc(count)

    def trace_spans_dropped(self, count: int) -> None:
        """Called from the span exporter's thread too (prometheus_client counters lock)."""
        if count > 0:
            self._spans_dropped.inc(count)

    def close(self) -> None:
        """Last step of a worker's shutdown: in multiprocess mode its live gauges (active
        streams, log queue depth) leave the sums; its counters keep counting. A worker that
        dies without this (SIGKILL) leaves its gauges until the parent's mark_process_dead.
        """
        if self._multiproc_dir is not None:
            self._publish_unpublished()  # the counts stay in the sums
            _multiprocess.mark_process_dead(os.getpid(), self._multiproc_dir)  # type: ignore[no-untyped-call]

    # --- reading ---------------------------------------------------------------------------

    @property
    def multiprocess(self) -> bool:
        """Values live in the files every worker writes (`--workers N`)."""
        return self._multiproc_dir is not None

    def active_streams_total(self) -> float:
        """Streams open in this process, over all models (tests, graceful shutdown)."""
        return sum(cell.value for cell in self._active_by.values())

    def render(self) -> tuple[bytes, str]:
        """The exposition for GET /metrics: (body, content type)."""
        if self._registry is not None:
            self._publish_all()
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        self._publish_unpublished()  # this worker's own, up to now
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, self._multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _publish_all(self) -> None:
        """Every cell and tally's value into its prometheus_client child (once per scrape:
        a few hundred comparisons at most, the labels being bounded)."""
        _publish(self._overhead_tally, *self._active_by.values(), *self._requests_by.values())
        for timings in self._timings_by.values():
            _publish(*timings)
        for tokens in self._tokens_by.values():
            _publish(*tokens)
        for cells in (
            self._rate_limited_by,
            self._upstream_errors_by,
            self._deployment_requests_by,
            self._spend_by,
        ):
            _publish(*cells.values())


def _publish(*held: Cell | Tally) -> None:
    for values in held:
        values.publish()


# --- the metric families, one builder each (names, help texts, labels and buckets are
# pinned by tests/observability) ----------------------------------------------------------


def _traffic_metrics(reg: CollectorRegistry | None) -> tuple[Counter, Counter, Gauge]:
    """Requests by how they ended, tokens, and the streams open right now."""
    requests = Counter(
        "gateway_requests",
        "Requests by how they ended.",
        ("model", "provider", "status", "outcome", "api"),
        registry=reg,
    )
    tokens = Counter(
        "gateway_tokens",
        "Tokens by model, key and direction (prompt | completion).",
        ("model", "key_id", "direction"),
        registry=reg,
    )
    active = Gauge(
        "gateway_active_streams",
        "Streams being relayed right now.",
        ("model",),
        multiprocess_mode="livesum",
        registry=reg,
    )
    return requests, tokens, active


def _latency_metrics(
    reg: CollectorRegistry | None,
) -> tuple[Histogram, Histogram, Histogram, Histogram]:
    """Time to first token, inter-token gaps, request duration, the gateway's own time."""
    ttft = Histogram(
        "gateway_time_to_first_token_seconds",
        "Request arrival to the first byte of the answer sent to the client.",
        ("model", "provider"),
        buckets=TTFT_BUCKETS,
        registry=reg,
    )
    inter_token = Histogram(
        "gateway_inter_token_latency_seconds",
        "Gaps between successive upstream reads carrying events.",
        ("model", "provider"),
        buckets=INTER_TOKEN_BUCKETS,
        registry=reg,
    )
    duration = Histogram(
        "gateway_request_duration_seconds",
        "Request arrival to the end of the response.",
        ("model", "provider"),
        buckets=DURATION_BUCKETS,
        registry=reg,
    )
    overhead = Histogram(
        "gateway_overhead_seconds",
        "Time spent in the gateway rather than upstream.",
        buckets=OVERHEAD_BUCKETS,
        registry=reg,
    )
    return ttft, inter_token, duration, overhead


def _refusal_metrics(reg: CollectorRegistry | None) -> tuple[Counter, Counter, Counter]:
    """Requests a limit refused, upstream failures, and the limit store's own failures."""
    rate_limited = Counter(
        "gateway_rate_limited",
        "Requests refused by a per-key limit or quota.",
        ("key_id", "limit"),
        registry=reg,
    )
    upstream_errors = Counter(
        "gateway_upstream_errors",
        "Upstream failures by provider and kind.",
        ("provider", "kind"),
        registry=reg,
    )
    limiter_errors = Counter(
        "gateway_limiter_backend_errors",
        "Calls to the limit store (Redis) that failed.",
        registry=reg,
    )
    return rate_limited, upstream_errors, limiter_errors


def _deployment_metrics(reg: CollectorRegistry | None) -> tuple[Counter, Gauge]:
    """Attempts per deployment of a model, and whether this process routes to it."""
    requests = Counter(
        "gateway_deployment_requests",
        "Upstream attempts per deployment, by how each went before the first byte.",
        ("model", "deployment", "outcome"),
        registry=reg,
    )
    healthy = Gauge(
        "gateway_deployment_healthy",
        "1 while the deployment takes traffic, 0 while cooled down (per process: the "
        "lowest of the live workers).",
        ("model", "deployment"),
        multiprocess_mode="livemin",
        registry=reg,
    )
    return requests, healthy


def _request_log_metrics(reg: CollectorRegistry | None) -> tuple[Gauge, Counter]:
    """The request log's queue depth and the records it dropped."""
    depth = Gauge(
        "gateway_log_queue_depth",
        "Request log records waiting to be written.",
        multiprocess_mode="livesum",
        registry=reg,
    )
    dropped = Counter(
        "gateway_log_records_dropped",
        "Request log records dropped (queue full or sink failure).",
        registry=reg,
    )
    return depth, dropped
