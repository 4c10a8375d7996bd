from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcl.checkpoint import FeatureProfile, load_checkpoint, model_version, read_profile, save_checkpoint
from mmcl.config import ModelConfig, TaskConfig, TaskKind
from mmcl.errors import CheckpointError, DimensionMismatch, InvalidInput
from mmcl.model import build_model
from mmcl.predictor import Predictor
from tests.conftest import batch_inputs

SMALL = {"input_dims": (12, 5, 9), "seq_len": 10, "d_model": 16, "num_heads": 4, "ff_dim": 32}


def saved(tmp_path: Path, **kw: object) -> tuple[Path, torch.nn.Module]:
    cfg = ModelConfig(**{**SMALL, **kw})
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, cfg, FeatureProfile(cfg.input_dims, {"text": "minilm"}),
                           {"valid": {"mae": 0.5}})
    return path, model


@pytest.mark.parametrize("kind", ["mmcl", "late_fusion"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, kind: str) -> None:
    path, model = saved(tmp_path, kind=kind, decoupling="calibrated")
    assert sorted(p.name for p in path.iterdir()) == ["checksums.sha256", "config.json", "metrics.json",
                                                      "model.safetensors"]
    ckpt = load_checkpoint(path)
    inputs = batch_inputs((12, 5, 9), 3, 10)
    with torch.inference_mode():
        torch.testing.assert_close(model(*inputs).logits, ckpt.model(*inputs).logits, rtol=0, atol=0)
    assert ckpt.profile.extractor_ids == {"text": "minilm"} and ckpt.metrics["valid"]["mae"] == 0.5


def test_the_version_covers_weights_config_and_profile(tmp_path: Path) -> None:
    """Same weights at another sequence length, with another feature profile or task: another version; the metrics
    decide no score and do not change it."""
    cfg = ModelConfig(**SMALL)
    model = build_model(cfg).eval()
    profile = FeatureProfile(cfg.input_dims, {"text": "minilm"})

    def version(name: str, c: ModelConfig = cfg, p: FeatureProfile = profile,
                metrics: object = None) -> tuple[str, str]:
        path = save_checkpoint(tmp_path / name, model, c, p, {"valid": metrics})
        ckpt = load_checkpoint(path)
        assert ckpt.version == model_version(path) and Predictor(ckpt, torch.device("cpu"), "fp32").version == ckpt.version
        return ckpt.checksum, ckpt.version

    base = version("base")
    same = version("same", metrics={"mae": 0.1})
    longer = version("longer", cfg.model_copy(update={"seq_len": 64}))
    other_profile = version("profile", p=FeatureProfile(cfg.input_dims, {"text": "bert-base-768"}))
    other_source = version("source", p=FeatureProfile(cfg.input_dims, {"text": "minilm"}, (50, 50, 50)))
    task = version("task", cfg.model_copy(update={"task": TaskConfig(score_range=1.0)}))
    assert len({checksum for checksum, _ in (base, same, longer, other_profile, other_source, task)}) == 1
    assert same[1] == base[1]
    assert len({v for _, v in (base, longer, other_profile, other_source, task)}) == 5


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_missing_files_are_refused(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    (path / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing metrics\.json"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_config_that_is_not_a_json_object_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    """Rewritten with matching checksums, so only the config's own check can catch it; every reader says the same."""
    path, _ = saved(tmp_path)
    (path / "config.json").write_text(text)
    sums = (path / "checksums.sha256").read_text().splitlines()
    digest = hashlib.sha256(text.encode()).hexdigest()
    (path / "checksums.sha256").write_text("\n".join(f"{digest}  config.json" if line.endswith("config.json") else line
                                                     for line in sums) + "\n")
    for read in (load_checkpoint, model_version, read_profile):
        with pytest.raises(CheckpointError, match=r"unreadable config\.json") as caught:
            read(path)
        assert "\n" not in str(caught.value)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    saved(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert json.loads((path / "config.json").read_text())["format_version"] == 1


def test_predictor_variable_lengths_missing_modalities_and_batch_of_one(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    p = Predictor.from_checkpoint(path, device="auto", precision="fp32")  # batch-independent to float rounding
    assert p.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    batch = [
        {"text": rng.standard_normal((4, 12)), "audio": rng.standard_normal((30, 5)), "vision": None},
        {"text": rng.standard_normal((10, 12)), "audio": rng.standard_normal((10, 5)),
         "vision": rng.standard_normal((3, 9))},
    ]
    out = p.predict(batch)
    assert out.scores.shape == (2,) and len(out.labels) == 2 and out.probabilities is None
    assert out.modality_weights is not None and out.modality_weights[0, 2] == 0 and out.modality_weights[1, 2] > 0
    np.testing.assert_array_equal(out.modality_mask, [[True, True, False], [True, True, True]])
    one = p.predict(batch[1:])
    np.testing.assert_allclose(one.scores, out.scores[1:], rtol=1e-5, atol=1e-6)
    masked = p.predict(batch[1:], modality_mask=np.array([[True, True, False]]))
    assert masked.modality_weights is not None and masked.modality_weights[0, 2] == 0
    assert len(out.model_version) == 12


def test_predictor_classification_probabilities(tmp_path: Path) -> None:
    path, _ = saved(tmp_path, task=TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=3))
    out = Predictor.from_checkpoint(path, device="cpu").predict([{"text": np.ones((2, 12)), "audio": np.ones((2, 5))}])
    assert out.probabilities is not None and out.probabilities.shape == (1, 3)
    assert out.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert out.labels[0] in ("negative", "neutral", "positive")


def test_predictor_rejects_bad_input(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    p = Predictor.from_checkpoint(path, device="cpu")
    with pytest.raises(DimensionMismatch, match="audio"):
        p.predict([{"text": np.ones((2, 12)), "audio": np.ones((2, 6))}])
    with pytest.raises(InvalidInput, match="NaN"):
        p.predict([{"text": np.full((2, 12), np.nan)}])
    with pytest.raises(InvalidInput, match="no modality"):
        p.predict([{"vision": None}])
    with pytest.raises(InvalidInput, match="modality_mask has shape"):
        p.predict([{"text": np.ones((2, 12))}], modality_mask=np.ones((1, 2), dtype=bool))
