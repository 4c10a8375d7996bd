"""A model reads the modalities it was trained on and no other: MMCL as well as the baseline, through the
checkpoint, the offline tensors and the serving batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcl.batch_inputs import prepare
from mmcl.checkpoint import CONFIG, FeatureProfile, read_profile, save_checkpoint
from mmcl.config import MODALITIES, ModelConfig
from mmcl.data.dataset import Split
from mmcl.data.tensors import to_tensors
from mmcl.errors import InvalidInput
from mmcl.model import MMCL
from mmcl.predictor import Predictor
from tests.conftest import batch_inputs

SMALL = {"input_dims": (12, 5, 9), "seq_len": 10, "d_model": 16, "num_heads": 4, "ff_dim": 32}


@pytest.mark.parametrize("decoupling", ["paper", "calibrated"])
@pytest.mark.parametrize("reads", [("text",), ("text", "audio"), ("vision",)])
def test_mmcl_reads_only_its_modalities(decoupling: str, reads: tuple[str, ...]) -> None:
    """Its score is the score of the same weights with the other modalities missing, whatever they hold."""
    subset = MMCL(ModelConfig(**SMALL, decoupling=decoupling, use_modalities=reads)).eval()
    full = MMCL(ModelConfig(**SMALL, decoupling=decoupling)).eval()
    full.load_state_dict(subset.state_dict())
    xs, masks, present = batch_inputs((12, 5, 9), 4, 10)
    unread = [i for i, m in enumerate(MODALITIES) if m not in reads]
    noisy = [torch.randn_like(x) * 50 if i in unread else x for i, x in enumerate(xs)]
    hidden = present.clone()
    hidden[:, unread] = False
    with torch.inference_mode():
        got, again, want = subset(xs, masks, present), subset(noisy, masks, present), full(xs, masks, hidden)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(again.logits, want.logits)
    assert got.modality_weights is not None and (got.modality_weights[:, unread] == 0).all()
    assert (got.modality_weights[:, [MODALITIES.index(m) for m in reads]] > 0).all()
    assert got.actions is not None and all((got.actions[i] == 0).all() for i in unread)  # closed gates


def test_use_modalities_is_kept_in_model_order() -> None:
    assert ModelConfig(use_modalities=("audio", "text", "audio")).use_modalities == ("text", "audio")
    assert ModelConfig(use_modalities=("audio",)).used == (False, True, False)
    with pytest.raises(ValueError, match="subset"):
        ModelConfig(use_modalities=("smell",))


def test_an_mmcl_checkpoint_from_before_reads_all_three(tmp_path: Path) -> None:
    """MMCL used to ignore use_modalities: a checkpoint that does not say what it reads read all three."""
    cfg = ModelConfig(**SMALL, use_modalities=("text",))
    path = save_checkpoint(tmp_path / "ckpt", MMCL(cfg), cfg, FeatureProfile(cfg.input_dims), {})
    assert read_profile(path)[1].use_modalities == ("text",)
    config = json.loads((path / CONFIG).read_text())
    assert config["modalities"] == ["text"]
    del config["modalities"]
    (path / CONFIG).write_text(json.dumps(config))
    assert read_profile(path)[1].use_modalities == MODALITIES
    config["model"]["kind"] = "late_fusion"  # the baseline always honoured it
    (path / CONFIG).write_text(json.dumps(config))
    assert read_profile(path)[1].use_modalities == ("text",)


def test_a_checkpoint_from_before_the_unpaired_setting_averages_an_unpaired_modality(tmp_path: Path) -> None:
    cfg = ModelConfig(**SMALL)
    assert cfg.unpaired == "sequence"  # new models
    path = save_checkpoint(tmp_path / "ckpt", MMCL(cfg), cfg, FeatureProfile(cfg.input_dims), {})
    assert read_profile(path)[1].unpaired == "sequence"
    config = json.loads((path / CONFIG).read_text())
    del config["model"]["unpaired"]
    (path / CONFIG).write_text(json.dumps(config))
    assert read_profile(path)[1].unpaired == "mean"  # as it was trained


def _split(text_lengths: list[int], audio_lengths: list[int]) -> Split:
    n = len(text_lengths)
    lengths = {"text": np.array(text_lengths), "audio": np.array(audio_lengths), "vision": np.zeros(n, np.int64)}
    feats = {m: np.ones((n, 10, d), np.float32) * (np.arange(10)[None, :, None] < lengths[m][:, None, None])
             for m, d in zip(MODALITIES, (12, 5, 9), strict=True)}
    return Split(feats, lengths, dict.fromkeys(MODALITIES, "back"), np.linspace(-1, 1, n).astype(np.float32),
                 np.array([f"u{i}" for i in range(n)]))


def test_offline_tensors_leave_out_utterances_the_model_cannot_read() -> None:
    split = _split([4, 0, 6, 0], [3, 5, 0, 0])
    text_only = to_tensors(split, ModelConfig(**SMALL, use_modalities=("text",)))
    assert text_only.rows.tolist() == [0, 2]
    assert text_only.modality_mask.tolist() == [[True, False, False], [True, False, False]]
    torch.testing.assert_close(text_only.y, torch.tensor([-1.0, 1 / 3]))
    both = to_tensors(split, ModelConfig(**SMALL, use_modalities=("text", "audio")))
    assert both.rows.tolist() == [0, 1, 2]
    assert both.modality_mask[:, :2].tolist() == [[True, True], [False, True], [True, False]]


def test_serving_checks_and_copies_only_what_the_model_reads(tmp_path: Path) -> None:
    cfg = ModelConfig(**SMALL, use_modalities=("text",))
    path = save_checkpoint(tmp_path / "ckpt", MMCL(cfg), cfg, FeatureProfile(cfg.input_dims), {})
    predictor = Predictor.from_checkpoint(path, device="cpu", precision="fp32")
    assert predictor.modalities == ("text",)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(6, 12)).astype(np.float32)
    wrong_audio = rng.normal(size=(40, 3)).astype(np.float32)  # a dim the model would refuse, if it read audio
    alone, with_audio = predictor.predict([{"text": text}]), predictor.predict([{"text": text, "audio": wrong_audio}])
    assert alone.scores.tolist() == with_audio.scores.tolist()
    assert with_audio.modality_mask.tolist() == [[True, False, False]]
    with pytest.raises(InvalidInput, match=r"sample 1 has none of the modalities the model reads \(text\)"):
        predictor.predict([{"text": text}, {"audio": rng.normal(size=(4, 5)).astype(np.float32)}])
    inputs = prepare([{"text": text, "audio": wrong_audio}], None, cfg.input_dims, cfg.seq_len, used=cfg.used)
    assert inputs.lengths.tolist() == [6]  # the unread audio does not lengthen the batch


@pytest.mark.parametrize("decoupling", ["paper", "calibrated"])
def test_an_unpaired_modality_passes_its_steps_on_or_only_their_mean(decoupling: str) -> None:
    """Without a partner there is nothing to compare with: "mean" (the published equations) reduces the sequence
    to its mean before the attention and the temporal encoder see it, "sequence" lets them see its steps."""
    xs, masks, present = batch_inputs((12, 5, 9), 2, 10)
    spread = [xs[0].clone(), xs[1], xs[2]]
    spread[0][:, :5] += 3.0  # the same mean, other steps
    spread[0][:, 5:] -= 3.0
    outs = {}
    for unpaired in ("mean", "sequence"):
        torch.manual_seed(0)
        model = MMCL(ModelConfig(**SMALL, decoupling=decoupling, use_modalities=("text",), unpaired=unpaired)).eval()
        with torch.inference_mode():
            outs[unpaired] = model(xs, masks, present).logits, model(spread, masks, present).logits
    torch.testing.assert_close(*outs["mean"])
    assert not torch.allclose(*outs["sequence"], atol=1e-3)
    # with a partner present, the setting changes nothing
    torch.manual_seed(0)
    paired = {u: MMCL(ModelConfig(**SMALL, decoupling=decoupling, unpaired=u)).eval() for u in ("mean", "sequence")}
    paired["sequence"].load_state_dict(paired["mean"].state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(paired["mean"](xs, masks, present).logits, paired["sequence"](xs, masks, present).logits)
