"""The trainer's data split and its gate's pieces: time-ordered splits, wire arrays to a model split, sanity."""

from __future__ import annotations

import math

import numpy as np

from mmcl.checkpoint import Checkpoint
from mmcl.config import MODALITIES
from mmcl.data.dataset import Split
from mmcl.sequence import fit_source, resample_mean
from streams.learning.store import Example
from streams.settings import WIRE_MODALITIES, model_modality

LOWER_IS_BETTER = {"mae"}


def split_by_time(examples: list[Example], holdout_frac: float, valid_frac: float
                  ) -> tuple[list[Example], list[Example], list[Example]]:
    """Oldest labels train, the next ones pick the epoch, the newest are held out for the gate."""
    n = len(examples)
    n_hold = max(1, math.ceil(n * holdout_frac))
    rest = examples[: n - n_hold]
    n_valid = max(1, math.ceil(len(rest) * valid_frac))
    return rest[: len(rest) - n_valid], rest[len(rest) - n_valid:], examples[n - n_hold:]


def to_split(examples: list[Example], dims: tuple[int, int, int], seq_len: int,
             source_lengths: tuple[int, int, int] | None = None) -> Split:
    """Labelled examples (wire arrays, as the worker received them) as a dataset split of the model's length and
    dims, fitted as serving fits them (to the model's source length first, when it has one)."""
    feats, lengths = {}, {}
    for k, (w, dim) in enumerate(zip(WIRE_MODALITIES, dims, strict=True)):
        m = model_modality(w)
        x = np.zeros((len(examples), seq_len, dim), np.float32)
        ln = np.zeros(len(examples), np.int64)
        for i, ex in enumerate(examples):
            arr = ex.arrays.get(w)
            if arr is None or arr.shape[0] == 0:
                continue
            arr = fit_source([arr], None if source_lengths is None else source_lengths[k])[0]
            if arr.shape[0] > seq_len:
                arr = resample_mean(arr, seq_len)
            x[i, : arr.shape[0]], ln[i] = arr, arr.shape[0]
        feats[m], lengths[m] = x, ln
    return Split(feats, lengths, {m: "back" for m in MODALITIES}, np.array([e.label for e in examples], np.float32),
                 np.array([e.utterance_id for e in examples]))


def all_finite(ckpt: Checkpoint) -> bool:
    """Whether every weight of a checkpoint is finite."""
    return all(bool(p.detach().isfinite().all()) for p in ckpt.model.parameters())
