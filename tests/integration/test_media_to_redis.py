"""From raw media to a result in Redis through the running worker: `mmcl stream-call` extracts speech made by
espeak-ng, a face video and transcripts with the default profile and publishes them in real-time order; the worker
joins, scores and writes them. A message made by another extractor than the model's is dead-lettered."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmcl.checkpoint import FeatureProfile, save_checkpoint
from mmcl.config import ModelConfig
from mmcl.model import build_model
from streams.kafka import ensure_topics
from streams.local.embedded import Service
from streams.sinks.redis_store import read_call, utt_key
from tests.media import call_folder

from .conftest import Stack, quick_kafka, wait_for

IDS = {"text": "minilm-384", "audio": "librosa-42", "vision": "mediapipe-fer-19"}


@pytest.fixture(scope="module")
def media_stack(kafka: Service, redis_service: Service, state_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import torch

    torch.manual_seed(0)
    cfg = ModelConfig(input_dims=(384, 42, 19), seq_len=20, d_model=16, num_heads=2, ff_dim=32)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("media-model") / "ckpt", build_model(cfg).eval(), cfg,
                           FeatureProfile(cfg.input_dims, IDS), {"seed": 0})
    st = Stack(kafka, redis_service, ckpt, state_dir, f"m{uuid.uuid4().hex[:8]}")
    ensure_topics(quick_kafka(kafka.url), st.topics)
    yield st
    for w in st.workers:
        w.stop()


def mmcl(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=stack.env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_a_call_from_raw_media_to_results_in_redis(media_stack: Stack, tmp_path: Path) -> None:
    worker = media_stack.start_worker()
    call = f"{media_stack.prefix}-call"
    folder = call_folder(tmp_path / "call", call_id=call)
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]

    done = mmcl(media_stack, "stream-call", str(folder), "--checkpoint", str(media_stack.checkpoint), "--speed", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sent 4 text, 4 audio, 2 visual" in done.stdout, done.stdout
    assert "outcomes: 4 of 4 utterances scored, 0 dead-lettered" in done.stdout, done.stdout  # it waited for them

    def all_written() -> bool:
        return all(media_stack.redis.exists(utt_key(call, r["utterance_id"])) for r in rows)

    wait_for(all_written, 60, "every utterance of the call in Redis")
    for r in rows:
        res = media_stack.redis.hgetall(utt_key(call, r["utterance_id"]))
        assert res["speaker"] == r["speaker"]
        assert -3.0 <= float(res["score"]) <= 3.0
        used = set(json.loads(res["modalities"]))
        if r["speaker"] == "agent":  # the default speaker-role policy scores agents on their words alone
            assert used == {"text"}, res
        else:
            assert used == ({"text", "audio", "visual"} if "video" in r else {"text", "audio"}), res
    agg = read_call(media_stack.redis, call)["aggregates"]
    assert int(agg["all:count"]) == 4 and int(agg["customer:count"]) == 2
    assert worker.metric("mmcl_dead_letters_total") == 0


def test_features_from_another_extractor_are_dead_lettered(media_stack: Stack) -> None:
    if not media_stack.workers:
        media_stack.start_worker()
    worker = media_stack.workers[0]
    call = f"{media_stack.prefix}-glove"
    # GloVe words for a model trained on MiniLM tokens
    done = mmcl(media_stack, "extract", "--id", f"{call}-u0", "--call-id", call, "--text", "this is great",
                "--extractor", "text=glove-50")
    assert done.returncode == 1, done.stderr[-2000:]  # sent, and the producer is told it was refused
    assert "outcomes: 0 of 1 utterances scored, 1 dead-lettered" in done.stdout, done.stdout
    assert "every utterance was dead-lettered: profile_mismatch x1" in done.stderr, done.stderr
    wait_for(lambda: worker.metric("mmcl_dead_letters_total", reason="profile_mismatch") >= 1, 30, "the dead letter")
    dead = [m for m in media_stack.consume_all(media_stack.topics.dlq, None, timeout=20)
            if dict(m.headers() or [])["mmcl.reason"] == b"profile_mismatch"]
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert b"glove-50" in headers["mmcl.error"] and b"minilm-384" in headers["mmcl.error"]


def test_a_producer_whose_utterances_are_all_dead_lettered_is_told(media_stack: Stack, tmp_path: Path) -> None:
    """Transcripts alone for a model that needs audio too: the join dead-letters each as incomplete, and
    `mmcl stream-call` says so while it streams and exits 1 instead of reporting success."""
    if not media_stack.workers:
        media_stack.start_worker()
    call = f"{media_stack.prefix}-textonly"
    rows = [{"utterance_id": f"{call}-u{i}", "call_id": call, "speaker": "customer", "start": float(i),
             "end": i + 0.5, "text": f"the line is dead again, number {i}"} for i in range(3)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = mmcl(media_stack, "stream-call", str(tmp_path / "manifest.jsonl"), "--no-wait")
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
    assert "sent 3 text" in done.stdout and "outcomes: 0 of 3 utterances scored, 3 dead-lettered" in done.stdout
    assert "warning: every utterance with an outcome so far was dead-lettered" in done.stderr, done.stderr
    assert "every utterance was dead-lettered: incomplete x3 (no audio part" in done.stderr, done.stderr
    assert not any(media_stack.redis.exists(utt_key(call, r["utterance_id"])) for r in rows)

    quick = mmcl(media_stack, "stream-call", str(tmp_path / "manifest.jsonl"), "--no-wait", "--call-id",
                 f"{call}-2", "--confirm-s", "0")
    assert quick.returncode == 0 and "outcomes" not in quick.stdout  # --confirm-s 0: sent, not watched
