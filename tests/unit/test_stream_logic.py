"""Pure logic of the service, no sockets: decode, join (injected clock), ordered acks, batching policy, aggregates."""

from __future__ import annotations

import base64
import json
import queue
import threading

import numpy as np
import pytest

from streams.messages import EncodedArray, FeatureMessage
from streams.settings import LimitSettings, PolicySettings
from streams.sinks.aggregates import AggregateRule
from streams.sinks.deadletter import Reason
from streams.worker.acks import OrderedAcker
from streams.worker.batching import STOP, collect_batch
from streams.worker.decode import ModelProfile, Part, Rejection, decode_part
from streams.worker.join import Dropped, Ignored, Joined, Joiner, LiveClock, Redelivered
from tests.aggregates_oracle import fold

PROFILE = ModelProfile({"text": 4, "audio": 3, "visual": 2}, {"text": "minilm-384"})
LIMITS = LimitSettings(max_message_bytes=64 * 1024, max_frames=50, max_dim=16)


def msg(**kw: object) -> bytes:
    base = {"utterance_id": "u1", "call_id": "c1", "speaker": "customer", "modality": "text",
            "features": [[0.5] * 4, [1.0] * 4], "produced_at": 1}
    return json.dumps({**base, **kw}).encode()


# decode -------------------------------------------------------------------------------------------------------
def test_decode_accepts_base64_and_nested_lists_alike() -> None:
    arr = np.arange(8, dtype=np.float32).reshape(2, 4)
    enc = EncodedArray.from_numpy(arr)
    assert base64.b64decode(enc.data) == arr.astype("<f4").tobytes() and enc.shape == (2, 4)
    for features in (enc.model_dump(), arr.tolist()):
        got = decode_part(msg(features=features), "text", LIMITS, PROFILE)
        assert isinstance(got, Part)
        np.testing.assert_array_equal(got.array, arr)
        assert got.join_key == ("c1", "u1")


@pytest.mark.parametrize(("raw", "topic", "reason"), [
    (b"\xff\xfe not json", "text", Reason.NOT_JSON),
    (b"[1, 2]", "text", Reason.SCHEMA),
    (msg(produced_at="yesterday"), "text", Reason.SCHEMA),
    (msg(extra_field=1), "text", Reason.SCHEMA),
    (msg(schema_version=2), "text", Reason.SCHEMA),
    (msg(utterance_id=""), "text", Reason.BAD_ID),
    (msg(call_id="x" * 129), "text", Reason.BAD_ID),
    (msg(utterance_id="a/b"), "text", Reason.BAD_ID),
    (msg(modality="smell"), "text", Reason.UNKNOWN_MODALITY),
    (msg(modality="audio", features=[[1.0] * 3]), "text", Reason.MODALITY_MISMATCH),
    (msg(features=[[1.0] * 5]), "text", Reason.DIMS),
    (msg(features=[[1.0] * 4, [1.0] * 3]), "text", Reason.SCHEMA),  # ragged
    (msg(features={"shape": [2, 4], "data": base64.b64encode(b"\0" * 12).decode()}), "text", Reason.SCHEMA),
    (msg(features=[[float("nan")] * 4]), "text", Reason.NON_FINITE),
    (msg(features=[[float("inf")] * 4]), "text", Reason.NON_FINITE),
    (msg(features=[[1.0] * 4] * 51), "text", Reason.OVERSIZE),
    (msg(features=[[1.0] * 17]), "text", Reason.OVERSIZE),
    (msg(padding="x" * 70_000), "text", Reason.OVERSIZE),
    (msg(feature_profile="glove-50"), "text", Reason.PROFILE_MISMATCH),
    (None, "text", Reason.NOT_JSON),
])
def test_decode_rejects_with_the_right_reason(raw: bytes | None, topic: str, reason: Reason) -> None:
    got = decode_part(raw, topic, LIMITS, PROFILE)
    assert isinstance(got, Rejection) and got.reason is reason, got
    assert got.error


