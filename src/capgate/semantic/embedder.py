"""Sentence embeddings computed locally from WordLlama's weights (capgate[semantic]).

The `wordllama` wheel ships its default model: a 32,000 x 256 token-embedding table
(`weights/l2_supercat_256.safetensors`, 16 MB) and its tokenizer. capgate reads those two
files and averages the token vectors itself. It never imports the `wordllama` package:
importing it takes ~0.7 s, sets the root logger to INFO and, on a path bug of 0.4.0.post1,
tries to download the tokenizer it already ships (docs/semantic-cache.md). Nothing here
reaches the network. docs/dependencies.md says why this model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


class SemanticUnavailable(RuntimeError):
    """The optional dependencies of the semantic cache are not installed."""


class Embedder(Protocol):
    """Text -> a unit-length float32 vector of `dim` components."""

    dim: int

    def embed(self, text: str) -> Vector: ...


def _package_dir(name: str) -> Path:
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SemanticUnavailable(
            f"the semantic cache needs the {name!r} package: pip install 'capgate[semantic]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class WordLlamaEmbedder:
    """Mean of the token embeddings, normalised: what `WordLlama.embed(norm=True)` computes
    (checked against it in tests/test_semantic_embedder.py)."""

    def __init__(self, package_dir: Path | None = None) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as e:
            raise SemanticUnavailable(
                f"the semantic cache needs {e.name!r}: pip install 'capgate[semantic]'"
            ) from e
        root = package_dir or _package_dir("wordllama")
        table = load_file(str(root / WEIGHTS))["embedding.weight"]
        self._table: npt.NDArray[np.float32] = np.ascontiguousarray(table, dtype=np.float32)
        self._tokenizer = Tokenizer.from_file(str(root / TOKENIZER))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.dim = int(self._table.shape[1])

    def embed(self, text: str) -> Vector:
        """The vector of `text` lower-cased with its whitespace collapsed: WordLlama's
        tokens are case-sensitive, and "Sort a list" / "sort a list" scored 0.90."""
        ids = self._tokenizer.encode(normalise(text), add_special_tokens=False).ids
        vector = np.zeros(self.dim, dtype=np.float32)
        if ids:
            index = np.clip(np.asarray(ids, dtype=np.int64), 0, self._table.shape[0] - 1)
            vector = self._table[index].mean(axis=0, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector
