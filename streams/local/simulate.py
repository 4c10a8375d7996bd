"""`mmcl produce`: a simulated call center publishing feature messages for a dataset split.

N calls run at once; each is a run of utterances with alternating agent / customer turns. Utterances start at the
target rate; each one's parts are sent in random order with jitter, and a share of visual parts never comes. Uses
the confluent-kafka producer with murmur2_random (Faust's key hash) and idempotence.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mmcl.data.dataset import Split
from streams.kafka import produce, producer_config, record_limits
from streams.messages import FeedbackLabel, now_ms
from streams.settings import WIRE_MODALITIES, Settings, WireSettings, model_modality
from streams.wire import Features, encode_features


@dataclass(frozen=True)
class SimSpec:
    """The simulated call center: calls, rate, jitter, missing parts, labels."""

    calls: int = 8  # concurrent calls
    rate: float = 20.0  # utterances per second
    jitter_ms: float = 300.0  # each part leaves up to this long after its utterance starts
    missing_visual: float = 0.0  # share of utterances whose visual part is never sent
    call_length: tuple[int, int] = (6, 16)  # utterances per call, uniform
    limit: int | None = None  # stop after this many utterances (default: the whole split once)
    duration_s: float | None = None
    seed: int = 0
    run_id: str = ""  # prefix of call ids, so runs do not collide in Redis
    record_sent: bool = True  # keep each utterance's send time in SimStats.last_sent (latency checks; not endless runs)
    label_share: float = 0.0  # share of utterances that later get a feedback label (the dataset's own score) ...
    label_delay_s: float = 5.0  # ... this long after their last part


@dataclass
class SimStats:
    """What a simulation sent."""

    utterances: int = 0
    messages: int = 0
    skipped_visual: int = 0
    labels: int = 0
    errors: int = 0
    last_sent: dict[str, int] = field(default_factory=dict)  # utterance id -> produced_at of its last part
    calls: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Planned:
    """One message the simulation will send, and when."""

    at: float  # seconds after start
    utterance_id: str
    call_id: str
    speaker: str
    modality: str  # text | audio | visual, or "label" for a feedback label
    features: np.ndarray
    label: float = 0.0  # the dataset's score for this utterance


@dataclass
class _Call:
    id: str
    left: int  # utterances still to come
    turn: int = 0


def plan(split: Split, spec: SimSpec) -> Iterator[list[Planned]]:
    """Per utterance, its parts in send order (by their jittered times). Over the split once unless limited."""
    rng = random.Random(spec.seed)
    n_total = spec.limit if spec.limit is not None else len(split)
    started = 0

    def new_call() -> _Call:
        nonlocal started
        started += 1
        return _Call(f"{spec.run_id}call-{started:05d}", rng.randint(*spec.call_length))

    slots = [new_call() for _ in range(spec.calls)]
    for i in range(n_total):
        j = i % len(split)
        slot_idx = i % spec.calls
        call = slots[slot_idx]
        speaker = "agent" if call.turn % 2 == 0 else "customer"  # the agent opens every call
        call.turn += 1
        utt = f"{call.id}-u{call.turn:03d}"
        start = i / spec.rate
        parts = []
        for m in WIRE_MODALITIES:
            if m == "visual" and rng.random() < spec.missing_visual:
                continue
            mm = model_modality(m)
            length = int(split.lengths[mm][j])
            arr = split.features[mm][j]
            arr = arr[-length:] if split.pad_side.get(mm) == "front" else arr[:length]
            if length == 0:
                arr = split.features[mm][j][:1] * 0
            parts.append(Planned(start + rng.uniform(0, spec.jitter_ms / 1000), utt, call.id, speaker, m, arr,
                                 float(split.labels[j]) if split.labels.ndim == 1 else 0.0))
        yield sorted(parts, key=lambda p: p.at)
        call.left -= 1
        if call.left <= 0:
            slots[slot_idx] = new_call()


def encode(planned: Planned, produced_at: int, wire: WireSettings | None = None) -> bytes:
    """A planned message as the bytes a producer sends (features in the wire version and dtype `wire` says)."""
    if planned.modality == "label":
        lab = FeedbackLabel(utterance_id=planned.utterance_id, call_id=planned.call_id, label=planned.label,
                            source="simulated-qa",
                            labeled_at=produced_at)
        return lab.model_dump_json().encode()
    w = wire or WireSettings()
    features = Features(planned.utterance_id, planned.modality, planned.features, produced_at,
                        call_id=planned.call_id, speaker=planned.speaker)
    try:
        return encode_features(features, w.format, w.dtype)
    except ValueError:  # beyond float16's range (real datasets' audio features can be): this message as float32
        return encode_features(features, w.format, "float32")


class _Schedule:
    """The simulation's messages in send order: utterances planned as their start times come up, labels later."""

    def __init__(self, split: Split, spec: SimSpec) -> None:
        self.spec = spec
        self.heap: list[tuple[float, int, Planned]] = []
        self._seq = 0
        self._utterances = plan(split, spec)
        self._label_rng = random.Random(spec.seed + 1)
        self._exhausted = False
        self._planned_until = -1.0  # start time of the last utterance taken from the plan

    def _push(self, planned: Planned) -> None:
        heapq.heappush(self.heap, (planned.at, self._seq, planned))
        self._seq += 1

    def plan_until(self, now: float, stats: SimStats) -> None:
        """Plan every utterance that starts by `now` (its parts may leave up to jitter_ms later)."""
        spec = self.spec
        while not self._exhausted and self._planned_until <= now:
            parts = next(self._utterances, None)
            if parts is None:
                self._exhausted = True
                return
            self._planned_until = stats.utterances / spec.rate
            stats.utterances += 1
            stats.calls.add(parts[0].call_id)
            if len(parts) < 3:
                stats.skipped_visual += 1
            for part in parts:
                self._push(part)
            if spec.label_share and self._label_rng.random() < spec.label_share:
                last = parts[-1]
                self._push(Planned(last.at + spec.label_delay_s, last.utterance_id, last.call_id, last.speaker, "label",
                                   np.empty(0, np.float32), last.label))


