"""Fitting variable-length sequences to the model's length, padding detection, and masked pooling.

Policy (documented in docs/model.md): a sequence no longer than L is kept as is and zero-padded at the end,
with a mask; a longer one is resampled to exactly L by averaging L contiguous, near-equal segments of its valid
frames, so the whole utterance is seen (truncation would drop its end, where sentiment is often stated).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
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


def fit_length(x: np.ndarray, lengths: np.ndarray, side: PadSide, seq_len: int,
               source_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, d) padded data + valid lengths -> ((N, seq_len, d) back-padded or resampled, (N, seq_len) mask).
    A sequence longer than `source_len` is first resampled to it (`fit_source`)."""
    n, t, d = x.shape
    out = np.zeros((n, seq_len, d), dtype=np.float32)
    mask = np.zeros((n, seq_len), dtype=bool)
    for i in range(n):
        length = int(min(lengths[i], t))
        if length == 0:
            continue
        rows = x[i, t - length :] if side == "front" else x[i, :length]
        rows = fit_source([rows], source_len)[0]
        length = rows.shape[0]
        if length <= seq_len:
            out[i, :length] = rows
            mask[i, :length] = True
        else:
            out[i] = resample_mean(rows, seq_len)
            mask[i] = True
    return out, mask


def fit_source(arrays: list[np.ndarray], source_len: int | None) -> list[np.ndarray]:
    """(T, d) sequences as the training data had them: one longer than the data's source length (what its dataset
    was built at) resampled to that length, the rest as they are. Serving applies this before fitting to the model's
    length, so a sequence takes the same path online as it took into the dataset (raw -> source -> model)."""
    long = [i for i, a in enumerate(arrays) if source_len is not None and a.shape[0] > source_len]
    if not long:
        return arrays
    assert source_len is not None
    fitted = resample_means([arrays[i] for i in long], source_len).numpy()
    out = list(arrays)
    for k, i in enumerate(long):
        out[i] = fitted[k]
    return out


def resample_mean(rows: np.ndarray, seq_len: int) -> np.ndarray:
    """(T, d) with T >= seq_len -> (seq_len, d) by averaging seq_len contiguous near-equal segments."""
    means: np.ndarray = resample_means([rows], seq_len)[0].numpy()
    return means


def resample_means(arrays: list[np.ndarray], seq_len: int) -> Tensor:
    """Sequences of at least seq_len frames -> (k, seq_len, d) float32: each resampled as `resample_mean` does, all
    in one pass (numpy's reduceat over the same frames took 17x as long, a float64 cumsum longer still)."""
    frames = torch.cat([float32_tensor(a) for a in arrays])
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    edges = starts[:, None] + np.linspace(0, lengths, seq_len + 1, axis=1).round().astype(np.int64)
    widths = np.diff(edges, axis=1).ravel()  # >= 1 when T >= seq_len
    segment = torch.from_numpy(np.repeat(np.arange(len(arrays) * seq_len), widths))
    sums = torch.zeros((len(arrays) * seq_len, frames.shape[1])).index_add_(0, segment, frames)
    return (sums / torch.from_numpy(widths).float()[:, None]).reshape(len(arrays), seq_len, -1)


def float32_tensor(arr: np.ndarray) -> Tensor:
    """A (T, d) array as a float32 tensor of its own memory. torch converts float16 with the CPU's F16C instructions
    (numpy 15x slower); arrays read from the wire are read-only views of a message, which torch warns about even
    when it only reads them, so they are copied first."""
    if arr.dtype == np.float16:
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).float()
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, L, D) mean over valid steps -> (B, D); a sample with no valid step gets zeros."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)