def test_feature_message_json_roundtrip() -> None:
    m = FeatureMessage(utterance_id="u:1.a-b", call_id="c_1", speaker="agent", modality="audio",
                       features=EncodedArray.from_numpy(np.ones((3, 2), np.float32)), produced_at=5)
    back = FeatureMessage.model_validate_json(m.model_dump_json())
    np.testing.assert_array_equal(back.array(), np.ones((3, 2)))
    assert back.key == "c_1"


# join ---------------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def p(modality: str, utt: str = "u1", speaker: str = "customer", call: str | None = "c1", value: float = 0.0,
      at: int = 1) -> Part:
    return Part(utt, call, speaker, modality, np.full((2, 2), value, np.float32), produced_at=at, start_ms=None)


def make_joiner(clock: Clock, counts: dict[str, int], **kw: object) -> Joiner:
    policy = PolicySettings()
    args = {"required": ("text", "audio"), "allowed": policy.allowed, "timeout_s": 2.0, "max_pending": 100,
            "remember_emitted": 100, **kw}
    return Joiner(clock=clock, count=lambda o: counts.__setitem__(o, counts.get(o, 0) + 1), **args)  # type: ignore[arg-type]


def test_join_emits_when_all_three_arrive_in_any_order() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    assert j.add(p("visual"), "t1") == [] and j.add(p("text"), "t2") == []
    clock.t += 0.5
    (out,) = j.add(p("audio"), "t3")
    assert isinstance(out, Joined) and out.complete and set(out.parts) == {"text", "audio", "visual"}
    assert out.tokens == ("t1", "t2", "t3") and out.wait_s == pytest.approx(0.5)
    assert counts == {"complete": 1} and len(j) == 0


def test_join_deadline_emits_partial_with_required_present_else_incomplete() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    j.add(p("text", "u1"), "a")
    j.add(p("audio", "u1"), "b")
    j.add(p("visual", "u2"), "c")
    clock.t += 1.99
    assert j.expire() == []
    clock.t += 0.02
    partial, incomplete = j.expire()
    assert isinstance(partial, Joined) and not partial.complete and set(partial.parts) == {"text", "audio"}
    assert isinstance(incomplete, Dropped) and incomplete.reason is Reason.INCOMPLETE and incomplete.tokens == ("c",)
    assert "text, audio" in incomplete.error
    assert counts == {"partial": 1}  # `incomplete` is counted by the pipeline once it knows it is not a re-delivery


def test_join_deadline_is_event_time_so_a_backlog_is_not_dropped() -> None:
    """Behind by minutes, reading three topics at different paces: text first, audio and visual lagging but
    arriving. Wall time is long past the timeout; event time says the parts are on their way. Nothing is dropped."""
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    for i in range(50):  # the text backlog is read first
        assert j.add(p("text", f"u{i}", at=100 * i), f"t{i}") == []
        clock.t += 0.01
    out = []
    for i in range(53):  # then audio, and visual three utterances behind it, one step every 0.1 s
        if i < 50:
            out += j.add(p("audio", f"u{i}", at=100 * i + 5), f"a{i}")
        if i >= 3:
            out += j.add(p("visual", f"u{i - 3}", at=100 * (i - 3) + 7), f"v{i - 3}")
        out += j.expire()
        clock.t += 0.1
    # u49 waited 5 s of wall time for its visual part; with arrival-time deadlines the last ~35 would have gone
    # out without it, and their visual parts would have been dead-lettered as late
    assert len(out) == 50 and all(isinstance(o, Joined) and o.complete for o in out)
    assert counts == {"complete": 50} and len(j) == 0 and out[-1].wait_s > 2.0


def test_join_quiet_partition_decides_after_the_timeout() -> None:
    """No visual traffic at all: the missing part is given the timeout, then the utterance goes partial."""
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    j.add(p("text", "u1", at=0), "t")
    j.add(p("audio", "u1", at=10), "a")
    clock.t += 1.9
    assert j.expire() == []
    clock.t += 0.2
    (out,) = j.expire()
    assert isinstance(out, Joined) and not out.complete


def test_join_watermark_decides_before_the_wall_clock_timeout() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    j.add(p("text", "u1", at=0), "t")
    j.add(p("audio", "u1", at=10), "a")
    assert j.expire() == []
    j.add(p("visual", "other", at=2500), "v")  # the visual partition moved past u1's deadline (0 + 2000 ms)
    (out,) = j.expire()
    assert isinstance(out, Joined) and not out.complete and clock.t == 100.0  # no wall time had to pass


