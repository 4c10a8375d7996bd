"""Consumer lag of the worker's group, measured from the broker, for the partitions this worker owns.

Lag is the log end offset minus the group's committed offset: what Kafka's own tools report. It is read from the
broker by a task of its own (the blocking calls on a thread), not from the worker's fetches, so it keeps growing
while the worker is stuck: the "no events while input grows" alert depends on that. On the embedded broker (Tansu)
the end offset is the larger of the broker's answer and the high watermark the worker last fetched: Tansu answers
ListOffsets(latest) with the last batch's base offset + 1, which only the fetched watermark corrects. Apache Kafka's
answer is exact, and is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.kafka import consumer_config
from streams.metrics import Metrics
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)
TP = tuple[str, int]


@dataclass(frozen=True)
class PartitionLag:
    """One partition's offsets and how far the worker is behind."""

    end: int  # log end offset (the next offset to be written)
    committed: int  # the group's next offset to read (the log start when the group never committed)

    @property
    def lag(self) -> int:
        """Records behind: from the committed offset (or the fetched one) to the end."""
        return max(0, self.end - self.committed)


def partition_lag(low: int, high: int, fetched: int | None, committed: int | None) -> PartitionLag:
    """Combine the broker's watermarks, the worker's fetched high watermark and the committed offset (None or
    negative: never committed, so the group starts at the log start: auto.offset.reset=earliest)."""
    end = max(high, fetched if fetched is not None else -1, low)
    start = committed if committed is not None and committed >= 0 else low
    return PartitionLag(end, min(max(start, low), end))


class LagProbe:
    """Reads end and committed offsets with a librdkafka consumer that carries the group id but never joins."""

    def __init__(self, k: KafkaSettings, group_id: str, timeout_s: float = 5.0) -> None:
        from confluent_kafka import Consumer

        self.timeout_s = timeout_s
        self.trust_fetched = k.broker_kind == "tansu"  # see the module docstring
        self._consumer = Consumer(consumer_config(k, group_id))

    def measure(self, tps: Iterable[TP], fetched: Mapping[TP, int | None]) -> dict[TP, PartitionLag]:
        """Each partition's offsets and lag, from the broker."""
        from confluent_kafka import TopicPartition

        tps = sorted(tps)
        if not tps:
            return {}
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in self._consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=self.timeout_s)}
        out = {}
        for t, p in tps:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(t, p), timeout=self.timeout_s, cached=False)
            seen = fetched.get((t, p)) if self.trust_fetched else None
            out[(t, p)] = partition_lag(low, high, seen, committed.get((t, p)))
        return out

    def close(self) -> None:
        """Close the probe's consumer."""
        self._consumer.close()


class LagGauges:
    """Publishes a measurement; partitions this worker no longer owns leave the gauges (their new owner reports)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._shown: set[TP] = set()

    def publish(self, lags: Mapping[TP, PartitionLag]) -> None:
        """Set the lag gauges; partitions no longer measured are removed."""
        for t, p in self._shown - set(lags):
            for g in (self.m.consumer_lag, self.m.end_offset):
                with contextlib.suppress(KeyError):
                    g.remove(t, str(p))
        for (t, p), lag in lags.items():
            self.m.consumer_lag.labels(t, str(p)).set(lag.lag)
            self.m.end_offset.labels(t, str(p)).set(lag.end)
        self._shown = set(lags)


async def follow_lag(probe: LagProbe, gauges: LagGauges, consumer: Any, interval_s: float) -> None:
    """Every interval: this worker's assignment, measured off the event loop. Errors are logged once per streak."""
    failing = False
    try:
        while True:
            failing = await _measure_once(probe, gauges, consumer, failing)
            await asyncio.sleep(interval_s)
    finally:
        probe.close()


async def _measure_once(probe: LagProbe, gauges: LagGauges, consumer: Any, failing: bool) -> bool:
    """One measurement; returns whether it failed."""
    try:
        fetched: dict[TP, int | None] = {}
        for tp in consumer.assignment():
            try:
                fetched[(tp.topic, tp.partition)] = consumer.highwater(tp)
            except Exception:  # nothing fetched from it yet
                fetched[(tp.topic, tp.partition)] = None
        gauges.publish(await asyncio.to_thread(probe.measure, set(fetched), fetched))
        return False
    except Exception as e:
        if not failing:
            log.warning("cannot measure consumer lag: %s: %s", type(e).__name__, e)
        return True
