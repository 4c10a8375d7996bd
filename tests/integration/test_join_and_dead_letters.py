"""The join against the real broker (deadline emission, incomplete, duplicates, late) and one test per
dead-letter reason, each followed by a good utterance to show the worker goes on consuming."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from streams.sinks.redis_store import call_key, utt_key

from .conftest import DIMS, PRECISION, Stack, features, part, wait_for


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Any:
    return stack.start_worker()


def dlq_by_reason(stack: Stack) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for msg in stack.consume_all(stack.topics.dlq, None, timeout=20):
        headers = dict(msg.headers() or [])
        out.setdefault(headers["mmcl.reason"].decode(), []).append(msg)
    return out


def send_good(stack: Stack, producer: Any, call: str, utt: str, seed: int = 5) -> None:
    for m in ("text", "audio", "visual"):
        stack.send(producer, m, part(utt, call, m, seed=seed), call.encode())
    producer.flush(10)


def test_deadline_emits_without_visual_and_masks_it(stack: Stack, worker: Any) -> None:
    call, producer = f"{stack.prefix}-partial", stack.producer()
    for m in ("audio", "text"):  # no visual part ever comes
        stack.send(producer, m, part("u1", call, m), call.encode())
    producer.flush(10)
    t0 = time.monotonic()
    wait_for(lambda: stack.redis.exists(utt_key(call, "u1")), 20, "the partial result")
    assert time.monotonic() - t0 >= 0.8  # it waited for the 1 s join timeout
    stored = stack.redis.hgetall(utt_key(call, "u1"))
    assert json.loads(stored["modalities"]) == ["text", "audio"]
    assert json.loads(stored["modality_weights"])["visual"] == 0.0
    assert worker.metric("mmcl_join_outcomes_total", outcome="partial") >= 1


def test_incomplete_goes_to_the_dead_letter_topic(stack: Stack, worker: Any) -> None:
    call, producer = f"{stack.prefix}-incomplete", stack.producer()
    stack.send(producer, "visual", part("u1", call, "visual"), call.encode())  # text and audio are required
    producer.flush(10)
    wait_for(lambda: worker.metric("mmcl_dead_letters_total", reason="incomplete", stage="join") >= 1, 20, "incomplete")
    assert not stack.redis.exists(utt_key(call, "u1"))


def test_duplicate_part_replaces_the_earlier_one(stack: Stack, worker: Any) -> None:
    call, producer = f"{stack.prefix}-dup", stack.producer()
    before = worker.metric("mmcl_join_outcomes_total", outcome="duplicate")
    stack.send(producer, "text", part("u1", call, "text", seed=1), call.encode())
    stack.send(producer, "text", part("u1", call, "text", seed=2), call.encode())
    producer.flush(10)
    wait_for(lambda: worker.metric("mmcl_join_outcomes_total", outcome="duplicate") == before + 1, 20, "the duplicate")
    for m in ("audio", "visual"):
        stack.send(producer, m, part("u1", call, m, seed=2), call.encode())
    producer.flush(10)
    wait_for(lambda: stack.redis.exists(utt_key(call, "u1")), 20, "the result")
    from mmcl.predictor import Predictor

    want = Predictor.from_checkpoint(stack.checkpoint, device="cpu", precision=PRECISION).predict(
        [{"text": features("text", 2), "audio": features("audio", 2), "vision": features("visual", 2)}])
    assert abs(float(stack.redis.hget(utt_key(call, "u1"), "score")) - float(want.scores[0])) < 1e-4  # the second text


def test_late_part_is_counted_and_kept(stack: Stack, worker: Any) -> None:
    call, producer = f"{stack.prefix}-late", stack.producer()
    for m in ("text", "audio"):
        stack.send(producer, m, part("u1", call, m), call.encode())
    producer.flush(10)
    wait_for(lambda: stack.redis.exists(utt_key(call, "u1")), 20, "the partial result")
    before = worker.metric("mmcl_join_outcomes_total", outcome="late")
    stack.send(producer, "visual", part("u1", call, "visual", seed=8), call.encode())  # too late to be used
    producer.flush(10)
    wait_for(lambda: worker.metric("mmcl_join_outcomes_total", outcome="late") == before + 1, 20, "the late part")
    wait_for(lambda: worker.metric("mmcl_dead_letters_total", reason="late", stage="join") >= 1, 20, "its dead letter")
    assert stack.redis.hget(call_key(call), "all:count") == "1"


def _bad(stack: Stack, reason: str, call: str) -> tuple[str, bytes]:
    """(modality topic, raw value) for each dead-letter reason of the decode stage."""
    good = json.loads(part("u1", call, "text"))
    cases: dict[str, tuple[str, Any]] = {
        "not_json": ("text", b"{this is not json"),
        "schema": ("text", {k: v for k, v in good.items() if k != "produced_at"}),
        "bad_id": ("text", {**good, "utterance_id": "has spaces/and slashes"}),
        "unknown_modality": ("text", {**good, "modality": "smell"}),
        "modality_mismatch": ("audio", good),
        "dims": ("text", json.loads(part("u1", call, "text", array=features("text", 0, dim=DIMS["text"] + 1)))),
        "non_finite": ("text", {**good, "features": [[float("nan")] * DIMS["text"]]}),
        "oversize": ("text", {**good, "features": [[0.0] * DIMS["text"]] * 5000}),
    }
    topic_mod, value = cases[reason]
    if isinstance(value, dict):
        value = json.dumps(value).encode()  # json writes NaN for a float nan, as many producers do
    return topic_mod, value


@pytest.mark.parametrize("reason", ["not_json", "schema", "bad_id", "unknown_modality", "modality_mismatch", "dims",
                                    "non_finite", "oversize"])
def test_each_dead_letter_reason_then_the_worker_goes_on(stack: Stack, worker: Any, reason: str) -> None:
    call, producer = f"{stack.prefix}-bad-{reason.replace('_', '-')}", stack.producer()
    topic_mod, value = _bad(stack, reason, call)
    before = worker.metric("mmcl_dead_letters_total", reason=reason, stage="decode")
    # a producer's own mmcl.* headers must not pass for ours (a record once carried two reasons)
    forged = [("trace", b"abc"), ("mmcl.reason", b"forged"), ("mmcl.source_offset", b"-7")]
    producer.produce(stack.topics.feature(topic_mod), value, key=call.encode(), headers=forged)
    send_good(stack, producer, call, "u2")
    wait_for(lambda: stack.redis.exists(utt_key(call, "u2")), 30, "the good utterance after the bad one")
    assert worker.metric("mmcl_dead_letters_total", reason=reason, stage="decode") == before + 1
    dead = [m for m in dlq_by_reason(stack).get(reason, []) if m.key() == call.encode()]
    assert len(dead) == 1
    msg = dead[0]
    headers = dict(msg.headers())
    assert msg.value() == value  # the original bytes
    assert headers["trace"] == b"abc"  # and the original headers
    assert [k for k, _ in msg.headers()].count("mmcl.reason") == 1 and headers["mmcl.reason"] == reason.encode()
    assert headers["producer.mmcl.reason"] == b"forged" and headers["producer.mmcl.source_offset"] == b"-7"
    assert headers["mmcl.stage"] == b"decode" and headers["mmcl.error"]
    assert headers["mmcl.source_topic"].decode() == stack.topics.feature(topic_mod)
    assert int(headers["mmcl.source_partition"]) >= 0 and int(headers["mmcl.source_offset"]) >= 0
