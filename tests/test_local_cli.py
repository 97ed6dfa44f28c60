"""`capgate local` as a user runs it: a real `capgate` process over session files in a
temporary HOME (hand-made lines for the edge cases), JSON and tables checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

WEBAPP = "-home-dev-webapp"


def claude_line(mid: str, rid: str, at: str, model: str = "claude-sonnet-4-6", **usage: Any) -> str:
    body = {"input_tokens": 100, "output_tokens": 10, **usage}
    data = {
        "type": "assistant", "sessionId": "s", "requestId": rid, "version": "2.1.330",
        "timestamp": at, "message": {"id": mid, "model": model, "usage": body},
    }  # fmt: skip
    return json.dumps(data, separators=(",", ":")) + "\n"


def codex_file(path: Path, cwd: str, model: str, at: str, tokens: tuple[int, int, int]) -> None:
    inp, cached, out = tokens
    usage = {"input_tokens": inp, "cached_input_tokens": cached, "output_tokens": out,
             "reasoning_output_tokens": 0, "total_tokens": inp + out}  # fmt: skip
    lines = [
        {"timestamp": at, "type": "session_meta", "payload": {"cwd": cwd}},
        {"timestamp": at, "type": "turn_context", "payload": {"model": model}},
        {"timestamp": at, "type": "event_msg",
         "payload": {"type": "token_count", "info": {"total_token_usage": usage}}},
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Two Claude Code projects (one with a subagent file), Codex active and archived
    sessions, an unknown model, duplicates, a bad line, a half-written line and an
    unreadable file."""
    projects = tmp_path / ".claude" / "projects"
    (projects / WEBAPP / "s1" / "subagents").mkdir(parents=True)
    (projects / WEBAPP / "s1.jsonl").write_text(
        claude_line("m1", "r1", "2026-12-04T10:00:00Z", output_tokens=5)
        + claude_line("m1", "r1", "2026-12-04T10:00:01Z", output_tokens=50)  # same answer
        + 'not json but has "usage":{ in it\n'
        + claude_line("m2", "r2", "2026-12-04T23:30:00Z", model="claude-nova-9")
    )
    (projects / WEBAPP / "s1" / "subagents" / "agent-a.jsonl").write_text(
        claude_line("m3", "r3", "2026-12-04T11:00:00Z", model="claude-haiku-4-5",
                    cache_creation={"ephemeral_5m_input_tokens": 0,
                                    "ephemeral_1h_input_tokens": 1000})
    )  # fmt: skip
    (projects / "-home-dev-api").mkdir()
    (projects / "-home-dev-api" / "s2.jsonl").write_text(
        claude_line("m4", "r4", "2026-12-05T09:00:00Z") + claude_line("m5", "r5", "2026-12")[:-30]
    )
    (projects / "-home-dev-api" / "broken.jsonl").mkdir()  # cannot be read as a file
    codex = tmp_path / ".codex"
    rel = Path("2026/12/04/rollout-2026-12-04T12-00-00-abc.jsonl")
    at = "2026-12-04T12:00:00Z"
    codex_file(codex / "sessions" / rel, "/home/dev/cli", "gpt-5.4", at, (1000, 400, 100))
    codex_file(codex / "archived_sessions" / rel, "/x", "gpt-5.4", at, (9, 9, 9))  # older copy
    codex_file(codex / "archived_sessions" / "old.jsonl", "/home/dev/old", "gpt-5", at, (10, 0, 1))
    return tmp_path


