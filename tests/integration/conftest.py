"""Integration fixtures: Apache Kafka (from Maven Central, run from its jars) and a real Redis, started once per
session; workers are real `mmcl worker` processes. Each test module gets its own topic prefix and consumer group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
import redis

from mmcl.checkpoint import FeatureProfile, save_checkpoint
from mmcl.config import ModelConfig
from mmcl.model import build_model
from streams.kafka import ensure_topics, librdkafka_config, producer_config
from streams.local import apache_kafka
from streams.local.embedded import Service, free_port, start_redis
from streams.messages import EncodedArray, FeatureMessage
from streams.settings import KafkaSettings, TopicSettings
from streams.wire import Dtype, Features, WireFormat, encode_features

DIMS = {"text": 24, "audio": 5, "visual": 8}
SEQ_LEN = 12
# the workers' model device: cpu here and in CI; benchmarks/cuda_check.sh sets cuda on a GPU machine
DEVICE = os.environ.get("MMCL_TEST_DEVICE", "cpu")
# These tests hold the worker's scores to the model's own to 1e-4: fp32 on both sides. The default precisions (int8
# on a CPU, bf16 on CUDA) differ from fp32, and with the batch, by less than 0.01 (unit tests); the e2e tests and the
# demo run them in a worker.
PRECISION = "fp32"
# Client timings that keep a test's group joins and failovers short; the production defaults are tested on their own
# (test_apache_kafka). A session timeout under the broker's default minimum of 6 s needs TEST_BROKER's setting.
QUICK_TIMINGS: dict[str, float | int] = {"session_timeout_s": 3.0, "heartbeat_interval_s": 0.3, "fetch_max_wait_ms": 50}
QUICK_ENV = {f"MMCL_KAFKA__{name.upper()}": str(value) for name, value in QUICK_TIMINGS.items()}
TEST_BROKER = {"group.min.session.timeout.ms": "1000",
               # the log cleaner and the retention check run every 15 s and 5 min by default: a test would wait that long
               "log.cleaner.backoff.ms": "200", "log.retention.check.interval.ms": "200"}


def quick_kafka(bootstrap_servers: str) -> KafkaSettings:
    """Client settings for the suite's broker: QUICK_TIMINGS, everything else the defaults."""
    return KafkaSettings(bootstrap_servers=bootstrap_servers, **QUICK_TIMINGS)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmcl-state")


@pytest.fixture(scope="session")
def kafka(state_dir: Path) -> Iterator[Service]:
    """Apache Kafka, one KRaft node; the jars are fetched the first time (scripts/test.sh does it beforehand)."""
    svc = apache_kafka.start(state_dir / "apache-kafka", extra=TEST_BROKER)
    yield svc
    svc.stop(grace_s=20.0)


@pytest.fixture(scope="session")
def redis_service(state_dir: Path) -> Iterator[Service]:
    svc = start_redis(state_dir)
    yield svc
    svc.stop()


def make_checkpoint(path: Path, seed: int = 0, text_dim: int = DIMS["text"],
                    modalities: tuple[str, ...] = ("text", "audio", "vision")) -> Path:
    """A small MMCL with random weights: the service does not care what the model learned."""
    import torch

    torch.manual_seed(seed)
    cfg = ModelConfig(input_dims=(text_dim, DIMS["audio"], DIMS["visual"]), seq_len=SEQ_LEN, d_model=16,
                      num_heads=2, ff_dim=32, use_modalities=modalities)
    return save_checkpoint(path, build_model(cfg).eval(), cfg, FeatureProfile(cfg.input_dims), {"seed": seed})


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "ckpt")


class Endpoint(Protocol):
    """A broker or a cluster: what clients need of it."""

    @property
    def url(self) -> str: ...  # a bootstrap list


