"""`duplicate_key` without a server: its one-pass filter finds what a count per watched
name found, and bodies as large as Claude Code's stay cheap to check."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.wire.duplicates import NESTED, TOP_LEVEL, duplicate_key


def by_counts(raw: bytes, body: object) -> str | None:
    """The definition the one-pass filter replaced: count each name `body` has."""
    if not isinstance(body, dict):
        return None
    names = [n for n in TOP_LEVEL if n in body] + [NESTED[n] for n in NESTED if n in body]
    if not any(raw.count(f'"{name}"'.encode()) > 1 for name in names):
        return None
    return duplicate_key(raw, body)


NAMES = [*TOP_LEVEL, *NESTED.values(), "role", "content", "type", "input_tokens", "streams"]
SCALARS = st.one_of(st.integers(0, 9), st.booleans(), st.sampled_from([*NAMES, 'a"stream"b']))
OBJECTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(st.sampled_from(NAMES), inner), max_size=4),
    ),
    max_leaves=12,
)


def encode(value: object) -> bytes:
    """JSON with objects as pair lists, so a name can be there twice."""
    if isinstance(value, list) and all(isinstance(v, tuple) for v in value) and value:
        return b"{" + b",".join(orjson.dumps(k) + b":" + encode(v) for k, v in value) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    return orjson.dumps(value)


@settings(max_examples=400, deadline=None)
@given(top=st.lists(st.tuples(st.sampled_from(NAMES), OBJECTS), min_size=1, max_size=6))
def test_the_same_answer_as_counting_each_name(top: list[tuple[str, object]]) -> None:
    raw = encode(top) if top else b"{}"
    body = orjson.loads(raw)
    assert duplicate_key(raw, body) == by_counts(raw, body)


def test_a_tool_use_input_many_times_is_not_a_candidate() -> None:
    """`input` is watched at the top level (Responses); Anthropic tool_use blocks hold it
    in every block, which must not send the body to the slow second parse."""
    blocks = [{"type": "tool_use", "id": f"t{i}", "name": "Read", "input": {}} for i in range(50)]
    raw = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"content": blocks}]})
    assert duplicate_key(raw, orjson.loads(raw)) is None
    twice = raw[:-1] + b',"max_tokens":6}'
    assert duplicate_key(twice, orjson.loads(twice)) == "max_tokens"


class _Scans(bytes):
    """Bytes that count the searches made over them with their own methods."""

    made = 0

    def count(self, *args: object) -> int:  # type: ignore[override]
        _Scans.made += 1
        return super().count(*args)  # type: ignore[arg-type]

    def find(self, *args: object) -> int:  # type: ignore[override]
        _Scans.made += 1
        return super().find(*args)  # type: ignore[arg-type]


def test_a_large_body_is_scanned_once_not_once_per_name() -> None:
    """A long Claude Code body (~0.9 MB) has nine watched names: a `bytes.count` for each
    took ~3.2 ms here, the one pass of a regular expression ~0.7 ms (no timing is
    asserted: docs/performance.md, "Below the server"). Its answer is the same."""
    text = "the quick brown fox jumps over the lazy dog " * 50
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}] * 400
    body = {"model": "m", "max_tokens": 5, "system": text, "stream": True, "messages": messages}
    body |= {"tools": [{"name": "x", "input_schema": {}}], "thinking": {"budget_tokens": 2000}}
    plain = orjson.dumps(body)
    parsed = orjson.loads(plain)
    _Scans.made = 0
    assert duplicate_key(_Scans(plain), parsed) is None
    assert _Scans.made == 0
    assert by_counts(plain, parsed) is None


def test_a_name_spelled_with_an_escape_is_the_same_name() -> None:
    """`"max\\u005ftokens"` is `max_tokens` to every parser: a body with both is refused,
    whichever comes first and wherever the escape is (found by review, session 11)."""
    cases = {
        rb'{"max_tokens":100000,"max\u005ftokens":10}': "max_tokens",
        rb'{"max\u005Ftokens":10,"max_tokens":100000}': "max_tokens",
        rb'{"thinking":{"budget_tokens":5,"budget\u005ftokens":9000}}': "budget_tokens",
        rb'{"\u0073tream":true,"stream":false}': "stream",
        rb'{"\u006d\u006f\u0064\u0065\u006c":"a","model":"b"}': "model",
    }
    for raw, name in cases.items():
        assert duplicate_key(raw, orjson.loads(raw)) == name, raw
    plain = rb'{"model":"caf\u00e9","max_tokens":1,"messages":[{"content":"\u00fcber"}]}'
    assert duplicate_key(plain, orjson.loads(plain)) is None
