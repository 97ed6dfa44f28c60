"""The semantic cache's figures (docs/semantic-cache.md): the model's load and embedding
speed at three prompt lengths, a lookup's cost against index size, the index's memory,
and precision / recall on the labelled pairs at thresholds around the chosen one, with the
lexical guard and without it.

    .venv/bin/python bench/semantic.py            # ~20 s on one core
    .venv/bin/python bench/semantic.py --quick

Single-threaded numbers, best of the repeats (the machine is shared). Not a test:
tests/test_semantic_precision.py asserts the documented precision."""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from capgate.semantic.embedder import WordLlamaEmbedder
from capgate.semantic.guard import same_content, signature
from capgate.semantic.index import THRESHOLD, SemanticIndex

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "semantic_pairs.tsv"
SENTENCE = "How do I make this Python function that parses the CSV export run faster? "


def best(seconds: list[float]) -> float:
    return min(seconds)


def timed(fn: object, repeats: int) -> float:
    assert callable(fn)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return best(runs)


def import_time() -> float:
    code = (
        "import time; t = time.perf_counter(); "
        "from capgate.semantic.embedder import WordLlamaEmbedder; "
        "e = WordLlamaEmbedder(); print(time.perf_counter() - t)"
    )
    runs = [
        float(
            subprocess.run(  # noqa: S603 (our own interpreter and code)
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(3)
    ]
    return best(runs)


def speed(embedder: WordLlamaEmbedder, repeats: int) -> None:
    print("embedding (one prompt at a time, as the cache does)")
    for label, words in (
        ("short (~13 words)", 1),
        ("typical (~65 words)", 5),
        ("long (~650 words)", 50),
    ):
        text = SENTENCE * words
        n = 200 if words < 50 else 40
        per = timed(lambda t=text, n=n: [embedder.embed(t) for _ in range(n)], repeats) / n
        print(f"  {label:22} {len(text):6} chars  {per * 1e6:8.0f} µs  {1 / per:8.0f} /s")


def lookups(embedder: WordLlamaEmbedder, repeats: int) -> None:
    print("lookup in one owner's partition (matrix-vector product + guard)")
    rng = np.random.default_rng(1)
    query = embedder.embed(SENTENCE)
    sig = signature(SENTENCE)
    for size in (1_000, 10_000, 50_000):
        index = SemanticIndex(embedder.dim, max_entries=size)
        vectors = rng.standard_normal((size, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, v in enumerate(vectors):
            index.add(("owner", "model", "ctx"), f"e{i}", v, sig, now=0)
        per = (
            timed(
                lambda ix=index: [
                    ix.lookup(("owner", "model", "ctx"), query, sig, 1) for _ in range(100)
                ],
                repeats,
            )
            / 100
        )
        matrix = index._rows[("owner", "model", "ctx")].vectors.nbytes
        print(f"  {size:6} entries  {per * 1e6:8.0f} µs   vectors {matrix / 2**20:6.1f} MiB")


def curve(embedder: WordLlamaEmbedder) -> None:
    rows = [line.split("\t") for line in PAIRS.read_text().splitlines()]
    pairs = [(r[0] == "1", r[1], r[2]) for r in rows if len(r) == 3]
    same = np.array([s for s, _, _ in pairs])
    sim = np.array([float(embedder.embed(a) @ embedder.embed(b)) for _, a, b in pairs])
    guard = np.array([same_content(signature(a), signature(b)) for _, a, b in pairs])
    print(f"labelled pairs: {same.sum()} paraphrases, {(~same).sum()} near-misses")
    print("  threshold   similarity alone           with the guard")
    for threshold in (0.5, 0.6, 0.7, THRESHOLD, 0.8, 0.85, 0.9, 0.95):
        cells = []
        for served in (sim >= threshold, (sim >= threshold) & guard):
            tp, fp = int((served & same).sum()), int((served & ~same).sum())
            precision = tp / (tp + fp) if tp + fp else 1.0
            cells.append(f"P {precision:.3f} R {tp / same.sum():.3f} ({fp:3} wrong)")
        mark = " <- chosen" if threshold == THRESHOLD else ""
        print(f"  {threshold:.2f}        {cells[0]}   {cells[1]}{mark}")


CSV = (
    "Write a Python function that parses a CSV file of orders and returns the total per customer.",
    "Here is a function using the csv module: import csv; def totals(path): ... it reads each "
    "row, converts the amount to a Decimal and sums per customer id, returning a dict.",
)
GO = (
    "Write a Go function that sorts a slice of users by their signup date.",
    "You can use sort.Slice: sort.Slice(users, func(i, j int) bool { return "
    "users[i].SignupDate.Before(users[j].SignupDate) }).",
)
CONVERSATIONS = [
    ("same last question, other history", (*CSV, "And in Rust?"), (*GO, "And in Rust?")),
    (
        "same history, other last question",
        (*CSV, "Now add error handling for bad rows."),
        (*CSV, "Now write unit tests for it."),
    ),
    (
        "same history, opposite last question",
        (*CSV, "Sort the result by total, descending."),
        (*CSV, "Sort the result by total, ascending."),
    ),
]


def conversations(embedder: WordLlamaEmbedder) -> None:
    """Why only single-turn requests: what either choice of text would match."""
    print("conversations that need different answers: similarity of")
    for name, a, b in CONVERSATIONS:
        whole = float(embedder.embed("\n".join(a)) @ embedder.embed("\n".join(b)))
        last = float(embedder.embed(a[-1]) @ embedder.embed(b[-1]))
        print(f"  {name:38} whole conversation {whole:.3f}   last message {last:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    print(f"import + load of the model: {import_time() * 1000:.0f} ms (best of 3 processes)")
    embedder = WordLlamaEmbedder()
    speed(embedder, repeats)
    lookups(embedder, repeats)
    curve(embedder)
    conversations(embedder)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MiB (model ~32 MiB of it)")


if __name__ == "__main__":
    main()