def test_live_clock_stands_still_while_paused() -> None:
    t = [10.0]
    live = LiveClock(lambda: t[0])
    t[0] = 11.0
    live.pause()
    t[0] = 20.0
    assert live() == 11.0
    live.resume()
    t[0] = 21.0
    assert live() == 12.0


def test_join_duplicate_replaces_and_a_used_part_again_is_redelivered() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    j.add(p("text", value=1.0), "t1")
    j.add(p("text", value=2.0), "t2")
    j.add(p("audio"), "a")
    (out,) = j.add(p("visual"), "v")
    assert isinstance(out, Joined) and out.parts["text"].array[0, 0] == 2.0
    assert out.tokens == ("t1", "t2", "a", "v")  # the replaced part is acked with the utterance
    (again,) = j.add(p("audio"), "again")  # re-read after a rebalance, or a producer's retry: not a dead letter
    assert isinstance(again, Redelivered) and again.token == "again"
    assert counts == {"duplicate": 1, "complete": 1, "redelivered": 1}


def test_join_a_part_the_result_did_not_use_is_late() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    j.add(p("text", at=0), "t")
    j.add(p("audio", at=0), "a")
    clock.t += 2.1
    (partial,) = j.expire()
    assert isinstance(partial, Joined) and set(partial.parts) == {"text", "audio"}
    (late,) = j.add(p("visual", at=0), "v")
    assert isinstance(late, Dropped) and late.reason is Reason.LATE and late.tokens == ("v",)
    assert counts == {"partial": 1, "late": 1}


def test_join_policy_agent_text_only() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts)
    (ign,) = j.add(p("audio", speaker="agent"), "a")
    assert isinstance(ign, Ignored) and ign.token == "a"
    (out,) = j.add(p("text", speaker="agent"), "t")  # text is all an agent may be analysed on: complete
    assert isinstance(out, Joined) and out.complete and set(out.parts) == {"text"}
    (late_ignored,) = j.add(p("visual", speaker="agent"), "v")  # not `late`: it was never wanted
    assert isinstance(late_ignored, Ignored)
    # masked parts seen before emission are reported with the result
    j.add(p("text", utt="u2", speaker="customer"), "t2")
    j2 = make_joiner(clock, {}, allowed=lambda role: ("text", "audio"))
    j2.add(p("text", "u3"), "x")
    j2.add(p("visual", "u3"), "y")
    (o3,) = j2.add(p("audio", "u3"), "z")
    assert isinstance(o3, Joined) and o3.masked == ("visual",) and o3.tokens == ("x", "z")


def test_join_speaker_conflict_cap_and_forget() -> None:
    clock, counts = Clock(), {}
    j = make_joiner(clock, counts, max_pending=2)
    j.add(p("text", "u1"), "a")
    (conflict,) = j.add(p("audio", "u1", speaker="unknown"), "b")
    assert isinstance(conflict, Dropped) and conflict.reason is Reason.SPEAKER_CONFLICT
    j.add(p("text", "u2"), "c")
    (forced,) = j.add(p("text", "u3"), "d")  # over the cap: the oldest is decided now
    assert isinstance(forced, Dropped) and forced.tokens == ("a",)
    assert j.forget(lambda tok: tok != "c") == 1 and len(j) == 1


# acks ---------------------------------------------------------------------------------------------------------
def test_acks_leave_in_offset_order_per_partition() -> None:
    acked: list[str] = []
    a = OrderedAcker(acked.append)
    for off in range(5):
        a.track("tp0", off, f"p0-{off}")
    a.track("tp1", 7, "p1-7")
    assert a.done("tp0", 3) == 0 and a.done("tp0", 1) == 0  # 0 is still open: nothing may be committed
    assert a.done("tp1", 7) == 1
    assert a.done("tp0", 0) == 2  # 0 and 1 go; 2 blocks 3
    assert acked == ["p1-7", "p0-0", "p0-1"]
    assert a.done("tp0", 2) == 2 and acked[-2:] == ["p0-2", "p0-3"]
    assert a.outstanding() == 1 and a.done("tp0", 2) == 0  # twice is harmless
    assert a.pending("tp0", 4) and not a.pending("tp0", 3)
    a.forget({"tp0"})
    assert a.done("tp0", 4) == 0 and a.outstanding() == 0 and not a.pending("tp0", 4)


