"""Rendering the benchmark's results: tables, the issue's targets, the transport comparison."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.run import Result, Target

MB = 1024 * 1024


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    ms = value * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text columns: the first left-aligned, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([render(headers), "  ".join("-" * w for w in widths), *map(render, rows)])


def header(targets: Sequence[Target]) -> str:
    lines = ["gateway benchmark: loopback only, every process measured on its own", ""]
    for t in targets:
        pid = f"pid {t.service.ps.pid}" if t.service and t.service.ps else "the upstream itself"
        lines.append(f"  {t.name:<28} {t.label} ({pid})")
    return "\n".join(lines) + "\n"


def scenario_table(name: str, what: str, rows: Sequence[Result]) -> str:
    headers = [
        name,
        "TTFT p50",
        "TTFT p99",
        "gap p50",
        "gap p99",
        "chunks/s",
        "CPU ms/1k",
        "peak RSS",
        "KB/stream",
        "errors",
        "integrity",
        "client CPU",
        "upstream CPU",
        "others CPU",
        "steal",
        "peak core relay/up/client",
        "listen drops",
    ]
    body = []
    for r in rows:
        c = r.client
        wall = c["wall_s"] or 1.0
        body.append(
            [
                r.target,
                _ms(c["ttft_p50"]),
                _ms(c["ttft_p99"]),
                _ms(c["gap_p50"]),
                _ms(c["gap_p99"]),
                f"{r.chunks_per_s:,.0f}",
                "-" if r.cpu_ms_per_1k is None else f"{r.cpu_ms_per_1k:.1f}",
                "-" if r.peak_rss is None else f"{r.peak_rss / MB:.0f} MB",
                "-" if r.rss_per_stream is None else f"{r.rss_per_stream / 1024:.1f}",
                str(c["errors"]),
                str(c["integrity"]),
                f"{100 * c['client_cpu_s'] / wall:.0f}%",
                f"{100 * r.upstream_cpu_s / wall:.0f}%",
                f"{100 * r.others_cpu_s / wall:.0f}%",
                f"{100 * r.steal_s / wall:.0f}%",
                "/".join(_core(r, name) for name in ("relay", "upstream", "client")),
                str(r.listen_drops),
            ]
        )
    out = [
        f"== {name}: {what}",
        "(times in ms; gap = between successive content chunks; "
        "CPU = relay process user+sys; CPU % of one core; others = the rest of the machine; "
        "steal = CPU the hypervisor gave other guests, high means noisy numbers; "
        "KB/stream = relay RSS (peak - idle before) / streams open at once; peak core = "
        "highest % of a core over 250 ms windows: relay, upstream, busiest client process; "
        "listen drops = connections the kernel dropped at a full accept queue, machine-wide "
        "(other programs' too): each costs its client a 1 s SYN retransmit)",
        _table(headers, body),
    ]
    for r in rows:
        for sample in r.client["samples"]:
            out.append(f"  {r.target}: {sample}")
    return "\n".join(out) + "\n"


def _core(r: Result, name: str) -> str:
    share = r.core_peak.get(name)
    return "-" if share is None else f"{100 * share:.0f}%"


def rss_timelines(rows: Sequence[Result]) -> str:
    """Each relay's RSS through a long run (soak-scale): one line per target."""
    out = ["== relay RSS over time (MB at seconds into the run)"]
    for r in rows:
        if r.rss_timeline:
            points = ", ".join(f"{t:.0f}s {rss / MB:.0f}" for t, rss in r.rss_timeline)
            out.append(f"  {r.target}: {points}")
    return "\n".join(out) + "\n"


def routes_table(name: str, what: str, rows: Sequence[Result]) -> str:
    """Each ingress route against the first row (Chat Completions pass-through): latencies,
    the relay's CPU per 1k client events and per stream, and what each adds to the first."""
    base = rows[0]
    headers = [
        f"routes, {name}",
        "TTFT p50",
        "+TTFT",
        "gap p50",
        "events/stream",
        "CPU ms/1k ev",
        "CPU µs/stream",
        "CPU x chat",
        "errors",
        "integrity",
    ]

    def per_stream(r: Result) -> float | None:
        streams = r.client["ok"] or 0
        return r.relay_cpu_s * 1e6 / streams if r.relay_cpu_s is not None and streams else None

    body = []
    base_stream = per_stream(base)
    for r in rows:
        c = r.client
        ttft, ttft0 = c["ttft_p50"], base.client["ttft_p50"]
        added = None if ttft is None or ttft0 is None else ttft - ttft0
        cpu = per_stream(r)
        body.append(
            [
                r.target,
                _ms(ttft),
                "-" if added is None else f"{added * 1000:+.2f}",
                _ms(c["gap_p50"]),
                f"{r.events / max(c['ok'], 1):.0f}",
                "-" if r.cpu_ms_per_1k is None else f"{r.cpu_ms_per_1k:.1f}",
                "-" if cpu is None else f"{cpu:.0f}",
                "-" if cpu is None or not base_stream else f"{cpu / base_stream:.2f}",
                str(c["errors"]),
                str(c["integrity"]),
            ]
        )
    return f"{what}\n{_table(headers, body)}\n"