@dataclass
class Stack:
    """One test module's view: its own topics and group on the shared broker and Redis."""

    kafka: Endpoint
    redis_svc: Service
    checkpoint: Path
    state_dir: Path
    prefix: str
    replication: int = 1
    # KafkaSettings fields (SASL, TLS) for the test's own clients and, unless a test says otherwise, its workers
    security: dict[str, str] = field(default_factory=dict)
    redis: redis.Redis = field(init=False)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_svc.url, decode_responses=True)

    @property
    def topics(self) -> TopicSettings:
        return TopicSettings(prefix=self.prefix, partitions=4, replication=self.replication)

    def kafka_settings(self) -> KafkaSettings:
        """The settings of the test's own clients: quick timings, and the stack's security."""
        return KafkaSettings(bootstrap_servers=self.kafka.url, **QUICK_TIMINGS, **self.security)  # type: ignore[arg-type]  # validated from strings

    def client(self, **conf: Any) -> dict[str, Any]:
        """A librdkafka configuration for the test's own clients."""
        return {**librdkafka_config(self.kafka_settings()), **conf}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
        env.update({
            "MMCL_KAFKA__BOOTSTRAP_SERVERS": self.kafka.url, "MMCL_REDIS__URL": self.redis_svc.url,
            "MMCL_TOPICS__PREFIX": self.prefix, "MMCL_TOPICS__REPLICATION": str(self.replication),
            "MMCL_KAFKA__GROUP_ID": f"{self.prefix}-workers",
            "MMCL_MODEL__CHECKPOINT": str(self.checkpoint), "MMCL_STATE_DIR": str(self.state_dir),
            **QUICK_ENV, "MMCL_JOIN__TIMEOUT_S": "1.0",
            **{f"MMCL_KAFKA__{name.upper()}": value for name, value in self.security.items()},
            "MMCL_LOG_LEVEL": "info",
            "MMCL_MODEL__DEVICE": DEVICE, "MMCL_MODEL__PRECISION": PRECISION,
            "MMCL_REGISTRY__PATH": str(self.state_dir / f"registry-{self.prefix}"),
        })
        env.update(extra)
        return env

    def start_worker(self, **extra: str) -> Worker:
        port = free_port()
        log = self.state_dir / f"worker-{self.prefix}-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                    env=self.env(MMCL_METRICS__PORT=str(port), **extra), stdout=out, stderr=subprocess.STDOUT)
        w = Worker(proc, port, log)
        self.workers.append(w)
        w.wait_ready()
        return w

    def producer(self, max_record_bytes: int | None = None) -> Any:
        from confluent_kafka import Producer

        conf = producer_config(self.kafka_settings())
        if max_record_bytes is not None:  # librdkafka refuses records over 1,000,000 bytes by default
            conf["message.max.bytes"] = max_record_bytes
        return Producer(conf)

    def send(self, producer: Any, modality: str, value: bytes, key: bytes) -> None:
        producer.produce(self.topics.feature(modality), value, key=key)

    def consume_all(self, topic: str, expect: int | None, timeout: float = 30.0, idle_s: float = 1.5) -> list[Any]:
        """Read a topic from the start until `expect` messages arrived (None: until it stays idle), or the timeout."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer(self.client(**{"group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                                    "enable.auto.commit": False, "fetch.wait.max.ms": 20, "session.timeout.ms": 3000,
                                    "heartbeat.interval.ms": 300}))
        # assigned, not subscribed: no group join to wait for
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(self.topics.partitions)])
        out: list[Any] = []
        end = time.monotonic() + timeout
        try:
            last = time.monotonic()
            while (expect is None or len(out) < expect) and time.monotonic() < end:
                msg = c.poll(0.2)
                if msg is not None and msg.error() is None:
                    out.append(msg)
                    last = time.monotonic()
                elif expect is None and out and time.monotonic() - last > idle_s:
                    break
        finally:
            c.close()
        return out

    def dead_letters(self, key_prefix: str, timeout: float = 20.0) -> list[Any]:
        """The dead-letter topic's records whose key starts with key_prefix (a test's calls)."""
        return [m for m in self.consume_all(self.topics.dlq, None, timeout=timeout)
                if (m.key() or b"").decode().startswith(key_prefix)]

    def committed(self, group: str, topic: str, partition: int) -> int:
        """The group's committed offset of one partition (-1001 when none)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(self.client(**{"group.id": group, "enable.auto.commit": False}))
        try:
            (tp,) = c.committed([TopicPartition(topic, partition)], timeout=10)
            return int(tp.offset)
        finally:
            c.close()

    def set_topic_config(self, topic: str, key: str, value: str) -> None:
        """Change one config of a topic and wait until the broker applies it (the controller acknowledges first)."""
        from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

        change = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
        admin = AdminClient(self.client())  # must outlive the futures: destruction cancels them
        admin.incremental_alter_configs([change])[change].result(15)
        described = ConfigResource(ConfigResource.Type.TOPIC, topic)
        wait_for(lambda: admin.describe_configs([described])[described].result(15)[key].value == value, 15,
                 f"the broker applying {key}={value} to {topic}")

    def committed_to_the_end(self, group: str) -> bool:
        """Whether `group` has committed every feature partition up to its end (a partition that received nothing
        has nothing committed)."""
        from confluent_kafka import Consumer, TopicPartition

        tps = [TopicPartition(t, p) for t in self.topics.features for p in range(self.topics.partitions)]
        probe = Consumer(self.client(**{"group.id": group, "enable.auto.commit": False}))
        try:
            for topic in self.topics.features:  # a new client knows no partition until it has the topic's metadata
                probe.list_topics(topic, timeout=10)
            ends = {(tp.topic, tp.partition): probe.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
            return all(tp.offset == ends[(tp.topic, tp.partition)] or (ends[(tp.topic, tp.partition)] == 0 and tp.offset < 0)
                       for tp in probe.committed(tps, timeout=10))
        finally:
            probe.close()

    def end_offset(self, topic: str, partition: int) -> int:
        return len([m for m in self.consume_all(topic, None, timeout=10) if m.partition() == partition])


def partition_of(key: str, partitions: int) -> int:
    """The partition Faust (aiokafka) and our murmur2 producers put a key on."""
    from aiokafka.partitioner import DefaultPartitioner

    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), None))


