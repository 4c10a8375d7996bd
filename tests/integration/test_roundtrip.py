"""Round trip through the real broker, worker and Redis: K utterances in (both wire versions, mixed), K results out,
aggregates as computed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import numpy as np

from mmcl.predictor import Predictor
from streams.messages import Alert
from streams.settings import AlertSettings, OutputSettings
from streams.sinks.aggregates import AggregateRule
from streams.sinks.redis_store import call_key, timeline_key, utt_key
from streams.wire import Dtype, WireFormat
from tests.aggregates_oracle import fold

from .conftest import DEVICE, PRECISION, Stack, features, make_checkpoint, part, wait_for

# A random model scores nearly the same everywhere; seed 2's scores are all slightly negative. With this rule every
# call's customer turns negative, and each call must raise its alert exactly once (debounced): a test of alerts
# has to see alerts.
ALERT_ENV = {"MMCL_ALERT__NEGATIVE_BELOW": "0", "MMCL_ALERT__N": "2", "MMCL_ALERT__M": "3"}
ALERT_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "alert.schema.json"
WIRES: list[tuple[WireFormat, Dtype]] = [("v1", "float32"), ("v2", "float16"), ("v2", "float32")]
RULE = AggregateRule(OutputSettings().ewma_alpha, OutputSettings().shift_window, AlertSettings().roles, 0.0, 2, 3)


def test_round_trip_results_aggregates_and_alerts(stack: Stack, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "negative", seed=2)
    worker = stack.start_worker(MMCL_MODEL__CHECKPOINT=str(checkpoint), **ALERT_ENV)
    calls = [f"{stack.prefix}-call{i}" for i in range(4)]
    rng = random.Random(1)
    sent: dict[tuple[str, str], tuple[str, int]] = {}
    wires: dict[tuple[str, str, str], str] = {}  # the dtype each part travelled in
    producer = stack.producer()
    k = 0
    for turn in range(10):
        for call in calls:
            utt = f"u{turn:02d}"
            speaker = "agent" if turn % 2 == 0 else "customer"
            mods = ["text", "audio", "visual"]
            rng.shuffle(mods)  # parts leave in any order
            for m in mods:  # each wire version and dtype a producer may send, mixed within utterances
                wire, dtype = WIRES[(k + len(m)) % len(WIRES)]
                stack.send(producer, m, part(utt, call, m, speaker, seed=k, wire=wire, dtype=dtype), call.encode())
                wires[(call, utt, m)] = dtype
            sent[(call, utt)] = (speaker, k)
            k += 1
    producer.flush(10)

    def all_written() -> bool:
        return all(stack.redis.exists(utt_key(c, u)) for c, u in sent)

    wait_for(all_written, 60, f"{len(sent)} results in Redis")
    preds = stack.consume_all(stack.topics.predictions, len(sent))
    assert len(preds) == len(sent)
    by_id = {}
    for msg in preds:
        p = json.loads(msg.value())
        assert msg.key().decode() == p["call_id"]  # keyed by call: a consumer sees a call in order
        by_id[(p["call_id"], p["utterance_id"])] = p
    assert set(by_id) == set(sent)

    # the worker's scores are the model's own on the same features
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision=PRECISION)
    for (call, utt), (speaker, seed) in list(sent.items())[:8]:
        p = by_id[(call, utt)]
        assert p["model_version"] == predictor.version
        assert p["speaker"] == speaker
        def travelled(m: str, call: str = call, utt: str = utt, seed: int = seed) -> np.ndarray:
            return features(m, seed).astype(wires[(call, utt, m)]).astype(np.float32)

        if speaker == "agent":  # default policy: text only for agents
            assert p["modalities"] == ["text"] and set(p["masked"]) <= {"audio", "visual"}
            want = predictor.predict([{"text": travelled("text")}])
        else:
            assert p["modalities"] == ["text", "audio", "visual"] and p["masked"] == []
            want = predictor.predict([{"text": travelled("text"), "audio": travelled("audio"),
                                       "vision": travelled("visual")}])
        assert abs(p["score"] - float(want.scores[0])) < (1e-4 if DEVICE == "cpu" else 2e-3)  # GPU math differs a little
        np.testing.assert_allclose([p["modality_weights"][m] for m in ("text", "audio", "visual")],
                                   want.modality_weights[0], atol=1e-5 if DEVICE == "cpu" else 1e-3)
        assert all((w > 0) == (m in p["modalities"]) for m, w in p["modality_weights"].items())  # 0 = not used
        stored = stack.redis.hgetall(utt_key(call, utt))
        assert float(stored["score"]) == p["score"] and stored["model_version"] == predictor.version

    # call aggregates are the reference fold over the call's timeline, alerts included
    alerts_seen = 0
    for call in calls:
        timeline = stack.redis.xrange(timeline_key(call))
        assert len(timeline) == 10
        want, raised = fold([(e["speaker"], float(e["score"])) for _, e in timeline], RULE)
        got = stack.redis.hgetall(call_key(call))
        for key, value in want.items():
            if key.endswith(":recent"):
                assert [float(x) for x in got[key].split(",")] == [float(x) for x in str(value).split(",")]
            elif isinstance(value, str):
                assert got[key] == value, key
            else:
                assert abs(float(got[key]) - float(value)) < 1e-9, key
        assert int(got["all:count"]) == 10
        alerts_seen += len(raised)
    assert alerts_seen == len(calls)
    kafka_alerts = stack.consume_all(stack.topics.alerts, alerts_seen, timeout=30)
    assert len(kafka_alerts) == alerts_seen
    # the Alert JSON is made in Lua: it must be what the exported schema (and the Python model) promise
    schema = json.loads(ALERT_SCHEMA.read_text())
    stored = [json.loads(e["alert"]) for _, e in stack.redis.xrange("mmcl:alerts") if e["call_id"] in calls]
    for alert in [json.loads(rec.value()) for rec in kafka_alerts] + stored:
        jsonschema.validate(alert, schema)
        assert Alert.model_validate(alert).rule == RULE.name
        assert alert["call_id"] in calls and alert["negative"] >= RULE.n and alert["window"] <= RULE.m
    assert stack.redis.xlen("mmcl:alerts") >= alerts_seen
    assert worker.metric("mmcl_predictions_total") == len(sent)
    assert worker.metric("mmcl_model_info", version=predictor.version, device=DEVICE) == 1
    assert worker.metric("mmcl_alerts_total") == alerts_seen
    assert worker.metric("mmcl_join_outcomes_total", outcome="complete") == len(sent)
    n_agent = sum(1 for speaker, _ in sent.values() if speaker == "agent")
    wait_for(lambda: worker.metric("mmcl_policy_masked_total", role="agent") == 2 * n_agent, 10,
             "every agent audio / visual part counted as masked by policy")
    assert worker.metric("mmcl_dead_letters_total") == 0


def test_replayed_messages_change_no_aggregate(stack: Stack) -> None:
    """Send an utterance's parts twice (a producer retry, a replay): one result, counts unchanged, and no dead letter
    (parts the result used are re-deliveries, not errors: they would raise the dead-letter alert for nothing)."""
    worker = stack.workers[0] if stack.workers else stack.start_worker()
    call = f"{stack.prefix}-replay"
    producer = stack.producer()
    for _ in range(2):
        for m in ("text", "audio", "visual"):
            stack.send(producer, m, part("u1", call, m, seed=99), call.encode())
        producer.flush(10)
        wait_for(lambda: stack.redis.exists(utt_key(call, "u1")), 30, "the result")
    late_before = worker.metric("mmcl_dead_letters_total", reason="late")
    wait_for(lambda: worker.metric("mmcl_join_outcomes_total", outcome="redelivered") >= 3, 30, "the replay counted")
    assert worker.metric("mmcl_dead_letters_total", reason="late") == late_before
    assert stack.redis.hget(call_key(call), "all:count") == "1"
    assert stack.redis.xlen(timeline_key(call)) == 1
