"""Aligning a modality's frames to the model: resample to its sequence length, or average the frames inside each
word of an ASR transcript (MOSI-style word alignment)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from extractors.base import ExtractionError
from mmcl.sequence import resample_mean


def to_length(frames: np.ndarray, seq_len: int) -> np.ndarray:
    """(T, D) -> (min(T, seq_len), D): longer sequences are averaged down in near-equal segments; shorter ones are
    kept (the model masks what is missing rather than seeing invented frames)."""
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ExtractionError(f"expected non-empty (T, D) frames, got shape {frames.shape}")
    return frames.astype(np.float32) if frames.shape[0] <= seq_len else resample_mean(frames, seq_len)


def word_align(frames: np.ndarray, frame_s: float, words: Sequence[tuple[float, float]]) -> np.ndarray:
    """Average the frames whose time (index * frame_s) falls in each word's [start, end) -> (n_words, D).
    A word shorter than a frame takes the frame nearest its middle."""
    if not words:
        raise ExtractionError("no words to align to")
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ExtractionError(f"expected non-empty (T, D) frames, got shape {frames.shape}")
    times = np.arange(frames.shape[0]) * frame_s
    out = np.empty((len(words), frames.shape[1]), np.float32)
    for i, (start, end) in enumerate(words):
        if end < start:
            raise ExtractionError(f"word {i} ends before it starts ({start} > {end})")
        inside = (times >= start) & (times < end)
        if inside.any():
            out[i] = frames[inside].mean(axis=0)
        else:
            out[i] = frames[int(np.clip(round((start + end) / 2 / frame_s), 0, frames.shape[0] - 1))]
    return out
