"""The semantic cache as the exact cache calls it (capgate.semantic.service), with the
real model: offline, off the event loop when long, bounded, and absent from the request
path of servers that do not use it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from capgate.semantic.eligibility import Question
from capgate.semantic.embedder import Vector, WordLlamaEmbedder
from capgate.semantic.index import SemanticIndex
from capgate.semantic.service import SemanticCache


@pytest.fixture(scope="module")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_model_loads_and_embeds_with_no_network() -> None:
    out = run_python(
        "import logging, socket, sys\n"
        "def refuse(*a, **k): raise OSError('no network in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from capgate.semantic.embedder import WordLlamaEmbedder\n"
        "v = WordLlamaEmbedder().embed('How do I sort a list?')\n"
        "print(v.shape, v.dtype, round(float(v @ v), 4))\n"
        "print('wordllama' in sys.modules, logging.getLogger().level)\n"
    )
    # the wordllama package is never imported: it sets the root logger to INFO on import
    assert out.split("\n")[:2] == ["(256,) float32 1.0", "False 30"]


def test_case_and_spacing_do_not_change_the_vector(embedder: WordLlamaEmbedder) -> None:
    a = embedder.embed("How do I sort a list in Python?")
    b = embedder.embed("  how do i SORT a list   in python?")
    assert float(a @ b) == pytest.approx(1.0, abs=1e-6)


def test_an_empty_text_is_a_zero_vector(embedder: WordLlamaEmbedder) -> None:
    assert not embedder.embed("").any()


def question(text: str, context: str = "ctx") -> Question:
    return Question(text, context)


def test_add_then_lookup(embedder: WordLlamaEmbedder) -> None:
    cache = SemanticCache(embedder, SemanticIndex(embedder.dim))

    async def go() -> None:
        assert await cache.lookup("alice", "m", question("What is a mutex?"), 0) is None
        assert await cache.add("alice", "m", question("What is a mutex?"), "e1", 0)
        found = await cache.lookup("alice", "m", question("what's a mutex"), 1)
        assert found is not None and found[0] == "e1" and found[1] > 0.75
        assert await cache.lookup("bob", "m", question("What is a mutex?"), 1) is None
        assert await cache.lookup("alice", "m", question("What is a semaphore?"), 1) is None
        assert await cache.lookup("alice", "m", question("What is a mutex?", "other"), 1) is None
        assert cache.remove("e1")
        assert await cache.lookup("alice", "m", question("What is a mutex?"), 1) is None

    try:
        asyncio.run(go())
    finally:
        cache.close()


class Recording:
    """The real embedder, recording the thread each text was embedded on; `gate` holds a
    thread's embedding until set."""

    def __init__(self, inner: WordLlamaEmbedder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, text: str) -> Vector:
        self.threads.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            assert self.gate.wait(10)
        return self.inner.embed(text)


def test_a_long_text_is_embedded_off_the_event_loop(embedder: WordLlamaEmbedder) -> None:
    recording = Recording(embedder)
    cache = SemanticCache(recording, SemanticIndex(embedder.dim), inline_chars=100)
    long = "Summarize this: " + "the quick brown fox jumps over the lazy dog. " * 20

    async def go() -> None:
        assert await cache.add("alice", "m", question("short"), "e1", 0)
        assert await cache.add("alice", "m", question(long), "e2", 0)
        assert (await cache.lookup("alice", "m", question(long), 0) or ("",))[0] == "e2"

    try:
        asyncio.run(go())
    finally:
        cache.close()
    assert recording.threads[0] == "MainThread"
    assert all(name.startswith("capgate-semantic") for name in recording.threads[1:])


def test_a_busy_embedder_means_a_miss_not_a_queue(embedder: WordLlamaEmbedder) -> None:
    recording = Recording(embedder)
    recording.gate.clear()
    cache = SemanticCache(recording, SemanticIndex(embedder.dim), inline_chars=0, max_pending=2)

    async def go() -> None:
        waiting = [
            asyncio.ensure_future(cache.add("alice", "m", question(f"q {i}"), f"e{i}", 0))
            for i in range(2)
        ]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert not await cache.add("alice", "m", question("one more"), "e9", 0)
        assert time.monotonic() - started < 0.5
        recording.gate.set()
        assert await asyncio.gather(*waiting) == [True, True]
        assert len(cache.index) == 2

    try:
        asyncio.run(go())
    finally:
        cache.close()


def test_an_empty_index_embeds_nothing(embedder: WordLlamaEmbedder) -> None:
    recording = Recording(embedder)
    cache = SemanticCache(recording, SemanticIndex(embedder.dim))
    try:
        assert asyncio.run(cache.lookup("alice", "m", question("anything"), 0)) is None
    finally:
        cache.close()
    assert recording.threads == []


def test_the_request_path_does_not_load_the_semantic_cache() -> None:
    out = run_python(
        "import sys\n"
        "import capgate.bootstrap, capgate.http.gateway, capgate.cli.entry\n"
        "heavy = ('numpy', 'tokenizers', 'safetensors', 'wordllama', 'capgate.semantic')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    assert out.strip() == "[]"


def test_create_uses_the_shipped_model() -> None:
    cache = SemanticCache.create(max_entries=10, ttl=5, threshold=0.8)
    try:
        assert cache.index.dim == 256
        assert cache.index.max_entries == 10
        assert asyncio.run(cache.add("a", "m", question("x"), "e", 0))
        vector = cache.index._rows[("a", "m", "ctx")].vectors[0]
        assert np.isclose(float(vector @ vector), 1.0)
    finally:
        cache.close()