def _find(results: Sequence[Result], target: str, scenario: str) -> Result | None:
    return next((r for r in results if r.target == target and r.scenario == scenario), None)


def verdicts(results: Sequence[Result], transports: Sequence[str]) -> str:
    """The issue's targets, each as measured / required, for the first transport's gateway."""
    gw = f"gateway-{transports[0]}"
    lines = [f"== targets ({gw}; ratios within this run)"]

    def line(ok: bool, what: str, detail: str) -> None:
        lines.append(f"  [{'met' if ok else 'NOT MET'}] {what}: {detail}")

    lat_g, lat_d = _find(results, gw, "latency"), _find(results, "direct", "latency")
    if lat_g and lat_d and lat_g.client["ttft_p50"] is not None:
        for q, limit in (("p50", 1.0), ("p99", 3.0)):
            added = (lat_g.client[f"ttft_{q}"] - lat_d.client[f"ttft_{q}"]) * 1000
            line(
                added <= limit,
                f"added TTFT {q} at concurrency 1",
                f"{added:.2f} ms (<= {limit:g} ms)",
            )
    thr_g, thr_f = _find(results, gw, "throughput"), _find(results, "floor", "throughput")
    if thr_g and thr_f and thr_f.chunks_per_s:
        ratio = thr_g.chunks_per_s / thr_f.chunks_per_s
        line(ratio >= 0.6, "throughput vs floor", f"{ratio:.2f} of the floor's chunks/s (>= 0.6)")
    pac_g, pac_f = _find(results, gw, "paced"), _find(results, "floor", "paced")
    if pac_g:
        bad = pac_g.client["errors"] + pac_g.client["integrity"]
        line(bad == 0, "paced: errors and integrity failures", f"{bad} (0)")
        if pac_g.peak_rss is not None:
            rss = pac_g.peak_rss / MB
            line(rss <= 120, "RSS with 500 streams", f"{rss:.0f} MB (<= 120 MB)")
    if pac_g and pac_f:
        for key, what in (("gap_p99", "inter-chunk p99"), ("ttft_p99", "TTFT p99")):
            g, f = pac_g.client[key], pac_f.client[key]
            if g is not None and f is not None:
                line(g <= f, f"paced: {what} vs floor", f"{_ms(g)} ms vs {_ms(f)} ms")
    sca_g, sca_n = _find(results, gw, "scale"), _find(results, "nginx", "scale")
    if sca_g:
        bad = sca_g.client["errors"] + sca_g.client["integrity"]
        line(bad == 0, "scale: errors and integrity failures", f"{bad} (0)")
    if sca_g and sca_n:
        for key, what in (("ttft_p99", "TTFT p99"), ("gap_p99", "inter-chunk p99")):
            g, n = sca_g.client[key], sca_n.client[key]
            if g is not None and n:
                line(
                    g <= 1.5 * n,
                    f"scale: {what} vs nginx",
                    f"{_ms(g)} ms vs {_ms(n)} ms, {g / n:.2f}x (<= 1.5x)",
                )
    for scenario in ("scale", "paced"):
        g, n = _find(results, gw, scenario), _find(results, "nginx", scenario)
        if g and n and g.cpu_ms_per_1k is not None and n.cpu_ms_per_1k:
            ratio = g.cpu_ms_per_1k / n.cpu_ms_per_1k
            line(ratio <= 2.0, f"CPU per 1k chunks vs nginx, {scenario}", f"{ratio:.2f}x (<= 2x)")
    for scenario in ("scale", "soak-scale"):
        g = _find(results, gw, scenario)
        if g and g.rss_per_stream is not None:
            kb = g.rss_per_stream / 1024
            line(kb <= 25, f"RSS per open stream, {scenario}", f"{kb:.1f} KB (<= 25 KB)")
    for scenario in ("throughput", "paced", "latency"):
        g, f = _find(results, gw, scenario), _find(results, "floor", scenario)
        if g and f and g.cpu_ms_per_1k is not None and f.cpu_ms_per_1k:
            ratio = g.cpu_ms_per_1k / f.cpu_ms_per_1k
            what = f"CPU per 1k chunks vs floor, {scenario}"
            if scenario == "latency":
                # 20-chunk streams one at a time: per-request work (auth, limits, log) is
                # most of it, which the floor does not do; shown for the record.
                lines.append(f"  [info] {what}: {ratio:.2f}x")
            else:
                line(ratio <= 2.0, what, f"{ratio:.2f}x (<= 2x)")
    return "\n".join(lines) + "\n"


