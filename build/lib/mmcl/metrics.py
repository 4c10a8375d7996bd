"""The field's evaluation metrics, defined exactly as the MMSA toolkit computes them (Acc-2 with and without 0,
F1, Acc-7, MAE, correlation)."""

from __future__ import annotations

import numpy as np

from mmcl.config import TaskConfig, TaskKind


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 per class present in y_true, weighted by its support (sklearn's average='weighted', zero_division=0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    total = 0.0
    for c in np.unique(y_true):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * np.sum(y_true == c)
    return float(total / y_true.size)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The share of equal labels."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if np.size(y_true) else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two score vectors (0 when either is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")  # undefined, as np.corrcoef would say (with a warning)
    return float(np.corrcoef(a, b)[0, 1])


def mosi_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MOSI / MOSEI: Acc-2 has0 and non0 with weighted F1, Acc-5, Acc-7 (round half to even), MAE, Corr."""
    pred, truth = np.asarray(pred, np.float64).ravel(), np.asarray(truth, np.float64).ravel()
    non0 = truth != 0
    return {
        "acc2_has0": accuracy(truth >= 0, pred >= 0),
        "f1_has0": weighted_f1(truth >= 0, pred >= 0),
        "acc2_non0": accuracy(truth[non0] > 0, pred[non0] > 0),
        "f1_non0": weighted_f1(truth[non0] > 0, pred[non0] > 0),
        "acc5": accuracy(np.round(np.clip(truth, -2, 2)), np.round(np.clip(pred, -2, 2))),
        "acc7": accuracy(np.round(np.clip(truth, -3, 3)), np.round(np.clip(pred, -3, 3))),
        "mae": float(np.mean(np.abs(pred - truth))),
        "corr": pearson(pred, truth),
    }


def _bucket(x: np.ndarray, edges: list[float]) -> np.ndarray:
    """Class i for edges[i] < x <= edges[i+1] (MMSA's SIMS bucketing)."""
    out = np.zeros(x.shape, dtype=np.int64)
    for i in range(len(edges) - 1):
        out[(x > edges[i]) & (x <= edges[i + 1])] = i
    return out


def sims_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """CH-SIMS: both clipped to [-1, 1]; Acc-2 [-1,0] vs (0,1]; Acc-3 at +-0.1; Acc-5 at +-0.1, +-0.7."""
    pred = np.clip(np.asarray(pred, np.float64).ravel(), -1, 1)
    truth = np.clip(np.asarray(truth, np.float64).ravel(), -1, 1)
    e2, e3, e5 = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01], [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    return {
        "acc2": accuracy(_bucket(truth, e2), _bucket(pred, e2)),
        "acc3": accuracy(_bucket(truth, e3), _bucket(pred, e3)),
        "acc5": accuracy(_bucket(truth, e5), _bucket(pred, e5)),
        "f1": weighted_f1(_bucket(truth, e2), _bucket(pred, e2)),
        "mae": float(np.mean(np.abs(pred - truth))),
        "corr": pearson(pred, truth),
    }


def classification_metrics(pred_ids: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy and weighted F1 of class predictions."""
    return {"acc": accuracy(truth, pred_ids), "f1": weighted_f1(truth, pred_ids)}


def multitask_metrics(logits: np.ndarray, truth: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """IEMOCAP: per emotion binary accuracy and weighted F1 of argmax over the 2 logits; plus their means."""
    pred = np.asarray(logits).reshape(-1, len(names), 2).argmax(-1)
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        out[f"{name}_acc"] = accuracy(truth[:, i], pred[:, i])
        out[f"{name}_f1"] = weighted_f1(truth[:, i], pred[:, i])
    out["mean_acc"] = float(np.mean([out[f"{n}_acc"] for n in names]))
    out["mean_f1"] = float(np.mean([out[f"{n}_f1"] for n in names]))
    return out


def task_metrics(task: TaskConfig, logits: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All metrics for a task from raw model outputs (B, K) and labels."""
    if task.kind is TaskKind.REGRESSION:
        pred = logits[:, 0]
        return sims_metrics(pred, truth) if task.score_range <= 1.0 else mosi_metrics(pred, truth)
    if task.kind is TaskKind.CLASSIFICATION:
        return classification_metrics(logits.argmax(1), truth)
    return multitask_metrics(logits, truth, task.subtask_names)


def selection_metric(task: TaskConfig) -> tuple[str, bool]:
    """(metric name, higher is better) used for model selection on the validation split."""
    if task.kind is TaskKind.REGRESSION:
        return "mae", False
    if task.kind is TaskKind.CLASSIFICATION:
        return "f1", True
    return "mean_f1", True
