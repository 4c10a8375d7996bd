"""The predictor's whole-batch input preparation and its length-sorted sub-batches: the same inputs and the same
scores as fitting each utterance on its own and running one batch padded to the model's length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmcl.batch_inputs import UtteranceFeatures, prepare
from mmcl.checkpoint import FeatureProfile, save_checkpoint
from mmcl.config import MODALITIES, ModelConfig
from mmcl.errors import InvalidInput
from mmcl.model import build_model
from mmcl.predictor import Predictor, sub_batches
from mmcl.sequence import fit_length

DIMS, SEQ_LEN = (12, 5, 9), 10


def varied(n: int, seed: int = 0) -> list[UtteranceFeatures]:
    """Utterances of 1-25 frames (many longer than the model's 10), some modalities missing or empty, float16 and
    float32 and float64 mixed, and a pooled vector."""
    rng = np.random.default_rng(seed)
    batch: list[UtteranceFeatures] = []
    for i in range(n):
        utt: dict[str, np.ndarray | None] = {}
        for m, d in zip(MODALITIES, DIMS, strict=True):
            kind = rng.integers(6)
            if kind == 0 and m != "text":
                utt[m] = None
            elif kind == 1 and m != "text":
                utt[m] = np.zeros((0, d), np.float32)
            else:
                arr = rng.standard_normal((int(rng.integers(1, 26)), d))
                utt[m] = arr.astype([np.float16, np.float32, np.float64][i % 3])
        if i == 3:
            utt["audio"] = rng.standard_normal(DIMS[1]).astype(np.float32)  # pooled: a sequence of one
        batch.append(utt)
    return batch


def one_by_one(batch: list[UtteranceFeatures]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The reference: each utterance fitted alone with mmcl.sequence.fit_length."""
    xs, masks = [], []
    for m, d in zip(MODALITIES, DIMS, strict=True):
        x, mask = np.zeros((len(batch), SEQ_LEN, d), np.float32), np.zeros((len(batch), SEQ_LEN), bool)
        for i, utt in enumerate(batch):
            arr = utt.get(m)
            if arr is None:
                continue
            arr = np.asarray(arr, np.float32).reshape(-1, d)
            x[i], mask[i] = (a[0] for a in fit_length(arr[None], np.array([len(arr)]), "back", SEQ_LEN))
        xs.append(x)
        masks.append(mask)
    return xs, masks


def test_whole_batch_preparation_equals_fitting_each_utterance_alone() -> None:
    batch = varied(64)
    got = prepare(batch, None, DIMS, SEQ_LEN)
    want_x, want_mask = one_by_one(batch)
    for m in range(3):
        np.testing.assert_allclose(got.xs[m].numpy(), want_x[m], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got.masks[m].numpy(), want_mask[m])
    np.testing.assert_array_equal(got.present.numpy(), np.stack([w.any(axis=1) for w in want_mask], axis=1))
    np.testing.assert_array_equal(got.lengths, np.stack([w.sum(axis=1) for w in want_mask], axis=1).max(axis=1))


@pytest.mark.parametrize("frames", [3, 40])  # kept as is, and resampled
def test_a_bad_value_names_its_sample(frames: int) -> None:
    batch = varied(8)
    bad = np.ones((frames, DIMS[1]), np.float16)
    bad[frames - 1, 2] = np.inf
    batch[5] = {**batch[5], "audio": bad}
    with pytest.raises(InvalidInput, match="sample 5: audio features contain NaN or Inf"):
        prepare(batch, None, DIMS, SEQ_LEN)


def test_length_sorted_sub_batches_score_as_one_padded_batch(tmp_path: Path) -> None:
    torch.manual_seed(3)
    cfg = ModelConfig(input_dims=DIMS, seq_len=SEQ_LEN, d_model=16, num_heads=4, ff_dim=32, decoupling="calibrated")
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, cfg, FeatureProfile(DIMS, {}), {"valid": {"mae": 0.5}})
    batch = varied(64, seed=1)
    split = Predictor.from_checkpoint(path, device="cpu", precision="fp32")
    assert split.max_sub_batches == 4
    got = split.predict(batch)
    x, mask = one_by_one(batch)
    present = torch.from_numpy(np.stack([m.any(axis=1) for m in mask], axis=1))
    with torch.inference_mode():  # one batch, every sequence padded to the model's length
        want = model([torch.from_numpy(a) for a in x], [torch.from_numpy(m) for m in mask], present)
    np.testing.assert_allclose(got.scores, want.logits.squeeze(-1).numpy(), rtol=1e-5, atol=1e-5)
    assert got.modality_weights is not None and want.modality_weights is not None
    np.testing.assert_allclose(got.modality_weights, want.modality_weights.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.modality_mask, present.numpy())


def test_sub_batches_split_only_where_cutting_padding_pays() -> None:
    assert len(sub_batches(np.full(64, 50), most=4)) == 1  # nothing to cut: one batch is cheaper
    uniform = np.sort(np.random.default_rng(0).integers(10, 51, 64))
    groups = sub_batches(uniform, most=4)
    assert len(groups) == 4 and sorted(np.concatenate(groups).tolist()) == list(range(64))
    assert len(sub_batches(uniform[:20], most=4)) == 1  # too few for two sub-batches of 16
    assert len(sub_batches(uniform, most=1)) == 1