def transport_comparison(results: Sequence[Result], transports: Sequence[str]) -> str:
    names = [r.target for r in results if r.target.startswith(("gateway-", "candidate-"))]
    variants = list(dict.fromkeys(names))
    if len(variants) < 2:
        return ""
    headers = ["scenario / metric", *variants]
    rows: list[list[str]] = []
    metrics: list[tuple[str, Callable[[Result], str]]] = [
        ("TTFT p50 ms", lambda r: _ms(r.client["ttft_p50"])),
        ("TTFT p99 ms", lambda r: _ms(r.client["ttft_p99"])),
        ("gap p99 ms", lambda r: _ms(r.client["gap_p99"])),
        ("chunks/s", lambda r: f"{r.chunks_per_s:,.0f}"),
        ("CPU ms/1k", lambda r: "-" if r.cpu_ms_per_1k is None else f"{r.cpu_ms_per_1k:.1f}"),
        ("peak RSS MB", lambda r: "-" if r.peak_rss is None else f"{r.peak_rss / MB:.0f}"),
        ("errors", lambda r: str(r.client["errors"] + r.client["integrity"])),
    ]
    for scenario in dict.fromkeys(r.scenario for r in results):
        for label, get in metrics:
            row = [f"{scenario} {label}"]
            for v in variants:
                r = _find(results, v, scenario)
                row.append(get(r) if r else "-")
            rows.append(row)
    return "== gateway variants side by side\n" + _table(headers, rows) + "\n"


def sanity(
    targets: Sequence[Target],
    redis_port: int,
    redis_command: Callable[..., bytes],
    judged: str,
) -> tuple[str, bool]:
    """Proof that limits, metrics and logging were on: request log lines, Redis keys, the
    metrics' request count, and no limiter backend errors (a gateway that cannot reach
    Redis admits in degraded mode, which would measure a gateway without limits). The
    text, and False when limits were not really on for the `judged` gateway (a compared
    variant's errors are a finding, printed: a starved event loop times its calls out)."""
    import urllib.request

    lines = ["== everything on, as configured"]
    keys = redis_command(redis_port, "KEYS", "*bench*").count(b"{bench}")
    lines.append(f"  redis: {keys} limit keys of the bench key")
    ok = keys > 0 or all(t.name != judged for t in targets)
    for t in targets:
        if t.service is None or not t.name.startswith(("gateway-", "candidate-")):
            continue
        log = t.service.log_path.parent / f"{t.name}-requests.jsonl"
        try:
            count = sum(1 for _ in log.open("rb"))
        except OSError:
            count = 0
        with urllib.request.urlopen(t.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        requests = _metric_total(text, "gateway_requests_total")
        backend_errors = _metric_total(text, "gateway_limiter_backend_errors_total")
        if t.name == judged:
            ok = ok and backend_errors == 0
        lines.append(
            f"  {t.name}: request log {count} lines, gateway_requests_total {requests:.0f}, "
            f"limiter backend errors {backend_errors:.0f}"
        )
    if not ok:
        lines.append(f"  LIMITS WERE NOT ON: {judged} was measured admitting without Redis")
    return "\n".join(lines) + "\n", ok


def _metric_total(exposition: str, name: str) -> float:
    """The sum of a metric's samples over all its labels, from Prometheus text."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def profile_summary(raw: Path, top: int = 25) -> str:
    """Top functions by self time (and by total time) from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    out = [f"== py-spy profile: {samples} samples; top {top} by self time"]
    for frame, count in own.most_common(top):
        out.append(f"  {100 * count / samples:5.1f}%  {frame}")
    out.append(f"-- top {top} by total time (inclusive)")
    for frame, count in total.most_common(top):
        out.append(f"  {100 * count / samples:5.1f}%  {frame}")
    return "\n".join(out) + "\n"
