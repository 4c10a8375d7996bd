"""At-least-once delivery: a worker killed mid-stream, Redis going away and coming back, batching under load, and
the co-partition check at start-up."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mmcl.data.dataset import Split
from mmcl.data.synth import SynthSpec, make_synthetic
from streams.kafka import ensure_topics
from streams.local import simulate
from streams.local.embedded import start_redis
from streams.settings import Settings, TopicSettings
from streams.sinks.redis_store import call_key, timeline_key, utt_key

from .conftest import DIMS, SEQ_LEN, Stack, covering_run_id, quick_kafka, wait_for

SPLIT = make_synthetic(SynthSpec(sizes=(8, 8, 300), seq_len=SEQ_LEN, dims=(DIMS["text"], DIMS["audio"], DIMS["visual"]),
                                 min_len=4, seed=11)).splits["test"]


def sim_settings(stack: Stack) -> Settings:
    return Settings(kafka=quick_kafka(stack.kafka.url), topics=stack.topics)


def results_complete(stack: Stack, stats: simulate.SimStats) -> bool:
    return all(stack.redis.exists(utt_key(u.rsplit("-u", 1)[0], u)) for u in stats.last_sent)


def assert_counted_once(stack: Stack, stats: simulate.SimStats) -> None:
    per_call: dict[str, int] = {}
    for u in stats.last_sent:
        c = u.rsplit("-u", 1)[0]
        per_call[c] = per_call.get(c, 0) + 1
    for c, n in per_call.items():
        assert stack.redis.hget(call_key(c), "all:count") == str(n), c
        assert stack.redis.xlen(timeline_key(c)) == n, c


def feed_in_background(stack: Stack, spec: simulate.SimSpec, open_ended: bool = False,
                       split: Split = SPLIT) -> Callable[[float], simulate.SimStats]:
    """Start the simulated call center on a thread; the function returned waits (up to its timeout) for its stats.

    An open-ended feed runs until that function is called (or `spec.limit` is reached), then ends cleanly: a test
    whose steps take longer on a loaded machine still has the stream running through all of them.
    """
    box: dict[str, simulate.SimStats] = {}
    done = threading.Event() if open_ended else None
    t = threading.Thread(target=lambda: box.update(stats=simulate.run(sim_settings(stack), split, spec, finish=done)))
    t.start()

    def finish(timeout: float) -> simulate.SimStats:
        if done is not None:
            done.set()
        t.join(timeout)
        return box["stats"]

    return finish


def assert_delivered_once_without_dead_letters(stack: Stack, spec: simulate.SimSpec, stats: simulate.SimStats,
                                               timeout: float = 90) -> None:
    """Every utterance sent has its result, counted once, and none of the run's parts was dead-lettered."""
    assert stats.utterances > 0 and stats.errors == 0
    wait_for(lambda: results_complete(stack, stats), timeout, "every utterance's result")
    assert_counted_once(stack, stats)
    assert stack.dead_letters(spec.run_id) == []


@pytest.mark.parametrize("commit_every", ["0.2", "60"])
def test_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(stack: Stack, commit_every: str) -> None:
    # 0.2 s: commits happen while parts of many utterances are pending (parts leave up to 400 ms apart), so a
    # commit past a pending part would lose that utterance. 60 s: nothing is committed before the kill.
    first = stack.start_worker(MMCL_KAFKA__COMMIT_INTERVAL_S=commit_every)
    spec = simulate.SimSpec(calls=6, rate=60, jitter_ms=400, missing_visual=0.0, limit=240, seed=3,
                            run_id=f"{stack.prefix}-crash{commit_every.replace('.', '')}-")
    finish = feed_in_background(stack, spec)
    wait_for(lambda: first.status().get("written", 0) >= 40, 30, "some results before the crash")
    first.stop(signal.SIGKILL)  # no clean shutdown: pending joins and uncommitted offsets are lost with it
    second = stack.start_worker()
    stats = finish(60)
    assert stats.utterances == 240
    # parts re-read after the crash whose utterance was already written are re-deliveries, not dead letters
    assert_delivered_once_without_dead_letters(stack, spec, stats)
    if commit_every == "60":  # the second worker read everything again and found >= 40 results already there
        assert second.metric("mmcl_redelivered_utterances_total") >= 40
    second.stop()


def test_redis_outage_pauses_and_recovers_without_loss(stack: Stack, tmp_path: Path) -> None:
    own = start_redis(tmp_path)  # this test stops its Redis; the others keep theirs
    local = Stack(stack.kafka, own, stack.checkpoint, stack.state_dir, f"{stack.prefix}o")
    ensure_topics(quick_kafka(stack.kafka.url), local.topics)
    try:
        worker = local.start_worker(MMCL_REDIS__RETRY_MAX_S="0.5")
        spec = simulate.SimSpec(calls=4, rate=100, jitter_ms=50, limit=40, seed=4, run_id=f"{local.prefix}-a-")
        first = simulate.run(sim_settings(local), SPLIT, spec)
        wait_for(lambda: results_complete(local, first), 30, "results before the outage")
        own.stop()
        spec2 = simulate.SimSpec(calls=4, rate=100, jitter_ms=50, limit=40, seed=5, run_id=f"{local.prefix}-b-")
        second = simulate.run(sim_settings(local), SPLIT, spec2)
        wait_for(lambda: worker.metric("mmcl_redis_errors_total") >= 2, 30, "failed writes")
        assert worker.metric("mmcl_consumption_paused") == 1
        assert worker.get("/readyz")[0] == 503 and worker.get("/healthz")[0] == 200  # alive, not ready
        revived = start_redis(tmp_path, port=own.port)  # same port, same data folder
        local.redis_svc = revived
        wait_for(lambda: results_complete(local, second), 60, "the results held back during the outage")
        assert_counted_once(local, first)
        assert_counted_once(local, second)
        wait_for(lambda: worker.get("/readyz")[0] == 200, 10, "ready again")
        assert worker.metric("mmcl_consumption_paused") == 0
        worker.stop()
        revived.stop()
    finally:
        for w in local.workers:
            w.stop()
        own.stop()


