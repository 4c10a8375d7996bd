"""The worker's outputs (predictions, alerts, joined features, dead letters) through librdkafka.

aiokafka (Faust's producer) builds and checksums record batches in Python; the joined-features records are
~200 kB per utterance, and producing them through it cost the worker a third of its throughput on 2 cores. This
uses confluent-kafka (C) with idempotence and the murmur2 partitioner; its delivery reports come back to the
event loop as futures, so `send_many` returns only when the broker has acknowledged every record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from streams.kafka import producer_config
from streams.settings import KafkaSettings

Headers = list[tuple[str, bytes]]


class DeliveryError(RuntimeError):
    """The broker did not take a record (after librdkafka's own retries)."""


class KafkaPublisher:
    def __init__(self, k: KafkaSettings) -> None:
        from confluent_kafka import KafkaException, Producer

        self._kafka_exception = KafkaException
        self._p = Producer(producer_config(k, linger_ms=2))
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="mmcl-delivery-reports", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._p.poll(0.05)  # runs the delivery callbacks, on this thread

    async def send_many(self, records: Sequence[tuple[str, bytes | None, bytes, Headers]]) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []

        def settle(fut: asyncio.Future[None], err: Any) -> None:
            if fut.done():
                return
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(DeliveryError(str(err)))

        for topic, key, value, headers in records:
            fut: asyncio.Future[None] = loop.create_future()

            def report(err: Any, _msg: Any, fut: asyncio.Future[None] = fut) -> None:
                loop.call_soon_threadsafe(settle, fut, err)

            while True:
                try:
                    self._p.produce(topic, value, key=key, headers=headers or None, on_delivery=report)
                    break
                except BufferError:  # librdkafka's local queue is full: let deliveries drain
                    await asyncio.sleep(0.01)
                except self._kafka_exception as e:  # e.g. a record over the size limit: the caller retries
                    raise DeliveryError(str(e)) from e
            futures.append(fut)
        await asyncio.gather(*futures)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poller.join(timeout)
        self._p.flush(timeout)
