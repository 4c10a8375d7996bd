"""The inference thread: batches scored as the model scores them, the next one prepared while the model runs (the
default on CUDA), a bad utterance failing alone, and a hot swap between preparing and scoring a batch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from mmcl.batch_inputs import BatchInputs, UtteranceFeatures
from mmcl.checkpoint import Checkpoint, FeatureProfile
from mmcl.config import ModelConfig
from mmcl.model import build_model
from mmcl.predictor import PredictionBatch, Predictor
from streams.settings import BatchSettings
from streams.worker.decode import Part
from streams.worker.inference import BatchResult, InferenceThread
from streams.worker.join import Joined

DIMS = (12, 5, 9)
WAIT_S = 10.0  # bounded waits on conditions that hold in milliseconds


def predictor(seed: int = 0, cls: type[Predictor] = Predictor) -> Predictor:
    torch.manual_seed(seed)
    cfg = ModelConfig(input_dims=DIMS, seq_len=10, d_model=16, num_heads=4, ff_dim=32)
    ckpt = Checkpoint(build_model(cfg).eval(), cfg, FeatureProfile(DIMS), {}, None, str(seed) * 64, str(seed) * 12)  # type: ignore[arg-type]  # a model built here, not loaded
    return cls(ckpt, torch.device("cpu"), "fp32")


def joined(i: int, bad: bool = False) -> Joined:
    rng = np.random.default_rng(i)
    parts = {}
    for wire, dim in zip(("text", "audio", "visual"), DIMS, strict=True):
        arr = rng.standard_normal((int(rng.integers(2, 12)), dim)).astype(np.float32)
        if bad and wire == "audio":
            arr[0, 0] = np.nan
        parts[wire] = Part(f"u{i}", "c", "customer", wire, arr, 0, None)
    return Joined("c", f"u{i}", "customer", parts, (), (i,), True, 0.0)


def run(thread: InferenceThread, results: queue.Queue[BatchResult], n: int) -> dict[str, float]:
    """Submit n utterances before the thread starts (so batches form the same way each time), collect every score."""
    for i in range(n):
        thread.submit(joined(i))
    thread.start()
    scores: dict[str, float] = {}
    try:
        while len(scores) < n:
            r = results.get(timeout=WAIT_S)
            assert r.predictions is not None and not r.failed
            scores.update(zip((it.utterance_id for it in r.items), r.predictions.scores.tolist(), strict=True))
    finally:
        thread.stop()
    return scores


def test_batches_prepared_ahead_score_as_batches_prepared_in_turn() -> None:
    p = predictor()
    plain: queue.Queue[BatchResult] = queue.Queue()
    ahead: queue.Queue[BatchResult] = queue.Queue()
    want = run(InferenceThread(p, 8, 0.0, plain.put), plain, 50)
    threaded = InferenceThread(p, 8, 0.0, ahead.put, prepare_ahead=True)
    assert threaded.prepares_ahead
    got = run(threaded, ahead, 50)
    assert got.keys() == want.keys() and len(got) == 50
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-6)


class Gated(Predictor):
    """Scoring waits for the test's go; preparations are counted."""

    go = threading.Event()
    prepared = threading.Semaphore(0)

    def prepare(self, batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None = None) -> BatchInputs:
        inputs = super().prepare(batch, modality_mask)
        self.prepared.release()
        return inputs

    def predict_prepared(self, inputs: BatchInputs) -> PredictionBatch:
        assert self.go.wait(WAIT_S)
        return super().predict_prepared(inputs)


@pytest.mark.parametrize("ahead", [True, False])
def test_the_next_batch_is_prepared_while_the_model_scores_this_one(ahead: bool) -> None:
    Gated.go, Gated.prepared = threading.Event(), threading.Semaphore(0)
    results: queue.Queue[BatchResult] = queue.Queue()
    thread = InferenceThread(predictor(cls=Gated), 4, 0.0, results.put, prepare_ahead=ahead)
    for i in range(8):
        thread.submit(joined(i))
    thread.start()
    try:
        assert Gated.prepared.acquire(timeout=WAIT_S)  # the first batch, now held in the model
        # ahead: the second batch is prepared while the first is held; in turn: not before the first is scored
        assert Gated.prepared.acquire(timeout=WAIT_S if ahead else 0.3) is ahead
    finally:
        Gated.go.set()
        thread.stop()
    assert sum(len(results.get(timeout=WAIT_S).items) for _ in range(2)) == 8


def test_a_bad_utterance_fails_alone_when_prepared_ahead() -> None:
    results: queue.Queue[BatchResult] = queue.Queue()
    thread = InferenceThread(predictor(), 8, 0.0, results.put, prepare_ahead=True)
    for i in range(6):
        thread.submit(joined(i, bad=i == 3))
    thread.start()
    try:
        r = results.get(timeout=WAIT_S)
    finally:
        thread.stop()
    assert [it.utterance_id for it, _ in r.failed] == ["u3"] and "NaN" in r.failed[0][1]
    assert [it.utterance_id for it in r.items] == ["u0", "u1", "u2", "u4", "u5"]
    assert r.predictions is not None and len(r.predictions.scores) == 5


class Slow(Predictor):
    """Preparing waits for the test's go, so the test can swap the model in between."""

    go = threading.Event()
    started = threading.Event()

    def prepare(self, batch: Sequence[UtteranceFeatures], modality_mask: np.ndarray | None = None) -> BatchInputs:
        self.started.set()
        assert self.go.wait(WAIT_S)
        return super().prepare(batch, modality_mask)


def test_a_batch_prepared_for_a_model_swapped_out_meanwhile_is_scored_by_the_new_one() -> None:
    Slow.go, Slow.started = threading.Event(), threading.Event()
    old, new = predictor(0, Slow), predictor(1)
    results: queue.Queue[BatchResult] = queue.Queue()
    thread = InferenceThread(old, 8, 0.0, results.put, prepare_ahead=True)
    for i in range(5):
        thread.submit(joined(i))
    thread.start()
    try:
        assert Slow.started.wait(WAIT_S)
        thread.predictor = new  # what the worker's hot swap does
        Slow.go.set()
        r = results.get(timeout=WAIT_S)
    finally:
        Slow.go.set()
        thread.stop()
    assert r.predictions is not None and r.predictions.model_version == new.version != old.version
    want = new.predict([{"text": it.parts["text"].array, "audio": it.parts["audio"].array,
                         "vision": it.parts["visual"].array} for it in r.items])
    np.testing.assert_allclose(r.predictions.scores, want.scores, rtol=1e-5, atol=1e-6)


def test_prepare_ahead_is_on_for_cuda_by_default_and_can_be_forced() -> None:
    auto = BatchSettings()
    assert auto.prepares_ahead("cuda") and not auto.prepares_ahead("cpu")
    assert BatchSettings(prepare_ahead="on").prepares_ahead("cpu")
    assert not BatchSettings(prepare_ahead="off").prepares_ahead("cuda")


def test_stop_before_start_returns() -> None:
    thread = InferenceThread(predictor(), 8, 0.0, lambda _: None, prepare_ahead=True)
    thread.stop(timeout=1.0)
