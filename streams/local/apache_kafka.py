"""Apache Kafka from Maven Central, run from its jars: a pinned broker for tests, benchmarks and local runs.

`fetch` resolves the broker's jars with Maven (a pinned pom) into a cache folder outside the repository, once;
`start` writes a KRaft server.properties (broker and controller in one process) for a log folder, formats it the
first time, starts the JVM on free loopback ports and waits until the broker answers a metadata request; `stop`
ends it (SIGTERM, then SIGKILL after a grace time). The log folder is real and persistent: a broker started again
on the same folder keeps its topics and offsets.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmcl.errors import MMCLError
from streams.local.embedded import Service, free_port, port_open, runs, stop_pid, wait_started

KAFKA_VERSION = "4.1.0"  # the compose stack's apache/kafka image
POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mmcl-stream</groupId><artifactId>apache-kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
"""
# the broker's own log: warnings and up, to a file in its folder (log4j 1 through reload4j)
LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={path}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


class ApacheKafkaError(MMCLError):
    """Apache Kafka's jars could not be fetched, or its broker could not be started."""


def default_cache() -> Path:
    """Where the jars go: $KAFKA_JARS_DIR, else ~/.cache/mmcl-stream/kafka-<version>."""
    given = os.environ.get("KAFKA_JARS_DIR")
    return Path(given) if given else Path.home() / ".cache" / "mmcl-stream" / f"kafka-{KAFKA_VERSION}"


