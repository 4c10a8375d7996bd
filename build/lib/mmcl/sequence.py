"""Fitting variable-length sequences to the model's length, padding detection, and masked pooling.

Policy (documented in docs/model.md): a sequence no longer than L is kept as is and zero-padded at the end,
with a mask; a longer one is resampled to exactly L by averaging L contiguous, near-equal segments of its valid
frames, so the whole utterance is seen (truncation would drop its end, where sentiment is often stated).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch import Tensor

PadSide = Literal["front", "back", "none"]


def valid_lengths(x: np.ndarray, side: PadSide) -> np.ndarray:
    """Valid rows per sample of (N, T, d) zero-padded data, given the padding side."""
    nonzero = np.any(x != 0, axis=-1)  # (N, T)
    n, t = nonzero.shape
    if side == "none" or t == 0:
        return np.full(n, t, dtype=np.int64)
    if side == "back":
        # index of the last non-zero row + 1
        last = t - np.argmax(nonzero[:, ::-1], axis=1)
        return np.where(nonzero.any(axis=1), last, 0).astype(np.int64)
    first = np.argmax(nonzero, axis=1)
    return np.where(nonzero.any(axis=1), t - first, 0).astype(np.int64)


def detect_padding_side(x: np.ndarray) -> PadSide:
    """Which end holds all-zero padding rows: counted over the samples that have any zero row at an end."""
    if x.ndim != 3 or x.shape[1] < 2:
        return "none"
    nonzero = np.any(x != 0, axis=-1)
    front = int((~nonzero[:, 0] & nonzero[:, -1]).sum())
    back = int((nonzero[:, 0] & ~nonzero[:, -1]).sum())
    if front == back == 0:
        return "none"
    return "front" if front > back else "back"


def fit_length(x: np.ndarray, lengths: np.ndarray, side: PadSide, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, d) padded data + valid lengths -> ((N, seq_len, d) back-padded or resampled, (N, seq_len) mask)."""
    n, t, d = x.shape
    out = np.zeros((n, seq_len, d), dtype=np.float32)
    mask = np.zeros((n, seq_len), dtype=bool)
    for i in range(n):
        length = int(min(lengths[i], t))
        if length == 0:
            continue
        rows = x[i, t - length :] if side == "front" else x[i, :length]
        if length <= seq_len:
            out[i, :length] = rows
            mask[i, :length] = True
        else:
            out[i] = resample_mean(rows, seq_len)
            mask[i] = True
    return out, mask


def resample_mean(rows: np.ndarray, seq_len: int) -> np.ndarray:
    """(T, d) with T >= seq_len -> (seq_len, d) by averaging seq_len contiguous near-equal segments."""
    edges = np.linspace(0, rows.shape[0], seq_len + 1).round().astype(np.int64)
    widths = (edges[1:] - edges[:-1])[:, None]  # >= 1 when T >= seq_len
    # segment sums in one pass (a float64 cumsum over every row cost ~0.2 ms per 768-d utterance, most of a
    # GPU batch's time); segments hold a few rows, so float32 sums lose nothing that matters
    means: np.ndarray = (np.add.reduceat(np.asarray(rows, dtype=np.float32), edges[:-1], axis=0) / widths)
    return means.astype(np.float32)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, L, D) mean over valid steps -> (B, D); a sample with no valid step gets zeros."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)

