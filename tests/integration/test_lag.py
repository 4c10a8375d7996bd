"""Consumer lag, read from the broker: exact on a partition with a known commit, and, through a running worker,
growing while the worker is stuck (Redis down: writes retried, consumption paused), equal to what Kafka's own
`kafka-consumer-groups --describe` reports, and draining after. That pair, input growing while nothing is consumed,
is what MMCLNoEventsWhileInputGrows alerts on."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka import ensure_topics
from streams.local import apache_kafka
from streams.local.embedded import start_redis
from streams.worker.lag import LagProbe

from .conftest import Stack, Worker, part, quick_kafka, wait_for


def test_probe_reports_end_minus_committed_per_partition(stack: Stack) -> None:
    k = quick_kafka(stack.kafka.url)
    topic, group = stack.topics.feedback, f"{stack.prefix}-lag-probe"
    p = Producer({"bootstrap.servers": stack.kafka.url})
    for i in range(10):
        p.produce(topic, b"v%d" % i, partition=0)
        p.flush(10)
    c = Consumer({"bootstrap.servers": stack.kafka.url, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    c.close()
    probe = LagProbe(k, group)
    try:
        got = probe.measure({(topic, 0), (topic, 1)}, {})
        assert (got[(topic, 0)].end, got[(topic, 0)].committed, got[(topic, 0)].lag) == (10, 4, 6)
        assert got[(topic, 1)].lag == 0  # empty, never committed
        # Apache Kafka's answer is exact: a fetched high watermark does not move it
        assert probe.measure({(topic, 0)}, {(topic, 0): 12})[(topic, 0)].lag == 6
    finally:
        probe.close()
    tansu = LagProbe(k.model_copy(update={"broker_kind": "tansu"}), group)
    try:  # on the embedded broker a fetched high watermark beyond its answer wins (its ListOffsets trails the end)
        assert tansu.measure({(topic, 0)}, {(topic, 0): 12})[(topic, 0)].lag == 8
    finally:
        tansu.close()


def assert_lag_matches_kafkas_own_tool(local: Stack, w: Worker) -> None:
    """mmcl_consumer_lag per partition equals the LAG column of `kafka-consumer-groups --describe`, run from the
    broker's own jars, while the backlog stands still (nothing consumed, nothing committed); where the group never
    committed, the tool shows no lag and the worker the whole log, from where the group will start."""
    rows = apache_kafka.describe_group(local.kafka.url, f"{local.prefix}-workers")
    theirs = {(r.topic, r.partition): r for r in rows if r.topic in local.topics.features}
    assert len(theirs) == 3 * local.topics.partitions and sum(r.lag or 0 for r in theirs.values()) > 0
    for (t, p), row in theirs.items():
        ours = w.metric("mmcl_consumer_lag", topic=t, partition=str(p))
        # a partition the group never committed: the tool prints '-', the worker counts from the log start, where
        # the group starts reading (auto.offset.reset=earliest); these topics start at offset 0
        assert ours == (row.lag if row.lag is not None else row.end), (t, p, row)


def send(local: Stack, producer: Producer, wave: str, n: int) -> None:
    for i in range(n):
        call = f"{local.prefix}-{wave}-c{i % 4}"
        for m in ("text", "audio", "visual"):
            local.send(producer, m, part(f"{wave}-u{i}", call, m, seed=i), call.encode())
    producer.flush(10)


def test_lag_grows_while_the_worker_is_stuck_and_drains_after(stack: Stack, tmp_path: Path) -> None:
    own = start_redis(tmp_path)  # this test stops its Redis: not the shared one
    local = Stack(stack.kafka, own, stack.checkpoint, stack.state_dir, f"{stack.prefix}lag")
    ensure_topics(quick_kafka(stack.kafka.url), local.topics)
    try:
        w = local.start_worker(MMCL_METRICS__LAG_INTERVAL_S="0.3", MMCL_BATCH__QUEUE_SIZE="2",
                               MMCL_REDIS__SOCKET_TIMEOUT_S="0.5", MMCL_REDIS__RETRY_MAX_S="0.5")
        producer = local.producer()
        send(local, producer, "a", 8)
        wait_for(lambda: w.status().get("written", 0) >= 8, 30, "the first results")
        wait_for(lambda: w.metric("mmcl_log_end_offset") == 24, 20, "the end offsets of the first input")
        wait_for(lambda: w.metric("mmcl_consumer_lag") == 0, 20, "lag 0 after the first results")

        own.stop()
        send(local, producer, "b", 20)
        wait_for(lambda: w.metric("mmcl_consumption_paused") == 1, 30, "consumption paused on failing writes")
        wait_for(lambda: w.metric("mmcl_log_end_offset") == 84, 20, "the end offsets to show the new input")
        consumed = w.metric("mmcl_messages_consumed_total")
        lag = w.metric("mmcl_consumer_lag")
        assert lag >= 84 - consumed > 0
        send(local, producer, "c", 10)  # more input while stuck: lag grows, nothing more is consumed
        wait_for(lambda: w.metric("mmcl_consumer_lag") >= lag + 30, 20, "the lag to grow")
        assert w.metric("mmcl_messages_consumed_total") == consumed
        assert_lag_matches_kafkas_own_tool(local, w)

        own = start_redis(tmp_path, port=own.port)  # the same port and data: the worker reconnects by itself
        wait_for(lambda: w.status().get("written", 0) >= 38, 60, "every result once Redis is back")
        wait_for(lambda: w.metric("mmcl_consumer_lag") == 0, 30, "the lag to drain")
        assert w.metric("mmcl_consumption_paused") == 0 and w.metric("mmcl_messages_consumed_total") == 114
    finally:
        for worker in local.workers:
            worker.stop()
        own.stop()
