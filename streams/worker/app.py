"""The Faust app: one agent reads the three feature topics as raw bytes and hands each message to the Pipeline.

Two things Faust 0.15.3 does not let us configure are set here, in one place:
- the worker consumer's fetch wait (hard-coded 1500 ms: on a broker that does not answer a fetch early when data
  arrives, every hop would cost up to 1.5 s);
- the partition assignor: without tables Faust uses plain round-robin over all topic-partitions, which can give
  `text` partition 1 and `audio` partition 1 to different workers. Faust's own assignor keeps co-partitioned topics
  together, which the join needs as soon as there is more than one worker.

And one default is wrong for a join: `stream_wait_empty` makes Faust wait, at every rebalance and at shutdown, until
every message it handed out is acknowledged. A part waiting for its utterance's other parts can only be acknowledged
by being decided, and with the flow stopped its partners never come: every rebalance and every restart dead-lettered
good utterances as incomplete, and a write being retried kept a SIGTERM'd worker alive for minutes. The pipeline
does the waiting itself instead, bounded: writes in flight finish, pending parts are left for the next reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka import ssl_context
from streams.settings import Settings
from streams.worker.pipeline import Pipeline
from streams.worker.progress import FetchSnapshot
from streams.worker.records import Source

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        conf = self.app.conf
        consumer._fetch_max_wait_ms = conf.mmcl_fetch_max_wait_ms  # read by AIOKafkaConsumer.start()
        self._assignor = self.app.assignor
        consumer._partition_assignment_strategy = [self.app.assignor]
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    """The Faust app, with the consumer settings Faust does not expose and shutdown hooks."""

    on_stop_hooks: list[Callable[[], None]]

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        # First thing at shutdown, before Faust stops the flow: from here on nothing pending may be decided.
        """Run the stop hooks first: nothing pending may be decided once the flow stops."""
        for hook in getattr(self, "on_stop_hooks", ()):
            hook()
        await super().on_stop()


def build_app(settings: Settings) -> StreamApp:
    """The worker's Faust app for the settings (no topic declaration, no web server, no tables)."""
    k = settings.kafka
    brokers = ";".join(f"kafka://{b.strip()}" for b in k.bootstrap_servers.split(","))
    credentials: Any = None
    if k.sasl_mechanism:
        credentials = faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password.get_secret_value() if k.sasl_password else "",
            mechanism=k.sasl_mechanism, ssl_context=ssl_context(k))
    elif k.security_protocol == "SSL":
        credentials = ssl_context(k)
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder of its datadir
    app = StreamApp(
        k.group_id,
        broker=brokers,
        broker_credentials=credentials,
        processing_guarantee="at_least_once",  # the embedded broker has no transactions: exactly-once dies at start
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=k.heartbeat_interval_s,
        broker_commit_interval=k.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,  # see the module docstring
        table_standby_replicas=0,
        stream_recovery_delay=0,
        topic_partitions=settings.topics.partitions,
        topic_allow_declare=False,  # `mmcl up` / ensure_topics create them with the right counts
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(settings.state_dir / "faust" / k.group_id),  # Faust's default: ./<group>-data, wherever it was started
    )
    app.conf.mmcl_fetch_max_wait_ms = k.fetch_max_wait_ms
    return app