def run(settings: Settings, split: Split, spec: SimSpec, stop: threading.Event | None = None,
        on_progress: Callable[[SimStats], None] | None = None, finish: threading.Event | None = None) -> SimStats:
    """Publish a dataset split as a simulated call center until done or stopped.

    `stop` ends the run at once, leaving utterances with parts unsent; `finish` ends it cleanly: no utterance starts
    after it is set, and every part (and label) already planned is still sent.
    """
    from confluent_kafka import KafkaException, Producer

    stop = stop or threading.Event()
    limit = record_limits(settings.limits.max_message_bytes).feature
    producer = Producer(producer_config(settings.kafka, max_record_bytes=limit))
    stats = SimStats()
    schedule = _Schedule(split, spec)
    t0 = time.monotonic()

    def failed(err: object, _msg: object) -> None:
        if err is not None:
            stats.errors += 1

    while not stop.is_set():
        now = time.monotonic() - t0
        if spec.duration_s is not None and now >= spec.duration_s:
            break
        if finish is None or not finish.is_set():
            schedule.plan_until(now, stats)
        if not schedule.heap:
            break
        at, _, p = schedule.heap[0]
        if at > now:
            stop.wait(min(at - now, 0.05))
            producer.poll(0)
            continue
        heapq.heappop(schedule.heap)
        produced_at = now_ms()
        value = encode(p, produced_at, settings.wire)
        is_label = p.modality == "label"
        topic = settings.topics.feedback if is_label else settings.topics.feature(p.modality)
        try:
            produce(producer, topic, value, p.call_id.encode(), failed)
        except KafkaException:
            stats.errors += 1
        if is_label:
            stats.labels += 1
        else:
            stats.messages += 1
            if spec.record_sent:
                stats.last_sent[p.utterance_id] = produced_at
        producer.poll(0)
        if on_progress is not None and stats.messages % 50 == 0:
            on_progress(stats)
    producer.flush(30)
    return stats
