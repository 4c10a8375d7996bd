"""The trainer's ingestion loop: joined features and labels into the store, then offsets; bad labels dead-lettered."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from mmcl.errors import ConfigError
from streams.learning.trainer import Trainer
from streams.settings import Settings
from streams.sinks.deadletter import Reason

log = logging.getLogger("mmcl.trainer")


def consume(settings: Settings, trainer: Trainer, stop: threading.Event) -> None:
    """The ingestion loop: joined features and labels into the store; offsets committed after the store."""
    from confluent_kafka import Consumer, KafkaException, Producer

    from streams.kafka import consumer_config, producer_config, record_limits
    from streams.sinks.deadletter import Origin, dead_letter

    limit = record_limits(settings.limits.max_message_bytes).dead_letter
    c = Consumer(consumer_config(settings.kafka, settings.trainer.group_id))
    p = Producer(producer_config(settings.kafka, max_record_bytes=limit))

    def send_dead_letter(key: bytes | None, raw: bytes, headers: list[tuple[str, bytes]], origin: Origin, reason: Reason,
                         error: str) -> None:
        rec, _ = dead_letter(settings.topics.dlq, key, raw, headers, origin, reason.value, "feedback", error, limit)
        out_headers: list[tuple[str, str | bytes | None]] = [*rec.headers]
        p.produce(rec.topic, rec.value, key=rec.key, headers=out_headers)

    c.subscribe([settings.topics.joined, settings.topics.feedback])
    last_house = time.monotonic()
    dirty = False
    try:
        while not stop.is_set():
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                headers = record_headers(msg.headers())
                topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                if topic == settings.topics.joined:
                    trainer.on_joined(msg.value() or b"")
                else:
                    src_headers = [*headers, ("mmcl.source_topic", topic.encode()),
                                   ("mmcl.source_partition", str(partition).encode()),
                                   ("mmcl.source_offset", str(offset).encode())]
                    bad = trainer.on_label(msg.value() or b"", src_headers)
                    if bad is not None:
                        send_dead_letter(msg.key(), msg.value() or b"", headers,
                                         Origin(topic, partition, offset), *bad)
                dirty = True
            if time.monotonic() - last_house >= 1.0:
                last_house = time.monotonic()
                for _utt, raw, hdrs in trainer.housekeeping():
                    base = [h for h in hdrs if not h[0].startswith("mmcl.source_")]
                    info = {k: v.decode() for k, v in hdrs if k.startswith("mmcl.source_")}
                    origin = Origin(info.get("mmcl.source_topic", settings.topics.feedback),
                                    int(info.get("mmcl.source_partition", -1)), int(info.get("mmcl.source_offset", -1)))
                    send_dead_letter(None, raw, base, origin, Reason.UNMATCHED,
                                     f"no joined features within {settings.trainer.match_grace_s:g} s (never seen, or expired)")
                if p.flush(30) != 0:
                    raise ConfigError("could not write to the dead-letter topic")
                if dirty:
                    with contextlib.suppress(KafkaException):  # nothing consumed since the last commit
                        c.commit(asynchronous=False)
                    dirty = False
                why = trainer.due()
                if why:
                    log.info("retraining: %s", why)
                    trainer.start_run(why)
                trainer.metrics.last_check.set(time.time())
    finally:
        c.close()


def record_headers(raw: object) -> list[tuple[str, bytes]]:
    """A consumed record's headers as (key, bytes) pairs (librdkafka gives a list of pairs, values may be None)."""
    if not isinstance(raw, list):
        return []
    return [(str(k), v if isinstance(v, bytes) else (v or "").encode()) for k, v in raw]
