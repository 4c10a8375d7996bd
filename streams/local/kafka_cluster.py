"""A multi-node Apache Kafka cluster on loopback, run from the same jars: the failover tests' brokers.

Every node is a broker and a controller (KRaft, a static quorum of all of them) with its own persistent log folder
under one root. Nodes keep their ports for the cluster's life, so one killed with SIGKILL comes back under the same
address, with the same log, as a real broker restarted by its supervisor does.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from streams.local import apache_kafka
from streams.local.apache_kafka import ApacheKafkaError, Node


class Cluster:
    """`size` KRaft nodes under `root`: started, killed, restarted and stopped by node id."""

    def __init__(self, root: Path, size: int = 3, libs: Path | None = None,
                 extra: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.libs = libs or apache_kafka.fetch()
        self.extra = dict(extra or {})
        self.nodes = tuple(apache_kafka.new_node(i) for i in range(1, size + 1))
        id_file = root / "cluster.id"  # every node is formatted with the one id, kept for restarts
        root.mkdir(parents=True, exist_ok=True)
        if not id_file.exists():
            id_file.write_text(apache_kafka.cluster_id())
        self.cluster_id = id_file.read_text().strip()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Every node's client listener: a bootstrap list that survives any one node being down."""
        return ",".join(node.url for node in self.nodes)

    def node(self, node_id: int) -> Node:
        """The node with that id."""
        return next(node for node in self.nodes if node.node_id == node_id)

    def log_dir(self, node_id: int) -> Path:
        """A node's log folder."""
        return self.root / f"node-{node_id}"

    def running(self) -> list[int]:
        """The ids of the nodes whose process runs."""
        return [i for i, proc in self._procs.items() if proc.poll() is None]

    def start(self, node_ids: list[int] | None = None, deadline_s: float = 90.0) -> None:
        """Start these nodes (default: all) together, then wait until each answers: a quorum needs a majority up
        before any node serves, so they cannot be started one after the other."""
        ids = node_ids or [node.node_id for node in self.nodes]
        if set(ids) & set(self.running()):
            raise ApacheKafkaError(f"nodes {sorted(set(ids) & set(self.running()))} already run")
        for i in ids:
            self._procs[i] = apache_kafka.launch(self.log_dir(i), self.libs, self.node(i), self.nodes,
                                                 self.cluster_id, self.extra)
        try:
            for i in ids:
                apache_kafka.wait_ready(self._procs[i], self.log_dir(i), self.node(i), deadline_s)
        except Exception:
            self.kill(*ids)
            raise

    def kill(self, *node_ids: int) -> None:
        """SIGKILL these nodes, as a crash or an OOM kill would: no controlled shutdown, nothing flushed."""
        for i in node_ids:
            proc = self._procs.get(i)
            if proc is not None and proc.poll() is None:
                proc.kill()
        for i in node_ids:
            if i in self._procs:
                self._procs[i].wait(30)

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop every running node with a controlled shutdown, all at once (a node stopped last, alone, would
        wait for a quorum that is gone), and SIGKILL what still runs after the grace time."""
        procs = [self._procs[i] for i in self.running()]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        end = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, end - time.monotonic()))
        self.kill(*self.running())

    def leader(self, topic: str, partition: int, timeout_s: float = 10.0) -> int:
        """The node that leads a partition now (-1: none does, or the node asked does not know the partition yet),
        as the running nodes report it."""
        from confluent_kafka.admin import AdminClient

        running = [self.node(i).url for i in self.running()]
        if not running:
            raise ApacheKafkaError("no node of the cluster runs")
        meta = AdminClient({"bootstrap.servers": ",".join(running), "log_level": 2}).list_topics(topic, timeout=timeout_s)
        found = meta.topics.get(topic)
        known = found.partitions.get(partition) if found is not None else None
        return -1 if known is None else int(known.leader)
