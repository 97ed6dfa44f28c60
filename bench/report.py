"""The benchmark's results: one point per run, the table, the ledger check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-sonnet-4-6"}


@dataclass
class Point:
    target: str  # direct | capgate | litellm
    fmt: str
    stream: bool
    conc: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    threads: int = 1
    warmup_requests: int = 0  # completed in the warm-up run (for the ledger check)
    # CPU µs per request of the proxy's processes in the measured run (/proc): moved much
    # less than req/s by other processes on the machine. None for 'direct'.
    cpu_us: float | None = None


def fmt_num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(points: list[Point], litellm: list[Point]) -> None:
    by = {(p.target, p.fmt, p.stream, p.conc): p for p in points + litellm}
    cols = [
        "format",
        "stream",
        "c",
        "direct req/s",
        "p50 ms",
        "p99 ms",
        "capgate req/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "added p50 ms",
        "÷ floor",
        "cpu µs/req",
        "cpu ÷ floor",
    ]
    rows = []
    keys = sorted(
        {(p.fmt, p.stream, p.conc) for p in points},
        key=lambda k: (list(MODELS).index(k[0]), k[1], k[2]),
    )
    labels = {"capgate": "{}", "floor": "{} (floor)", "litellm": "{} (LiteLLM)"}
    for fmt, stream, conc in keys:
        d = by.get(("direct", fmt, stream, conc))
        floor = by.get(("floor", fmt, stream, conc))
        for target, label in labels.items():
            g = by.get((target, fmt, stream, conc))
            if g is None:
                continue
            vs_floor = g.rps / floor.rps if floor and floor.rps and target != "floor" else None
            cpu_vs_floor = None  # the floor's CPU per request over this proxy's
            if floor and floor.cpu_us and g.cpu_us and target != "floor":
                cpu_vs_floor = floor.cpu_us / g.cpu_us
            rows.append(
                [
                    label.format(fmt),
                    "yes" if stream else "no",
                    str(conc),
                    fmt_num(d.rps if d else None, ",.0f"),
                    fmt_num(d.p50_ms if d else None, ".2f"),
                    fmt_num(d.p99_ms if d else None, ".2f"),
                    fmt_num(g.rps, ",.0f"),
                    fmt_num(g.p50_ms, ".2f"),
                    fmt_num(g.p99_ms, ".2f"),
                    fmt_num(g.rps / d.rps if d and d.rps else None, ".2f"),
                    fmt_num(g.p50_ms - d.p50_ms if d else None, "+.2f"),
                    fmt_num(vs_floor, ".2f"),
                    fmt_num(g.cpu_us, ",.0f"),
                    fmt_num(cpu_vs_floor, ".2f"),
                ]
            )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    if litellm or any(p.target == "floor" for p in points):
        print(
            "(rows marked floor / LiteLLM: the 'capgate' columns are that proxy's figures; "
            "÷ floor = req/s over the floor's; cpu ÷ floor = the floor's CPU per request over "
            "the proxy's)"
        )
    line = "  ".join(
        c.ljust(w) if i < 3 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        print(
            "  ".join(
                v.ljust(w) if i < 3 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def ledger_check(
    ledger: Any, points: list[Point], ttfbs: dict[str, Any], sanity_requests: int
) -> dict[str, Any] | None:
    """capgate's own request count against what the clients sent: at least every answer
    the clients saw, at most that plus the requests in flight when each wrk run stopped."""
    usage = ledger.get("usage") if isinstance(ledger, dict) else None
    if not isinstance(usage, list):
        return None
    counted = next((u.get("used") for u in usage if u.get("metric") == "requests"), None)
    cost = next((u.get("used") for u in usage if u.get("metric") == "cost_usd"), None)
    tokens = next((u.get("used") for u in usage if u.get("metric") == "tokens"), None)
    if not isinstance(counted, int):
        return None
    through = [p for p in points if p.target == "capgate"]
    seen = sum(p.requests + p.warmup_requests for p in through) + sanity_requests
    seen += sum(r["capgate"]["sent"] for r in ttfbs.values())
    in_flight = sum(p.connections * (2 if p.warmup_requests else 1) for p in through)
    ok = seen <= counted <= seen + in_flight
    text = (
        f"{'' if ok else '!!! '}ledger of key 'bench': {counted:,} requests, "
        f"{tokens:,} tokens, ${cost} (clients saw {seen:,} answers; at most {in_flight} "
        f"more were in flight when wrk runs stopped) -> "
        f"{'consistent' if ok else 'INCONSISTENT'}"
    )
    return {
        "requests": counted,
        "client_answers": seen,
        "in_flight_max": in_flight,
        "consistent": ok,
        "text": text,
    }


def print_ttfb(ttfbs: dict[str, Any]) -> None:
    """Added time to first byte and first event of streams, per format."""
    for fmt, r in ttfbs.items():
        d, g = r["direct"], r["capgate"]
        print(
            f"added TTFB, {fmt} stream, c=1 ({g['requests']} sequential requests, p50): "
            f"first byte {d['first_byte_ms']['p50']:.3f} -> {g['first_byte_ms']['p50']:.3f} ms "
            f"(+{g['first_byte_ms']['p50'] - d['first_byte_ms']['p50']:.3f} ms); "
            f"first event {d['first_event_ms']['p50']:.3f} -> {g['first_event_ms']['p50']:.3f} ms "
            f"(+{g['first_event_ms']['p50'] - d['first_event_ms']['p50']:.3f} ms)"
        )


def print_problems(
    bad: list[Point], sigpipe: dict[str, Any], crashes: list[dict[str, Any]], issues: list[str]
) -> None:
    """Everything that makes a run suspect, loudly."""
    if bad:
        print()
        print("!!! ERRORS DURING THE LOAD (non-2xx answers or socket errors):")
        for p in bad:
            errs = {k: v for k, v in p.errors.items() if v and k != "status"}
            print(f"!!!   {p.target} {p.fmt} stream={p.stream} c={p.conc}: {errs}")
    else:
        print("wrk: no non-2xx answers and no socket errors in any run.")
    if sigpipe["as_shipped"] == "DEFAULT":
        print()
        print(
            "!!! CAPGATE BUG: `capgate serve` keeps SIGPIPE at SIG_DFL (set in "
            "capgate/cli/main.py main()), so a client that disconnects while capgate writes "
            "to it kills the whole server."
        )
        if sigpipe["workaround"]:
            print(
                "!!!   This run used bench/capgate_sigpipe.py (SIGPIPE ignored, otherwise "
                "unchanged): the figures are those of a fixed capgate. --as-shipped runs it "
                "as installed."
            )
    if crashes:
        print()
        print(
            f"!!! CAPGATE DIED {len(crashes)} TIME(S) DURING THE RUN (restarted each time on "
            "its port; a death after a warm-up means that point was measured on a fresh process):"
        )
        for c in crashes:
            print(f"!!!   after {c['after']}: {c['what']}")
        if any("SIGPIPE" in c["what"] for c in crashes):
            print(
                "!!!   SIGPIPE: a client closed its connection while capgate was writing to it, and"
            )
            print(
                "!!!   capgate's CLI sets SIGPIPE to SIG_DFL (capgate/cli/main.py main()), which kills"
            )
            print(
                "!!!   the whole server; `serve` needs SIGPIPE ignored (SIG_IGN) so the write fails instead."
            )
    if issues:
        print(f"!!! capgate logged {len(issues)} error line(s); first ones:")
        for line in issues[:10]:
            print("!!!   " + line[:300])


def print_memory_series(series: list[dict[str, int]]) -> None:
    """RSS along the run: flat means no growth per request (a leak would climb)."""
    if len(series) < 3:
        return
    steps = ", ".join(f"{p['requests'] / 1000:,.0f}k: {p['rss_kb'] / 1024:.1f}" for p in series)
    half = series[len(series) // 2]
    last = series[-1]
    grown = (last["rss_kb"] - half["rss_kb"]) / 1024
    print(f"capgate resident memory (MiB) by requests served: {steps}")
    print(
        f"  from {half['requests']:,} to {last['requests']:,} requests: {grown:+.1f} MiB"
        f" ({grown * 1024 * 1024 / max(1, last['requests'] - half['requests']):+.1f} bytes per request)"
    )
