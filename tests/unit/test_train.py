from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcl.config import ModelConfig, TaskConfig, TaskKind, TrainConfig
from mmcl.data.dataset import Dataset
from mmcl.train import train

SMALL = {"seq_len": 12, "d_model": 16, "num_heads": 4, "ff_dim": 32}


def quiet(_: str) -> None:
    pass


def cfgs(ds: Dataset, **train_kw: object) -> tuple[ModelConfig, TrainConfig]:
    m = ModelConfig(input_dims=ds.dims, **SMALL)
    t = TrainConfig(**{"epochs": 2, "batch_size": 32, "lr": 1e-3, "buffer_size": 64, **train_kw})
    return m, t


def test_same_seed_same_metrics(tiny_dataset: Dataset, tmp_path: Path) -> None:
    m, t = cfgs(tiny_dataset, modality_dropout=0.2)
    a = train(tiny_dataset, m, t, tmp_path / "a", progress=False, log=quiet)
    b = train(tiny_dataset, m, t, tmp_path / "b", progress=False, log=quiet)
    assert a.test == b.test and a.best_valid == b.best_valid
    assert [r["critic_loss"] for r in a.history] == [r["critic_loss"] for r in b.history]
    c = train(tiny_dataset, m, t.model_copy(update={"seed": 1}), tmp_path / "c", progress=False, log=quiet)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_act_reward_trains_critic_and_logs_history(tiny_dataset: Dataset, tmp_path: Path) -> None:
    m, t = cfgs(tiny_dataset)
    r = train(tiny_dataset, m, t, tmp_path, progress=False, log=quiet)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["critic_loss"] > 0 for row in rows)
    assert {"valid_mae", "valid_acc2_has0", "lr", "seconds"} <= rows[0].keys()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test"] == r.test and summary["selection_metric"] == "mae"


def test_selection_uses_validation_only(tiny_dataset: Dataset, tmp_path: Path) -> None:
    m, t = cfgs(tiny_dataset, epochs=4, early_stop_patience=10)
    r = train(tiny_dataset, m, t, tmp_path, progress=False, log=quiet)
    best = min(r.history, key=lambda row: row["valid_mae"])
    assert r.best_epoch == best["epoch"]
    saved = json.loads((r.checkpoint / "metrics.json").read_text())
    assert saved["epoch"] == r.best_epoch and saved["test"] == r.test


def test_early_stopping(tiny_dataset: Dataset, tmp_path: Path) -> None:
    m, t = cfgs(tiny_dataset, epochs=30, early_stop_patience=1, lr=1e-7)
    r = train(tiny_dataset, m, t, tmp_path, progress=False, log=quiet)
    assert r.epochs_run < 30


def test_ctrl_c_keeps_the_best_checkpoint(tiny_dataset: Dataset, tmp_path: Path) -> None:
    m, t = cfgs(tiny_dataset, epochs=10)
    calls = []

    def interrupt_on_second_epoch(line: str) -> None:
        calls.append(line)
        if line.startswith("epoch 2"):
            raise KeyboardInterrupt

    r = train(tiny_dataset, m, t, tmp_path, progress=False, log=interrupt_on_second_epoch)
    assert r.interrupted and r.epochs_run == 2 and r.best_epoch in (1, 2)
    assert (r.checkpoint / "model.safetensors").is_file() and r.test


@pytest.mark.parametrize(
    "task", [TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=3), TaskConfig(kind=TaskKind.CLASSIFICATION,
                                                                                  num_classes=2)])
def test_classification_and_calibrated_and_baseline(tiny_dataset: Dataset, tmp_path: Path, task: TaskConfig) -> None:
    m = ModelConfig(input_dims=tiny_dataset.dims, task=task, decoupling="calibrated", **SMALL)
    r = train(tiny_dataset, m, TrainConfig(epochs=1, batch_size=32), tmp_path / "m", progress=False, log=quiet)
    assert {"acc", "f1"} == set(r.test)
    b = m.model_copy(update={"kind": "late_fusion"})
    rb = train(tiny_dataset, b, TrainConfig(epochs=1, batch_size=32), tmp_path / "b", progress=False, log=quiet)
    assert {"acc", "f1"} == set(rb.test)


