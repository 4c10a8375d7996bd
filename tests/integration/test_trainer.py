"""Feedback labels -> retraining -> the validation gate -> promotion -> every worker swaps; and the gate saying no.

Real broker, Redis, worker and trainer processes; synthetic data whose labels mean something, so a model trained
on them beats a random one, and one trained on shuffled labels loses to a good one."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmcl.config import ModelConfig, TaskConfig, TrainConfig
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.train import train
from streams.kafka import ensure_topics
from streams.learning.registry import DirRegistry
from streams.local import simulate
from streams.local.embedded import free_port
from streams.messages import FeedbackLabel
from streams.settings import Settings
from streams.sinks.redis_store import FEED

from .conftest import DIMS, SEQ_LEN, Stack, Worker, make_checkpoint, quick_kafka, wait_for
from .test_delivery import results_complete

DATA = make_synthetic(SynthSpec(sizes=(300, 60, 60), seq_len=SEQ_LEN, dims=(DIMS["text"], DIMS["audio"], DIMS["visual"]),
                                min_len=4, seed=21))
SPLIT = DATA.splits["train"]
N = 240
TRAINER_ENV = {"MMCL_TRAINER__RETRAIN_AFTER_LABELS": "200", "MMCL_TRAINER__MIN_EXAMPLES": "100",
               "MMCL_TRAINER__EPOCHS": "12", "MMCL_TRAINER__LR": "0.003", "MMCL_TRAINER__ACT_REWARD": "false",
               "MMCL_TRAINER__BATCH_SIZE": "32", "MMCL_TRAINER__MATCH_GRACE_S": "2",
               "MMCL_POLICY__AGENT": '["text","audio","visual"]'}


def good_model(path: Path) -> Path:
    """A small MMCL trained offline on the true labels: the live model the noise candidate must not replace."""
    cfg = ModelConfig(input_dims=(DIMS["text"], DIMS["audio"], DIMS["visual"]), seq_len=SEQ_LEN, d_model=16,
                      num_heads=2, ff_dim=32, task=TaskConfig())
    res = train(DATA, cfg, TrainConfig(epochs=15, lr=3e-3, batch_size=32, act_reward=False), path, progress=False,
                log=lambda _m: None)
    return res.checkpoint


@pytest.fixture
def local(stack: Stack, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Topics, a state folder (the trainer's store lives there) and processes of this test's own."""
    st = Stack(stack.kafka, stack.redis_svc, stack.checkpoint, tmp_path / "state",
               f"{stack.prefix}{request.node.name[5:9]}{len(request.node.name)}")
    st.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(quick_kafka(stack.kafka.url), st.topics)
    yield st
    for w in st.workers:
        w.stop()


def start_trainer(local: Stack, **extra: str) -> Worker:
    port = free_port()
    log = local.state_dir / f"trainer-{time.monotonic_ns()}.log"
    env = local.env(**TRAINER_ENV, MMCL_TRAINER__METRICS_PORT=str(port), **extra)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "trainer"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    t = Worker(proc, port, log)
    local.workers.append(t)
    wait_for(lambda: t.get("/healthz")[0] == 200, 60, "the trainer's metrics endpoint")
    return t


def stream_and_label(local: Stack, run_id: str, shuffle_older: float = 0.0) -> dict[str, float]:
    """Publish N utterances of the synthetic split through the worker, then label each one."""
    s = Settings(kafka=quick_kafka(local.kafka.url), topics=local.topics)
    spec = simulate.SimSpec(calls=8, rate=300, jitter_ms=20, limit=N, seed=5, run_id=run_id)
    rows = {parts[0].utterance_id: i for i, parts in enumerate(simulate.plan(SPLIT, spec))}
    stats = simulate.run(s, SPLIT, spec)
    wait_for(lambda: results_complete(local, stats), 60, "the worker's results")
    labels = {u: float(SPLIT.labels[j]) for u, j in rows.items()}
    order = list(rows)  # labelled in this order: the newest labels are the last ones
    n_noise = int(len(order) * shuffle_older)
    if n_noise:
        noisy = [labels[u] for u in order[:n_noise]]
        random.Random(0).shuffle(noisy)
        labels.update(dict(zip(order[:n_noise], noisy, strict=True)))
    producer = local.producer()
    base = int(time.time() * 1000)
    for i, u in enumerate(order):
        lab = FeedbackLabel(utterance_id=u, call_id=u.rsplit("-u", 1)[0], label=labels[u], source="qa",
                            labeled_at=base + i)
        producer.produce(local.topics.feedback, lab.model_dump_json().encode(), key=u.encode())
    producer.flush(10)
    return labels


def runs(trainer: Worker, outcome: str) -> float:
    return trainer.metric("mmcl_training_runs_total", outcome=outcome)


