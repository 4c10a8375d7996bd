"""The worker's core, independent of Faust: decode -> join -> inference thread -> Redis + Kafka -> ack in order.

At-least-once: a source message is acked (and so committed) only when everything derived from it is durable: its
utterance's result written to Redis and acknowledged by Kafka, or the message itself acknowledged on the dead-letter
topic. A crash re-reads whatever was not acked; the Redis script ignores results it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from mmcl.predictor import Predictor
from streams.acks import OrderedAcker
from streams.aggregates import AggregateRule
from streams.decode import ModelProfile, Reason, Rejection, decode_part
from streams.inference import BatchResult, InferenceThread
from streams.join import Dropped, Ignored, Joined, Joiner, LiveClock
from streams.messages import SCHEMA_VERSION, Prediction, now_ms
from streams.metrics import Metrics
from streams.redis_store import ResultWriter
from streams.settings import WIRE_MODALITIES, Settings, model_modality

log = logging.getLogger(__name__)
Headers = list[tuple[str, bytes]]


class Publisher(Protocol):
    async def send_many(self, records: Sequence[tuple[str, bytes | None, bytes, Headers]]) -> None:
        """Publish and wait for the broker's acknowledgement of every record; raise if any failed."""


@dataclass(frozen=True)
class Source:
    """Where a part came from: enough to dead-letter it and to ack it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    handle: Any  # the consumer's own message/event object, given back to `ack`

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


def profile_of(predictor: Predictor) -> ModelProfile:
    dims = dict(zip(WIRE_MODALITIES, predictor.input_dims, strict=True))
    ids = predictor.checkpoint.profile.extractor_ids
    extractor_ids = {w: ids[k] for w in WIRE_MODALITIES for k in (w, model_modality(w)) if k in ids}
    return ModelProfile(dims, extractor_ids)


class Pipeline:
    def __init__(self, settings: Settings, predictor: Predictor, metrics: Metrics, make_writer: Callable[[], ResultWriter],
                 publisher: Publisher, ack: Callable[[Any], None], clock: Callable[[], float] = time.monotonic) -> None:
        # the writer's redis.asyncio client must be made on the loop that uses it, so it is made in start()
        self.s, self.predictor, self.metrics, self.publisher = settings, predictor, metrics, publisher
        self._make_writer = make_writer
        self.writer: ResultWriter | None = None
        self.profile = profile_of(predictor)
        self.topic_modality = {settings.topics.feature(m): m for m in WIRE_MODALITIES}
        self.label_names = list(predictor.cfg.task.label_names)
        self.acker = OrderedAcker(ack)
        self.live = LiveClock(clock)  # stands still while back-pressure holds the agent: quiet is not idle then
        self.joiner = Joiner(settings.join.required, settings.policy.allowed, settings.join.timeout_s,
                             settings.join.max_pending, settings.join.remember_emitted, self.live,
                             count=lambda o: metrics.join_outcomes.labels(o).inc())
        self._slots = asyncio.Semaphore(settings.batch.queue_size)
        self._results: asyncio.Queue[BatchResult] = asyncio.Queue()
        self._inference = InferenceThread(predictor, settings.batch.max_size, settings.batch.wait_ms / 1000, self._deliver)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.assigned = False
        self.redis_ok = True
        self._failing = 0  # writes being retried right now (sink and agent may both be)
        self.written = 0  # utterances written (new or re-delivered), for tests and the demo
        self._describe_model(predictor)

    def _describe_model(self, p: Predictor) -> None:
        self.metrics.model_info.info({"version": p.version, "kind": p.cfg.kind, "decoupling": p.cfg.decoupling,
                                      "device": str(p.device)})

    def swap(self, new: Predictor) -> None:
        """Serve `new` from the next batch on (any thread; the caller has loaded and warmed it)."""
        self.predictor = new
        self._inference.predictor = new
        self._describe_model(new)

    # lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.writer = self._make_writer()
        self._inference.start()
        self._tasks = [asyncio.create_task(self._sink_loop(), name="mmcl-sink"),
                       asyncio.create_task(self._expire_loop(), name="mmcl-join-deadlines")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await asyncio.to_thread(self._inference.stop)

    @property
    def ready(self) -> bool:
        return self.assigned and self.redis_ok and not self._failing and self._loop is not None

    def on_assigned(self) -> None:
        self.assigned = True
        self._publish_state()

    def on_revoked(self, tps: set[Hashable]) -> None:
        # Their unfinished messages are not acked: the next owner re-reads them from the last commit.
        self.joiner.forget(lambda src: src.tp not in tps)
        self.acker.forget(tps)
        self.metrics.pending_joins.set(len(self.joiner))

    # consuming -----------------------------------------------------------------------------------------------
    async def on_message(self, src: Source) -> None:
        self.acker.track(src.tp, src.offset, src.handle)
        modality = self.topic_modality.get(src.topic, "unknown")
        self.metrics.consumed.labels(modality).inc()
        self.metrics.last_event.labels(src.topic).set(time.time())
        part = decode_part(src.value, modality, self.s.limits, self.profile)
        if isinstance(part, Rejection):
            await self._dead_letter([src], part.reason, "decode", part.error)
            return
        await self._handle(self.joiner.add(part, src, group=src.partition))

    async def _handle(self, outcomes: list[Joined | Dropped | Ignored]) -> None:
        for out in outcomes:
            if isinstance(out, Dropped):
                await self._dead_letter(list(out.tokens), out.reason, "join", out.error)
                continue
            if isinstance(out, Ignored):
                self.metrics.policy_masked.labels(out.part.speaker, out.part.modality).inc()
                self._ack([out.token])
                continue
            self.metrics.join_wait.observe(out.wait_s)
            if self._slots.locked():  # back-pressure: wait while the model or the sinks are behind
                self.live.pause()
                try:
                    await self._slots.acquire()
                finally:
                    self.live.resume()
            else:
                await self._slots.acquire()
            self.metrics.inflight.inc()
            self._inference.submit(out)
        self.metrics.pending_joins.set(len(self.joiner))

    async def _expire_loop(self) -> None:
        tick = min(0.05, self.s.join.timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            await self._handle(self.joiner.expire())

    # results -------------------------------------------------------------------------------------------------
    def _deliver(self, result: BatchResult) -> None:  # on the inference thread
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._results.put_nowait, result)

    async def _sink_loop(self) -> None:
        while True:
            result = await self._results.get()
            n = len(result.items) + len(result.failed)
            try:
                await self._finish(result)
            finally:
                for _ in range(n):
                    self._slots.release()
                self.metrics.inflight.dec(n)

    async def _finish(self, result: BatchResult) -> None:
        m = self.metrics
        for item, err in result.failed:
            await self._dead_letter(list(item.tokens), Reason.INFERENCE_ERROR, "inference", err)
        if not result.items or result.predictions is None:
            return
        m.batch_size.observe(len(result.items))
        m.inference_seconds.observe(result.seconds)
        t = now_ms()
        preds = self._predictions(result, t)
        writer = self.writer
        assert writer is not None
        replies = await self._retry("redis", lambda: writer.write(preds, t), m.redis_errors, redis_write=True)
        written_at = time.time()
        records: list[tuple[str, bytes | None, bytes, Headers]] = []
        for item, p, (_new, alert) in zip(result.items, preds, replies, strict=True):
            key = (p.call_id or p.utterance_id).encode()
            records.append((self.s.topics.predictions, key, p.model_dump_json().encode(), []))
            if alert:
                records.append((self.s.topics.alerts, key, alert.encode(), []))
            if self.s.trainer.keep_joined:
                records.append((self.s.topics.joined, p.utterance_id.encode(), joined_record(item, p), []))
        await self._retry("kafka", lambda: self.publisher.send_many(records), m.kafka_errors)
        for p, (new, alert) in zip(preds, replies, strict=True):
            m.e2e_latency.observe(max(0.0, written_at - p.produced_at / 1000))
            m.predictions.labels(p.label, p.speaker).inc()
            if not new:
                m.duplicates_skipped.inc()
            elif alert:
                m.alerts.labels(p.speaker).inc()
        self.written += len(preds)
        for item in result.items:
            self._ack(item.tokens)

    def _predictions(self, result: BatchResult, t: int) -> list[Prediction]:
        pb = result.predictions
        assert pb is not None
        out = []
        for i, item in enumerate(result.items):
            probs = None if pb.probabilities is None or pb.probabilities.ndim != 2 or \
                pb.probabilities.shape[1] != len(self.label_names) else \
                {n: float(v) for n, v in zip(self.label_names, pb.probabilities[i], strict=True)}
            weights = None if pb.modality_weights is None else \
                {w: float(pb.modality_weights[i, j]) for j, w in enumerate(WIRE_MODALITIES)}
            present = [w for j, w in enumerate(WIRE_MODALITIES) if pb.modality_mask[i, j]]
            out.append(Prediction(
                utterance_id=item.utterance_id, call_id=item.call_id, speaker=item.speaker,  # type: ignore[arg-type]
                score=float(pb.scores[i]), label=pb.labels[i], probabilities=probs, modality_weights=weights,
                modalities=present, masked=list(item.masked), model_version=pb.model_version,  # type: ignore[arg-type]
                latency_ms=float(max(0, t - item.produced_at)), produced_at=item.produced_at, predicted_at=t))
        return out

    async def _retry(self, what: str, op: Callable[[], Awaitable[Any]], errors: Any, redis_write: bool = False) -> Any:
        """Until it works: back-off doubling up to a cap. Meanwhile no slot frees, so consumption pauses."""
        delay, failing = self.s.redis.retry_initial_s, False
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    out = await op()
                except (TimeoutError, redis.RedisError, OSError, RuntimeError, ConnectionError) as e:
                    errors.inc()
                    if not failing:  # the agent is about to stall on this: parts not arriving is not news
                        failing = True
                        self._failing += 1
                        self.live.pause()
                    if redis_write:
                        self.redis_ok = False
                    self._publish_state()
                    log.warning("%s write failed (%s: %s); retrying in %.2f s", what, type(e).__name__, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.s.redis.retry_max_s)
                    continue
                if redis_write:
                    self.metrics.redis_write_seconds.observe(time.perf_counter() - t0)
                    self.redis_ok = True
                return out
        finally:
            if failing:
                self._failing -= 1
                self.live.resume()
                self._publish_state()

    def _publish_state(self) -> None:
        self.metrics.paused.set(1 if self._failing else 0)
        self.metrics.ready.set(1 if self.ready else 0)

    # dead letters and acks -----------------------------------------------------------------------------------
    async def _dead_letter(self, sources: list[Source], reason: Reason, stage: str, error: str) -> None:
        records = [(self.s.topics.dlq, src.key, src.value or b"", [*src.headers, *dlq_headers(src, reason, stage, error)])
                   for src in sources]
        await self._retry("dead-letter", lambda: self.publisher.send_many(records), self.metrics.kafka_errors)
        self.metrics.dead_letters.labels(reason.value, stage).inc(len(sources))
        self._ack(sources)

    def _ack(self, sources: Sequence[Source]) -> None:
        for src in sources:
            self.acker.done(src.tp, src.offset)


def dlq_headers(src: Source, reason: Reason, stage: str, error: str) -> Headers:
    return [("mmcl.reason", reason.value.encode()), ("mmcl.stage", stage.encode()),
            ("mmcl.error", error.encode("utf-8", "replace")[:1000]), ("mmcl.source_topic", src.topic.encode()),
            ("mmcl.source_partition", str(src.partition).encode()), ("mmcl.source_offset", str(src.offset).encode())]


def joined_record(item: Joined, p: Prediction) -> bytes:
    """A JoinedFeatures message with the parts' original bytes spliced in: re-encoding ~200 kB of arrays per
    utterance cost ~2 ms of CPU, as much as scoring it. Each part was validated as a FeatureMessage on the way in."""
    head = {"schema_version": SCHEMA_VERSION, "utterance_id": p.utterance_id, "call_id": p.call_id,
            "speaker": p.speaker, "produced_at": item.produced_at, "model_version": p.model_version, "score": p.score}
    parts = b",".join(json.dumps(m).encode() + b":" + part.raw for m, part in item.parts.items())
    return json.dumps(head).encode()[:-1] + b',"parts":{' + parts + b"}}"


def aggregate_rule(s: Settings) -> AggregateRule:
    a = s.alert
    return AggregateRule(s.output.ewma_alpha, s.output.shift_window, tuple(a.roles), a.negative_below, a.n, a.m)


