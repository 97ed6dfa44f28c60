"""Redaction of logged bodies, pure: secrets and personal data are replaced by
`[REDACTED:<kind>]` before anything is written.

Built-in kinds: API keys of Anthropic, OpenAI, AWS, GitHub and capgate's own forms
(`sk-cg-`, `cgh-`, `cgi-`), bearer tokens, e-mail addresses, and card numbers (13 to 19
digits that pass the Luhn check, so order numbers and timestamps stay). Custom patterns
come from the config (`server.redact_patterns`, name -> regex).

Python's `re` has no timeout, so a pattern with catastrophic backtracking could hold a
process: custom patterns are compiled at load, and refused there when a repeated part
itself holds a repeat (`(a+)+`, `(\\w*)*`, the shape of exponential backtracking);
possessive quantifiers and atomic groups (`(?>...)`, `a++`) are allowed, since they never
backtrack. The input is bounded as well: at most the body cap plus a small margin is
redacted (then cut to the cap), so no pattern ever sees more than that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_PATTERN = 1000  # characters of one custom pattern


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    luhn: bool = False  # replace only matches whose digits pass the Luhn check


# Most specific first: Anthropic's and capgate's keys before the generic `sk-` of OpenAI.
BUILT_IN: tuple[Rule, ...] = (
    Rule("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{16,}")),
    Rule("capgate_key", re.compile(r"\b(?:sk-cg-|cgh-|cgi-)[A-Za-z0-9_-]{12,}")),
    Rule("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    Rule("aws_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")),
    Rule(
        "aws_secret",
        re.compile(r"(?i)\baws_secret_access_key\b[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}"),
    ),
    Rule(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    ),
    Rule("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{8,}=*")),
    Rule(
        "email",
        re.compile(
            r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
        ),
    ),
    # Digits inside a word (hex ids, hashes) are not card numbers.
    Rule("card", re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"), luhn=True),
)


def _nested_repeat(pattern: str) -> bool:
    """Whether a repeat (*, +, {m,}) holds another unbounded repeat: the shape of
    catastrophic backtracking. Reads the pattern with the `re` module's own parser."""
    from re import _parser as parser  # type: ignore[attr-defined]  # no public parser

    unbounded = parser.MAXREPEAT
    repeats = {parser.MAX_REPEAT, parser.MIN_REPEAT}

    def walk(items: Any, inside: bool) -> bool:
        for op, arg in items:
            if op in repeats:
                _low, high, body = arg
                open_ended = high == unbounded or high > 100
                if open_ended and inside:
                    return True
                if walk(body, inside or open_ended):
                    return True
            elif op is parser.SUBPATTERN:
                if walk(arg[-1], inside):
                    return True
            elif op is parser.BRANCH:
                if any(walk(branch, inside) for branch in arg[1]):
                    return True
            elif op in (parser.ASSERT, parser.ASSERT_NOT) and walk(arg[1], inside):
                return True
            # POSSESSIVE_REPEAT and ATOMIC_GROUP never backtrack: not looked into
        return False

    return walk(parser.parse(pattern), False)


def compile_custom(patterns: Mapping[str, str]) -> tuple[Rule, ...]:
    """Custom rules from `name -> regex`; ValueError naming the bad one."""
    rules = []
    for name, source in patterns.items():
        if not NAME.match(name):
            raise ValueError(
                f"{name!r}: a name is 1 to 32 of a-z, 0-9 and _, starting with a letter"
            )
        if len(source) > MAX_PATTERN:
            raise ValueError(f"{name}: longer than {MAX_PATTERN} characters")
        try:
            compiled = re.compile(source)
        except re.error as exc:
            raise ValueError(f"{name}: not a valid regular expression: {exc}") from None
        if compiled.match(""):
            raise ValueError(f"{name}: matches the empty string")
        if _nested_repeat(source):
            raise ValueError(
                f"{name}: a repeated group holds another repeat (like (a+)+), which can "
                "backtrack for ever; rewrite it, or make the inner repeat possessive (a++)"
            )
        rules.append(Rule(name, compiled))
    return tuple(rules)


class Redactor:
    """Applies the built-in rules, then the custom ones, in order."""

    def __init__(self, custom: tuple[Rule, ...] = ()) -> None:
        self._rules = BUILT_IN + custom

    def __call__(self, text: str) -> str:
        for rule in self._rules:
            text = rule.pattern.sub(_replacer(rule), text)
        return text


def _replacer(rule: Rule) -> Any:
    mark = f"[REDACTED:{rule.kind}]"
    if not rule.luhn:
        return mark

    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        return mark if luhn(digits) else match.group()

    return replace