def fetch_state(app: StreamApp) -> Callable[[Iterable[tuple[str, int]]], dict[tuple[str, int], FetchSnapshot]]:
    """The consumer's position, high watermark and last fetch answer of partitions, read from aiokafka's partition
    state (Faust offers the high watermark alone, and nothing tells whether a fetch answered recently), and whether
    the consumer is asking for them at all. Partitions with no position or no fetch answer yet are left out, and all
    of them while the state cannot be read."""
    from aiokafka.structs import TopicPartition

    def snapshots(tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], FetchSnapshot]:
        try:  # once per call: the join's deadline loop asks every few tens of milliseconds
            consumer = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]  # the aiokafka driver's, not in faust's ConsumerT
            assignment = consumer._subscription.subscription.assignment
            cluster = consumer._client.cluster
            # aiokafka sends no fetch to a broker while records it fetched from there wait to be taken, and the
            # consumer's thread changes this table: a copy, or no snapshot at all this time
            waiting = set(consumer._fetcher._records)
            busy = {cluster.leader_for_partition(tp) for tp in waiting} - {None, -1}
        except Exception:  # not started, stopping, between assignments, or the table changed while copied
            return {}
        now_ms, out = int(time.time() * 1000), {}  # aiokafka stamps fetch answers with time.time()
        for topic, partition in tps:
            tp = TopicPartition(topic, partition)
            state = assignment.state_value(tp) if assignment is not None else None
            if state is not None and state.has_valid_position and state.highwater is not None \
                    and state.timestamp is not None:
                held = state.paused or tp in waiting or cluster.leader_for_partition(tp) in busy
                out[(topic, partition)] = FetchSnapshot(int(state.position), int(state.highwater), int(state.timestamp),
                                                        max(0, now_ms - int(state.timestamp)), bool(held))
        return out

    return snapshots


def attach_pipeline(app: StreamApp, settings: Settings, pipeline: Pipeline,
                    on_shutdown: Callable[[], Awaitable[None]]) -> None:
    """Wire the pipeline to the app: the agent, rebalances, and shutdown (`on_shutdown` runs once the flow has
    stopped and before offsets are committed for the last time)."""
    channel = app.topic(*settings.topics.features, key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw", allow_empty=True)

    @app.agent(channel, name="mmcl-join")
    async def join_agent(stream: Any) -> None:
        async for event in stream.noack().events():
            msg = event.message
            await pipeline.on_message(Source(msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                                             list(msg.headers or []), event))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stub wants a `signal` keyword; it arrives in **kwargs
    async def on_revoked(app: Any, revoked: set[Any], **kwargs: Any) -> None:
        await pipeline.on_revoked({(tp.topic, tp.partition) for tp in revoked}, app.consumer.commit)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's stub wants a `signal` keyword; it arrives in **kwargs
    async def on_assigned(app: Any, assigned: set[Any], **kwargs: Any) -> None:
        pipeline.on_assigned({(tp.topic, tp.partition) for tp in assigned})
        log.info("assigned %d partitions", len(assigned))

    app.on_stop_hooks = [pipeline.begin_shutdown]

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust's stub wants a `signal` keyword; it arrives in **kwargs
    async def before_shutdown(app: Any, **kwargs: Any) -> None:
        await on_shutdown()


def consumer_view(app: StreamApp) -> dict[str, dict[str, Any]]:
    """Per assigned partition, what the consumer knows and does with it: for /healthz, and for finding a partition
    the consumer stopped reading (position, end, last answer; paused by Faust or aiokafka; records waiting to be
    handed out; the leader it fetches from and whether a fetch to that node is in flight). Empty while it cannot be
    read: aiokafka changes this state on its own thread, and a status page must not fail because of it."""
    try:
        faust_consumer: Any = app.consumer
        consumer = faust_consumer._thread._ensure_consumer()
        assignment = consumer._subscription.subscription.assignment
        if assignment is None:
            return {}
        fetcher, cluster = consumer._fetcher, consumer._client.cluster
        active, paused, buffered = ({(t.topic, t.partition) for t in tps} for tps in (
            faust_consumer._active_partitions or (), faust_consumer._paused_partitions,
            faust_consumer._buffered_partitions))
        out: dict[str, dict[str, Any]] = {}
        for tp in sorted(assignment.tps):
            state = assignment.state_value(tp)
            leader = cluster.leader_for_partition(tp)
            key = (tp.topic, tp.partition)
            out[f"{tp.topic}:{tp.partition}"] = {
                "position": state.position if state.has_valid_position else None,
                "highwater": state.highwater, "polled_ms": state.timestamp, "paused": state.paused,
                "faust_active": key in active, "faust_paused": key in paused, "faust_buffered": key in buffered,
                "fetched_waiting": tp in fetcher._records, "leader": leader, "in_flight": leader in fetcher._in_flight,
            }
        return out
    except Exception:  # not started, stopping, between assignments, or changed while read
        return {}
