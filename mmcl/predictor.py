"""Batched inference from a checkpoint: variable-length per-utterance features in, explained predictions out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mmcl.batch_inputs import BatchInputs, UtteranceFeatures, prepare
from mmcl.checkpoint import Checkpoint, load_checkpoint
from mmcl.device import resolve_device
from mmcl.int8_serving import int8_model, int8_supported
from mmcl.model import MMCL
from mmcl.tasks import decode


@dataclass(frozen=True)
class PredictionBatch:
    """A batch's scores, labels, class probabilities and modality weights."""

    scores: np.ndarray  # (B,) sentiment score (regression scale, or polarity in [-1, 1]); multitask (B, S)
    labels: list[str]
    probabilities: np.ndarray | None  # (B, C) classification; (B, S) multitask presence; None for regression
    modality_weights: np.ndarray | None  # (B, 3) MMCL fusion weights (text, audio, vision); 0 = missing
    modality_mask: np.ndarray  # (B, 3) bool
    model_version: str


Precision = Literal["auto", "fp32", "bf16", "int8"]


def resolve_precision(precision: Precision, device: torch.device, model: torch.nn.Module) -> Precision:
    """`auto`: bf16 on CUDA; on a CPU, int8 for an MMCL network where the CPU has VNNI and PyTorch oneDNN, else fp32.
    An explicit choice the device or model cannot run is refused."""
    int8_ok = device.type == "cpu" and isinstance(model, MMCL) and int8_supported()
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "int8" if int8_ok else "fp32"
    if precision == "int8" and not int8_ok:
        raise ValueError("int8 runs the MMCL network on a CPU with VNNI, under PyTorch's oneDNN quantized engine")
    return precision


class Predictor:
    """A loaded model ready to score utterances, one batch at a time, on its device.

    A batch is scored in sub-batches of similar length, each cut to its longest sequence: positions past every
    sequence's end are masked everywhere in the network, so the cut changes no score (beyond float rounding). On 2
    CPU cores, the model on four sub-batches of 16 took 0.71 of its time on one batch of 64 padded to 50 frames
    (lengths 10-50); with every sequence 50 frames long, a Predictor that always split in four ran at 0.88x of one
    that did not: `sub_batches` splits only where the cut pays. On a GPU, which is not compute-bound at these
    sizes, one sub-batch cut to the batch's longest is kept.

    Precision: `bf16` runs the network under bfloat16 autocast (CPUs without native bfloat16, such as our development
    machines, emulate it slowly); `int8` runs a copy of the MMCL network with int8 feed-forward layers
    (mmcl.int8_serving); `auto` is bf16 on CUDA and int8 on a CPU (both within 0.05 of fp32 on a trained model, 99%
    within 0.02).
    """

    def __init__(self, checkpoint: Checkpoint, device: torch.device, precision: Precision = "auto",
                 max_sub_batches: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.cfg = checkpoint.config
        model = checkpoint.model.to(device).eval()
        self.precision = resolve_precision(precision, device, model)
        self.model = int8_model(model) if self.precision == "int8" and isinstance(model, MMCL) else model
        self.version = checkpoint.version
        self.max_sub_batches = max_sub_batches if max_sub_batches is not None else (1 if device.type == "cuda" else 4)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: Precision = "auto") -> Predictor:
        """Load a checkpoint onto a device, in eval mode."""
        dev = resolve_device(device)
        return cls(load_checkpoint(path, device="cpu"), dev, precision)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the model reads, by wire name (text, audio, visual): what the service waits for."""
        return self.cfg.wire_modalities

    @property
    def input_dims(self) -> tuple[int, int, int]:
        """The feature dims the model takes, per modality."""
        return self.cfg.input_dims

    def predict(self, batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None = None) -> PredictionBatch:
        """Predict a batch of utterances; `modality_mask` (B, 3) can hide modalities that are present."""
        return self.predict_prepared(self.prepare(batch, modality_mask))

    def prepare(self, batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None = None) -> BatchInputs:
        """Validate and fit a batch into the model's input tensors (in pinned memory on a CUDA host): the host's
        share of `predict`, which a caller can run for the next batch while the device scores this one."""
        return prepare(batch, modality_mask, self.cfg.input_dims, self.cfg.seq_len,
                       pin_memory=self.device.type == "cuda", source_lengths=self.checkpoint.profile.source_lengths,
                       used=self.cfg.used)

    def predict_prepared(self, inputs: BatchInputs) -> PredictionBatch:
        """Score a batch `prepare` fitted (for a model of this one's input dims and length)."""
        if not len(inputs.lengths):
            empty = np.zeros((0,), dtype=np.float32)
            return PredictionBatch(empty, [], None, None, np.zeros((0, 3), bool), self.version)
        logits, weights = self._forward(inputs)
        task = self.cfg.task
        dec = decode(task, logits)
        names = task.label_names
        return PredictionBatch(dec.scores, [names[i] for i in dec.label_ids], dec.probabilities,
                               None if weights is None else weights.numpy(), inputs.present.numpy(), self.version)

    def _forward(self, inputs: BatchInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and fusion weights on the host, in the batch's order."""
        order = np.argsort(inputs.lengths, kind="stable")
        groups = [order[g] for g in sub_batches(inputs.lengths[order], self.max_sub_batches)]
        dev = self.device
        xs = [x.to(dev, non_blocking=True) for x in inputs.xs]  # pinned on a GPU host: the copy overlaps
        masks = [mk.to(dev, non_blocking=True) for mk in inputs.masks]
        present = inputs.present.to(dev, non_blocking=True)
        outs = []
        with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=self.precision == "bf16"):
            for group in groups:
                cut = int(inputs.lengths[group].max())
                # one sub-batch keeps the batch's order: views, no gather
                rows = slice(None) if len(groups) == 1 else torch.from_numpy(group).to(dev, non_blocking=True)
                outs.append(self.model([x[rows, :cut] for x in xs], [mk[rows, :cut] for mk in masks], present[rows]))
        back = slice(None) if len(groups) == 1 else torch.from_numpy(np.argsort(order)).to(dev)  # -> batch order
        logits = torch.cat([o.logits.float() for o in outs])[back].cpu()
        if outs[0].modality_weights is None:
            return logits, None
        return logits, torch.cat([o.modality_weights.float() for o in outs if o.modality_weights is not None])[back].cpu()


# what one more sub-batch costs on top of its frames, from 2 CPU cores: always splitting 64 utterances of 50 frames
# in four ran at 0.88x of one batch (about 0.04 per extra sub-batch)
SPLIT_OVERHEAD = 0.04


def sub_batches(sorted_lengths: np.ndarray, most: int, smallest: int = 16) -> list[np.ndarray]:
    """Positions of length-sorted utterances grouped into at most `most` sub-batches of at least `smallest` (1 when
    the batch is smaller), choosing the count whose frames (each sub-batch's size x its longest sequence), plus
    SPLIT_OVERHEAD per extra sub-batch, are fewest."""
    n = len(sorted_lengths)
    best: list[np.ndarray] = [np.arange(n)]
    best_cost = 1.0
    k = 2
    while k <= min(most, n // smallest):
        groups = np.array_split(np.arange(n), k)
        frames = sum(len(g) * int(sorted_lengths[g[-1]]) for g in groups) / (n * max(1, int(sorted_lengths[-1])))
        if frames * (1 + SPLIT_OVERHEAD * (k - 1)) < best_cost:
            best, best_cost = groups, frames * (1 + SPLIT_OVERHEAD * (k - 1))
        k *= 2
    return best
