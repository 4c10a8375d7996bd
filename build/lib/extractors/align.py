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


def word_align(frames: np.ndarray, frame_s: float | np.ndarray, words: Sequence[tuple[float, float]]) -> np.ndarray:
    """Average the frames whose time (index * frame_s, or the given per-frame times in seconds) falls in each word's
    [start, end) -> (n_words, D). A word with no frame inside takes the frame nearest its middle."""
    if not words:
        raise ExtractionError("no words to align to")
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ExtractionError(f"expected non-empty (T, D) frames, got shape {frames.shape}")
    if isinstance(frame_s, np.ndarray):
        if frame_s.shape != (frames.shape[0],):
            raise ExtractionError(f"{frame_s.shape[0]} frame times for {frames.shape[0]} frames")
        times: np.ndarray = frame_s.astype(np.float64)
    else:
        times = np.arange(frames.shape[0]) * frame_s
    out = np.empty((len(words), frames.shape[1]), np.float32)
    for i, (start, end) in enumerate(words):
        if end < start:
            raise ExtractionError(f"word {i} ends before it starts ({start} > {end})")
        inside = (times >= start) & (times < end)
        if inside.any():
            out[i] = frames[inside].mean(axis=0)
        else:
            out[i] = frames[int(np.argmin(np.abs(times - (start + end) / 2)))]
    return out
