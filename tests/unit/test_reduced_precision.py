"""Reduced precision changes no result that matters, with a trained model: features sent as float16 on the binary
wire, and the network run in bfloat16 (the default on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from mmcl.config import MODALITIES, WIRE_MODALITIES
from mmcl.int8_serving import int8_supported
from mmcl.predictor import Predictor
from streams.settings import LimitSettings
from streams.wire import Features, encode_features
from streams.worker.decode import Part, decode_part, profile_of
from tests.unit.conftest import Trained

# int8 runs where oneDNN has VNNI (and is the CPU default only there); elsewhere auto is fp32 (test_int8_serving)
NEEDS_INT8 = pytest.mark.skipif(not int8_supported(), reason="this CPU lacks VNNI or PyTorch its oneDNN engine")
# Reduced arithmetic moves a score on the [-3, 3] scale by at most MOST, and 99 in 100 by at most TYPICAL. Measured
# with bf16 on the trained model below: max 0.030, 99th percentile 0.0099, median 0.002; one utterance in 200 is that
# sensitive.
MOST, TYPICAL = 0.05, 0.02


def assert_close_scores(reference: np.ndarray, reduced: np.ndarray) -> None:
    diff = np.abs(reference - reduced)
    assert diff.max() < MOST and np.quantile(diff, 0.99) < TYPICAL, (diff.max(), np.quantile(diff, 0.99))


@pytest.mark.slow
def test_float16_features_score_within_a_hundredth_of_float32(mosi_trained: Trained) -> None:
    predictor = Predictor.from_checkpoint(mosi_trained.checkpoint, device="cpu")
    test = mosi_trained.dataset.splits["test"]
    profile, limits = profile_of(predictor), LimitSettings()
    sent, received = [], []
    for i in range(len(test.labels)):
        as_sent, as_received = {}, {}
        for m, wire in zip(MODALITIES, WIRE_MODALITIES, strict=True):
            arr = test.features[m][i][:int(test.lengths[m][i])]
            part = decode_part(encode_features(Features(f"u{i}", wire, arr, 1)), wire, limits, profile)
            assert isinstance(part, Part) and part.array.dtype == np.float16
            as_sent[m], as_received[m] = arr, part.array
        sent.append(as_sent)
        received.append(as_received)
    full, half = predictor.predict(sent).scores, predictor.predict(received).scores
    assert full.std() > 0.5  # scores spread over the scale: the model learnt something
    assert np.abs(full - half).max() < 0.01, np.abs(full - half).max()


@pytest.mark.slow
def test_bfloat16_scores_stay_close_to_float32(mosi_trained: Trained) -> None:
    """bf16 is the default on CUDA; its arithmetic is the same on any device, so the CPU checks the numbers."""
    test = mosi_trained.dataset.splits["test"]
    batch = [{m: test.features[m][i][:int(test.lengths[m][i])] for m in MODALITIES} for i in range(len(test.labels))]
    full = Predictor.from_checkpoint(mosi_trained.checkpoint, device="cpu", precision="fp32").predict(batch)
    half = Predictor.from_checkpoint(mosi_trained.checkpoint, device="cpu", precision="bf16").predict(batch)
    assert full.scores.std() > 0.5
    assert_close_scores(full.scores, half.scores)
    assert full.modality_weights is not None and half.modality_weights is not None
    assert np.abs(full.modality_weights - half.modality_weights).max() < 0.01


@pytest.mark.slow
@NEEDS_INT8
def test_int8_scores_stay_close_to_float32(mosi_trained: Trained) -> None:
    """int8 is the default on a CPU; held-out utterances of every length the set has, so padding is gathered out."""
    test = mosi_trained.dataset.splits["test"]
    batch = [{m: test.features[m][i][:int(test.lengths[m][i])] for m in MODALITIES} for i in range(len(test.labels))]
    full = Predictor.from_checkpoint(mosi_trained.checkpoint, device="cpu", precision="fp32").predict(batch)
    auto = Predictor.from_checkpoint(mosi_trained.checkpoint, device="cpu")
    assert auto.precision == "int8"
    quantized = auto.predict(batch)
    assert full.scores.std() > 0.5
    assert_close_scores(full.scores, quantized.scores)
    assert full.modality_weights is not None and quantized.modality_weights is not None
    assert np.abs(full.modality_weights - quantized.modality_weights).max() < 0.01
    assert len({int(n) for n in test.lengths["text"]}) > 5  # lengths vary: sub-batches and gathered padding


@pytest.mark.slow
@NEEDS_INT8
def test_int8_scores_move_little_with_the_batch_around_them(mosi_trained: Trained) -> None:
    """Activations are quantized per call, so an utterance's int8 score depends a little on its batch-mates."""
    test = mosi_trained.dataset.splits["test"]
    batch = [{m: test.features[m][i][:int(test.lengths[m][i])] for m in MODALITIES} for i in range(40)]
    predictor = Predictor.from_checkpoint(mosi_trained.checkpoint, device="cpu", precision="int8")
    together = predictor.predict(batch).scores
    alone = np.array([predictor.predict([u]).scores[0] for u in batch])
    assert np.abs(together - alone).max() > 0
    assert_close_scores(together, alone)
