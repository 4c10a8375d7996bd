"""How the pipeline writes: results to Redis, records to Kafka, dead letters; each record retried only while its
failure is transient, and handled alone when it is refused for good."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from streams.errors import RecordRefused, ServiceError, ShuttingDown, TransientError
from streams.kafka import RecordLimits
from streams.messages import Prediction
from streams.metrics import Metrics
from streams.settings import Settings
from streams.sinks.deadletter import Origin, OutRecord, Reason, dead_letter, stripped
from streams.sinks.redis_store import ResultWriter, Written
from streams.worker.acks import OrderedAcker
from streams.worker.join import LiveClock
from streams.worker.records import Publisher, Source
from streams.worker.retry import Retry, settle

log = logging.getLogger("streams.worker.pipeline")
T = TypeVar("T")


class Outputs:
    """The pipeline's writing half (a base class of Pipeline, which sets these attributes)."""

    settings: Settings
    metrics: Metrics
    writer: ResultWriter | None
    publisher: Publisher
    limits: RecordLimits
    acker: OrderedAcker
    abort: asyncio.Event | None  # set when a shutdown's grace time is over: writes give up
    live: LiveClock
    failing: int  # writes being retried right now
    redis_ok: bool

    def publish_state(self) -> None:
        """Publish readiness and the paused gauge."""
        raise NotImplementedError

    async def _write_results(self, preds: list[Prediction], t: int) -> dict[int, Written | RecordRefused]:
        """Write to Redis; retry only what failed transiently. -> per prediction index: written, or refused."""
        writer = self.writer
        assert writer is not None
        done: dict[int, Written | RecordRefused] = {}
        todo = list(range(len(preds)))
        async with Retry(self, "redis", redis_write=True) as retry:
            while todo:
                t0 = time.perf_counter()
                try:
                    outs = await self._abortable(writer.write([preds[i] for i in todo], t))
                except TransientError as e:
                    await retry.failed(e)
                    continue
                self.metrics.redis_write_seconds.observe(time.perf_counter() - t0)
                todo, failed = settle(todo, outs, done)
                if failed is not None:
                    await retry.failed(TransientError(f"{len(todo)} of the batch's writes failed ({failed})"))
                else:
                    self.redis_ok = True
        return done

    async def _publish(self, records: Sequence[OutRecord], what: str) -> list[ServiceError | None]:
        """Publish; retry only the records that failed transiently. -> per record: None, or RecordRefused. A record
        over its topic's limit is refused here, before it is sent."""
        out: list[ServiceError | None] = [None] * len(records)
        todo = []
        for i, rec in enumerate(records):
            limit = self.limits.for_topic(self.settings.topics, rec.topic)
            if rec.size > limit:
                out[i] = RecordRefused("too_large", f"{rec.size} bytes > {rec.topic}'s limit of {limit}")
            else:
                todo.append(i)
        async with Retry(self, what) as retry:
            while todo:
                outs = await self._abortable(self.publisher.send_many([records[i] for i in todo]))
                todo, failed = settle(todo, outs, out)
                if failed is not None:
                    await retry.failed(TransientError(f"{len(todo)} record(s) not delivered ({failed})"))
        return out

    # retries ---------------------------------------------------------------------------------------------------
    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]], redis_write: bool = False) -> T:
        """`op` until it does not fail transiently (its other errors go to the caller)."""
        async with Retry(self, what, redis_write) as retry:
            while True:
                try:
                    return await self._abortable(op())
                except TransientError as e:
                    await retry.failed(e)

    async def _abortable(self, aw: Awaitable[T]) -> T:
        """Await `aw`, unless the shutdown's grace time ends first (then ShuttingDown; nothing is acked)."""
        assert self.abort is not None
        if self.abort.is_set():
            raise ShuttingDown("the worker is stopping")
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.abort.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            raise ShuttingDown("the worker is stopping")
        return task.result()

    async def _dead_letter(self, sources: list[Source], reason: Reason, stage: str, error: str) -> None:
        # a source forgotten meanwhile (its partition was revoked) belongs to the next owner: not dead-lettered here
        sources = [src for src in sources if self.acker.pending(src.tp, src.offset)]
        if not sources:
            return
        records = []
        for src in sources:
            rec, cut = dead_letter(self.settings.topics.dlq, src.key, src.value, src.headers,
                                   Origin(src.topic, src.partition, src.offset), reason.value, stage, error,
                                   self.limits.dead_letter)
            if cut:
                self.metrics.dead_letters_truncated.inc()
            records.append(rec)
        outcomes = await self._publish(records, "dead-letter")
        retry = [i for i, o in enumerate(outcomes) if isinstance(o, RecordRefused) and o.why == "too_large"]
        if retry:  # the broker's limit is below what it said at start-up: keep the headers, drop the bytes
            self.metrics.dead_letters_truncated.inc(len(retry))
            for i, o in zip(retry, await self._publish([stripped(records[i]) for i in retry], "dead-letter"), strict=True):
                outcomes[i] = o
        for src, o in zip(sources, outcomes, strict=True):
            if isinstance(o, RecordRefused):
                self.metrics.records_refused.labels("dead_letters", o.why).inc()
                log.error("dead letter of %s[%d]@%d (%s) refused by the broker (%s: %s): only this log line and the "
                          "source topic keep it", src.topic, src.partition, src.offset, reason.value, o.why, o)
        self.metrics.dead_letters.labels(reason.value, stage).inc(len(sources))
        self._ack(sources)

    def _ack(self, sources: Sequence[Source]) -> None:
        for src in sources:
            self.acker.done(src.tp, src.offset)
