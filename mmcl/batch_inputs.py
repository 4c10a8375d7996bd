"""Per-utterance features of varied lengths -> the model's padded batch tensors, in whole-batch operations.

Per utterance there is only a shape check and one copy into its row of the batch (float16 converted by torch on the
way); the finite check, padding, masks and the resampling of sequences longer than the model's length are done once
per modality for the whole batch. Fitting follows mmcl.sequence: a sequence of at most L frames is kept and
zero-padded at the end; a longer one is averaged over L contiguous, near-equal segments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmcl.config import MODALITIES
from mmcl.errors import DimensionMismatch, InvalidInput
from mmcl.sequence import fit_source, float32_tensor, resample_means

UtteranceFeatures = Mapping[str, np.ndarray | None]  # modality -> (T, d) array, or None / absent when missing


@dataclass(frozen=True)
class BatchInputs:
    """A batch as the model takes it (on the host), and each utterance's longest fitted sequence."""

    xs: list[torch.Tensor]  # per modality (B, L, d) float32
    masks: list[torch.Tensor]  # per modality (B, L) bool
    present: torch.Tensor  # (B, 3) bool
    lengths: np.ndarray  # (B,) the longest valid sequence over the utterance's modalities, <= L


def prepare(batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None, dims: Sequence[int],
            seq_len: int, pin_memory: bool = False, source_lengths: Sequence[int] | None = None,
            used: Sequence[bool] = (True, True, True)) -> BatchInputs:
    """Validate and fit a batch: each sequence to its modality's source length (as the training data was, when the
    model recorded it), then to the model's. A modality the model does not read (`used`) is neither checked nor
    copied: it is missing. Raises DimensionMismatch or InvalidInput naming the first bad sample."""
    n = len(batch)
    if modality_mask is not None and np.shape(modality_mask) != (n, 3):
        raise InvalidInput(f"modality_mask has shape {np.shape(modality_mask)}, expected ({n}, 3)")
    present = np.zeros((n, 3), dtype=bool)
    fitted = np.zeros((n, 3), dtype=np.int64)
    xs, masks = [], []
    for m_idx, m in enumerate(MODALITIES):
        if not used[m_idx]:
            xs.append(torch.zeros((n, seq_len, dims[m_idx]), dtype=torch.float32, pin_memory=pin_memory))
            masks.append(torch.zeros((n, seq_len), dtype=torch.bool))
            continue
        rows, arrays = _gather(batch, m, m_idx, dims[m_idx], modality_mask)
        arrays = fit_source(arrays, None if source_lengths is None else source_lengths[m_idx])
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        x = _fill(n, rows, arrays, lengths, seq_len, dims[m_idx], pin_memory)
        finite = np.isfinite(x.numpy()).reshape(n, -1).all(axis=1)  # torch's isfinite took 10x as long here
        if not finite.all():
            raise InvalidInput(f"sample {int(np.flatnonzero(~finite)[0])}: {m} features contain NaN or Inf")
        present[rows, m_idx] = True
        fitted[rows, m_idx] = np.minimum(lengths, seq_len)
        xs.append(x)
        masks.append(torch.from_numpy(np.arange(seq_len) < fitted[:, m_idx, None]))
    if n and not present.any(axis=1).all():
        empty = int(np.flatnonzero(~present.any(axis=1))[0])
        read = [m for m, u in zip(MODALITIES, used, strict=True) if u]
        raise InvalidInput(f"sample {empty} has no modality" if len(read) == 3 else
                           f"sample {empty} has none of the modalities the model reads ({', '.join(read)})")
    return BatchInputs(xs, masks, torch.from_numpy(present), fitted.max(axis=1) if n else fitted[:, 0])


def _gather(batch: Sequence[UtteranceFeatures], m: str, m_idx: int, dim: int, modality_mask: np.ndarray | None
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The samples that have modality m (not hidden, at least one frame) and their (T, dim) arrays."""
    rows, arrays = [], []
    for i, utt in enumerate(batch):
        arr = utt.get(m)
        if arr is None or (modality_mask is not None and not modality_mask[i, m_idx]):
            continue
        arr = np.asarray(arr)
        if arr.ndim == 1:
            arr = arr[None, :]  # a pooled vector is a sequence of one
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise DimensionMismatch(f"sample {i}: {m} features have shape {arr.shape}, the model needs (T, {dim})")
        if arr.shape[0]:
            rows.append(i)
            arrays.append(arr)
    return np.array(rows, dtype=np.int64), arrays


def _fill(n: int, rows: np.ndarray, arrays: list[np.ndarray], lengths: np.ndarray, seq_len: int, dim: int,
          pin_memory: bool) -> torch.Tensor:
    """(n, seq_len, dim) float32: each short sequence copied into its row, long ones resampled together, the rest
    zeros only where nothing was written (zeroing the whole batch first was a third of the preparation's time)."""
    x = torch.empty((n, seq_len, dim), dtype=torch.float32, pin_memory=pin_memory)
    xn = x.numpy()  # the same memory
    filled = np.zeros(n, dtype=np.int64)  # frames written per row
    long = []
    for row, arr, t in zip(rows.tolist(), arrays, lengths.tolist(), strict=True):
        if t <= seq_len:
            if arr.dtype == np.float16:
                x[row, :t] = float32_tensor(arr)
            else:
                xn[row, :t] = arr
            filled[row] = t
        else:
            long.append((row, arr))
    if long:
        x[torch.tensor([r for r, _ in long])] = resample_means([a for _, a in long], seq_len)
        filled[[r for r, _ in long]] = seq_len
    for row in np.flatnonzero(filled < seq_len).tolist():
        x[row, filled[row]:] = 0.0
    return x