def test_an_offset_delivered_twice_is_tracked_once() -> None:
    """Across a rebalance a message can reach the agent twice; a second entry for one offset could never be marked
    done and would hold back every later ack of its partition."""
    acked: list[str] = []
    a = OrderedAcker(acked.append)
    assert a.track("tp", 5, "first") and not a.track("tp", 5, "second")
    assert a.track("tp", 6, "next")
    assert a.done("tp", 5) == 1 and a.done("tp", 6) == 1 and acked == ["first", "next"] and a.outstanding() == 0


# batching -----------------------------------------------------------------------------------------------------
def test_batch_takes_what_is_queued_up_to_max_without_waiting() -> None:
    q: queue.Queue[object] = queue.Queue()
    for i in range(10):
        q.put(i)
    assert collect_batch(q, 4, wait_s=60.0) == [0, 1, 2, 3]  # full: no wait at all


def test_batch_waits_at_most_wait_s_for_company() -> None:
    q: queue.Queue[object] = queue.Queue()
    q.put("a")
    t = [0.0]

    def clock() -> float:
        t[0] += 0.004  # each look at the clock costs 4 ms of fake time
        return t[0]

    assert collect_batch(q, 8, wait_s=0.01, clock=clock) == ["a"]
    q.put("b")
    threading.Timer(0.05, q.put, ("c",)).start()
    assert collect_batch(q, 2, wait_s=5.0) == ["b", "c"]  # real clock: 'c' comes 50 ms later, within the wait


def test_batch_stop_ends_after_the_current_batch() -> None:
    q: queue.Queue[object] = queue.Queue()
    q.put(1)
    q.put(STOP)
    assert collect_batch(q, 8, wait_s=1.0) == [1]
    assert collect_batch(q, 8, wait_s=1.0) is None


# aggregates ---------------------------------------------------------------------------------------------------
RULE = AggregateRule(ewma_alpha=0.5, shift_window=2, alert_roles=("customer",), negative_below=-0.5, n=2, m=3)


def test_fold_hand_computed() -> None:
    h, alerts = fold([("customer", 1.0), ("agent", 0.0), ("customer", -1.0), ("customer", -2.0)], RULE)
    assert h["all:count"] == 4 and h["all:mean"] == pytest.approx(-0.5)
    assert h["customer:count"] == 3 and h["customer:min"] == -2.0 and h["customer:max"] == 1.0
    assert h["customer:ewma"] == pytest.approx(0.5 * -2.0 + 0.5 * (0.5 * -1.0 + 0.5 * 1.0))
    assert h["customer:start_mean"] == pytest.approx(0.0)  # first two: 1, -1
    assert h["customer:recent_mean"] == pytest.approx(-1.5)  # last two: -1, -2
    assert h["customer:shift"] == pytest.approx(-1.5)
    assert h["customer:neg"] == "011" and h["customer:alert"] == "1" and alerts == [3]
    assert "agent:alert" not in h  # agents are not alerted on by default


def test_alert_is_debounced_and_rearms() -> None:
    scores = [-1, -1, -1, -1, 1, 1, 1, -1, -1]
    _, alerts = fold([("customer", float(s)) for s in scores], RULE)
    assert alerts == [1, 8]  # raised once while it stays negative; again after it cleared


def test_live_clock_pauses_nest() -> None:
    """Two holders (the agent waiting for a slot, the sink retrying Redis): time moves when both let go."""
    t = [0.0]
    live = LiveClock(lambda: t[0])
    live.pause()
    live.pause()
    t[0] = 5.0
    live.resume()
    t[0] = 7.0
    assert live() == 0.0  # still held by the other
    live.resume()
    t[0] = 8.0
    assert live() == 1.0
    with pytest.raises(RuntimeError, match="resume without a pause"):
        live.resume()
