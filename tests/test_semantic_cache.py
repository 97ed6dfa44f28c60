"""The semantic cache on the request path (docs/semantic-cache.md, docs/cache.md): a real
server, the real mock upstream (its `served` count says how many requests reached it). A
paraphrase from tests/data/semantic_pairs.tsv is answered from the cache on a scope whose
cache sets `semantic`; a near-miss, another owner's paraphrase, a scope without
`semantic` and a temperature above the server's maximum are forwarded.

The seam's pure part is in tests/test_cache_unit.py; the index and the model in
tests/test_semantic_*.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate
from test_cache import entry, served
from test_cli import run_cli

SEMANTIC = {"ttl": "1h", "semantic": True}
# Labelled 1 (paraphrase) and 0 (near-miss) in tests/data/semantic_pairs.tsv.
ASKED = "How do I sort a list in Python?"
PARAPHRASE = "What's the way to sort a Python list?"
NEAR_MISS = ("How do I reverse a string in Python?", "How do I reverse a string in JavaScript?")


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    tmp = tmp_path_factory.mktemp("semantic")
    started = start_capgate(tmp, gateway_config(upstream))
    try:
        yield started
    finally:
        started.close()


def ask(server: Capgate, key: str, text: str, temperature: float = 0) -> httpx.Response:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 200, "temperature": temperature}
    body["messages"] = [{"role": "user", "content": text}]
    answer = httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer


def chat(server: Capgate, key: str, text: str) -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "temperature": 0}
    body["messages"] = [{"role": "user", "content": text}]
    answer = httpx.post(
        server.url + "/v1/chat/completions", json=body,
        headers={"authorization": f"Bearer {key}"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer


def indexed() -> None:
    time.sleep(1.0)  # the answer is indexed by a task after it was sent (ms; slack for load)


def test_a_paraphrase_is_answered_from_the_cache(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache=SEMANTIC)
    before = served(upstream)
    first = ask(server, key, ASKED)
    assert first.headers["x-capgate-cache"] == "miss"
    indexed()
    second = ask(server, key, PARAPHRASE)
    assert served(upstream) - before == 1  # the paraphrase never reached the upstream
    assert second.headers["x-capgate-cache"] == "hit-similar"
    assert second.json() == first.json()
    hit = entry(server, second)
    assert hit["cache"] == "hit" and hit["attempts"] == 0 and hit["cost_usd"] == "0"
    assert hit["saved_usd"] == entry(server, first)["cost_usd"] != "0"
    # The same in the Chat Completions dialect (its own partition: an answer is only ever
    # given in the shape it was kept in).
    assert chat(server, key, ASKED).headers["x-capgate-cache"] == "miss"
    indexed()
    again = chat(server, key, PARAPHRASE)
    assert again.headers["x-capgate-cache"] == "hit-similar"
    assert served(upstream) - before == 2


def test_a_near_miss_is_forwarded(server: Capgate, upstream: Upstream, key_name: str) -> None:
    key = server.create_key(key_name, cache=SEMANTIC)
    before = served(upstream)
    assert ask(server, key, NEAR_MISS[0]).headers["x-capgate-cache"] == "miss"
    indexed()
    assert ask(server, key, NEAR_MISS[1]).headers["x-capgate-cache"] == "miss"
    assert served(upstream) - before == 2
    # The first one's paraphrase is close enough (the guard, not the key, refused it).
    paraphrase = ask(server, key, "Python: how can I reverse a string?")
    assert paraphrase.headers["x-capgate-cache"] == "hit-similar"


def test_another_owners_paraphrase_is_forwarded(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    mine = server.create_key(f"{key_name}-a", cache=SEMANTIC)
    theirs = server.create_key(f"{key_name}-b", cache=SEMANTIC)
    before = served(upstream)
    assert ask(server, mine, ASKED).headers["x-capgate-cache"] == "miss"
    indexed()
    assert ask(server, theirs, PARAPHRASE).headers["x-capgate-cache"] == "miss"
    assert served(upstream) - before == 2
    assert ask(server, mine, PARAPHRASE).headers["x-capgate-cache"] == "hit-similar"


def test_a_scope_without_semantic_never_matches_by_similarity(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache={"ttl": "1h"})
    before = served(upstream)
    assert ask(server, key, ASKED).headers["x-capgate-cache"] == "miss"
    indexed()
    assert ask(server, key, PARAPHRASE).headers["x-capgate-cache"] == "miss"
    assert ask(server, key, ASKED).headers["x-capgate-cache"] == "hit"  # exact still works
    assert served(upstream) - before == 2
    # Turned on later (the CLI's --cache 1h,semantic): the next answers are indexed.
    out = run_cli(server, "keys", "update", key_name, "--cache", "1h,semantic")
    assert out.returncode == 0, out.stderr
    shown = run_cli(server, "keys", "show", key_name)
    assert "semantic" in shown.stdout
    assert ask(server, key, "Rename a branch in git").headers["x-capgate-cache"] == "miss"
    indexed()
    assert ask(server, key, "How do I rename a git branch?").headers["x-capgate-cache"] == (
        "hit-similar"
    )


def test_a_temperature_above_the_maximum_is_forwarded(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache=SEMANTIC)
    before = served(upstream)
    assert ask(server, key, ASKED, 0.7).headers["x-capgate-cache"] == "miss"
    indexed()
    assert ask(server, key, PARAPHRASE, 0.7).headers["x-capgate-cache"] == "miss"
    assert ask(server, key, ASKED, 0.7).headers["x-capgate-cache"] == "hit"  # exact: yes
    assert served(upstream) - before == 2
