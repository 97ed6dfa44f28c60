"""A large, realistic corpus of Claude Code and Codex session files for benchmarking
`capgate local` against ccusage (bench/local_bench.py).

    python bench/local_corpus.py HOME_DIR --megabytes 500 --files 3000

Writes HOME_DIR/.claude/projects/<project>/<session>.jsonl (with subagent files) and
HOME_DIR/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl, the shapes Claude Code 2.1 and Codex
0.169 write: user turns with tool results of a few KB, one assistant line per content
block (thinking, text, tool_use) sharing the message's id and usage, sidechain replays,
Codex response items and cumulative token_count events. Deterministic (seeded)."""

from __future__ import annotations

import argparse
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CLAUDE_MODELS = ("claude-sonnet-4-6", "claude-opus-4-7", "claude-haiku-4-5", "claude-sonnet-4-5")
CODEX_MODELS = ("gpt-5.2-codex", "gpt-5-mini", "gpt-5")
WORDS = [
    "the",
    "a",
    "function",
    "returns",
    "value",
    "file",
    "test",
    "error",
    "fix",
    "build",
    "module",
    "import",
    "type",
]
START = datetime(2026, 9, 1, tzinfo=UTC)


def text(rng: random.Random, size: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(size // 5))


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"


def claude_session(rng: random.Random, project: str, session: str, when: datetime,
                   turns: int, sidechain: bool = False) -> list[str]:  # fmt: skip
    lines = []
    cwd = "/" + project.strip("-").replace("-", "/")
    base = {"sessionId": session, "version": "2.1.330", "cwd": cwd, "gitBranch": "main",
            "userType": "external", "isSidechain": sidechain}  # fmt: skip
    model = rng.choice(CLAUDE_MODELS)
    context = 12_000
    for _ in range(turns):
        when += timedelta(seconds=rng.randint(5, 400))
        content = text(rng, rng.choice((200, 2000, 6000)))
        lines.append(dump({**base, "type": "user", "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
                           "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           "message": {"role": "user", "content": [
                               {"type": "tool_result", "tool_use_id": "toolu_x", "content": content}]}}))  # fmt: skip
        mid = f"msg_{rng.getrandbits(64):016x}"
        rid = f"req_{rng.getrandbits(64):016x}"
        written = rng.randint(0, 4000)
        one_hour = written if rng.random() < 0.3 else 0
        usage = {"input_tokens": rng.randint(1, 50), "output_tokens": rng.randint(20, 2000),
                 "cache_creation_input_tokens": written, "cache_read_input_tokens": context,
                 "cache_creation": {"ephemeral_5m_input_tokens": written - one_hour,
                                    "ephemeral_1h_input_tokens": one_hour},
                 "service_tier": "standard"}  # fmt: skip
        context += written
        blocks = [{"type": "thinking", "thinking": text(rng, 800)},
                  {"type": "text", "text": text(rng, 400)},
                  {"type": "tool_use", "id": "toolu_x", "name": "Read",
                   "input": {"file_path": "/x/" + text(rng, 20)}}]  # fmt: skip
        for block in blocks[: rng.randint(1, 3)]:
            when += timedelta(milliseconds=rng.randint(50, 900))
            lines.append(dump({**base, "type": "assistant", "requestId": rid,
                               "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
                               "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               "message": {"id": mid, "type": "message", "role": "assistant",
                                           "model": model, "content": [block],
                                           "stop_reason": None, "usage": usage}}))  # fmt: skip
    return lines


def codex_session(rng: random.Random, when: datetime, turns: int) -> list[str]:
    sid = str(uuid.UUID(int=rng.getrandbits(128)))
    stamp = lambda: when.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    lines = [dump({"timestamp": stamp(), "type": "session_meta",
                   "payload": {"id": sid, "cwd": f"/home/dev/code/svc{rng.randint(1, 20)}",
                               "cli_version": "0.169.0", "instructions": text(rng, 3000)}})]  # fmt: skip
    total = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0,
             "reasoning_output_tokens": 0, "total_tokens": 0}  # fmt: skip
    model = rng.choice(CODEX_MODELS)
    for _ in range(turns):
        when += timedelta(seconds=rng.randint(5, 300))
        lines.append(dump({"timestamp": stamp(), "type": "turn_context",
                           "payload": {"cwd": "/home/dev", "model": model}}))  # fmt: skip
        lines.append(dump({"timestamp": stamp(), "type": "response_item",
                           "payload": {"type": "message", "role": "assistant",
                                       "content": [{"type": "output_text",
                                                    "text": text(rng, 3000)}]}}))  # fmt: skip
        inp = rng.randint(2000, 30000)
        last = {"input_tokens": inp, "cached_input_tokens": rng.randint(0, inp),
                "output_tokens": rng.randint(10, 3000), "reasoning_output_tokens": 0}  # fmt: skip
        last["reasoning_output_tokens"] = last["output_tokens"] // 3
        last["total_tokens"] = last["input_tokens"] + last["output_tokens"]
        total = {k: total[k] + last[k] for k in total}
        lines.append(dump({"timestamp": stamp(), "type": "event_msg",
                           "payload": {"type": "token_count",
                                       "info": {"total_token_usage": total,
                                                "last_token_usage": last}}}))  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    per_file = int(args.megabytes * 2**20 / args.files)
    written = 0
    for n in range(args.files):
        when = START + timedelta(minutes=rng.randint(0, 90 * 24 * 60))
        if n % 5 == 4:  # a fifth are Codex sessions
            day = when.strftime("%Y/%m/%d")
            path = (
                args.home
                / ".codex"
                / "sessions"
                / day
                / f"rollout-{when:%Y-%m-%dT%H-%M-%S}-{n:08d}.jsonl"
            )
            lines: list[str] = []
            while sum(map(len, lines)) < per_file:
                lines += codex_session(rng, when, 5)
        else:
            project = f"-home-dev-code-project{n % 40}"
            session = str(uuid.UUID(int=rng.getrandbits(128)))
            path = args.home / ".claude" / "projects" / project / f"{session}.jsonl"
            lines = []
            while sum(map(len, lines)) < per_file:
                lines += claude_session(rng, project, session, when, 10)
            if n % 10 == 0:  # a subagent, replaying part of its parent as a sidechain
                sub = path.with_suffix("") / "subagents" / f"agent-{n:08x}.jsonl"
                sub.parent.mkdir(parents=True, exist_ok=True)
                replay = [line.replace('"isSidechain":false', '"isSidechain":true')
                          for line in lines[:20]]  # fmt: skip
                sub.write_text(
                    "".join(replay + claude_session(rng, project, session, when, 5, True))
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(lines)
        path.write_text(body)
        written += len(body)
    print(f"{args.files} files, {written / 2**20:.0f} MB under {args.home}")


if __name__ == "__main__":
    main()