def test_multitask_training(tmp_path: Path) -> None:
    import numpy as np

    from mmcl.data.dataset import Split

    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        feats = {"text": rng.standard_normal((n, 6, 10)).astype(np.float32),
                 "audio": rng.standard_normal((n, 6, 4)).astype(np.float32),
                 "vision": rng.standard_normal((n, 6, 3)).astype(np.float32)}
        return Split(feats, {k: np.full(n, 6) for k in feats}, {k: "none" for k in feats},
                     rng.integers(0, 2, (n, 4)), np.array([str(i) for i in range(n)]))

    ds = Dataset({"train": split(20), "valid": split(8), "test": split(8)}, {"label_kind": "multitask"})
    m = ModelConfig(input_dims=(10, 4, 3), task=TaskConfig(kind=TaskKind.MULTITASK), **{**SMALL, "seq_len": 6})
    r = train(ds, m, TrainConfig(epochs=1, batch_size=7), tmp_path, progress=False, log=quiet)  # a last batch of 6
    assert "happy_f1" in r.test and "mean_f1" in r.test


def test_device_auto_trains_on_what_is_there(tiny_dataset: Dataset, tmp_path: Path) -> None:
    """On a CUDA machine this exercises the GPU path; here it is the CPU, through the same code."""
    m, t = cfgs(tiny_dataset, epochs=1, modality_dropout=0.3)
    r = train(tiny_dataset, m, t, tmp_path, progress=False, log=quiet, device="auto")
    assert r.test and r.history[0]["critic_loss"] > 0


def test_training_warns_when_validation_never_improves_on_its_first_epoch(tiny_dataset: Dataset,
                                                                          tmp_path: Path) -> None:
    """Validation labels of the opposite sign: the training loss falls, validation only gets worse after epoch 1."""
    from dataclasses import replace

    from mmcl.train import LEARNING, STALL_EPOCHS

    valid = tiny_dataset.splits["valid"]
    flipped = Dataset({**tiny_dataset.splits, "valid": replace(valid, labels=-valid.labels)}, tiny_dataset.meta)
    m, t = cfgs(flipped, epochs=STALL_EPOCHS + 2, early_stop_patience=20, act_reward=False, lr=3e-3)
    lines: list[str] = []
    r = train(flipped, m, t, tmp_path / "flipped", progress=False, log=lines.append)
    assert r.best_epoch == 1 and r.history[STALL_EPOCHS]["train_loss"] < LEARNING * r.history[0]["train_loss"]
    warned = [line for line in lines if line.startswith("warning: validation mae")]
    assert len(warned) == 1 and r.warnings == warned  # once, when it first holds
    assert lines.index(warned[0]) == lines.index(next(x for x in lines if x.startswith(f"epoch {STALL_EPOCHS + 1}:"))) + 1
    assert json.loads((tmp_path / "flipped" / "summary.json").read_text())["warnings"] == warned
    healthy = train(tiny_dataset, m, t, tmp_path / "healthy", progress=False, log=quiet)
    assert healthy.warnings == [] and healthy.best_epoch > 1


def row(epoch: int, loss: float, mae: float, best: bool) -> dict[str, object]:
    return {"epoch": epoch, "train_loss": loss, "valid_mae": mae, "best": best}