def test_labels_retrain_promote_and_every_worker_swaps(local: Stack, tmp_path: Path) -> None:
    reg = DirRegistry(local.state_dir / f"registry-{local.prefix}")
    a = reg.publish(make_checkpoint(tmp_path / "a", seed=30)).version  # random weights: easy to beat
    reg.promote(a)
    workers = [local.start_worker(MMCL_POLICY__AGENT='["text","audio","visual"]') for _ in range(2)]
    trainer = start_trainer(local)
    stream_and_label(local, f"{local.prefix}-")
    producer = local.producer()
    ghost = FeedbackLabel(utterance_id="ghost-1", label=1.0, source="crm", labeled_at=1)
    producer.produce(local.topics.feedback, ghost.model_dump_json().encode(), key=b"ghost-1")
    producer.produce(local.topics.feedback, b'{"schema_version": 1, "utterance_id": "x", "label": "happy", '
                     b'"source": "qa", "labeled_at": 5}', key=b"x")
    producer.flush(10)

    wait_for(lambda: runs(trainer, "promoted") + runs(trainer, "rejected") + runs(trainer, "failed") >= 1, 180,
             "a retraining run")
    assert runs(trainer, "promoted") == 1, trainer.log.read_text()[-3000:]
    b = reg.current()
    assert b != a and reg.get(b).parent == a
    window = reg.get(b).label_window
    assert window is not None and window["labels"] >= 200
    assert trainer.metric("mmcl_training_evaluation", model="candidate", metric="mae") < \
        trainer.metric("mmcl_training_evaluation", model="current", metric="mae")
    for w in workers:  # both workers heard the announcement and swapped
        wait_for(lambda w=w: w.metric("mmcl_model_info", version=b) == 1, 30, "the swap")
    s = Settings(kafka=quick_kafka(local.kafka.url), topics=local.topics)
    after = simulate.SimSpec(calls=4, rate=100, jitter_ms=20, limit=20, seed=6, run_id=f"{local.prefix}-after-")
    stats = simulate.run(s, SPLIT, after)
    wait_for(lambda: results_complete(local, stats), 30, "results after the swap")
    versions = [f["model_version"] for _, f in local.redis.xrange(FEED) if f["call_id"].startswith(after.run_id)]
    assert versions == [b] * 20  # made by the new model, each once
    wait_for(lambda: trainer.metric("mmcl_feedback_labels_total", result="unmatched") == 1, 20, "the unmatched label")
    assert trainer.metric("mmcl_feedback_labels_total", result="invalid") == 1
    assert trainer.metric("mmcl_feedback_labels_total", result="matched") == N
    assert trainer.metric("mmcl_training_set_size") == N
    dead = {dict(m.headers())["mmcl.reason"].decode() for m in local.consume_all(local.topics.dlq, None, timeout=15)}
    assert {"unmatched", "invalid_label"} <= dead

    # a second trainer on the same state refuses; a restarted one keeps its set and does not rerun the same window
    second = subprocess.run([sys.executable, "-m", "streams.cli", "trainer"], env=local.env(), capture_output=True,
                            text=True, timeout=60, check=False)
    assert second.returncode == 1 and "another trainer is active" in second.stderr
    trainer.stop(signal.SIGTERM)
    assert trainer.proc.returncode == 0
    again = start_trainer(local)
    assert again.metric("mmcl_training_set_size") == N
    up = time.time()
    wait_for(lambda: again.metric("mmcl_trainer_last_check_timestamp_seconds") > up + 1, 20,
             "two checks for a due run after the restart")
    assert sum(runs(again, o) for o in ("promoted", "rejected", "failed")) == 0  # nothing new: no run
    # and a replaced label is counted, not added
    first = f"{local.prefix}-call-00001-u001"
    producer.produce(local.topics.feedback, FeedbackLabel(utterance_id=first, label=-2.0, source="qa",
                                                          labeled_at=int(time.time() * 1000)).model_dump_json().encode())
    producer.flush(10)
    wait_for(lambda: again.metric("mmcl_feedback_labels_total", result="replaced") == 1, 20, "the replacement")
    assert again.metric("mmcl_training_set_size") == N


@pytest.mark.slow
def test_a_candidate_trained_on_shuffled_labels_is_rejected(local: Stack, tmp_path: Path) -> None:
    reg = DirRegistry(local.state_dir / f"registry-{local.prefix}")
    g = reg.publish(good_model(tmp_path / "good")).version
    reg.promote(g)
    local.start_worker(MMCL_POLICY__AGENT='["text","audio","visual"]')
    trainer = start_trainer(local, MMCL_TRAINER__GATE_MARGIN="0.02")
    stream_and_label(local, f"{local.prefix}-", shuffle_older=0.8)  # noise to learn from; true labels held out
    wait_for(lambda: runs(trainer, "rejected") + runs(trainer, "promoted") + runs(trainer, "failed") >= 1, 180,
             "a retraining run")
    assert runs(trainer, "rejected") == 1, trainer.log.read_text()[-3000:]
    assert reg.current() == g and reg.history() == [g]
    assert trainer.metric("mmcl_training_evaluation", model="candidate", metric="mae") > \
        trainer.metric("mmcl_training_evaluation", model="current", metric="mae") - 0.02
