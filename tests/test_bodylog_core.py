"""Prompt and answer logging's pure parts (capgate.bodylog): redaction by a table of
positives and negatives, custom patterns checked at load (catastrophic ones refused),
the capture's bounds and the cut with its marker."""

from __future__ import annotations

import time

import pytest

from capgate.bodylog.capture import MARGIN, BodyCapture, cut
from capgate.bodylog.redact import Redactor, compile_custom, luhn
from capgate.config import ConfigError, load_config

REDACT = Redactor()

# (text, what it must become)
POSITIVES = [
    ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx-yz_0123 end", "key [REDACTED:anthropic_key] end"),
    ("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "[REDACTED:openai_key]"),
    ("openai sk-AbCdEfGhIjKlMnOpQrStUvWxYz01", "openai [REDACTED:openai_key]"),
    ("mine: sk-cg-a1b2c3d4e5f6-SecretSecretSecret", "mine: [REDACTED:capgate_key]"),
    ("machine cgh-a1b2c3d4e5f6-SecretSecret", "machine [REDACTED:capgate_key]"),
    ("code cgi-ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "code [REDACTED:capgate_key]"),
    ("id AKIAIOSFODNN7EXAMPLE here", "id [REDACTED:aws_key] here"),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "[REDACTED:aws_secret]",
    ),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345", "token [REDACTED:github_token]"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "[REDACTED:github_token]"),
    ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: [REDACTED:bearer]"),
    ("write to jane.doe+work@mail.example.co.uk today", "write to [REDACTED:email] today"),
    ("card 4111 1111 1111 1111 exp", "card [REDACTED:card] exp"),
    ("card 4111-1111-1111-1111", "card [REDACTED:card]"),
    ("amex 378282246310005.", "amex [REDACTED:card]."),
    ('{"content":"my card is 5555555555554444"}', '{"content":"my card is [REDACTED:card]"}'),
]

# Left as they are: near misses.
NEGATIVES = [
    "order 4111 1111 1111 1112 (not a card: the Luhn check fails)",
    "timestamp 1733380000123 and phone 0123456789",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "sk-short and sk-ant-tiny",
    "an @ sign alone, user@localhost, and a@b",
    "bearer of bad news",
    "AKIA is a prefix, AKIAshort too",
    "ghp_short",
    "the key-value store",
    "id chatcmpl-mock66879518091044abb (Luhn-valid digits inside a hex id)",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVES)
def test_built_in_rules_redact(text: str, expected: str) -> None:
    assert REDACT(text) == expected


@pytest.mark.parametrize("text", NEGATIVES)
def test_near_misses_are_left_alone(text: str) -> None:
    assert REDACT(text) == text


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("378282246310005")
    assert not luhn("4111111111111112") and not luhn("1234567812345678")


def test_custom_patterns_apply_after_the_built_ins() -> None:
    redact = Redactor(compile_custom({"ticket": r"\bTICKET-\d{4,}\b", "badge": r"B\d{6}"}))
    assert redact("see TICKET-12345 and B123456 at x@y.io") == (
        "see [REDACTED:ticket] and [REDACTED:badge] at [REDACTED:email]"
    )


@pytest.mark.parametrize(
    ("patterns", "reason"),
    [
        ({"bad": "(a+)+b"}, "backtrack"),
        ({"bad": r"(\w*)*@"}, "backtrack"),
        ({"bad": r"(?:x|y+)*z"}, "backtrack"),
        ({"bad": "(unclosed"}, "not a valid regular expression"),
        ({"bad": "a*"}, "empty string"),
        ({"Bad Name": "x"}, "a name is"),
        ({"long": "x" * 1001}, "longer than"),
    ],
)
def test_bad_custom_patterns_are_refused_at_load(patterns: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        compile_custom(patterns)


def test_possessive_and_atomic_repeats_are_allowed_and_fast() -> None:
    rules = compile_custom({"p": "(a++)+b", "q": "(?>a+)+c"})
    started = time.perf_counter()
    assert Redactor(rules)("a" * 5000 + "!") == "a" * 5000 + "!"
    assert time.perf_counter() - started < 1


def test_a_bad_pattern_in_the_config_stops_the_start(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text("server:\n  redact_patterns:\n    evil: '(a+)+$'\n")
    with pytest.raises(ConfigError, match="redact_patterns"):
        load_config(str(path))


def test_capture_keeps_the_cap_plus_a_margin_and_counts_everything() -> None:
    capture = BodyCapture.of("req_1", b"x" * 5000, 1024, 1.0)
    assert len(capture.request) == 1024 + MARGIN and capture.request_bytes == 5000
    for _ in range(100):
        capture.feed(b"y" * 100)
    assert len(capture.answer) == 1024 + MARGIN and capture.answer_bytes == 10_000


def test_cut_marks_what_it_cut_and_keeps_what_fits() -> None:
    assert cut("short", 1024, 5) == ("short", False)
    # Redaction may make a part longer than it was: what fit the cap stays whole.
    assert cut("[REDACTED:email]" * 100, 1024, 1000) == ("[REDACTED:email]" * 100, False)
    text, was_cut = cut("é" * 2000, 1024, 4000)
    assert was_cut and text.startswith("é" * 512)
    assert text.endswith("\n[TRUNCATED: 4000 bytes in all, the first 1024 kept]")


def test_a_secret_across_the_cap_is_redacted_whole() -> None:
    secret = "sk-ant-api03-" + "S" * 40
    raw = ("a" * 1010 + " " + secret + " " + "b" * 3000).encode()
    capture = BodyCapture.of("req_2", raw, 1024, 1.0)
    text, was_cut = cut(REDACT(capture.request.decode()), 1024, capture.request_bytes)
    assert was_cut and "SSSS" not in text and "sk-ant" not in text


def _sse(*events: dict[str, object]) -> bytes:
    import orjson

    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


def test_a_secret_split_over_deltas_is_assembled_and_redacted() -> None:
    from capgate.bodylog.assemble import assemble

    deltas = ["mail bob.se", "cret@exa", "mple.com now"]
    raw = _sse(
        {"type": "message_start", "message": {"id": "m"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        *({"type": "content_block_delta", "delta": {"type": "text_delta", "text": d}} for d in deltas),
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "name": "lookup"}},
        {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": '{"q":'}},
        {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": ' "x"}'}},
        {"type": "message_stop"},
    )  # fmt: skip
    raw += b'data: {"type": "content_block_delta", "delta": {"text": "cut by the ca'
    text = assemble("messages", raw)
    assert text == 'mail bob.secret@example.com now\n[tool_use lookup] {"q": "x"}'
    assert REDACT(text).startswith("mail [REDACTED:email] now")
    assert "bob.secret" not in REDACT(text) and "[REDACTED" not in REDACT(raw.decode())


def test_chat_and_responses_streams_are_assembled() -> None:
    from capgate.bodylog.assemble import assemble

    chat = (
        _sse(
            {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"delta": {"content": "Hel"}}]},
            {"choices": [{"delta": {"content": "lo"}}]},
            {
                "choices": [
                    {"delta": {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}
                ]
            },
            {"choices": [], "usage": {"prompt_tokens": 3}},
        )
        + b"data: [DONE]\n\n"
    )
    assert assemble("chat", chat) == "Hello\n[tool_call f] {}"
    responses = _sse(
        {"type": "response.created", "response": {}},
        {"type": "response.output_text.delta", "delta": "Hi "},
        {"type": "response.output_text.delta", "delta": "there"},
        {"type": "response.output_item.added", "item": {"type": "function_call", "name": "g"}},
        {"type": "response.function_call_arguments.delta", "delta": '{"a":1}'},
    )
    assert assemble("responses", responses) == 'Hi there\n[function_call g] {"a":1}'
