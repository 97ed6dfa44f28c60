"""`capgate local`'s pure core: which Claude Code / Codex lines count, deduplication,
prices from capgate's table, date buckets in a zone, and 5-hour blocks. No I/O
but for the line finder, on temporary files."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from capgate.local import claude, codex, files
from capgate.local.blocks import blocks, burn
from capgate.local.cache import to_row
from capgate.local.costing import Costing
from capgate.local.dedup import Deduper, Undecided, dedupe
from capgate.local.records import EPOCH, Entry, Skipped
from capgate.local.report import Query, by_period, by_session
from capgate.pricing import PricingTable

COSTING = Costing(PricingTable.load())
MICRO = timedelta(microseconds=1)
UTC_QUERY = Query(zone=UTC)


def line(
    mid: str | None = "m1",
    rid: str | None = "r1",
    model: str = "claude-sonnet-4-6",
    at: str = "2026-12-04T10:00:00.000Z",
    sidechain: bool = False,
    **usage: Any,
) -> bytes:
    body: dict[str, Any] = {"input_tokens": 10, "output_tokens": 5, **usage}
    message: dict[str, Any] = {"model": model, "usage": body}
    if mid is not None:
        message["id"] = mid
    data: dict[str, Any] = {
        "type": "assistant",
        "sessionId": "s1",
        "version": "2.1.330",
        "timestamp": at,
        "isSidechain": sidechain,
        "message": message,
    }
    if rid is not None:
        data["requestId"] = rid
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def parse(*lines: bytes) -> tuple[list[Entry], Skipped]:
    skipped = Skipped()
    return list(claude.parse_lines(lines, "p", "s1", skipped)), skipped


def test_only_compact_usage_lines_count_and_bad_ones_are_counted() -> None:
    spaced = line().replace(b'"usage":{', b'"usage": {')
    broken = line()[:-40]  # half-written: no newline, not JSON
    entries, skipped = parse(line(), spaced, b'{"x":1,"usage":{oops}\n', broken)
    assert len(entries) == 1 and skipped.bad_lines == 2


def test_lines_with_nulls_or_bad_versions_are_not_entries() -> None:
    nulled = json.loads(line())
    nulled["requestId"] = None
    versioned = json.loads(line())
    versioned["version"] = "beta"
    no_time = json.loads(line())
    del no_time["timestamp"]
    lines = [json.dumps(d, separators=(",", ":")).encode() for d in (nulled, versioned, no_time)]
    entries, skipped = parse(*lines)
    assert entries == [] and skipped.bad_lines == 0


def test_cache_writes_split_5m_and_1h_and_1h_costs_twice_input() -> None:
    split = {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 1000}
    (entry,), _ = parse(
        line(input_tokens=0, output_tokens=0, cache_creation_input_tokens=1100,
             cache_creation=split)
    )  # fmt: skip
    assert (entry.cache_write_tokens, entry.cache_write_1h_tokens) == (100, 1000)
    # sonnet-4-6: 5m write $3.75/M, 1h write $6/M (2x input)
    assert COSTING.cost_nano(entry) == 100 * 3750 + 1000 * 6000
    (plain,), _ = parse(line(cache_creation_input_tokens=1100))
    assert (plain.cache_write_tokens, plain.cache_write_1h_tokens) == (1100, 0)


def test_a_message_is_counted_once_keeping_the_copy_with_most_tokens() -> None:
    entries, _ = parse(
        line(output_tokens=5),
        line(output_tokens=50),  # a later content block of the same answer
        line(output_tokens=20),
        line(mid="m2", rid="r2", output_tokens=1),
        line(mid=None, rid="r9"),  # no message id: never merged
        line(mid=None, rid="r9"),
    )
    kept = dedupe(entries)
    assert sorted(e.output_tokens for e in kept) == [1, 5, 5, 50]


def test_a_sidechain_replay_under_another_request_is_a_duplicate() -> None:
    entries, _ = parse(
        line(rid="r-side", sidechain=True, output_tokens=99),
        line(rid="r1", output_tokens=5),
        line(mid="m3", rid="a", sidechain=True),
        line(mid="m3", rid="b", sidechain=True),
    )
    kept = dedupe(entries)
    assert [(e.message_id, e.sidechain) for e in kept] == [("m1", False), ("m3", True)]


@given(st.permutations(list(range(6))))
def test_dedup_keeps_the_same_answers_whatever_the_order(order: list[int]) -> None:
    lines = [
        line(output_tokens=5),
        line(output_tokens=50),
        line(rid="r-side", sidechain=True, output_tokens=70),
        line(mid="m2", rid="r2", output_tokens=7),
        line(mid="m2", rid="r2", output_tokens=7, speed="standard"),
        line(mid=None, rid="x"),
    ]
    entries, _ = parse(*(lines[i] for i in order))
    kept = dedupe(entries)
    assert sorted((e.message_id or "", e.output_tokens) for e in kept) == [
        ("", 5), ("m1", 50), ("m2", 7)
    ]  # fmt: skip
    assert next(e for e in kept if e.message_id == "m2").has_speed


COPIES = st.lists(
    st.tuples(
        st.sampled_from(["m1", "m2", "m3", None]),  # message id
        st.sampled_from(["r1", "r2", None]),  # request id
        st.booleans(),  # sidechain
        st.integers(0, 3),  # output tokens
        st.booleans(),  # speed
    ),
    max_size=12,
)


@given(COPIES)
@example(
    [("m1", "r1", False, 1, False), ("m1", "r1", True, 3, False), ("m1", "r2", False, 0, False)]
)
@example([("m1", "r1", True, 1, False), ("m1", "r1", False, 1, False)])  # side, then main
def test_the_streamed_dedup_gives_what_dedupe_gives_or_says_it_cannot(
    copies: list[tuple[str | None, str | None, bool, int, bool]],
) -> None:
    """`Deduper` gives out the entries `dedupe` keeps, or raises `Undecided`
    (then `dedupe` is run); it only does so when a copy outranks one given out."""
    entries = [
        Entry("claude", n, "p", "s", "claude-sonnet-4-6", 1, out, message_id=mid,
              request_id=rid, sidechain=side, has_speed=speed)
        for n, (mid, rid, side, out, speed) in enumerate(copies)
    ]  # fmt: skip
    expected = dedupe(entries)
    try:
        streamed = list(Deduper()(entries))
    except Undecided:
        # only when a copy outranks an earlier one of its answer (main chain, tokens, speed)
        rank = lambda e: (not e.sidechain, e.total_tokens, e.has_speed)  # noqa: E731
        assert any(
            e.message_id and f.message_id == e.message_id and rank(e) > rank(f)
            for i, e in enumerate(entries) for f in entries[:i]
        )  # fmt: skip
        return
    # the same copies (in the stream's order: a copy that outranks an uncounted one of its
    # request comes where it is, not at the first copy's place)
    assert sorted(e.micros for e in streamed) == sorted(e.micros for e in expected)


def test_parent_first_sidechain_replays_are_dropped_as_they_come() -> None:
    entries, _ = parse(
        line(rid="r1", output_tokens=5),
        line(mid="m2", rid="r2", output_tokens=9),
        line(rid="r1", sidechain=True, output_tokens=5),  # a subagent's replays
        line(rid="r-side", sidechain=True, output_tokens=99),
        line(mid="m2", rid="r2", sidechain=True, output_tokens=9),
    )
    assert [(e.message_id, e.sidechain) for e in Deduper()(entries)] == [
        ("m1", False), ("m2", False)
    ]  # fmt: skip
    odd = [Entry("claude", 0, "p", "s", "m", message_id="\ud800m", request_id="\udfffr")] * 2
    assert len(list(Deduper()(odd))) == 1  # ids Python allows but UTF-8 does not: no crash


def test_a_sessions_file_comes_before_its_subagents_files(tmp_path: Path) -> None:
    """So that a subagent's replays of its parent's answers come after them (`Deduper`
    drops them as they come; the other way round it would have to run `dedupe`)."""
    project = tmp_path / "projects" / "-p"
    for rel in ("s.jsonl", "s/subagents/agent-a.jsonl", "s-2.jsonl", "t.jsonl"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("")
    found = [
        (p.relative_to(project).as_posix(), s) for p, _, s in files.claude_files([project.parent])
    ]
    assert found == [("s-2.jsonl", "s-2"), ("s.jsonl", "s"), ("s/subagents/agent-a.jsonl", "s"),
                     ("t.jsonl", "t")]  # fmt: skip


def test_streaming_a_report_holds_a_few_bytes_per_answer_not_the_answers() -> None:
    """The report of 100,000 answers (some copied) summed from a stream: what stays in
    memory is `Deduper`'s 32-byte records, not the entries (about 10 times more)."""
    import tracemalloc

    def stream() -> Iterator[Entry]:
        for n in range(100_000):
            yield Entry("claude", 1_764_000_000_000_000 + n * 10**7, "p", f"s{n // 50}",
                        "claude-sonnet-4-6", 10, 5, message_id=f"msg_{n:024d}",
                        request_id=f"req_{n:024d}", sidechain=n % 7 == 0)  # fmt: skip
            if n % 10 == 0:  # a sidechain replay
                yield Entry("claude", 0, "p", "x", "claude-sonnet-4-6", 10, 5,
                            message_id=f"msg_{n:024d}", request_id="other", sidechain=True)  # fmt: skip

    tracemalloc.start()
    try:
        _, total = by_period("daily", Deduper()(stream()), COSTING, UTC_QUERY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total.totals.entries == 100_000 and total.totals.output_tokens == 500_000
    assert peak < 100_000 * 60, peak  # 32 bytes a record and the bytearrays' slack


def variants() -> list[bytes]:
    """Lines to shuffle: copies of answers that tie, outrank or lose to each other, a usage
    that equals another only loosely (`5.0 == 5`, `True == 1`), lines that are no entry."""
    nulled = json.loads(line(output_tokens=900))
    nulled["cwd"] = None
    return [
        line(output_tokens=5),
        line(output_tokens=5),
        line(output_tokens=50),
        line(output_tokens=5.0),  # not an entry (output must be a whole number)
        line(cache_read_input_tokens=7.0),  # an entry whose read tokens count as 0 ...
        line(cache_read_input_tokens=7),  # ... which this copy outranks
        line(cache_read_input_tokens=True),
        line(cache_read_input_tokens=1),
        line(speed="fast", output_tokens=5),
        line(sidechain=True, output_tokens=80),
        line(sidechain=True, output_tokens=5),  # outranked by a main-chain copy that ties
        line(rid="r-side", sidechain=True, output_tokens=5),
        line(mid="m2", rid="r2", output_tokens=3),
        line(mid="m2", rid=None, output_tokens=3),
        line(mid=None, rid="x"),
        json.dumps(nulled, separators=(",", ":")).encode() + b"\n",
        b'{"bad":"usage":{\n',
        line(output_tokens=5)[:-20],  # half-written last line
        line(mid="m4").replace(b'"usage":{', b'"usage": {')[:-1],  # JSON, but not compact
    ]


@given(st.lists(st.sampled_from(range(19)), max_size=12))
@example([4, 5]).via("a loose copy first")
@example([10, 0]).via("a sidechain copy first")
@example([18]).via("an unterminated line without the marker")
def test_rows_of_a_file_are_its_deduplicated_entries(picks: list[int]) -> None:
    """The one-pass reader (`parse_rows`, which skips copies that cannot win) gives what
    parsing every line and deduplicating gives."""
    pool = variants()
    lines = [pool[i] for i in picks]
    fast, slow = Skipped(), Skipped()
    rows = claude.parse_rows(lines, "p", "s1", fast)
    expected = [to_row(e) for e in dedupe(claude.parse_lines(lines, "p", "s1", slow))]
    assert rows == expected and fast.bad_lines == slow.bad_lines
    found = [raw for raw in lines if claude.MARKER in raw or not raw.endswith(b"\n")]
    marked = Skipped()  # as the file reader finds them: `marked`
    assert claude.parse_rows(found, "p", "s1", marked, marked=True) == expected
    assert marked.bad_lines == slow.bad_lines


CONVERSATION = b'{"timestamp":"2026-12-04T10:00:00.000Z","type":"response_item",'
LINE_PARTS = [
    b"a", claude.MARKER, b"thread_spawn", b"x" * 5, CONVERSATION,
    CONVERSATION.replace(b'000Z"', b'000Z\\"'),  # an escaped quote: not that line's start
    CONVERSATION.replace(b"response_item", b"event_msg"),
]  # fmt: skip


@given(
    st.lists(st.lists(st.sampled_from(LINE_PARTS), max_size=3), max_size=30),
    st.booleans(),
    st.sampled_from([0, 1, 20]),
)
def test_the_file_readers_give_the_lines_a_full_read_would_parse(
    parts: list[list[bytes]], ends_in_newline: bool, whole: int
) -> None:
    """Claude Code's reader: the lines holding the marker; Codex's: every line but those
    of conversation (past the first `whole`); both: an unterminated last line."""
    lines = [b"".join(p) + b"\n" for p in parts]
    if lines and not ends_in_newline:
        lines[-1] = lines[-1][:-1]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.jsonl"
        path.write_bytes(b"".join(lines))
        with path.open("rb") as handle:
            lines = list(handle)  # as reading it line by line gives them
        got = list(files._marked_lines(path, claude.MARKER, Skipped()))
        assert got == [raw for raw in lines if claude.MARKER in raw or not raw.endswith(b"\n")]
        got = list(files._lines_but(path, codex.CONVERSATION, Skipped(), whole))
        assert got == [
            raw for number, raw in enumerate(lines)
            if number < whole or not raw.startswith(CONVERSATION) or not raw.endswith(b"\n")
        ]  # fmt: skip


def test_unknown_models_are_unpriced_and_synthetic_lines_free() -> None:
    entries, _ = parse(
        line(mid="a", model="claude-nova-9"), line(mid="b", model="<synthetic>"), line(mid="c")
    )
    rows, total = by_period("daily", dedupe(entries), COSTING, UTC_QUERY)
    assert total.totals.unpriced == {"claude-nova-9"}
    assert sorted(rows[0].models) == ["claude-nova-9", "claude-sonnet-4-6"]  # no <synthetic>
    assert total.totals.cost_nano == 10 * 3000 + 5 * 15000  # only the priced entry
    assert total.totals.input_tokens == 30  # tokens of all three


def test_dated_model_names_use_the_base_price_and_big_requests_the_gateways_price() -> None:
    (entry,), _ = parse(
        line(model="claude-sonnet-4-5-20250929", input_tokens=1_000_000, output_tokens=0)
    )
    assert COSTING.cost_nano(entry) == 3 * 10**9  # $3: no long-context tier (as the gateway)


def test_days_are_local_to_the_chosen_zone() -> None:
    entries, _ = parse(
        line(mid="a", at="2026-12-04T22:30:00Z"), line(mid="b", at="2026-12-05T01:30:00Z")
    )
    utc_rows, _ = by_period("daily", entries, COSTING, UTC_QUERY)
    assert [r.key for r in utc_rows] == ["2026-12-04", "2026-12-05"]
    tokyo = Query(zone=ZoneInfo("Asia/Tokyo"))
    assert [r.key for r in by_period("daily", entries, COSTING, tokyo)[0]] == ["2026-12-05"]
    la = Query(zone=ZoneInfo("America/Los_Angeles"), since=date(2026, 12, 4))
    assert [r.key for r in by_period("daily", entries, COSTING, la)[0]] == ["2026-12-04"]
    assert [r.key for r in by_period("weekly", entries, COSTING, UTC_QUERY)[0]] == [
        "2026-11-29"
    ]  # the week's Sunday
    assert [r.key for r in by_period("monthly", entries, COSTING, UTC_QUERY)[0]] == ["2026-12"]


def test_a_midnight_inside_a_quarter_hour_splits_the_days() -> None:
    """Days are found per UTC quarter hour when the zone's offset is whole quarters; not
    so Monrovia's -0:44:30 until 1972: a minute apart, two days."""
    entries = [
        Entry("claude", (datetime(1960, 1, 1, 0, m, s, tzinfo=UTC) - EPOCH) // MICRO, "p", "s",
              "claude-sonnet-4-6", 10, out)
        for m, s, out in ((44, 0, 1), (44, 50, 2))
    ]  # fmt: skip
    rows, _ = by_period("daily", entries, COSTING, Query(zone=ZoneInfo("Africa/Monrovia")))
    assert [(r.key, r.totals.output_tokens) for r in rows] == [("1959-12-31", 1), ("1960-01-01", 2)]


def test_sessions_are_dearest_first_and_filtered_on_their_last_day() -> None:
    skipped = Skipped()
    a = list(claude.parse_lines([line(mid="a", output_tokens=1000)], "p", "cheap", skipped))
    b = list(claude.parse_lines([line(mid="b", output_tokens=9000)], "p", "dear", skipped))
    c = list(claude.parse_lines([line(mid="c", at="2026-11-01T00:00:00Z")], "p", "old", skipped))
    rows, total = by_session(a + b + c, COSTING, Query(zone=UTC, since=date(2026, 12, 1)))
    assert [r.key for r in rows] == ["dear", "cheap"]
    assert total.totals.output_tokens == 10_000


def codex_lines(*events: dict[str, Any], spawn: bool = False) -> list[bytes]:
    head = [
        {"timestamp": "2026-12-04T10:00:00Z", "type": "session_meta",
         "payload": {"cwd": "/w/api", **({"source": "thread_spawn"} if spawn else {})}},
    ]  # fmt: skip
    return [json.dumps(e).encode() + b"\n" for e in head + list(events)]


def token_count(at: str, total: dict[str, int], last: dict[str, int] | None = None) -> Any:
    info: dict[str, Any] = {"total_token_usage": total}
    if last is not None:
        info["last_token_usage"] = last
    return {"timestamp": at, "type": "event_msg", "payload": {"type": "token_count", "info": info}}


def usage(i: int, c: int, o: int, r: int = 0) -> dict[str, int]:
    return {"input_tokens": i, "cached_input_tokens": c, "output_tokens": o,
            "reasoning_output_tokens": r, "total_tokens": i + o}  # fmt: skip


def test_codex_usage_from_last_or_from_the_growth_of_the_total() -> None:
    lines = codex_lines(
        {"timestamp": "2026-12-04T10:00:01Z", "type": "turn_context",
         "payload": {"model": "gpt-5.4"}},
        token_count("2026-12-04T10:00:02Z", usage(1000, 400, 100, 30), usage(1000, 400, 100, 30)),
        token_count("2026-12-04T10:00:03Z", usage(1000, 400, 100, 30)),  # no growth: dropped
        token_count("2026-12-04T10:00:04Z", usage(3000, 1400, 300, 30)),
        token_count("2026-12-04T10:00:05Z", usage(3100, 9999, 300), usage(100, 500, 0)),
    )  # fmt: skip
    lines.append(b'{"timestamp": "2026-12-04T10:0')  # half-written
    skipped = Skipped()
    entries = list(codex.parse_lines(lines, "2026/12/04/rollout-x", skipped))
    assert [(e.input_tokens, e.cache_read_tokens, e.output_tokens) for e in entries] == [
        (600, 400, 100), (1000, 1000, 200), (0, 100, 0)  # cached clamped to input
    ]  # fmt: skip
    assert entries[0].reasoning_tokens == 30 and entries[0].project == "/w/api"
    assert {e.model for e in entries} == {"gpt-5.4"} and skipped.bad_lines == 1
    # gpt-5.4: $2.50 in, $0.25 cached, $15 out
    assert COSTING.cost_nano(entries[0]) == 600 * 2500 + 400 * 250 + 100 * 15000


def test_codex_without_a_turn_context_is_gpt_5_and_subagent_replays_are_skipped() -> None:
    lines = codex_lines(
        token_count("2026-12-04T10:00:00.100Z", usage(500, 0, 50)),  # replayed parent
        token_count("2026-12-04T10:00:00.900Z", usage(900, 0, 90)),  # replayed parent
        token_count("2026-12-04T10:00:07Z", usage(1000, 0, 100)),
        spawn=True,
    )
    entries = list(codex.parse_lines(lines, "s", Skipped()))
    assert [(e.model, e.input_tokens, e.output_tokens) for e in entries] == [("gpt-5", 100, 10)]


def test_codex_rows_from_the_lines_read_are_those_of_every_line(tmp_path: Path) -> None:
    """The file reader leaves out the lines of conversation (Codex's `response_item`,
    even one that mentions a marker) past the first ones: the same entries and bad lines
    as parsing every line."""
    talk = CONVERSATION + b'"payload":{"type":"message","content":"a token_count"}}\n'
    events = [token_count(f"2026-12-04T10:{m:02d}:00Z", usage(100 * m, 10, m)) for m in range(30)]
    lines = [talk, b"not json\n", *codex_lines(*events, spawn=True)]
    lines = [x for line in lines for x in (line, talk)]  # conversation between events
    lines.append(CONVERSATION + b'"payload":{"ty')  # half-written
    path = tmp_path / "rollout.jsonl"
    path.write_bytes(b"".join(lines))
    every, read = Skipped(), Skipped()
    expected = [to_row(e) for e in codex.parse_lines(lines, "s", every)]
    found = files._lines_but(path, codex.CONVERSATION, read, codex.SPAWN_WINDOW)
    assert list(codex.parse_rows(found, "s", read)) == expected
    assert len(expected) == 29 and read.bad_lines == every.bad_lines == 1  # half-written


def at(hour: int, minute: int = 0, day: int = 4) -> str:
    return f"2026-12-{day:02d}T{hour:02d}:{minute:02d}:00Z"


def test_blocks_start_on_utc_hours_and_split_after_five_hours() -> None:
    entries, _ = parse(
        line(mid="a", at=at(11, 0)), line(mid="b", at=at(14, 59)), line(mid="c", at=at(16, 10)),
        line(mid="d", at=at(23, 30)),  # > 5 h after 16:10: a gap before it
    )  # fmt: skip
    now = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
    found = blocks(entries, COSTING, now)
    assert [(b.id, b.totals.entries) for b in found] == [
        ("2026-12-04T11:00:00.000Z", 2),
        ("2026-12-04T16:00:00.000Z", 1),
        ("gap-2026-12-04T21:10:00.000Z", 0),
        ("2026-12-04T23:00:00.000Z", 1),
    ]
    assert [b.active for b in found] == [False, False, False, True]


def test_the_active_blocks_burn_rate_and_projection() -> None:
    entries, _ = parse(
        line(mid="a", at=at(10, 0), input_tokens=0, output_tokens=1000),
        line(mid="b", at=at(10, 10), input_tokens=0, output_tokens=1000),
    )
    now = datetime(2026, 12, 4, 10, 20, tzinfo=UTC)
    (block,) = blocks(entries, COSTING, now)
    pace = burn(block, now)
    assert pace is not None and block.active
    assert pace.tokens_per_minute == 200 and pace.remaining_minutes == 280
    assert pace.projected_tokens == 2000 + 200 * 280
    assert pace.projected_cost_nano == 2000 * 15000 + 200 * 280 * 15000
    later = now + timedelta(hours=6)
    (done,) = blocks(entries, COSTING, later)
    assert not done.active and burn(done, later) is None


def reference_row(data: Any) -> tuple[Any, ...] | None:
    """ccusage's rules for a Claude Code line, written plainly (the reader's `_row` is the
    same, written for speed): the row, or None when the line is not an entry."""
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        return None
    message = data["message"]
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return None

    def count(value: Any) -> int:
        return value if type(value) is int and value >= 0 else 0

    nullable = [data.get(k, 0) for k in ("cwd", "costUSD", "version", "isApiErrorMessage")]
    nullable += [usage.get(k, 0) for k in ("speed", "cache_creation_input_tokens",
                                           "cache_read_input_tokens")]  # fmt: skip
    ids = [data.get("sessionId", 0), data.get("requestId", 0)]
    ids += [message.get("id", 0), message.get("model", 0)]
    if any(v is None for v in nullable + ids) or any(v == "" for v in ids):
        return None
    version = data.get("version")
    if version is not None and not (isinstance(version, str) and version[:1].isdigit()
                                    and claude._VERSION.match(version)):  # fmt: skip
        return None
    when = claude.parse_timestamp(data.get("timestamp"))
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if when is None or type(inp) is not int or inp < 0 or type(out) is not int or out < 0:
        return None
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        writes = (
            count(split.get("ephemeral_5m_input_tokens", 0)),
            count(split.get("ephemeral_1h_input_tokens", 0)),
        )
    else:
        writes = count(usage.get("cache_creation_input_tokens", 0)), 0
    mid, rid, model = message.get("id"), data.get("requestId"), message.get("model")
    return (
        "claude", (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
        "p", "s", model if isinstance(model, str) else "(unknown)", inp, out, *writes,
        count(usage.get("cache_read_input_tokens", 0)), 0,
        mid if isinstance(mid, str) else None, rid if isinstance(rid, str) else None,
        data.get("isSidechain") is True, "speed" in usage,
    )  # fmt: skip


ODD = st.sampled_from([None, 0, -3, 7, 7.0, True, "", "x", "2.1", [], {}])
GONE = object()


def changed(base: dict[str, Any], values: Any = ODD) -> Any:
    """`base` with up to 3 of its fields given odd values or taken out."""
    changes = st.dictionaries(st.sampled_from(sorted(base)), values | st.just(GONE), max_size=3)
    return changes.map(lambda c: {k: v for k, v in {**base, **c}.items() if v is not GONE})


FIELDS = changed({"cwd": "/w", "costUSD": 0.1, "version": "2.1.330", "isApiErrorMessage": False,
                  "sessionId": "s", "requestId": "r", "isSidechain": True,
                  "timestamp": "2026-12-04T10:00:00.123Z"})  # fmt: skip
MESSAGE = changed({"id": "m", "model": "claude-sonnet-4-6"})
SPLIT = changed({"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 3})
USAGE = changed({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 4,
                 "cache_read_input_tokens": 3, "speed": "fast",
                 "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 3}},
                ODD | SPLIT)  # fmt: skip


VALID = ({"sessionId": "s", "requestId": "r", "timestamp": "2026-12-04T10:00:00Z"},
         {"id": "m", "model": "x"}, {"input_tokens": 1, "output_tokens": 2})  # fmt: skip


@settings(max_examples=1000)  # pure and fast: many shapes
@given(FIELDS, MESSAGE, USAGE)
@example({**VALID[0], "isApiErrorMessage": None}, *VALID[1:]).via("a null field")
@example(*VALID[:2], {**VALID[2], "cache_read_input_tokens": True}).via("a bool count")
@example({**VALID[0], "requestId": ""}, *VALID[1:]).via("an empty request id")
@example(*VALID[:2], {**VALID[2], "cache_creation": {"ephemeral_1h_input_tokens": 7.0}}).via(
    "a float 1-hour write"
)
def test_a_line_makes_the_row_the_plain_rules_make(
    fields: dict[str, Any], message: dict[str, Any], usage: dict[str, Any]
) -> None:
    data = {**fields, "message": {**message, "usage": usage}}
    line = claude.read(json.dumps(data).encode(), Skipped())
    found = None if line is None else claude.row_of(line, "p", "s")
    assert (None if found is None else found[0]) == reference_row(data)
    if found is not None:  # whole: every cache count an int (not a float or a bool)
        split = usage.get("cache_creation")
        counts = [usage.get("cache_read_input_tokens", 0)] + (
            [split.get("ephemeral_5m_input_tokens", 0), split.get("ephemeral_1h_input_tokens", 0)]
            if isinstance(split, dict) else [usage.get("cache_creation_input_tokens", 0)]
        )  # fmt: skip
        assert found[1] == all(type(c) is int for c in counts)