def local(
    home: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "local", *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "COLUMNS": "80", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_daily_json_counts_every_answer_once_in_the_chosen_zone(home: Path) -> None:
    data = json.loads(local(home, "daily", "--json", "--timezone", "UTC").stdout)
    days = {row["date"]: row for row in data["daily"]}
    assert sorted(days) == ["2026-12-04", "2026-12-05"]
    dec4 = days["2026-12-04"]
    # Claude m1 (kept copy: 50 out), m2 (unknown), subagent m3; Codex abc and old
    assert dec4["inputTokens"] == 100 + 100 + 100 + 600 + 10
    assert dec4["outputTokens"] == 50 + 10 + 10 + 100 + 1
    assert dec4["cacheCreationTokens"] == dec4["cacheCreation1hTokens"] == 1000
    assert dec4["cacheReadTokens"] == 400
    assert dec4["agents"] == ["claude", "codex"]
    assert dec4["unpricedModels"] == ["claude-nova-9"]
    expected_nano = (
        (100 * 3000 + 50 * 15000)  # sonnet-4-6
        + (100 * 1000 + 10 * 5000 + 1000 * 2000)  # haiku-4-5, 1h write at 2x input
        + (600 * 2500 + 400 * 250 + 100 * 15000)  # gpt-5.4
        + (10 * 1250 + 1 * 10000)  # gpt-5
    )  # nano-dollars per token = USD per million tokens x 1000
    assert round(dec4["totalCost"] * 1e9) == expected_nano
    assert data["totals"]["unpricedModels"] == ["claude-nova-9"]
    assert data["skipped"]["badLines"] == 2  # the bad line and the half-written one
    assert [Path(p).name for p in data["skipped"]["unreadableFiles"]] == ["broken.jsonl"]
    # in Tokyo (UTC+9), m2 at 23:30 UTC falls on the 5th
    tokyo = json.loads(local(home, "daily", "--json", "--timezone", "Asia/Tokyo").stdout)
    assert [r["date"] for r in tokyo["daily"]] == ["2026-12-04", "2026-12-05"]
    assert tokyo["daily"][1]["modelsUsed"] == ["claude-nova-9", "claude-sonnet-4-6"]
    assert tokyo["totals"]["totalTokens"] == data["totals"]["totalTokens"]


def test_filters_by_agent_project_and_dates(home: Path) -> None:
    codex = json.loads(local(home, "monthly", "--json", "--agent", "codex").stdout)
    assert codex["monthly"][0]["month"] == "2026-12"
    assert codex["monthly"][0]["modelsUsed"] == ["gpt-5", "gpt-5.4"]
    api = json.loads(
        local(home, "daily", "--json", "--project", WEBAPP, "--timezone", "UTC").stdout
    )
    assert api["totals"]["inputTokens"] == 300
    late = local(home, "daily", "--json", "--since", "20261205", "--until", "2026-12-05",
                 "--timezone", "UTC")  # fmt: skip
    assert [r["date"] for r in json.loads(late.stdout)["daily"]] == ["2026-12-05"]


def test_weeks_start_on_the_chosen_day_and_rows_come_in_the_chosen_order(home: Path) -> None:
    def keys(*args: str) -> list[str]:
        data = json.loads(local(home, *args, "--json", "--timezone", "UTC").stdout)
        return [r.get("week") or r.get("date") for r in data[args[0]]]

    # use on Friday 2026-12-04 and Saturday 2026-12-05
    assert keys("weekly") == ["2026-11-29"]  # Sunday
    assert keys("weekly", "--start-of-week", "monday") == ["2026-11-30"]
    assert keys("weekly", "--start-of-week", "Saturday") == ["2026-11-28", "2026-12-05"]
    assert keys("weekly", "--start-of-week", "saturday", "--order", "desc") == [
        "2026-12-05", "2026-11-28"
    ]  # fmt: skip
    assert keys("daily", "--order", "desc") == ["2026-12-05", "2026-12-04"]
    assert keys("daily", "--order", "asc") == ["2026-12-04", "2026-12-05"]
    table = local(home, "daily", "--order", "desc", "--timezone", "UTC").stdout
    assert table.index("2026-12-05") < table.index("2026-12-04")


def test_sessions_and_blocks_come_in_the_chosen_order(home: Path) -> None:
    def ids(*args: str) -> list[str]:
        data = json.loads(local(home, *args, "--json").stdout)
        return [r.get("sessionId") or r.get("id") for r in data[args[0].rstrip("s") + "s"]]

    costs = {r["sessionId"]: r["totalCost"] for r in
             json.loads(local(home, "session", "--json").stdout)["sessions"]}  # fmt: skip
    dearest = sorted(costs, key=lambda s: (-costs[s], s))
    assert len(set(costs.values())) == len(costs) > 2  # distinct costs: the order is the test
    assert ids("session") == ids("session", "--order", "desc") == dearest
    assert ids("session", "--order", "asc") == dearest[::-1]
    table = local(home, "session", "--order", "asc").stdout
    assert table.index(dearest[-1][:8]) < table.index(dearest[0][:8])
    blocks = ids("blocks")
    assert len(blocks) > 2 and blocks == sorted(blocks, key=lambda b: b.removeprefix("gap-"))
    assert ids("blocks", "--order", "desc") == blocks[::-1]
    bad = local(home, "session", "--order", "dearest", check=False)
    assert bad.returncode != 0 and "--order: desc (dearest first) or asc" in bad.stderr


def test_instances_report_each_project_apart(home: Path) -> None:
    plain = json.loads(local(home, "daily", "--json", "--timezone", "UTC").stdout)
    data = json.loads(local(home, "daily", "--json", "--instances", "--timezone", "UTC").stdout)
    projects = data["projects"]
    assert sorted(projects) == ["-home-dev-api", WEBAPP, "/home/dev/cli", "/home/dev/old"]
    assert [r["date"] for r in projects[WEBAPP]] == ["2026-12-04"]
    assert projects[WEBAPP][0]["inputTokens"] == 300  # m1, m2 and the subagent's m3
    assert [r["date"] for r in projects["-home-dev-api"]] == ["2026-12-05"]
    assert data["totals"] == plain["totals"] and data["skipped"] == plain["skipped"]
    for field in ("inputTokens", "outputTokens", "cacheReadTokens", "totalTokens"):
        assert sum(r[field] for rows in projects.values() for r in rows) == sum(
            r[field] for r in plain["daily"]
        )
    table = local(home, "daily", "--instances", "--timezone", "UTC").stdout
    assert f"project {WEBAPP}" in table and "project /home/dev/cli" in table
    assert max(len(x) for x in table.splitlines()) <= 80


def test_sessions_group_subagents_into_their_parent(home: Path) -> None:
    data = json.loads(local(home, "session", "--json", "--agent", "claude").stdout)
    sessions = {s["sessionId"]: s for s in data["sessions"]}
    assert sorted(sessions) == ["s1", "s2"]
    assert sessions["s1"]["modelsUsed"] == [
        "claude-haiku-4-5",
        "claude-nova-9",
        "claude-sonnet-4-6",
    ]
    assert sessions["s1"]["projectPath"] == WEBAPP
    assert sessions["s1"]["firstActivity"] == "2026-12-04T10:00:01.000Z"


def test_the_table_fits_80_columns_and_names_what_it_could_not_price(home: Path) -> None:
    for command in ("daily", "weekly", "monthly", "session"):
        out = local(home, command, "--breakdown").stdout
        assert max(len(x) for x in out.splitlines()) <= 80, out
        assert "claude-nova-9" in out and "skipped: 2 unreadable line(s), 1 unreadable" in out
    assert "└ haiku-4-5" in local(home, "daily", "--breakdown").stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("daily", "--timezone", "Mars/Olympus"), {}, "unknown time zone 'Mars/Olympus'"),
        (("daily", "--since", "2026-13-45"), {}, "--since: a date like"),
        (("daily", "--agent", "gemini"), {}, "--agent: one of claude, codex, all"),
        (("daily", "--order", "newest"), {}, "--order: asc (oldest first) or desc"),
        (("weekly", "--start-of-week", "funday"), {}, "--start-of-week: a day of the week"),
        (("daily",), {"CLAUDE_CONFIG_DIR": "/nowhere"}, "no Claude Code projects directory"),
    ],
)
def test_bad_input_is_a_clear_error(
    home: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    done = local(home, *args, check=False, **env)
    assert done.returncode != 0 and message in done.stderr and done.stdout == ""


def test_claude_config_dir_is_read_alone(
    home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "projects" / "p").mkdir(parents=True)
    (other / "projects" / "p" / "x.jsonl").write_text(claude_line("z", "z", "2026-12-01T00:00:00Z"))
    data = json.loads(local(home, "daily", "--json", "--agent", "claude",
                            CLAUDE_CONFIG_DIR=str(other)).stdout)  # fmt: skip
    assert data["totals"]["inputTokens"] == 100


def test_blocks_and_the_live_view_of_the_active_one(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    stamps = [now - timedelta(minutes=m) for m in (40, 20)]
    project = tmp_path / ".claude" / "projects" / "p"
    project.mkdir(parents=True)
    (project / "s.jsonl").write_text("".join(
        claude_line(f"m{i}", f"r{i}", t.isoformat().replace("+00:00", "Z"), output_tokens=1000)
        for i, t in enumerate(stamps)
    ))  # fmt: skip
    data = json.loads(local(tmp_path, "blocks", "--json").stdout)
    (block,) = data["blocks"]
    assert block["isActive"] and block["entries"] == 2 and block["totalTokens"] == 2200
    assert block["burnRate"]["tokensPerMinute"] == pytest.approx(2200 / 20, rel=0.01)
    assert block["projection"]["totalTokens"] > 2200
    live = local(tmp_path, "blocks", "--live", "--refresh", "0.1", "--stop-after", "2")
    assert "burn rate 110 tokens/min" in live.stdout and "projection by" in live.stdout


def read_cache(path: Path) -> dict[str, list[Any]]:
    """The cache file (`capgate.local.cache`'s layout) as {file: [size, mtime, bad, rows]}."""
    data = path.read_bytes()
    assert data.startswith(b"capgate local cache v2\n")
    at = int.from_bytes(data[-8:], "little")
    out = {}
    for file, (size, mtime, offset, length) in json.loads(data[at:-8]).items():
        bad, rows = json.loads(data[offset : offset + length])
        out[file] = [size, mtime, bad, rows]
    return out


def write_cache(path: Path, files: dict[str, list[Any]]) -> None:
    body, index = bytearray(b"capgate local cache v2\n"), {}
    for file, (size, mtime, bad, rows) in files.items():
        blob = json.dumps([bad, rows]).encode()
        index[file] = [size, mtime, len(body), len(blob)]
        body += blob
    at = len(body)
    path.write_bytes(bytes(body) + json.dumps(index).encode() + at.to_bytes(8, "little"))


def test_unchanged_files_come_from_the_cache_and_changed_ones_are_read(home: Path) -> None:
    old = home / ".cache" / "capgate" / "local-v1.json"  # the previous format's: removed
    old.parent.mkdir(parents=True)
    old.write_text("[1, {}]")
    first = json.loads(local(home, "daily", "--json").stdout)["totals"]
    cache = home / ".cache" / "capgate" / "local-v2.bin"
    assert cache.exists() and not old.exists()
    files = read_cache(cache)
    s2 = str(home / ".claude" / "projects" / "-home-dev-api" / "s2.jsonl")
    files[s2][3][0][6] += 1000  # the cached output tokens of s2's entry
    write_cache(cache, files)
    cached = json.loads(local(home, "daily", "--json").stdout)["totals"]
    assert cached["outputTokens"] == first["outputTokens"] + 1000  # read from the cache
    assert read_cache(cache) == files  # nothing changed: kept as it was
    fresh = json.loads(local(home, "daily", "--json", "--no-cache").stdout)["totals"]
    assert fresh == first
    os.utime(s2, ns=(0, 10**18))  # modified: read again
    assert json.loads(local(home, "daily", "--json").stdout)["totals"] == first
    files = read_cache(cache)
    assert files[s2][1] == 10**18 and files[s2][3][0][6] == 10  # the cache has it anew
    for damage in ("2026-12-05", None):  # a row's time not a number; a row cut short
        row = files[s2][3][0]
        files[s2][3][0] = [row[0], damage, *row[2:]] if damage else row[:5]
        write_cache(cache, files)
        assert json.loads(local(home, "daily", "--json").stdout)["totals"] == first
        files[s2][3][0] = row
    for garbage in (b"\x00garbage", cache.read_bytes()[:-3]):  # damaged, cut short: rebuilt
        cache.write_bytes(garbage)
        assert json.loads(local(home, "daily", "--json").stdout)["totals"] == first
        assert read_cache(cache) == files
    webapp = home / ".claude" / "projects" / WEBAPP / "s1.jsonl"
    webapp.unlink()  # a file gone: dropped from the cache, the others kept
    local(home, "daily", "--json")
    assert set(read_cache(cache)) == set(files) - {str(webapp)}


def test_a_copy_that_outranks_one_counted_already_is_counted_instead(tmp_path: Path) -> None:
    """A sidechain replay read before its main-chain copy, then a copy with more tokens:
    the streamed report cannot take back what it counted, and sums all entries at once."""
    projects = tmp_path / ".claude" / "projects"
    (projects / "-a").mkdir(parents=True)
    (projects / "-b").mkdir(parents=True)
    (projects / "-a" / "s.jsonl").write_text(
        claude_line("m1", "r-side", "2026-12-04T10:00:00Z", output_tokens=99).replace(
            '"sessionId"', '"isSidechain":true,"sessionId"'
        )
        + claude_line("m2", "r2", "2026-12-04T10:00:00Z", output_tokens=1)
    )
    (projects / "-b" / "t.jsonl").write_text(
        claude_line("m1", "r1", "2026-12-04T11:00:00Z", output_tokens=5)
        + claude_line("m3", "r3", "2026-12-05T11:00:00Z", output_tokens=7)
    )
    (projects / "-b" / "u.jsonl").write_text(claude_line("m3", "r3", "2026-12-05T12:00:00Z",
                                                         output_tokens=70))  # fmt: skip
    for extra in ((), ("--no-cache",), ()):
        data = json.loads(local(tmp_path, "daily", "--json", "--timezone", "UTC", *extra).stdout)
        assert [(r["date"], r["outputTokens"]) for r in data["daily"]] == [
            ("2026-12-04", 5 + 1), ("2026-12-05", 70)
        ]  # fmt: skip
    sessions = json.loads(local(tmp_path, "session", "--json").stdout)["sessions"]
    assert {s["sessionId"]: s["outputTokens"] for s in sessions} == {"s": 1, "t": 5, "u": 70}


QUICK_CHECK = """
import sys
from capgate.cli.entry import main
sys.argv = ["capgate", "local", *sys.argv[1:]]
try:
    main()
finally:
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"typer", "click", "pydantic", "rich"})
    print("imported:", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "quick"),
    [
        (("daily", "--json", "--timezone", "UTC"), True),
        (("session", "--json", "--order=asc", "--no-cache"), True),
        (("weekly", "--json", "--start-of-week", "monday", "--agent", "claude"), True),
        (("blocks", "--json"), True),
        (("daily", "--json", "--order", "newest"), False),  # typer says what is wrong
        (("daily", "--help"), False),
        (("daily", "--json", "--since"), False),
        (("daily", "--json", "--since", "--json"), False),  # click's value: a bad date
        (("daily", "--json", "--project", "-home-dev-api"), True),
    ],
)
def test_a_well_formed_report_starts_without_typer_pydantic_or_rich(
    home: Path, args: tuple[str, ...], quick: bool
) -> None:
    """A small report's time is mostly imports: a well-formed report command imports
    none of the command-line and validation libraries; anything else goes to typer."""
    done = subprocess.run(
        [sys.executable, "-c", QUICK_CHECK, *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ("imported: []" in done.stderr) == quick, done.stderr
    if quick:
        assert done.returncode == 0 and json.loads(done.stdout)
        normal = local(home, *args)  # the same as typer's app prints
        assert normal.stdout == done.stdout


def test_the_quick_start_knows_the_options_of_the_typer_app() -> None:
    import typer

    from capgate.cli.local import app
    from capgate.local import argv

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(argv.OPTIONS) == set(commands)
    for name, command in commands.items():
        theirs = {
            opt: argv.FLAG if param.is_flag else argv.VALUE
            for param in command.params
            for opt in param.opts
        }
        if name == "blocks":  # --live and its options: typer's
            assert set(theirs) - set(argv.OPTIONS[name]) == {"--live", "--refresh", "--stop-after"}
            theirs = {k: v for k, v in theirs.items() if k in argv.OPTIONS[name]}
        assert theirs == argv.OPTIONS[name], name
    assert argv.parse(["daily", "--since=2026-12-01", "--json"]) == (
        "daily", {"since": "2026-12-01", "json_out": True}
    )  # fmt: skip
    assert argv.parse(["daily", "--project", "-home-dev-api"]) == (
        "daily", {"project": "-home-dev-api"}
    )  # fmt: skip
    for bad in (["daily", "x"], ["daily", "--json=1"], ["daily", "--json", "--until"], ["nope"]):
        assert argv.parse(bad) is None


def test_the_default_zone_is_the_systems_with_its_summer_time(tmp_path: Path) -> None:
    project = tmp_path / ".claude" / "projects" / "p"
    project.mkdir(parents=True)
    (project / "s.jsonl").write_text(claude_line("m", "r", "2026-07-01T22:30:00Z"))
    data = json.loads(local(tmp_path, "daily", "--json", TZ="Europe/Berlin").stdout)
    assert [r["date"] for r in data["daily"]] == ["2026-07-02"]  # 00:30 CEST, not 23:30 CET


PARALLEL_CHECK = """
import json, sys
from pathlib import Path
from capgate.local import files
from capgate.local.cache import FileCache
from capgate.local.records import Skipped
files.PARALLEL_MIN_BYTES = 0
assert files._can_fork()  # else this would compare one process with itself
home = Path(sys.argv[1])
out = []
for workers in (1, 3):
    skipped, cache = Skipped(), FileCache(home / f"cache-{workers}.bin")
    entries = list(files.read_entries({"HOME": str(home)}, home, "all", skipped, cache, workers))
    cache.save()
    out.append([[repr(e) for e in entries], skipped.bad_lines, skipped.unreadable_files,
                (home / f"cache-{workers}.bin").read_bytes().hex()])
print(json.dumps(out))
"""


def test_parallel_reading_gives_what_one_process_reads(home: Path) -> None:
    """Files shared among forked processes (here even tiny ones): the same entries in the
    same order, the same bad lines and unreadable files, the same cache. (In a fresh
    interpreter: forking is only done where no other thread runs, and pytest's may.)"""
    done = subprocess.run(
        [sys.executable, "-c", PARALLEL_CHECK, str(home)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    one, three = json.loads(done.stdout)
    assert len(one[0]) == 6 and one[0] == three[0]
    assert one[1:3] == three[1:3] and one[1] == 2 and len(one[2]) == 1
    assert one[3] == three[3]
