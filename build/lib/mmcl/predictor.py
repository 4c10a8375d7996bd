"""Batched inference from a checkpoint: variable-length per-utterance features in, explained predictions out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcl.checkpoint import Checkpoint, load_checkpoint
from mmcl.config import MODALITIES
from mmcl.device import resolve_device
from mmcl.errors import DimensionMismatch, InvalidInput
from mmcl.sequence import resample_mean
from mmcl.tasks import decode

UtteranceFeatures = Mapping[str, np.ndarray | None]  # modality -> (T, d) array, or None / absent when missing


@dataclass(frozen=True)
class PredictionBatch:
    """A batch's scores, labels, class probabilities and modality weights."""

    scores: np.ndarray  # (B,) sentiment score (regression scale, or polarity in [-1, 1]); multitask (B, S)
    labels: list[str]
    probabilities: np.ndarray | None  # (B, C) classification; (B, S) multitask presence; None for regression
    modality_weights: np.ndarray | None  # (B, 3) MMCL fusion weights (text, audio, vision); 0 = missing
    modality_mask: np.ndarray  # (B, 3) bool
    model_version: str


class Predictor:
    """A loaded model ready to score utterances, one batch at a time, on its device."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.cfg = checkpoint.config
        self.model = checkpoint.model.to(device).eval()
        self.version = checkpoint.checksum[:12]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Predictor:
        """Load a checkpoint onto a device, in eval mode, warmed up."""
        dev = resolve_device(device)
        return cls(load_checkpoint(path, device="cpu"), dev)

    @property
    def input_dims(self) -> tuple[int, int, int]:
        """The feature dims the model takes, per modality."""
        return self.cfg.input_dims

    def _prepare(self, batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        n, seq_len = len(batch), self.cfg.seq_len
        if modality_mask is not None and np.shape(modality_mask) != (n, 3):
            raise InvalidInput(f"modality_mask has shape {np.shape(modality_mask)}, expected ({n}, 3)")
        present = np.zeros((n, 3), dtype=bool)
        xs, masks = [], []
        for m_idx, m in enumerate(MODALITIES):
            dim = self.cfg.input_dims[m_idx]
            x = np.zeros((n, seq_len, dim), dtype=np.float32)
            mask = np.zeros((n, seq_len), dtype=bool)
            for i, utt in enumerate(batch):
                arr = utt.get(m)
                if arr is None or (modality_mask is not None and not modality_mask[i, m_idx]):
                    continue
                arr = np.asarray(arr, dtype=np.float32)
                if arr.ndim == 1:
                    arr = arr[None, :]  # a pooled vector is a sequence of one
                if arr.ndim != 2 or arr.shape[1] != dim:
                    raise DimensionMismatch(f"sample {i}: {m} features have shape {arr.shape}, the model needs (T, {dim})")
                if not np.isfinite(arr).all():
                    raise InvalidInput(f"sample {i}: {m} features contain NaN or Inf")
                if arr.shape[0] == 0:
                    continue
                t = arr.shape[0]
                if t <= seq_len:
                    x[i, :t], mask[i, :t] = arr, True
                else:
                    x[i], mask[i] = resample_mean(arr, seq_len), True
                present[i, m_idx] = True
            xs.append(torch.from_numpy(x).to(self.device))
            masks.append(torch.from_numpy(mask).to(self.device))
        if n and not present.any(axis=1).all():
            empty = int(np.flatnonzero(~present.any(axis=1))[0])
            raise InvalidInput(f"sample {empty} has no modality")
        return xs, masks, torch.from_numpy(present).to(self.device)

    def predict(self, batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None = None) -> PredictionBatch:
        """Predict a batch of utterances; `modality_mask` (B, 3) can hide modalities that are present."""
        xs, masks, present = self._prepare(batch, modality_mask)
        if not batch:
            empty = np.zeros((0,), dtype=np.float32)
            return PredictionBatch(empty, [], None, None, np.zeros((0, 3), bool), self.version)
        with torch.inference_mode():
            out = self.model(xs, masks, present)
        task = self.cfg.task
        dec = decode(task, out.logits)
        names = task.label_names
        weights = None if out.modality_weights is None else out.modality_weights.float().cpu().numpy()
        return PredictionBatch(
            dec.scores, [names[i] for i in dec.label_ids], dec.probabilities, weights, present.cpu().numpy(), self.version
        )
