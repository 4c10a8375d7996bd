"""One fitting path offline and online: a model whose sequence length differs from its dataset's scores a raw
utterance in the Predictor (the worker's path) as `mmcl evaluate` scores the dataset built from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.align import to_length
from mmcl.checkpoint import Checkpoint, FeatureProfile, load_checkpoint, read_profile, save_checkpoint
from mmcl.config import MODALITIES, ModelConfig, TaskConfig, TaskKind, TrainConfig
from mmcl.data.dataset import Dataset, Split, save_dataset
from mmcl.data.tensors import to_tensors
from mmcl.evaluate import evaluate
from mmcl.model import build_model
from mmcl.predictor import Predictor
from mmcl.sequence import fit_length, fit_source, resample_mean
from mmcl.train import source_lengths, train
from streams.cli.main import main as cli
from streams.learning.gate import to_split
from streams.learning.store import Example

DIMS = (24, 5, 8)
BUILT = 50  # the length the dataset was built at
MODEL = 32  # the model's length


def raw_utterances(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Raw features of every length around both lengths: 5-120 frames, modalities of different lengths."""
    rng = np.random.default_rng(seed)
    return [{m: rng.standard_normal((int(rng.integers(5, 121)), d)).astype(np.float32)
             for m, d in zip(MODALITIES, DIMS, strict=True)} for _ in range(n)]


def built(utts: list[dict[str, np.ndarray]]) -> Split:
    """A split as `mmcl data build` makes one: each raw sequence resampled to the build length when longer."""
    features, lengths = {}, {}
    for m, d in zip(MODALITIES, DIMS, strict=True):
        fitted = [to_length(u[m], BUILT) if m in u else np.zeros((0, d), np.float32) for u in utts]
        x = np.zeros((len(utts), max(len(f) for f in fitted), d), np.float32)
        for i, f in enumerate(fitted):
            x[i, :len(f)] = f
        features[m], lengths[m] = x, np.array([len(f) for f in fitted], np.int64)
    labels = np.linspace(-3, 3, len(utts)).astype(np.float32)
    return Split(features, lengths, {m: "back" for m in MODALITIES}, labels, np.array([f"u{i}" for i in range(len(utts))]))


def checkpoint(tmp_path: Path, source: tuple[int, int, int] | None, task: TaskConfig | None = None) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(input_dims=DIMS, seq_len=MODEL, d_model=16, num_heads=4, ff_dim=32, task=task or TaskConfig())
    return save_checkpoint(tmp_path / "ckpt", build_model(cfg).eval(), cfg, FeatureProfile(DIMS, {}, source), {})


def test_fit_source_resamples_only_what_is_longer_than_the_source() -> None:
    arrays = [np.arange(120, dtype=np.float32).reshape(60, 2), np.ones((7, 2), np.float32)]
    out = fit_source(arrays, 20)
    np.testing.assert_allclose(out[0], resample_mean(arrays[0], 20), rtol=0, atol=1e-5)
    assert out[1] is arrays[1] and fit_source(arrays, None) is arrays
    x = np.zeros((2, 60, 2), np.float32)
    x[0], x[1, :7] = arrays[0], arrays[1]
    fitted, mask = fit_length(x, np.array([60, 7]), "back", 12, source_len=20)
    want, _ = fit_length(np.stack([np.pad(out[0], ((0, 40), (0, 0))), x[1]]), np.array([20, 7]), "back", 12)
    np.testing.assert_allclose(fitted, want, rtol=0, atol=1e-6)
    assert mask.sum(1).tolist() == [12, 7]


def test_a_model_shorter_than_its_data_scores_raw_utterances_as_the_built_dataset() -> None:
    utts = raw_utterances(40)
    split = built(utts)
    cfg = ModelConfig(input_dims=DIMS, seq_len=MODEL, d_model=16, num_heads=4, ff_dim=32)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    offline = evaluate(model, to_tensors(split, cfg), cfg.task).logits[:, 0]
    source = (BUILT, BUILT, BUILT)
    online = Predictor(_ckpt(model, cfg, source), torch.device("cpu"), "fp32").predict(utts).scores
    assert np.abs(online - offline).max() <= 1e-4, np.abs(online - offline).max()
    # without the source length the worker fitted raw -> 32 while training saw raw -> 50 -> 32
    before = Predictor(_ckpt(model, cfg, None), torch.device("cpu"), "fp32").predict(utts).scores
    assert np.abs(before - offline).max() > 1e-3


def _ckpt(model: torch.nn.Module, cfg: ModelConfig, source: tuple[int, int, int] | None) -> Checkpoint:
    return Checkpoint(model, cfg, FeatureProfile(DIMS, {}, source), {}, Path("."), "0" * 64, "0" * 12)


