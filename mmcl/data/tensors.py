"""A split as model-ready tensors: every modality fitted to the model's sequence length, with masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mmcl.config import MODALITIES, ModelConfig, TaskConfig, TaskKind
from mmcl.data.dataset import Split
from mmcl.errors import DimensionMismatch
from mmcl.sequence import fit_length
from mmcl.tasks import targets_from_scores


@dataclass(frozen=True)
class TensorSplit:
    """A split as padded tensors with time and modality masks, ready for batching."""

    xs: list[Tensor]  # per modality (N, L, d_m)
    time_masks: list[Tensor]  # per modality (N, L) bool
    modality_mask: Tensor  # (N, 3) bool: modality present and read by the model
    y: Tensor  # regression (N,) float; classification (N,) long; multitask (N, S) long
    rows: np.ndarray  # (N,) each row's index in the split it came from (rows the model cannot read are left out)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> TensorSplit:
        """The same split on `device`."""
        return TensorSplit([x.to(device) for x in self.xs], [m.to(device) for m in self.time_masks],
                           self.modality_mask.to(device), self.y.to(device), self.rows)

    def batch(self, idx: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
        """The rows at `idx` as one batch."""
        return [x[idx] for x in self.xs], [m[idx] for m in self.time_masks], self.modality_mask[idx], self.y[idx]


def check_dims(dims: tuple[int, ...], expected: tuple[int, ...], what: str) -> None:
    """Raise DimensionMismatch naming each modality whose feature dim differs from the model's."""
    if tuple(dims) != tuple(expected):
        detail = ", ".join(f"{m} {d} vs {e}" for m, d, e in zip(MODALITIES, dims, expected, strict=True) if d != e)
        raise DimensionMismatch(f"{what}: feature dims {tuple(dims)} do not match the model's {tuple(expected)} ({detail})")


def labels_for_task(split: Split, task: TaskConfig) -> Tensor:
    """A split's labels as the tensor the task's loss expects."""
    y = split.labels
    if task.kind is TaskKind.MULTITASK:
        if y.ndim != 2:
            raise DimensionMismatch("the multitask task needs per-emotion labels (N, S); this dataset has scores")
        return torch.as_tensor(y, dtype=torch.long)
    if y.ndim != 1:
        raise DimensionMismatch("this dataset has per-emotion labels: use --task multitask")
    t = targets_from_scores(task, y)
    return torch.as_tensor(t, dtype=torch.float32 if task.kind is TaskKind.REGRESSION else torch.long)


def to_tensors(split: Split, cfg: ModelConfig, source_lengths: tuple[int, int, int] | None = None) -> TensorSplit:
    """A split fitted to the model's sequence length and dims, as tensors; with a model's `source_lengths`, longer
    sequences are fitted to those first, as serving does (mmcl.sequence.fit_source). A modality the model does not
    read is marked missing, and an utterance with none of the modalities it reads is left out (`rows` says which
    remain): the service cannot score it either."""
    check_dims(tuple(split.features[m].shape[2] for m in MODALITIES), cfg.input_dims, "dataset")
    xs, masks = [], []
    for i, m in enumerate(MODALITIES):
        source = None if source_lengths is None else source_lengths[i]
        x, mask = fit_length(split.features[m], split.lengths[m], split.pad_side[m], cfg.seq_len, source)
        xs.append(torch.from_numpy(x))
        masks.append(torch.from_numpy(mask))
    present = torch.stack([mk.any(1) for mk in masks], dim=1) & torch.tensor(cfg.used)
    y = labels_for_task(split, cfg.task)
    readable = present.any(1)
    if bool(readable.all()):
        return TensorSplit(xs, masks, present, y, np.arange(len(y)))
    keep = torch.nonzero(readable).squeeze(1)
    return TensorSplit([x[keep] for x in xs], [mk[keep] for mk in masks], present[keep], y[keep], keep.numpy())


def drop_modalities(
    xs: list[Tensor], masks: list[Tensor], present: Tensor, p: float, gen: torch.Generator
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Training-time modality dropout: each present modality is removed with probability p; one always stays."""
    if p <= 0:
        return xs, masks, present
    drop = (torch.rand(present.shape, generator=gen).to(present.device) < p) & present
    all_gone = (present & ~drop).sum(1) == 0
    if all_gone.any():  # keep one random present modality of those samples
        scores = torch.rand(present.shape, generator=gen).to(present.device).masked_fill(~present, -1.0)
        keep = torch.nn.functional.one_hot(scores.argmax(1), 3).bool()
        drop = torch.where(all_gone[:, None], drop & ~keep, drop)
    new_present = present & ~drop
    xs = [x * new_present[:, i, None, None] for i, x in enumerate(xs)]
    masks = [mk & new_present[:, i, None] for i, mk in enumerate(masks)]
    return xs, masks, new_present