def test_a_backlog_is_joined_completely_and_batched(stack: Stack) -> None:
    local = Stack(stack.kafka, stack.redis_svc, stack.checkpoint, stack.state_dir, f"{stack.prefix}b")
    ensure_topics(quick_kafka(stack.kafka.url), local.topics)
    # The whole backlog is in the topics before the worker starts. It must not score one utterance at a time, and
    # reading three topics at different paces must not make parts miss each other (the join runs on event time).
    spec = simulate.SimSpec(calls=8, rate=2000, jitter_ms=5, limit=1200, seed=6, run_id=f"{local.prefix}-")
    stats = simulate.run(sim_settings(local), SPLIT, spec)
    worker = local.start_worker(MMCL_BATCH__WAIT_MS="20")
    try:
        wait_for(lambda: results_complete(local, stats), 120, "all results")
        batches = worker.metric("mmcl_batch_size_count")
        assert worker.metric("mmcl_batch_size_sum") == 1200
        assert 1200 / batches > 1.0, f"average batch {1200 / batches:.2f}"
        assert worker.metric("mmcl_join_outcomes_total", outcome="complete") == 1200
        assert worker.metric("mmcl_dead_letters_total") == 0
    finally:
        worker.stop()


def test_worker_refuses_feature_topics_that_are_not_copartitioned(stack: Stack) -> None:
    prefix = f"np{uuid.uuid4().hex[:6]}"
    k = quick_kafka(stack.kafka.url)
    ensure_topics(k, TopicSettings(prefix=prefix, partitions=4))
    from confluent_kafka.admin import AdminClient, NewTopic

    # recreate audio with 2 partitions
    admin = AdminClient({"bootstrap.servers": stack.kafka.url})
    admin.delete_topics([f"{prefix}.features.audio"])[f"{prefix}.features.audio"].result(10)
    wait_for(lambda: f"{prefix}.features.audio" not in admin.list_topics(timeout=5).topics, 10, "the deletion")
    admin.create_topics([NewTopic(f"{prefix}.features.audio", 2, 1)])[f"{prefix}.features.audio"].result(10)
    env = stack.env(MMCL_TOPICS__PREFIX=prefix)
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("mmcl: broker ")]  # which ones
    assert len(lines) == 1 and "not co-partitioned" in lines[0] and f"{prefix}.features.audio=2" in lines[0], proc.stderr


def test_worker_refuses_missing_topics_in_one_line_and_creates_none(stack: Stack) -> None:
    """Apache Kafka creates a topic that a client asks for by name (auto.create.topics.enable is on by default), with
    the broker's defaults: one partition, no retention of ours. The start-up checks ask for missing topics by name
    (to tell "absent" from "not authorized") and must leave them absent."""
    from confluent_kafka.admin import AdminClient

    prefix = f"nt{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=stack.env(MMCL_TOPICS__PREFIX=prefix),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("mmcl: broker ")]
    assert len(lines) == 1 and "do not exist" in lines[0] and f"{prefix}.features.text" in lines[0], proc.stderr
    assert not [t for t in AdminClient(stack.client()).list_topics(timeout=10).topics if t.startswith(prefix)]


def test_three_workers_split_the_partitions_without_splitting_a_call(stack: Stack) -> None:
    """A call's three feature partitions must go to the same worker, or its parts never meet. Three workers on four
    partitions: plain round-robin over the 12 topic-partitions would give text:2 and audio:2 to different workers."""
    local = Stack(stack.kafka, stack.redis_svc, stack.checkpoint, stack.state_dir, f"{stack.prefix}w")
    ensure_topics(quick_kafka(stack.kafka.url), local.topics)
    try:
        workers = [local.start_worker() for _ in range(3)]

        def split() -> bool:
            sets = [set(w.status().get("assignment", [])) for w in workers]
            return all(sets) and len(set().union(*sets)) == 12 and sum(map(len, sets)) == 12

        wait_for(split, 60, "all three workers to hold partitions")
        for w in workers:
            by_topic: dict[str, set[str]] = {}
            for tp in w.status()["assignment"]:
                topic, part = tp.rsplit(":", 1)
                by_topic.setdefault(topic, set()).add(part)
            assert len(by_topic) == 3 and len({frozenset(v) for v in by_topic.values()}) == 1, by_topic
        # calls that cover every partition: random ones left a worker idle in about one run in eight
        spec = simulate.SimSpec(calls=12, rate=200, jitter_ms=100, limit=120, seed=8,
                                run_id=covering_run_id(f"{local.prefix}-", 12, local.topics.partitions))
        stats = simulate.run(sim_settings(local), SPLIT, spec)
        wait_for(lambda: results_complete(local, stats), 60, "all results from three workers")
        assert_counted_once(local, stats)
        assert all(w.metric("mmcl_predictions_total") > 0 for w in workers)
        assert sum(w.metric("mmcl_dead_letters_total") for w in workers) == 0
    finally:
        for w in local.workers:
            w.stop()
