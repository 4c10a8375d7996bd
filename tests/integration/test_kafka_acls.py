"""Apache Kafka with SASL/PLAIN authentication and ACLs (KRaft's StandardAuthorizer): the worker, its consumer (Faust,
aiokafka) and its producers (librdkafka) log in as a user of their own; a topic that user may not write refuses each
record at the broker, and the worker handles that record alone; a wrong password or a user with no rights to the
topics stops the worker at start with one line."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.kafka import ensure_topics, librdkafka_config
from streams.local import apache_kafka, simulate
from streams.local.embedded import Service, wait_started
from streams.settings import KafkaSettings, Settings

from .conftest import QUICK_TIMINGS, TEST_BROKER, Stack, wait_for
from .test_delivery import SPLIT, assert_counted_once, results_complete

ADMIN = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "admin",
         "sasl_password": "admin-secret"}
WORKER_USER = ("mmcl", "mmcl-secret")


@dataclass(frozen=True)
class Secured:
    """A broker that takes SASL/PLAIN logins only, and authorizes every request by ACL."""

    url: str

    def settings(self, user: str = "admin", password: str = "admin-secret") -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.url, **QUICK_TIMINGS, **{**ADMIN, "sasl_username": user,
                                                                              "sasl_password": password})


def sasl_broker_config(node: apache_kafka.Node) -> dict[str, str]:
    users = " ".join(f'user_{u}="{p}"' for u, p in (("admin", "admin-secret"), WORKER_USER, ("stranger", "x")))
    return {
        **TEST_BROKER,
        "listeners": f"SASL_PLAINTEXT://{node.url},CONTROLLER://127.0.0.1:{node.controller}",
        "advertised.listeners": f"SASL_PLAINTEXT://{node.url}",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN", "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config":
            f'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" '
            f'password="admin-secret" {users};',
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # the controller listener is plaintext on loopback: its principal is ANONYMOUS
        "super.users": "User:admin;User:ANONYMOUS",
    }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    from confluent_kafka.admin import AdminClient

    node = apache_kafka.new_node()
    log_dir = tmp_path_factory.mktemp("kafka-sasl")
    proc = apache_kafka.launch(log_dir, apache_kafka.fetch(), node, extra=sasl_broker_config(node))
    broker = Secured(node.url)

    def answers() -> bool:
        try:
            AdminClient({**librdkafka_config(broker.settings()), "log_level": 2}).list_topics(timeout=1)
            return True
        except Exception:
            return False

    svc = Service("kafka", proc.pid, node.client, node.url, str(log_dir / "broker.log"), proc, kind="apache")
    try:
        wait_started(proc, answers, "Apache Kafka with SASL", log_dir / "stdout.log", 90)
        yield broker
    finally:
        svc.stop(grace_s=20.0)


def grant(broker: Secured, prefix: str, user: str, deny_write: tuple[str, ...]) -> None:
    """`user` may do anything with the topics and groups under `prefix`, but not write the topics in deny_write."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    principal = f"User:{user}"
    acls = [AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, principal, "*", AclOperation.ALL,
                       AclPermissionType.ALLOW),
            AclBinding(ResourceType.GROUP, prefix, ResourcePatternType.PREFIXED, principal, "*", AclOperation.ALL,
                       AclPermissionType.ALLOW),
            *(AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, principal, "*", AclOperation.WRITE,
                         AclPermissionType.DENY) for name in deny_write)]
    admin = AdminClient(librdkafka_config(broker.settings()))
    for fut in admin.create_acls(acls).values():
        fut.result(15)


@pytest.fixture
def acl_stack(secured: Secured, redis_service: Service, checkpoint: Path, state_dir: Path) -> Iterator[Stack]:
    st = Stack(secured, redis_service, checkpoint, state_dir, f"acl{uuid.uuid4().hex[:6]}", security=ADMIN)
    ensure_topics(secured.settings(), st.topics)
    yield st
    for worker in st.workers:
        worker.stop()


def worker_login(user: str, password: str) -> dict[str, str]:
    return {"MMCL_KAFKA__SASL_USERNAME": user, "MMCL_KAFKA__SASL_PASSWORD": password}


@pytest.mark.timeout(240)
def test_a_topic_the_worker_may_not_write_refuses_records_one_by_one(secured: Secured, acl_stack: Stack) -> None:
    """The worker may read the features and write results, but not the joined topic nor the dead-letter topic: every
    joined record and the one dead letter are refused by the broker (TOPIC_AUTHORIZATION_FAILED) and counted, each
    alone; every result is still written and published, and the partitions go on."""
    st = acl_stack
    grant(secured, st.prefix, WORKER_USER[0], deny_write=(st.topics.joined, st.topics.dlq))
    worker = st.start_worker(**worker_login(*WORKER_USER))
    settings = Settings(kafka=secured.settings(*WORKER_USER), topics=st.topics)  # the producers log in as well
    spec = simulate.SimSpec(calls=4, rate=40, limit=30, jitter_ms=50, run_id=f"{st.prefix}-ok-", seed=5)
    stats = simulate.run(settings, SPLIT, spec)
    producer = st.producer()
    st.send(producer, "text", b"not json", f"{st.prefix}-bad".encode())
    assert producer.flush(30) == 0
    wait_for(lambda: results_complete(st, stats), 90, "every result in Redis")
    assert_counted_once(st, stats)
    wait_for(lambda: worker.metric("mmcl_records_refused_total", output="joined", why="unauthorized") == 30, 30,
             "every joined record refused by the broker, and counted")
    wait_for(lambda: worker.metric("mmcl_records_refused_total", output="dead_letters", why="unauthorized") == 1, 30,
             "the dead letter refused, and counted")
    assert len(st.consume_all(st.topics.predictions, 30, timeout=30)) == 30
    assert st.consume_all(st.topics.joined, None, timeout=5) == []
    assert "refused by the broker" in worker.log.read_text()  # the dead letter's only trace, with its source offset
    assert worker.status().get("ready") is True
    wait_for(lambda: st.committed_to_the_end(f"{st.prefix}-workers"), 30, "offsets committed past every record")


def start_and_fail(st: Stack, **env: str) -> tuple[int, list[str]]:
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=st.env(**env), capture_output=True,
                          text=True, timeout=120, check=False)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and not line.startswith("mmcl: broker ")]
    return proc.returncode, lines


@pytest.mark.timeout(300)
def test_a_wrong_password_or_a_user_without_rights_stops_the_worker_with_one_line(secured: Secured,
                                                                                  acl_stack: Stack) -> None:
    code, lines = start_and_fail(acl_stack, **worker_login("mmcl", "wrong"))
    assert code != 0 and len(lines) == 1, lines
    assert "authentication" in lines[0].lower() and secured.url in lines[0], lines
    code, lines = start_and_fail(acl_stack, **worker_login("stranger", "x"))  # logs in; no ACL names it
    assert code != 0 and len(lines) == 1, lines
    assert "not authorized" in lines[0].lower() and acl_stack.topics.feature("text") in lines[0], lines
