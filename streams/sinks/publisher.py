"""The worker's outputs (predictions, alerts, joined features, dead letters) through librdkafka.

aiokafka (Faust's producer) builds and checksums record batches in Python; the joined-features records are
~200 kB per utterance, and producing them through it cost the worker a third of its throughput on 2 cores. This
uses confluent-kafka (C) with idempotence and the murmur2 partitioner; its delivery reports come back to the
event loop as futures. `send_many` answers per record: written, or the classified reason it was not, so that one
refused record never makes its batch be sent again (which once re-published a batch's predictions on every retry).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from streams.errors import ServiceError, TransientError, from_kafka_error
from streams.kafka import producer_config
from streams.settings import KafkaSettings
from streams.sinks.deadletter import OutRecord

log = logging.getLogger(__name__)
Outcome = ServiceError | None  # None: the broker acknowledged the record


class KafkaPublisher:
    """Publishes records with librdkafka and reports each record's outcome."""

    def __init__(self, k: KafkaSettings, max_record_bytes: int) -> None:
        from confluent_kafka import KafkaException, Producer

        self._kafka_exception = KafkaException
        # A delivery librdkafka cannot complete within 30 s (brokers away) is reported, so the worker shows it is
        # failing (readiness, mmcl_consumption_paused) and retries it, instead of waiting librdkafka's 5 minutes.
        self._conf = {**producer_config(k, max_record_bytes=max_record_bytes), "message.timeout.ms": 30_000}
        self._new_producer = Producer
        self._p = Producer(self._conf)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="mmcl-delivery-reports", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._p.poll(0.05)  # runs the delivery callbacks, on this thread

    async def send_many(self, records: Sequence[OutRecord]) -> list[Outcome]:
        """Publish every record; wait for each one's delivery report. Never raises for a record: each gets its
        outcome (None, TransientError, RecordRefused or SinkRefused)."""
        loop = asyncio.get_running_loop()
        out: list[Outcome | asyncio.Future[Outcome]] = []

        producer = self._p

        def settle(fut: asyncio.Future[Outcome], err: Any) -> None:
            if not fut.done():
                fut.set_result(None if err is None else self._classified(err, producer))

        for rec in records:
            fut: asyncio.Future[Outcome] = loop.create_future()

            def report(err: Any, _msg: Any, fut: asyncio.Future[Outcome] = fut) -> None:
                loop.call_soon_threadsafe(settle, fut, err)

            while True:
                try:
                    headers: list[tuple[str, str | bytes | None]] | None = [*rec.headers] if rec.headers else None
                    producer.produce(rec.topic, rec.value, key=rec.key, headers=headers, on_delivery=report)
                    out.append(fut)
                    break
                except BufferError:  # librdkafka's local queue is full: let deliveries drain
                    await asyncio.sleep(0.01)
                except self._kafka_exception as e:  # refused before sending, e.g. over message.max.bytes
                    out.append(self._classified(e.args[0], producer))
                    break
        return [await o if isinstance(o, asyncio.Future) else o for o in out]

    def _classified(self, err: Any, producer: Any) -> ServiceError:
        if err.fatal():
            # An idempotent producer that hit a fatal error (e.g. its sequence numbers were lost) is unusable: make
            # a new one (once per failed producer); the record is then worth sending again.
            if producer is self._p:
                log.warning("librdkafka producer failed fatally (%s); starting a new one", err.str())
                self._p = self._new_producer(self._conf)
                producer.purge()
            return TransientError(f"{err.name()}: {err.str()} (fatal for its producer, which was replaced)")
        return from_kafka_error(err)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout`, then drop the rest (its offsets were not committed)."""
        self._stop.set()
        self._poller.join(timeout)
        left = self._p.flush(timeout)
        if left:
            log.warning("%d records undelivered at shutdown (their source offsets stay uncommitted)", left)
            self._p.purge()
            self._p.flush(0)

