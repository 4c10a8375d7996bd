"""The join follows the serving model: a worker serving a text-only model scores an utterance on its text part the
moment it arrives (although the default join requires audio too), acknowledges the other modalities' parts unread,
and waits for audio again once a model that reads it is promoted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmcl.predictor import Predictor
from streams.kafka import ensure_topics
from streams.learning.follower import announce
from streams.learning.registry import DirRegistry
from streams.local.embedded import Service
from streams.settings import Settings
from streams.sinks.redis_store import utt_key

from .conftest import PRECISION, Stack, features, make_checkpoint, part, quick_kafka, wait_for


@pytest.fixture(scope="module")
def text_stack(kafka: Service, redis_service: Service, state_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ckpt = make_checkpoint(tmp_path_factory.mktemp("text-only") / "ckpt", seed=3, modalities=("text",))
    st = Stack(kafka, redis_service, ckpt, state_dir, f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(quick_kafka(kafka.url), st.topics)
    yield st
    for w in st.workers:
        w.stop()


def test_the_join_waits_for_what_the_serving_model_reads(text_stack: Stack, tmp_path: Path) -> None:
    stack = text_stack
    worker = stack.start_worker()  # MMCL_JOIN__REQUIRED keeps its default: text and audio
    assert worker.metric("mmcl_model_info", modalities="text") == 1
    call, producer = f"{stack.prefix}-text", stack.producer()
    for i in range(6):
        if i % 2 == 0:  # before the text part: it must not open an utterance that then waits for more
            stack.send(producer, "audio", part(f"u{i}", call, "audio", seed=i), call.encode())
        if i % 3 == 0:
            stack.send(producer, "visual", part(f"u{i}", call, "visual", seed=i), call.encode())
        stack.send(producer, "text", part(f"u{i}", call, "text", seed=i), call.encode())
    producer.flush(10)
    wait_for(lambda: all(stack.redis.exists(utt_key(call, f"u{i}")) for i in range(6)), 20, "six results")
    predictor = Predictor.from_checkpoint(stack.checkpoint, device="cpu", precision=PRECISION)
    for i in range(6):
        stored = stack.redis.hgetall(utt_key(call, f"u{i}"))
        assert json.loads(stored["modalities"]) == ["text"]
        want = predictor.predict([{"text": features("text", i)}]).scores[0]
        assert abs(float(stored["score"]) - float(want)) < 1e-4
    # text alone completes an utterance of this model: nothing waited for the join's timeout
    assert worker.metric("mmcl_join_outcomes_total", outcome="complete") == 6
    assert worker.metric("mmcl_join_outcomes_total", outcome="partial") == 0
    # the unread parts are consumed on their own topics, maybe after the results were written
    wait_for(lambda: worker.metric("mmcl_parts_unused_total", modality="audio") == 3
             and worker.metric("mmcl_parts_unused_total", modality="visual") == 2, 20, "the unread parts counted")
    assert worker.metric("mmcl_dead_letters_total") == 0
    group = f"{stack.prefix}-workers"
    wait_for(lambda: stack.committed_to_the_end(group), 20, "every part, read or not, committed")

    # a model that reads all three: from the swap on, an utterance needs its audio part again (the default join)
    registry = DirRegistry(stack.state_dir / f"registry-{stack.prefix}")
    full = registry.publish(make_checkpoint(tmp_path / "full", seed=4)).version
    registry.promote(full)
    announce(Settings(kafka=quick_kafka(stack.kafka.url), topics=stack.topics), full,
             registry.get(full).checksum, "promote")
    wait_for(lambda: worker.metric("mmcl_model_info", version=full, modalities="text,audio,visual") == 1, 30,
             "the swap to a model that reads every modality")
    stack.send(producer, "text", part("v1", call, "text", seed=7), call.encode())
    for m in ("text", "audio"):
        stack.send(producer, m, part("v2", call, m, seed=8), call.encode())
    producer.flush(10)
    wait_for(lambda: worker.metric("mmcl_dead_letters_total", reason="incomplete", stage="join") == 1, 20,
             "the text-only utterance dead-lettered: no audio")
    wait_for(lambda: stack.redis.exists(utt_key(call, "v2")), 20, "the utterance with text and audio")
    assert json.loads(stack.redis.hgetall(utt_key(call, "v2"))["modalities"]) == ["text", "audio"]
    assert not stack.redis.exists(utt_key(call, "v1"))
