"""What became of the utterances a producer sent: scored (a result in Redis) or dead-lettered (the dead-letter topic,
with the worker's reason). `mmcl extract` and `stream-call` watch while they send and for a bounded time after, so a
producer whose utterances are all being refused (a join that waits for a modality it never sends, features of the
wrong model) is told at once and exits non-zero, instead of reporting success for data that scored nothing."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.kafka import librdkafka_config
from streams.settings import Settings
from streams.wire import FEATURES_MAGIC, Features, FrameError, is_binary, split_frame

POLL_S = 0.2  # how long one read of the dead-letter topic waits; also the pace of the Redis checks


def utterance_of(raw: bytes | None) -> str | None:
    """The utterance id in a feature message of either wire version, read from its header alone; None if it has none
    (a dead letter cut to fit the topic, or bytes that never were a message)."""
    if not raw:
        return None
    try:
        head = json.loads(split_frame(raw, FEATURES_MAGIC)[0] if is_binary(raw) else raw)
    except (ValueError, FrameError):
        return None
    utt = head.get("utterance_id") if isinstance(head, dict) else None
    return utt if isinstance(utt, str) else None


@dataclass
class Outcomes:
    """Per utterance sent: scored, dead-lettered (its reasons and the first error), or neither yet."""

    scored: set[str] = field(default_factory=set)
    dead: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # utterance -> [(reason, error)]
    pending: set[str] = field(default_factory=set)

    def reasons(self) -> Counter[str]:
        """Dead-lettered utterances per reason (an utterance counts once per reason)."""
        return Counter(reason for whys in self.dead.values() for reason in {r for r, _ in whys})

    def describe(self) -> str:
        """The reasons in a line: 'incomplete x3 (no audio part within 10 s)'."""
        first: dict[str, str] = {}  # the first error text seen for each reason
        for whys in self.dead.values():
            for reason, error in whys:
                first.setdefault(reason, error)
        return ", ".join(f"{reason} x{n}" + (f" ({first[reason]})" if first.get(reason) else "")
                         for reason, n in self.reasons().most_common())


class OutcomeWatch:
    """Started before the first message is sent: it reads the dead-letter topic from where it ended then, and asks
    Redis for each sent utterance's result, on a thread of its own. `warn` is told once, as soon as every utterance
    that has an outcome was dead-lettered."""

    def __init__(self, s: Settings, warn: Callable[[str], None]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from streams.sinks.redis_store import sync_client

        self._warn = warn
        self._redis = sync_client(s.redis)
        self._consumer = Consumer({**librdkafka_config(s.kafka), "group.id": f"mmcl-producer-{uuid.uuid4().hex[:12]}",
                                   "enable.auto.commit": False, "enable.partition.eof": False})
        topic = s.topics.dlq
        found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        partitions = [] if found is None or found.error is not None else sorted(found.partitions)
        ends = [TopicPartition(topic, p, self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p in partitions]
        self._consumer.assign(ends)
        self._lock = threading.Lock()
        self._sent: dict[str, str] = {}  # utterance -> the call its result is filed under
        self._outcomes = Outcomes()
        self._warned = False
        self._settled = threading.Event()  # set by the watch thread when no sent utterance lacks an outcome
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmcl-outcomes", daemon=True)
        self._thread.start()

    def sending(self, msg: Features) -> bool:
        """Record a message about to be sent (before: its dead letter could be read before a later record): its
        utterance now awaits an outcome. -> whether it is the utterance's first message."""
        with self._lock:
            if msg.utterance_id in self._sent:
                return False
            self._sent[msg.utterance_id] = msg.key
            self._outcomes.pending.add(msg.utterance_id)
            self._settled.clear()
            return True

    def forget(self, utterance_id: str) -> None:
        """The utterance's only message was not sent after all."""
        with self._lock:
            self._sent.pop(utterance_id, None)
            self._outcomes.pending.discard(utterance_id)

    @property
    def count(self) -> int:
        """How many utterances were sent."""
        with self._lock:
            return len(self._sent)

    def wait(self, timeout_s: float, stop: threading.Event | None = None) -> Outcomes:
        """Wait until every sent utterance has an outcome, for at most `timeout_s`; stop watching. -> the outcomes."""
        deadline = time.monotonic() + timeout_s
        while not (stop and stop.is_set()) and self._thread.is_alive():
            left = deadline - time.monotonic()
            # in slices, so that `stop` (Ctrl-C) and a watch thread that died are noticed
            if left <= 0 or self._settled.wait(min(left, POLL_S)):
                break
        self.close()
        with self._lock:
            return Outcomes(set(self._outcomes.scored), dict(self._outcomes.dead), set(self._outcomes.pending))

    def close(self) -> None:
        """Stop the thread and the clients."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._read_dead_letters()
                self._read_results()
                self._maybe_warn()
                with self._lock:
                    if not self._outcomes.pending:
                        self._settled.set()
        except Exception as e:  # a broker or Redis that went away: the messages were sent, only the watch ends
            print(f"stopped watching what became of the utterances: {e}", file=sys.stderr)
        finally:
            self._consumer.close()
            self._redis.close()

    def _read_dead_letters(self) -> None:
        for msg in self._consumer.consume(500, timeout=POLL_S):
            if msg.error():
                continue
            utt = utterance_of(msg.value())
            given: Any = msg.headers() or []  # a list of (name, bytes) pairs from a consumer
            headers = {name: value if isinstance(value, bytes) else b"" for name, value in given}
            reason = headers.get("mmcl.reason", b"unknown").decode("utf-8", "replace")
            error = headers.get("mmcl.error", b"").decode("utf-8", "replace")
            with self._lock:
                if utt in self._sent and utt not in self._outcomes.scored:
                    self._outcomes.dead.setdefault(utt, []).append((reason, error))
                    self._outcomes.pending.discard(utt)

    def _read_results(self) -> None:
        from streams.sinks.redis_store import utt_key

        with self._lock:
            waiting = [u for u in self._sent if u not in self._outcomes.scored]
            keys = [utt_key(self._sent[u], u) for u in waiting]
        if not waiting:
            return
        pipe: Any = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        found = pipe.execute()
        with self._lock:
            for utt, there in zip(waiting, found, strict=True):
                if there:  # a result wins over a dead letter of one of its parts (a late duplicate, say)
                    self._outcomes.scored.add(utt)
                    self._outcomes.pending.discard(utt)
                    self._outcomes.dead.pop(utt, None)

    def _maybe_warn(self) -> None:
        with self._lock:
            if self._warned or not self._outcomes.dead or self._outcomes.scored:
                return
            self._warned = True
            line = (f"warning: every utterance with an outcome so far was dead-lettered "
                    f"({len(self._outcomes.dead)}): {self._outcomes.describe()}")
        self._warn(line)


class WatchedSink:
    """A sink that tells an OutcomeWatch about each message it sent."""

    def __init__(self, sink: Any, watch: OutcomeWatch) -> None:
        self._sink, self._watch = sink, watch
        self.destination: str = sink.destination

    def send(self, msg: Features) -> None:
        """Record the utterance as awaiting its outcome, and send."""
        first = self._watch.sending(msg)
        try:
            self._sink.send(msg)
        except Exception:
            if first:
                self._watch.forget(msg.utterance_id)
            raise

    def close(self) -> int:
        """Flush the sink; -> how many messages were not delivered."""
        undelivered: int = self._sink.close()
        return undelivered


def report_outcomes(out: Outcomes, waited_s: float, sent: int) -> int:
    """Print what became of the utterances. -> 1 if any was dead-lettered, else 0."""
    line = f"outcomes: {len(out.scored)} of {sent} utterances scored, {len(out.dead)} dead-lettered"
    if out.pending:
        line += f", {len(out.pending)} without an outcome after {waited_s:g} s (is a worker running?)"
    print(line)
    if not out.dead:
        return 0
    every = "every utterance was" if len(out.dead) == sent else f"{len(out.dead)} utterances were"
    print(f"{every} dead-lettered: {out.describe()}; see the dead-letter topic for each part", file=sys.stderr)
    return 1
