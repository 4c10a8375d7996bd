"""From raw media to the feature topics: `mmcl extract` (one utterance) and `mmcl stream-call` (a whole call in
real-time order, each modality published the moment it is extracted, so the join sees the arrival gaps it will see
in production). Messages go to Kafka (binary by default: MMCL_WIRE__*), or to a JSONL file of version 1 messages."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from extractors.utterance import Extracted, FeatureMaker, Utterance
from mmcl.errors import ConfigError, MMCLError
from streams.kafka import produce, producer_config, record_limits
from streams.messages import now_ms
from streams.settings import WIRE_MODALITIES, Settings
from streams.wire import Features, encode_features


class Sink(Protocol):
    """Where extracted feature messages go."""

    destination: str  # where the messages go, for the user

    def send(self, msg: Features) -> None:
        """Send one modality's features."""

    def close(self) -> int:
        """Flush; -> how many messages were not delivered."""


class KafkaSink:
    """Keyed by call (the worker's join key), to the modality's feature topic; librdkafka is thread-safe, so the
    extraction threads send directly."""

    def __init__(self, s: Settings) -> None:
        from confluent_kafka import Producer

        self.destination = s.kafka.bootstrap_servers
        self._topics, self._wire = s.topics, s.wire
        self._p = Producer(producer_config(s.kafka, max_record_bytes=record_limits(s.limits.max_message_bytes).feature))
        self.failed = 0
        self._lock = threading.Lock()

    def _report(self, err: Any, _msg: Any) -> None:
        if err is not None:
            with self._lock:
                self.failed += 1
            print(f"delivery failed: {err}", file=sys.stderr)

    def send(self, msg: Features) -> None:
        """Send one message to its modality's feature topic, keyed by call, in the configured wire version."""
        from confluent_kafka import KafkaException

        topic = self._topics.feature(msg.modality)
        try:
            value = encode_features(msg, self._wire.format, self._wire.dtype)
        except ValueError as e:  # float16 cannot hold these values
            raise MMCLError(f"{msg.utterance_id} {msg.modality}: {e}") from None
        try:
            produce(self._p, topic, value, msg.key.encode(), self._report)
        except KafkaException as e:
            raise MMCLError(f"Kafka refused the message for {topic}: {e.args[0].str()}") from None
        self._p.poll(0)

    def close(self, timeout: float = 30.0) -> int:
        """Flush. -> how many messages were not delivered."""
        left = self._p.flush(timeout)
        return self.failed + left


class JsonlSink:
    """Feature messages appended to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.destination = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def send(self, msg: Features) -> None:
        """Append one message as a JSON line (version 1: a text file holds no binary messages)."""
        line = msg.message().model_dump_json(exclude_none=True)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self) -> int:
        """Close the file. -> 0: nothing can be undelivered."""
        self._f.close()
        return 0


def to_message(utt: Utterance, got: Extracted, call_id: str | None = None) -> Features:
    """One modality's extracted features, ready for either wire version."""
    return Features(utt.utterance_id, got.modality, got.features, now_ms(), call_id=call_id or utt.call_id,
                    speaker=utt.speaker, feature_profile=got.extractor, start_ms=utt.start_ms, end_ms=utt.end_ms)


@dataclass(frozen=True)
class ModelPlan:
    """What a checkpoint asks of the features made for it."""

    extractor_ids: dict[str, str]  # its recorded extractors (wire or model modality keys)
    # the length to resample features to: the one its training data was built at (the worker fits that to the model's
    # length, as training did), or the model's own for checkpoints that do not record it
    seq_len: int | None
    dims: dict[str, int]  # per wire modality
    reads: tuple[str, ...]  # the wire modalities the model reads: no other is worth extracting


def model_plan(checkpoint: Path | None) -> ModelPlan:
    """The plan for a checkpoint's features; no checkpoint: any extractor, length and modality."""
    if checkpoint is None:
        return ModelPlan({}, None, {}, WIRE_MODALITIES)
    from mmcl.checkpoint import read_profile

    prof, cfg = read_profile(checkpoint)
    dims = dict(zip(WIRE_MODALITIES, prof.dims, strict=True))
    return ModelPlan(dict(prof.extractor_ids), max(prof.source_lengths) if prof.source_lengths else cfg.seq_len, dims,
                     cfg.wire_modalities)


def check_dims(maker: FeatureMaker, modalities: Sequence[str], dims: Mapping[str, int]) -> None:
    """Refuse up front what the worker would dead-letter one message at a time."""
    from extractors import registry

    for m in modalities:
        want = dims.get(m)
        have = registry.create(maker.chosen[m]).dim
        if want is not None and want != have:
            raise ConfigError(f"the model needs {m} features of D={want}; {maker.chosen[m]!r} makes D={have} "
                              f"(choose its extractor with --extractor {m}=NAME)")


@dataclass
class CallReport:
    """What streaming a call sent, skipped and failed to deliver."""

    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WIRE_MODALITIES, 0))
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # utterance, modality, reason
    extract_ms: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in WIRE_MODALITIES})
    undelivered: int = 0


def stream_call(utts: Sequence[Utterance], maker: FeatureMaker, sink: Sink, speed: float = 1.0, realtime: bool = True,
                call_id: str | None = None, stop: threading.Event | None = None,
                log: Callable[[str], None] | None = None, reads: Sequence[str] = WIRE_MODALITIES) -> CallReport:
    """Publish a call's utterances in the order they end. With `realtime`, an utterance's media is released at
    its end time (scaled by `speed`) measured from the start; each modality then runs on its own thread and its
    message is sent the moment its features are ready. Only the modalities in `reads` (what the model reads) are
    extracted."""
    stop = stop or threading.Event()
    report = CallReport()
    lock = threading.Lock()
    timed = all(u.end is not None for u in utts)
    order = sorted(utts, key=lambda u: u.end or 0.0) if timed else list(utts)

    def available(utt: Utterance) -> list[str]:
        return [m for m in utt.available(maker.use_asr) if m in reads]

    modalities = sorted({m for u in order for m in available(u)})
    pools: dict[str, ThreadPoolExecutor] = {}

    def work(utt: Utterance, m: str) -> None:
        t = time.perf_counter()
        try:
            got = maker.extract(utt, m)
            sink.send(to_message(utt, got, call_id))
        except MMCLError as e:  # ExtractionError, a missing extra, a Kafka refusal: this part only
            with lock:
                report.failed.append((utt.utterance_id, m, str(e)))
            if log:
                log(f"{utt.utterance_id} {m}: skipped: {e}")
            return
        ms = (time.perf_counter() - t) * 1000
        with lock:
            report.sent[m] += 1
            report.extract_ms[m].append(ms)
        if log:
            log(f"{utt.utterance_id} {m}: {got.features.shape[0]}x{got.features.shape[1]} {got.extractor} "
                f"in {ms:.0f} ms")

    futures: list[Future[None]] = []
    try:
        # models load (and a missing extra fails, in one line) before the call's clock starts and anything is sent
        maker.setup(modalities)
        pools.update({m: ThreadPoolExecutor(1, thread_name_prefix=f"extract-{m}") for m in modalities})
        t0 = time.monotonic()
        for utt in order:
            if realtime and timed:
                due = t0 + (utt.end or 0.0) / speed
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
            elif stop.is_set():
                break
            futures.extend(pools[m].submit(work, utt, m) for m in available(utt))
        for f in futures:
            f.result()
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        report.undelivered = sink.close()
    return report
