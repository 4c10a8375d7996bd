"""The compose stack's broker configuration, proven without a container engine: deploy/compose.yaml's KAFKA_*
variables are turned into a server.properties the way the apache/kafka image does, that broker is started from the
same jars (4.1.0, the image's version) on loopback, and the service runs a round trip on it with the compose file's
own MMCL_* client settings. The Kubernetes manifests point at an existing cluster and set no broker settings."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from streams.kafka import ensure_topics
from streams.local import apache_kafka, simulate
from streams.local.embedded import Service, free_port
from streams.settings import KafkaSettings, Settings
from tests.deploy.files import compose

from .conftest import Stack, wait_for
from .test_delivery import SPLIT, assert_counted_once, results_complete

# variables of the image's start script that are JVM options, not broker properties
JVM_VARIABLES = {"KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_LOG4J_OPTS",
                 "KAFKA_GC_LOG_OPTS", "KAFKA_JMX_OPTS"}


def expand(value: object) -> str:
    """A compose value with ${VAR:-default} / ${VAR:?error} / ${VAR} expanded as an empty .env would."""
    def default(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) == ":-" else ""

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", default, str(value))


def image_property(variable: str) -> str:
    """The apache/kafka image's rule: KAFKA_ dropped, lower case, '___' -> '-', '__' -> '_', '_' -> '.'."""
    key = variable.removeprefix("KAFKA_").lower()
    return key.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def compose_properties(env: Mapping[str, object], ports: Mapping[int, int], log_dir: Path) -> dict[str, str]:
    """The broker properties of the compose kafka service, moved onto loopback ports and a local log folder."""
    props = {}
    for name, raw in env.items():
        if not name.startswith("KAFKA_") or name in JVM_VARIABLES:
            continue
        value = expand(raw)
        for theirs, ours in ports.items():
            value = re.sub(rf":{theirs}\b", f":{ours}", value)
        value = value.replace("//:", "//127.0.0.1:").replace("//kafka:", "//127.0.0.1:").replace("@kafka:", "@127.0.0.1:")
        props[image_property(name)] = value
    props["log.dirs"] = str(log_dir / "data")
    return props


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, str]]]:
    env = compose()["services"]["kafka"]["environment"]
    ports = {9092: free_port(), 9093: free_port(), 9094: free_port()}
    log_dir = tmp_path_factory.mktemp("compose-kafka")
    props = compose_properties(env, ports, log_dir)
    libs = apache_kafka.fetch()
    proc = apache_kafka.launch_config(log_dir, libs, "".join(f"{k}={v}\n" for k, v in props.items()),
                                      cluster=expand(env["CLUSTER_ID"]))
    # the EXTERNAL listener: where producers on the compose host connect
    broker = apache_kafka.wait_ready(proc, log_dir, apache_kafka.Node(1, ports[9094], ports[9093]), 90)
    yield broker, props
    broker.stop(grace_s=20.0)


def test_the_compose_broker_settings_are_what_the_broker_runs_with(compose_broker: tuple[Service, dict[str, str]]) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    broker, props = compose_broker
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "1"
    admin = AdminClient({"bootstrap.servers": broker.url})
    node = ConfigResource(ConfigResource.Type.BROKER, "1")
    applied = {k: v.value for k, v in admin.describe_configs([node])[node].result(15).items()}
    for key in ("message.max.bytes", "auto.create.topics.enable", "offsets.topic.replication.factor",
                "group.initial.rebalance.delay.ms", "inter.broker.listener.name"):
        assert applied[key] == props[key], key
    assert applied["auto.create.topics.enable"] == "false"  # the compose topics service must make them


@pytest.mark.timeout(240)  # a JVM broker's start, and a group join with the compose file's timings
def test_a_round_trip_on_the_compose_broker_with_the_compose_client_settings(
        compose_broker: tuple[Service, dict[str, str]], redis_service: Service, checkpoint: Path, state_dir: Path) -> None:
    broker, _ = compose_broker
    mmcl_env = {k: expand(v) for k, v in compose()["x-mmcl"]["environment"].items() if k.startswith("MMCL_KAFKA__")
                and k != "MMCL_KAFKA__BOOTSTRAP_SERVERS"}
    partitions = int(expand(compose()["x-mmcl"]["environment"]["MMCL_TOPICS__PARTITIONS"]))
    st = Stack(broker, redis_service, checkpoint, state_dir, f"cp{uuid.uuid4().hex[:6]}")
    topics = st.topics.model_copy(update={"partitions": partitions})
    kafka = KafkaSettings(bootstrap_servers=broker.url)
    ensure_topics(kafka, topics)  # what the compose topics service runs (`mmcl topics create`)
    try:
        worker = st.start_worker(**mmcl_env, MMCL_TOPICS__PARTITIONS=str(partitions))
        spec = simulate.SimSpec(calls=6, rate=60, limit=60, jitter_ms=50, run_id=f"{st.prefix}-", seed=8)
        stats = simulate.run(Settings(kafka=kafka, topics=topics), SPLIT, spec)
        assert stats.errors == 0 and stats.utterances == 60
        wait_for(lambda: results_complete(st, stats), 90, "every result in Redis")
        assert_counted_once(st, stats)
        assert worker.metric("mmcl_dead_letters_total") == 0
    finally:
        for w in st.workers:
            w.stop()