def test_source_lengths_are_recorded_by_training_and_read_back(tmp_path: Path) -> None:
    utts = raw_utterances(48, seed=1)
    ds = Dataset({name: built(utts[i::3]) for i, name in enumerate(("train", "valid", "test"))},
                 {"label_kind": "score", "seq_len": BUILT, "alignment": "resample"})
    assert source_lengths(ds) == (BUILT, BUILT, BUILT)
    out = train(ds, ModelConfig(input_dims=DIMS, seq_len=MODEL, d_model=16, num_heads=4, ff_dim=32),
                TrainConfig(epochs=1, batch_size=16), tmp_path / "run", progress=False, log=lambda _: None)
    profile, _ = read_profile(out.checkpoint)
    assert profile.source_lengths == (BUILT, BUILT, BUILT)
    assert json.loads((out.checkpoint / "config.json").read_text())["feature_profile"]["source_lengths"] == [50] * 3


def test_source_lengths_without_a_build_length_are_the_datasets_own() -> None:
    utts = raw_utterances(9, seed=2)
    words = Dataset({name: built(utts) for name in ("train", "valid", "test")}, {"alignment": "words", "seq_len": 50})
    t = words.splits["train"].features
    assert source_lengths(words) == tuple(int(t[m].shape[1]) for m in MODALITIES)
    carried = Dataset(words.splits, {"source_lengths": [40, 30, 20]})
    assert source_lengths(carried) == (40, 30, 20)


def test_a_checkpoint_without_source_lengths_still_loads(tmp_path: Path) -> None:
    path = checkpoint(tmp_path, None)
    assert "source_lengths" not in json.loads((path / "config.json").read_text())["feature_profile"]
    assert load_checkpoint(path).profile.source_lengths is None


def test_feedback_examples_are_fitted_as_serving_fits_them() -> None:
    utts = raw_utterances(6, seed=3)
    wire = {"text": "text", "audio": "audio", "vision": "visual"}
    examples = [Example(f"u{i}", 0.5, 0, {wire[m]: a for m, a in u.items()}) for i, u in enumerate(utts)]
    split = to_split(examples, DIMS, MODEL, (BUILT, BUILT, BUILT))
    want = to_tensors(built(utts), ModelConfig(input_dims=DIMS, seq_len=MODEL))
    for k, m in enumerate(MODALITIES):
        np.testing.assert_allclose(split.features[m], want.xs[k].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", [TaskKind.REGRESSION, TaskKind.CLASSIFICATION])
def test_mmcl_evaluate_writes_the_predictions_it_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        kind: TaskKind) -> None:
    """Every field of the service's answer, with the numbers the Predictor (the worker's path) gives."""
    utts = raw_utterances(12, seed=4)
    utts[3] = {"text": utts[3]["text"], "audio": utts[3]["audio"]}  # no video: its weight is 0, not listed as used
    ds = Dataset({name: built(utts) for name in ("train", "valid", "test")}, {"label_kind": "score"})
    data = save_dataset(ds, tmp_path / "data.npz")
    path = checkpoint(tmp_path, (BUILT, BUILT, BUILT), TaskConfig(kind=kind))
    assert cli(["evaluate", "--checkpoint", str(path), "--data", str(data), "--predictions",
                str(tmp_path / "p.jsonl"), "--json"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["utterance_id"] for r in rows] == [f"u{i}" for i in range(12)]
    online = Predictor.from_checkpoint(path, device="cpu", precision="fp32").predict(utts)
    np.testing.assert_allclose([r["score"] for r in rows], online.scores, rtol=0, atol=1e-4)
    assert [r["label"] for r in rows] == online.labels
    assert online.modality_weights is not None
    np.testing.assert_allclose([[r["modality_weights"][w] for w in ("text", "audio", "visual")] for r in rows],
                               online.modality_weights, rtol=0, atol=1e-4)
    assert rows[3]["modalities"] == ["text", "audio"] and rows[3]["modality_weights"]["visual"] == 0
    assert all(r["modalities"] == ["text", "audio", "visual"] for i, r in enumerate(rows) if i != 3)
    assert {r["model_version"] for r in rows} == {load_checkpoint(path).version}
    if kind is TaskKind.CLASSIFICATION:
        assert online.probabilities is not None
        assert all(list(r["probabilities"]) == ["negative", "neutral", "positive"] for r in rows)
        np.testing.assert_allclose([list(r["probabilities"].values()) for r in rows], online.probabilities,
                                   rtol=0, atol=1e-4)
        assert [r["target"] for r in rows[:1] + rows[-1:]] == ["negative", "positive"]  # labels -3 ... 3
    else:
        assert all(r["probabilities"] is None for r in rows)
        assert [r["target"] for r in rows[:1] + rows[-1:]] == [-3.0, 3.0]
    assert ("mae" if kind is TaskKind.REGRESSION else "f1") in json.loads(capsys.readouterr().out)["metrics"]