def test_which_histories_warn() -> None:
    from mmcl.train import stalled_validation

    never = [row(1, 1.3, 1.2, True), row(2, 1.0, 1.3, False), row(3, 0.8, 1.25, False), row(4, 0.6, 1.4, False)]
    said = stalled_validation(never, "mae", False, constant=1.5)
    assert said is not None and "has not improved on epoch 1's 1.2000 in 3 epochs" in said
    assert stalled_validation(never[:3], "mae", False, 1.5) is None  # too early to say
    # it improved, a little, but stays at a constant answer's level: the case a first-epoch test alone would miss
    constant = [row(1, 1.3, 1.71, True), row(2, 1.0, 1.6, True), row(3, 0.8, 1.44, True), row(4, 0.5, 1.5, False)]
    said = stalled_validation(constant, "mae", False, constant=1.48)
    assert said is not None and "no better than a constant answer's (1.4800)" in said
    learning = [row(1, 1.3, 1.2, True), row(2, 1.0, 0.9, True), row(3, 0.8, 0.7, True), row(4, 0.6, 0.75, False)]
    assert stalled_validation(learning, "mae", False, 1.48) is None
    flat = [row(1, 1.3, 1.5, True), row(2, 1.28, 1.5, False), row(3, 1.27, 1.5, False), row(4, 1.26, 1.5, False)]
    assert stalled_validation(flat, "mae", False, 1.48) is None  # not learning either: nothing to contrast
    f1 = [{"train_loss": loss, "valid_f1": v, "best": b} for loss, v, b in
          ((1.0, 0.30, True), (0.8, 0.31, True), (0.6, 0.33, True), (0.4, 0.32, False))]
    said = stalled_validation(f1, "f1", True, constant=0.30)
    assert said is not None and "no better than a constant answer's" in said


def test_the_constant_answer_is_the_median_or_the_majority() -> None:
    import numpy as np

    from mmcl.train import constant_metric

    reg = TaskConfig()
    assert constant_metric(reg, np.array([-1.0, 0.5, 2.0]), np.array([0.5, 1.5]), "mae") == 0.5
    cls = TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=3)
    assert constant_metric(cls, np.array([2, 2, 0]), np.array([2, 2, 2, 2]), "acc") == 1.0


def test_the_first_epoch_gives_an_estimate_of_the_run(tiny_dataset: Dataset, tmp_path: Path) -> None:
    from mmcl.train import estimate

    lines: list[str] = []
    m, t = cfgs(tiny_dataset, epochs=3)
    train(tiny_dataset, m, t, tmp_path, progress=False, log=lines.append)
    assert lines[0].startswith("epoch 1:") and lines[1].startswith("about ") and "at most 2 more" in lines[1]
    assert estimate(80, t.model_copy(update={"epochs": 200})).startswith("about 80 s per epoch: at most 199 more, "
                                                                         "about 4.4 h")
    assert "about 12 min" in estimate(30, t.model_copy(update={"epochs": 25}))


def test_batchnorm_statistics_are_re_estimated_at_the_weights_of_the_epochs_end(tiny_dataset: Dataset) -> None:
    """A head channel that wakes after its running variance was gathered near 0 makes eval mode divide it by
    BatchNorm's epsilon: scores explode on any input. Re-estimated statistics bring eval mode back to what the
    weights compute in training."""
    import numpy as np
    import torch

    from mmcl.data.tensors import to_tensors
    from mmcl.evaluate import evaluate
    from mmcl.model import build_model
    from mmcl.train import refresh_batchnorm

    m, t = cfgs(tiny_dataset)
    torch.manual_seed(0)
    model = build_model(m)
    data = to_tensors(tiny_dataset.splits["train"], m)

    def refreshed() -> np.ndarray:
        torch.manual_seed(1)  # the dropout draws
        refresh_batchnorm(model, data, t.batch_size, torch.Generator().manual_seed(0))
        return evaluate(model, data, m.task).logits

    healthy = refreshed()
    norm = model.head.net[3]
    assert norm.momentum == 0.1  # the running average resumes with the next epoch
    awake = int(norm.running_var.argmax())
    norm.running_var[awake] = 1e-6  # the variance it had while the channel was dead
    stale = evaluate(model, data, m.task).logits
    assert abs(stale - healthy).mean() > 5 * abs(healthy).mean()
    np.testing.assert_allclose(refreshed(), healthy, rtol=0, atol=1e-5)  # the statistics of these weights, again
