"""The semantic index (capgate.semantic.index): per-owner partitions, TTL, the bound,
removal, the threshold and the guard. Pure: vectors are built here, no model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.semantic.guard import same_content, signature
from capgate.semantic.index import SemanticIndex

DIM = 8
ALICE = ("key:alice", "claude-sonnet-4-5", "ctx")
BOB = ("key:bob", "claude-sonnet-4-5", "ctx")
Q = "How do I sort a list in Python?"
SIG = signature(Q)


def unit(*components: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(components)] = components
    return v / np.linalg.norm(v)


def onehot(n: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[n] = 1
    return v


def index(**kw: float) -> SemanticIndex:
    return SemanticIndex(DIM, **kw)  # type: ignore[arg-type]


def test_a_question_finds_its_entry_with_its_similarity() -> None:
    ix = index()
    ix.add(ALICE, "e1", unit(1), SIG, now=0)
    found = ix.lookup(ALICE, unit(1), SIG, now=1)
    assert found is not None
    assert found[0] == "e1"
    assert found[1] == pytest.approx(1.0)


def test_never_across_owners_models_or_contexts() -> None:
    ix = index()
    ix.add(ALICE, "alice", unit(1), SIG, now=0)
    assert ix.lookup(BOB, unit(1), SIG, now=1) is None
    assert ix.lookup(("key:alice", "gpt-5", "ctx"), unit(1), SIG, now=1) is None
    assert ix.lookup(("key:alice", "claude-sonnet-4-5", "other"), unit(1), SIG, now=1) is None
    ix.add(BOB, "bob", unit(1), SIG, now=0)
    assert ix.lookup(BOB, unit(1), SIG, now=1) == ("bob", pytest.approx(1.0))
    assert ix.lookup(ALICE, unit(1), SIG, now=1) == ("alice", pytest.approx(1.0))


def test_below_the_threshold_is_a_miss() -> None:
    ix = index(threshold=0.9)
    ix.add(ALICE, "e1", unit(1, 0), SIG, now=0)
    assert ix.lookup(ALICE, unit(1, 0.6), SIG, now=0) is None  # cos = 0.857
    assert ix.lookup(ALICE, unit(1, 0.4), SIG, now=0) is not None  # cos = 0.928


def test_a_near_miss_is_refused_however_similar() -> None:
    ix = index()
    ix.add(ALICE, "asc", unit(1), signature("Sort a list in ascending order"), now=0)
    near = signature("Sort a list in descending order")
    assert ix.lookup(ALICE, unit(1), near, now=0) is None
    same = signature("how do I sort a list in ascending order?")
    assert ix.lookup(ALICE, unit(1), same, now=0) == ("asc", pytest.approx(1.0))


def test_the_best_guarded_candidate_wins_not_only_the_nearest() -> None:
    ix = index(threshold=0.5)
    ix.add(ALICE, "desc", unit(1, 0), signature("Sort descending"), now=0)
    ix.add(ALICE, "asc", unit(1, 0.5), signature("Sort ascending"), now=0)
    found = ix.lookup(ALICE, unit(1, 0), signature("sort ascending"), now=0)
    assert found is not None and found[0] == "asc"


def test_ttl() -> None:
    ix = index(ttl=60)
    ix.add(ALICE, "e1", unit(1), SIG, now=100)
    assert ix.lookup(ALICE, unit(1), SIG, now=159.9) is not None
    assert ix.lookup(ALICE, unit(1), SIG, now=160) is None
    assert len(ix) == 0  # an expired entry met by a lookup is dropped


def test_expire_drops_old_entries_only() -> None:
    ix = index(ttl=60)
    ix.add(ALICE, "old", unit(1), SIG, now=0)
    ix.add(BOB, "new", unit(1), SIG, now=50)
    assert ix.expire(now=70) == 1
    assert len(ix) == 1
    assert ix.lookup(BOB, unit(1), SIG, now=70) is not None


def test_bounded_least_recently_used_goes_first() -> None:
    ix = index(max_entries=3)
    for i in range(3):
        ix.add(ALICE, f"e{i}", unit(1, i), signature(f"question {i}"), now=i)
    assert ix.lookup(ALICE, unit(1, 0), signature("question 0"), now=5) is not None  # e0 used
    ix.add(BOB, "e3", unit(1), SIG, now=6)
    assert len(ix) == 3
    assert ix.lookup(ALICE, unit(1, 1), signature("question 1"), now=7) is None  # evicted
    assert ix.lookup(ALICE, unit(1, 0), signature("question 0"), now=7) is not None
    assert ix.lookup(ALICE, unit(1, 2), signature("question 2"), now=7) is not None


def test_remove_and_replace() -> None:
    ix = index()
    ix.add(ALICE, "e1", unit(1), SIG, now=0)
    assert ix.remove("e1")
    assert not ix.remove("e1")
    assert ix.lookup(ALICE, unit(1), SIG, now=0) is None
    ix.add(ALICE, "e2", unit(1), SIG, now=0)
    ix.add(BOB, "e2", unit(1), SIG, now=0)  # the same id again: moved, not duplicated
    assert len(ix) == 1
    assert ix.lookup(ALICE, unit(1), SIG, now=0) is None


def test_a_matrix_shrinks_as_its_partition_empties() -> None:
    ix = index()
    for i in range(64):
        ix.add(ALICE, f"e{i}", unit(1, i), SIG, now=0)
    ix.add(ALICE, "keep", unit(0, 1), signature("keep"), now=0)
    assert ix._rows[ALICE].vectors.shape[0] == 128
    for i in range(64):
        ix.remove(f"e{i}")
    assert ix._rows[ALICE].vectors.shape[0] <= 4
    assert ix.lookup(ALICE, unit(0, 1), signature("keep"), now=0) == ("keep", pytest.approx(1.0))


def test_bad_settings_refused() -> None:
    for kw in ({"max_entries": 0}, {"ttl": 0}, {"threshold": 0}, {"threshold": 1.5}):
        with pytest.raises(ValueError):
            index(**kw)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "lookup"]),
        st.sampled_from([ALICE, BOB]),
        st.integers(0, 6),  # entry id and direction
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_matches_a_brute_force_model(ops: list[tuple[str, tuple[str, str, str], int]]) -> None:
    """Any sequence of adds and removes (rows swapped into holes, matrices grown) answers
    as a plain dict of the live entries does."""
    ix = index(max_entries=5, threshold=0.99)
    model: dict[str, tuple[tuple[str, str, str], int]] = {}
    order: list[str] = []  # least recently used first
    for op, part, n in ops:
        entry_id = f"e{n}"
        if op == "add":
            ix.add(part, entry_id, onehot(n), SIG, now=0)
            model[entry_id] = (part, n)
            order = [e for e in order if e != entry_id] + [entry_id]
            while len(order) > 5:
                del model[order.pop(0)]
        elif op == "remove":
            assert ix.remove(entry_id) == (entry_id in model)
            model.pop(entry_id, None)
            order = [e for e in order if e != entry_id]
        else:
            want = model.get(entry_id)
            found = ix.lookup(part, onehot(n), SIG, now=0)
            if want is not None and want[0] == part:
                assert found is not None and found[0] == entry_id
                order = [e for e in order if e != entry_id] + [entry_id]
            else:
                assert found is None
        assert len(ix) == len(model)


GUARD = [
    ("How do I sort a list in Python?", "python: how can I sort a list", True),
    ("What is a mutex?", "Can you please explain what a mutex is?", True),
    ("How do I install packages with pip?", "How to install a package with pip", True),
    ("Sort a list ascending", "Sort a list descending", False),
    ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", False),
    ("What is 17 times 23?", "What is 17 times 32?", False),
    ("Divide 10 by 2", "Divide 2 by 10", False),
    ("World War I", "World War II", False),
    ("Write a poem", "Write a funny poem", False),
    ("What to do before an interview", "What to do after an interview", False),
    ("Why is my build slow?", "When is my build slow?", False),
    ("Make an HTTP GET request", "Make an HTTP POST request", False),
    ("Write a for loop in Bash", "Write a while loop in Bash", False),
    ("Why does it re-render?", "Why doesn't it re-render?", False),
]


@pytest.mark.parametrize(("a", "b", "same"), GUARD)
def test_the_guard(a: str, b: str, same: bool) -> None:
    assert same_content(signature(a), signature(b)) is same
    assert same_content(signature(b), signature(a)) is same


WORDS = st.lists(
    st.sampled_from(
        [
            "how",
            "do",
            "I",
            "sort",
            "to",
            "from",
            "a",
            "list",
            "python",
            "2",
            "10",
            "vs",
            "into",
            "what",
            "is",
            "the",
            "ii",
        ]
    ),
    max_size=10,
)


@given(WORDS, WORDS)
def test_the_guard_is_reflexive_and_symmetric(a: list[str], b: list[str]) -> None:
    sa, sb = signature(" ".join(a)), signature(" ".join(b))
    assert same_content(sa, sa)
    assert same_content(sa, sb) == same_content(sb, sa)