def keys_on(partition: int, partitions: int, prefix: str, count: int) -> list[str]:
    """`count` call ids starting with prefix that all hash to `partition`."""
    out = []
    for i in range(100_000):
        key = f"{prefix}{i}"
        if partition_of(key, partitions) == partition:
            out.append(key)
            if len(out) == count:
                return out
    raise AssertionError("no such keys")


def covering_run_id(prefix: str, calls: int, partitions: int) -> str:
    """A simulator run id whose first `calls` concurrent calls cover every partition (random call ids left a worker
    without partitions to serve in about one run in eight, failing a test that counts on each one working)."""
    for i in range(10_000):
        run_id = f"{prefix}{i}-"
        if len({partition_of(f"{run_id}call-{k:05d}", partitions) for k in range(1, calls + 1)}) == partitions:
            return run_id
    raise AssertionError("no covering run id")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout, "the worker to be ready", every=0.2)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.get("/metrics")[1]):
            for smp in fam.samples:
                if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                    total += smp.value
        return total

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/healthz")[1] or "{}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(autouse=True)
def _workers_stop_with_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A worker a test starts on a module's stack stops when that test ends, not with the module."""
    stacks = [request.getfixturevalue(name) for name in request.fixturenames if name.endswith("stack")]
    before = [(st, len(st.workers)) for st in stacks if isinstance(st, Stack)]
    yield
    for st, n in before:
        for worker in st.workers[n:]:
            worker.stop()
        del st.workers[n:]


@pytest.fixture(scope="module")
def stack(kafka: Service, redis_service: Service, checkpoint: Path, state_dir: Path) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    st = Stack(kafka, redis_service, checkpoint, state_dir, prefix)
    ensure_topics(quick_kafka(kafka.url), st.topics)
    yield st
    for w in st.workers:
        w.stop()


def features(modality: str, seed: int, t: int = 6, dim: int | None = None, fill: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.standard_normal((t, dim or DIMS[modality])).astype(np.float32)
    if fill is not None:
        arr[0, 0] = fill
    return arr


def part(utt: str, call: str | None, modality: str, speaker: str = "customer", seed: int = 0,
         produced_at: int | None = None, wire: WireFormat = "v1", dtype: Dtype = "float16", **kw: Any) -> bytes:
    """A feature message: version 1 JSON by default, or binary (`wire="v2"`, in `dtype`)."""
    arr = kw.pop("array", None)
    if arr is None:
        arr = features(modality, seed)
    if wire == "v2":
        return encode_features(Features(utt, modality, arr, int(time.time() * 1000) if produced_at is None else produced_at,
                                        call_id=call, speaker=speaker, **kw), "v2", dtype)
    msg = FeatureMessage(utterance_id=utt, call_id=call, speaker=speaker, modality=modality,
                         features=EncodedArray.from_numpy(arr),
                         produced_at=int(time.time() * 1000) if produced_at is None else produced_at, **kw)
    return msg.model_dump_json(exclude_none=True).encode()
