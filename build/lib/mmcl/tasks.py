"""Per-task pieces: the supervised loss, the act-reward reward, and turning logits into scores and labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl.config import TaskConfig, TaskKind


def supervised_loss(task: TaskConfig, logits: Tensor, y: Tensor, regression_loss: str = "l1") -> Tensor:
    """The task's supervised loss of outputs against labels."""
    if task.kind is TaskKind.REGRESSION:
        pred = logits[:, 0]
        return F.l1_loss(pred, y) if regression_loss == "l1" else F.mse_loss(pred, y)
    if task.kind is TaskKind.CLASSIFICATION:
        return F.cross_entropy(logits, y)
    s = len(task.subtask_names)
    return F.cross_entropy(logits.view(-1, s, 2).reshape(-1, 2), y.reshape(-1)) * s  # summed over sub-tasks


def reward(task: TaskConfig, logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample reward in [0, 1] (x S for multi-task): the probability given to the true label.

    Regression has no label probability; we use exp(-|y_hat - y| / score_range * 3), which is 1 when exact and
    ~0.37 one MOSI point off. Fixes reference defects 1 and 2: the reward is defined, and gathered per sample.
    """
    with torch.no_grad():
        if task.kind is TaskKind.REGRESSION:
            return torch.exp(-(logits[:, 0] - y).abs() * (3.0 / task.score_range))
        if task.kind is TaskKind.CLASSIFICATION:
            return torch.softmax(logits, -1).gather(1, y.view(-1, 1)).squeeze(1)
        s = len(task.subtask_names)
        probs = torch.softmax(logits.view(-1, s, 2), -1)  # (B, S, 2)
        return probs.gather(2, y.view(-1, s, 1)).squeeze(2).sum(1)  # (B,)


@dataclass(frozen=True)
class Decoded:
    """What a prediction means, in numpy."""

    scores: np.ndarray  # regression: (B,) score; classification: (B,) expected polarity in [-1, 1]; multitask: (B, S)
    label_ids: np.ndarray  # (B,) index into task.label_names
    probabilities: np.ndarray | None  # classification (B, C); multitask (B, S) P(present); regression None


def decode(task: TaskConfig, logits: Tensor) -> Decoded:
    """Model outputs -> scores, labels and probabilities, as the task defines them."""
    logits = logits.float()
    if task.kind is TaskKind.REGRESSION:
        scores = logits[:, 0].clamp(-task.score_range, task.score_range).cpu().numpy()
        band = task.neutral_band * task.score_range
        ids = np.where(scores < -band, 0, np.where(scores > band, 2, 1))
        return Decoded(scores, ids, None)
    if task.kind is TaskKind.CLASSIFICATION:
        probs = torch.softmax(logits, -1).cpu().numpy()
        # a polarity score: classes spread evenly over [-1, 1] (negative .. positive), weighted by probability
        anchors = np.linspace(-1.0, 1.0, task.num_classes)
        return Decoded(probs @ anchors, probs.argmax(1), probs)
    s = len(task.subtask_names)
    present = torch.softmax(logits.view(-1, s, 2), -1)[..., 1].cpu().numpy()  # (B, S)
    return Decoded(present, present.argmax(1), present)


def targets_from_scores(task: TaskConfig, scores: np.ndarray) -> np.ndarray:
    """Continuous sentiment scores -> labels for a classification task (2: <0 vs >=0; 3: sign; else rounding)."""
    if task.kind is TaskKind.REGRESSION:
        return scores.astype(np.float32)
    if task.kind is not TaskKind.CLASSIFICATION:
        raise ValueError("multi-task labels cannot be derived from a single score")
    c = task.num_classes
    if c == 2:
        return (scores >= 0).astype(np.int64)
    if c == 3:
        classes: np.ndarray = (np.sign(scores).astype(np.int64) + 1).astype(np.int64)
        return classes
    half = (c - 1) / 2
    scaled = np.clip(scores / task.score_range * half, -half, half)
    return (np.round(scaled) + half).astype(np.int64)
