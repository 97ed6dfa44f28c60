"""The lexical guard: two prompts may share an answer only if they have the same content
words.

Measured on tests/data/semantic_pairs.tsv (docs/semantic-cache.md): small local embedders
score near-misses ("sort ascending" / "sort descending", "17 times 23" / "17 times 32",
"string to int" / "int to string") as high as paraphrases, so no similarity threshold
alone gives a usable precision. A candidate found by similarity is served only when, after
lower-casing, dropping the words that frame a question ("how do I", "what is", "please",
"explain") and a plural's "s", both prompts have the same set of content words, the same
numbers in the same order, and the same words before "to", "from", "vs"... Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9][a-z0-9_#+]*(?:\.[a-z0-9_#+]+)*")

# Words that frame a request without changing its answer. "get", "for", "while", "not",
# "why", "when", "should" are content: "HTTP GET" / "HTTP POST", "for loop" / "while loop".
# A word list reads better as words than as a list of quoted strings.
_FILLER = frozenset(
    """a an the i me my we our you your it its this that these those is are was were be
    been do does did doing can could please kindly just how what way ways tell show
    give explain describe s t d ll re ve m there here some any of in on at with by
    about as so and or got using need want like help question""".split()  # noqa: SIM905
)
# The order around these words carries meaning: "convert Celsius to Fahrenheit". All but
# "to" ("how to X" / "how do I X") are content words too.
_DIRECTION = frozenset("to into from than vs versus over before after".split())  # noqa: SIM905
# Not "i": "how do I". "World War I" / "World War II" differ by "ii" already.
_ROMAN = frozenset("ii iii iv v vi vii viii ix x".split())  # noqa: SIM905


def _stem(word: str) -> str:
    if word.endswith("ss") or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


@dataclass(frozen=True, slots=True)
class Signature:
    """What the guard compares, kept per cached entry instead of its text."""

    content: frozenset[str]
    numbers: tuple[str, ...]
    sides: tuple[tuple[str, frozenset[str]], ...]


def signature(text: str) -> Signature:
    words = [_stem(w) for w in _WORD.findall(text.lower().replace("'", " "))]
    content = frozenset(w for w in words if w not in _FILLER and w != "to")
    # In order: "divide 10 by 2" / "divide 2 by 10".
    numbers = tuple(w for w in words if w[0].isdigit() or w in _ROMAN)
    sides: dict[str, frozenset[str]] = {}
    for i, word in enumerate(words):
        if word in _DIRECTION and word not in sides:
            sides[word] = frozenset(w for w in words[:i] if w in content)
    return Signature(content, numbers, tuple(sorted(sides.items())))


def same_content(a: Signature, b: Signature) -> bool:
    """Whether a cached answer to `a` may answer `b`."""
    if a.content != b.content or a.numbers != b.numbers:
        return False
    b_sides = dict(b.sides)
    return all(before == b_sides.get(word, before) for word, before in a.sides)
