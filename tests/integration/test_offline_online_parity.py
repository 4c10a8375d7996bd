"""The same utterance scores the same offline and online: the test split's raw utterances sent through a worker score
as `mmcl evaluate --predictions` scores the dataset built from them, for a model whose sequence length (32) differs
from the one the dataset was built at (50)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from extractors.align import to_length
from mmcl.checkpoint import FeatureProfile, save_checkpoint
from mmcl.config import MODALITIES, ModelConfig
from mmcl.data.dataset import Dataset, Split, save_dataset
from mmcl.model import build_model
from streams.cli.main import main as cli
from streams.settings import WIRE_MODALITIES
from streams.sinks.redis_store import stored_prediction, utt_key

from .conftest import DIMS, Stack, part, wait_for

BUILT, MODEL = 50, 32
WIRE_DIMS = tuple(DIMS[w] for w in WIRE_MODALITIES)


def test_the_worker_scores_test_utterances_as_mmcl_evaluate(stack: Stack, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 30
    raw = [{w: rng.standard_normal((int(rng.integers(5, 121)), d)).astype(np.float32)
            for w, d in zip(WIRE_MODALITIES, WIRE_DIMS, strict=True)} for _ in range(n)]
    ids = [f"{stack.prefix}-u{i:02d}" for i in range(n)]

    # the dataset as `mmcl data build` makes it: each raw sequence resampled to 50 frames when longer
    features, lengths = {}, {}
    for w, m, d in zip(WIRE_MODALITIES, MODALITIES, WIRE_DIMS, strict=True):
        fitted = [to_length(u[w], BUILT) for u in raw]
        x = np.zeros((n, BUILT, d), np.float32)
        for i, f in enumerate(fitted):
            x[i, :len(f)] = f
        features[m], lengths[m] = x, np.array([len(f) for f in fitted], np.int64)
    split = Split(features, lengths, {m: "back" for m in MODALITIES}, np.zeros(n, np.float32), np.array(ids))
    data = save_dataset(Dataset({s: split for s in ("train", "valid", "test")},
                                {"label_kind": "score", "seq_len": BUILT, "alignment": "resample"}), tmp_path / "d.npz")
    torch.manual_seed(3)
    cfg = ModelConfig(input_dims=WIRE_DIMS, seq_len=MODEL, d_model=16, num_heads=2, ff_dim=32)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(cfg).eval(), cfg,
                           FeatureProfile(cfg.input_dims, {}, (BUILT, BUILT, BUILT)), {})

    assert cli(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--predictions",
                str(tmp_path / "offline.jsonl"), "--json"]) == 0
    offline = {r["utterance_id"]: r for r in map(json.loads, (tmp_path / "offline.jsonl").read_text().splitlines())}

    stack.start_worker(MMCL_MODEL__CHECKPOINT=str(ckpt))  # fp32, as every worker of this suite
    producer = stack.producer()
    call = f"{stack.prefix}-call"
    for utt, arrays in zip(ids, raw, strict=True):
        for w in WIRE_MODALITIES:  # float32 on the wire: float16 would round the features themselves
            stack.send(producer, w, part(utt, call, w, array=arrays[w], wire="v2", dtype="float32"), call.encode())
    producer.flush(10)
    wait_for(lambda: all(stack.redis.exists(utt_key(call, u)) for u in ids), 60, f"{n} results in Redis")

    online = {u: stored_prediction(stack.redis.hgetall(utt_key(call, u))) for u in ids}
    diff = max(abs(online[u].score - offline[u]["score"]) for u in ids)
    assert diff <= 1e-4, diff
    assert np.std([p.score for p in online.values()]) > 0  # a model whose scores vary, so the comparison means something
    for u, p in online.items():  # the rest of the answer, in the service's fields
        assert p.modality_weights is not None
        assert (p.label, p.modalities, p.model_version) == \
            (offline[u]["label"], offline[u]["modalities"], offline[u]["model_version"])
        assert max(abs(p.modality_weights[w] - offline[u]["modality_weights"][w]) for w in WIRE_MODALITIES) <= 1e-4