def fetch(cache: Path | None = None, timeout_s: float = 900.0) -> Path:
    """The folder of the broker's jars, resolved from Maven Central the first time. -> that folder."""
    cache = cache or default_cache()
    libs = cache / "libs"
    done = cache / "complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ApacheKafkaError("Maven (mvn) is not installed: apt-get install maven, or see scripts/kafka.sh")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "pom.xml").write_text(POM)
    shutil.rmtree(libs, ignore_errors=True)
    proc = subprocess.run([mvn, "-q", "-B", "-f", str(cache / "pom.xml"), "dependency:copy-dependencies",  # noqa: S603
                           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise ApacheKafkaError(f"could not fetch Apache Kafka {KAFKA_VERSION} from Maven Central: {' | '.join(tail)}")
    done.write_text(KAFKA_VERSION + "\n")
    return libs


@dataclass(frozen=True)
class Node:
    """One KRaft node (broker and controller in one process): its id and its two loopback listeners."""

    node_id: int
    client: int
    controller: int

    @property
    def url(self) -> str:
        """Its client listener, host:port."""
        return f"127.0.0.1:{self.client}"


def new_node(node_id: int = 1, client: int | None = None) -> Node:
    """A node on free loopback ports (`client` given: that client port)."""
    return Node(node_id, client or free_port(), free_port())


def server_properties(log_dir: Path, node: Node, voters: Sequence[Node] = (),
                      extra: Mapping[str, str] | None = None) -> str:
    """A KRaft broker + controller on loopback, its log in `log_dir`, one of `voters` (default: alone). Internal
    topics get as many replicas as there are nodes, up to 3, and need two in sync when there are three."""
    voters = voters or (node,)
    replicas, in_sync = str(min(3, len(voters))), str(min(2, len(voters)))
    props = {
        "process.roles": "broker,controller", "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(f"{v.node_id}@127.0.0.1:{v.controller}" for v in voters),
        "listeners": f"PLAINTEXT://{node.url},CONTROLLER://127.0.0.1:{node.controller}",
        "advertised.listeners": f"PLAINTEXT://{node.url}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir / "data"),
        "offsets.topic.replication.factor": replicas, "transaction.state.log.replication.factor": replicas,
        "share.coordinator.state.topic.replication.factor": replicas, "default.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync, "min.insync.replicas": in_sync,
        "group.initial.rebalance.delay.ms": "0",  # the default 3 s only delays a test's first consumer group
        **(extra or {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding. Never one that starts with '-',
    which the storage tool's argument parser would read as an option."""
    while True:
        made = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not made.startswith("-"):
            return made


def _java(libs: Path, log_dir: Path, *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise ApacheKafkaError("Java is not installed: apt-get install openjdk-17-jre-headless, or see scripts/kafka.sh")
    return [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", f"-Dlog4j.configuration=file:{log_dir / 'log4j.properties'}",
            "-cp", f"{libs}/*", *args]


def launch(log_dir: Path, libs: Path, node: Node, voters: Sequence[Node] = (), cluster: str | None = None,
           extra: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start one node's JVM on `log_dir` (formatted with `cluster` as its id the first time) without waiting."""
    return launch_config(log_dir, libs, server_properties(log_dir, node, voters, extra), cluster)


def launch_config(log_dir: Path, libs: Path, config_text: str, cluster: str | None = None) -> subprocess.Popen[bytes]:
    """Start a broker from a server.properties text, its log folder formatted the first time, without waiting."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "server.properties"
    config.write_text(config_text)
    (log_dir / "log4j.properties").write_text(LOG4J.format(path=log_dir / "broker.log"))
    formatted = any((Path(d) / "meta.properties").exists() for d in _log_dirs(config_text))
    if not formatted:
        fmt = subprocess.run(_java(libs, log_dir, "kafka.tools.StorageTool", "format", "-t",  # noqa: S603
                                   cluster or cluster_id(), "-c", str(config)),
                             capture_output=True, text=True, timeout=120, check=False)
        if fmt.returncode != 0:
            raise ApacheKafkaError(f"could not format {log_dir}: {(fmt.stdout + fmt.stderr).strip()[-300:]}")
    with (log_dir / "stdout.log").open("ab") as out:
        # its own session: Ctrl-C in the terminal that started it must not kill the broker
        proc = subprocess.Popen(_java(libs, log_dir, "kafka.Kafka", str(config)), stdout=out,  # noqa: S603
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (log_dir / "broker.pid").write_text(f"{proc.pid}\n")
    return proc


def _log_dirs(config_text: str) -> list[str]:
    for line in config_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("log.dirs", "log.dir"):
            return [d.strip() for d in value.split(",") if d.strip()]
    return []


def answers(url: str) -> bool:
    """Whether a broker at `url` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    host, _, port = url.rpartition(":")
    if not port_open(host, int(port), 0.2):
        return False
    try:
        AdminClient({"bootstrap.servers": url, "socket.timeout.ms": 1000, "log_level": 2}).list_topics(timeout=1)
        return True
    except Exception:
        return False


def wait_ready(proc: subprocess.Popen[bytes], log_dir: Path, node: Node, deadline_s: float) -> Service:
    """Wait until the node started by `launch` answers. -> it, as a Service."""
    wait_started(proc, lambda: answers(node.url), f"Apache Kafka {KAFKA_VERSION} (node {node.node_id})",
                 log_dir / "stdout.log", deadline_s)
    return Service("kafka", proc.pid, node.client, node.url, str(log_dir / "broker.log"), proc, kind="apache")


def start(log_dir: Path, libs: Path | None = None, node: Node | None = None,
          extra: Mapping[str, str] | None = None, deadline_s: float = 60.0) -> Service:
    """Start a single-node broker on `log_dir` (formatted the first time; reused after) and wait until it answers."""
    node = node or new_node()
    proc = launch(log_dir, libs or fetch(), node, extra=extra)
    return wait_ready(proc, log_dir, node, deadline_s)


@dataclass(frozen=True)
class GroupPartition:
    """One row of `kafka-consumer-groups --describe`: a partition's committed offset, end and lag."""

    topic: str
    partition: int
    current: int | None  # the group's committed offset ('-' when none)
    end: int
    lag: int | None


def describe_group(bootstrap: str, group: str, libs: Path | None = None, timeout_s: float = 120.0) -> list[GroupPartition]:
    """Kafka's own `kafka-consumer-groups --describe --group G`, run from the same jars, parsed."""
    libs = libs or fetch()
    with tempfile.TemporaryDirectory() as scratch:
        tool_dir = Path(scratch)
        (tool_dir / "log4j.properties").write_text("log4j.rootLogger=ERROR\n")
        proc = subprocess.run(_java(libs, tool_dir, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",  # noqa: S603
                                    "--bootstrap-server", bootstrap, "--describe", "--group", group),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise ApacheKafkaError(f"kafka-consumer-groups failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
    rows = []
    for line in proc.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group and cols[2].isdigit():
            rows.append(GroupPartition(cols[1], int(cols[2]), None if cols[3] == "-" else int(cols[3]), int(cols[4]),
                                       None if cols[5] == "-" else int(cols[5])))
    return rows


def stop(log_dir: Path, grace_s: float = 20.0) -> bool:
    """Stop the broker started on `log_dir` (a controlled shutdown first). -> whether one was running."""
    pid_file = log_dir / "broker.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    if not runs(pid, str(log_dir / "server.properties").encode()):  # gone, or the pid now belongs to another program
        return False
    stop_pid(pid, grace_s)
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m streams.local.apache_kafka fetch | start DIR | stop DIR` (what scripts/kafka.sh runs)."""
    parser = argparse.ArgumentParser(prog="kafka.sh", description=f"Apache Kafka {KAFKA_VERSION} from Maven Central")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="resolve the broker's jars into the cache (once)")
    start_parser = commands.add_parser("start", help="start a broker on a log folder; print its bootstrap address")
    start_parser.add_argument("dir", type=Path)
    start_parser.add_argument("--port", type=int, help="the client port (default: a free one)")
    stop_parser = commands.add_parser("stop", help="stop the broker started on a log folder")
    stop_parser.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
        elif args.command == "start":
            print(start(args.dir.resolve(), node=new_node(client=args.port)).url)
        else:
            print("stopped" if stop(args.dir.resolve()) else "nothing was running")
    except MMCLError as e:
        print(f"kafka.sh: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
