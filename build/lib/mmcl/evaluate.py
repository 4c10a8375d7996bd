"""Evaluation of a model on a split: raw outputs, the task's metrics, and the supervised loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmcl.config import TaskConfig
from mmcl.data.tensors import TensorSplit
from mmcl.metrics import task_metrics
from mmcl.tasks import supervised_loss


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics and mean loss on one split."""

    metrics: dict[str, float]
    loss: float
    logits: np.ndarray
    modality_weights: np.ndarray | None


def evaluate(model: nn.Module, data: TensorSplit, task: TaskConfig, batch_size: int = 256,
             regression_loss: str = "l1") -> Evaluation:
    """Evaluate a model on a split in eval mode, without gradients."""
    model.eval()
    logits, weights, loss_sum = [], [], 0.0
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)), device=data.y.device)
            xs, masks, present, y = data.batch(idx)
            out = model(xs, masks, present)
            loss_sum += float(supervised_loss(task, out.logits, y, regression_loss)) * len(idx)
            logits.append(out.logits.float().cpu().numpy())
            if out.modality_weights is not None:
                weights.append(out.modality_weights.float().cpu().numpy())
    all_logits = np.concatenate(logits) if logits else np.zeros((0, task.output_dim), np.float32)
    metrics = task_metrics(task, all_logits, data.y.cpu().numpy())
    return Evaluation(metrics, loss_sum / max(len(data), 1), all_logits, np.concatenate(weights) if weights else None)
