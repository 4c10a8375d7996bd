"""Ways to stall a partition or lose good utterances, each found by trying, each fixed at its root: records over a
megabyte, producer clocks ahead or behind, a SIGTERM while a write is retried, Redis credentials that are wrong at
start-up or revoked later. Against the real broker, worker processes and Redis."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from streams.kafka import ensure_topics
from streams.local.embedded import Service, free_port, redis_binary
from streams.sinks.redis_store import call_key, utt_key
from streams.wire import read_joined

from .conftest import DIMS, Stack, features, keys_on, part, quick_kafka, wait_for

MB = 1_000_000


LOCAL: list[Stack] = []  # every stack a test made: its workers are stopped when the test ends, pass or fail


def local_stack(stack: Stack, suffix: str, redis_svc: Service | None = None) -> Stack:
    st = Stack(stack.kafka, redis_svc or stack.redis_svc, stack.checkpoint, stack.state_dir, f"{stack.prefix}{suffix}")
    ensure_topics(quick_kafka(stack.kafka.url), st.topics)
    LOCAL.append(st)
    return st


def nested(modality: str, t: int, seed: int, dim: int | None = None) -> list[list[float]]:
    """A hand-made message's features as a plain nested list: many more bytes than base64 for the same array."""
    return np.round(features(modality, seed, t=t, dim=dim).astype(np.float64), 15).tolist()


def raw_part(utt: str, call: str, modality: str, feats: Any) -> bytes:
    return json.dumps({"utterance_id": utt, "call_id": call, "speaker": "customer", "modality": modality,
                       "features": feats, "produced_at": int(time.time() * 1000)}).encode()


def send_good(st: Stack, producer: Any, call: str, utts: list[str]) -> None:
    for u in utts:
        for m in ("text", "audio", "visual"):
            st.send(producer, m, part(u, call, m, seed=hash(u) % 1000), call.encode())
    producer.flush(30)


def all_written(st: Stack, call: str, utts: list[str]) -> bool:
    return all(st.redis.exists(utt_key(call, u)) for u in utts)


# 1. records over a megabyte ----------------------------------------------------------------------------------
def test_records_over_a_megabyte_are_written_or_dead_lettered_and_the_partition_goes_on(stack: Stack) -> None:
    """Each of these stalled its partition for good (librdkafka's default message.max.bytes of 1,000,000, and every
    failure retried as transient): a 5 MB message (its dead letter), a 2.7 MB audio part with 100000 frames, a 1.4 MB
    text part with the wrong D, and a valid utterance of nested-list parts whose joined record is over 1 MB (its
    result reached Redis, then each retry published its batch's predictions again)."""
    st = local_stack(stack, "big")
    # a text topic made with more room than the worker's input limit (4 MiB): the worker must still refuse the rest
    st.set_topic_config(st.topics.feature("text"), "max.message.bytes", str(12 * MB))
    worker = st.start_worker()
    call = f"{st.prefix}-big"
    producer = st.producer(max_record_bytes=12 * MB)
    huge = b'{"junk": "' + b"x" * (5 * MB) + b'"}'
    long_audio = part("bad1", call, "audio", array=np.zeros((100_000, DIMS["audio"]), np.float32))
    wrong_d = part("bad2", call, "text", array=features("text", 1, t=2000, dim=130))
    assert len(long_audio) > 2.6 * MB and len(wrong_d) > 1.3 * MB
    st.send(producer, "text", huge, call.encode())
    st.send(producer, "audio", long_audio, call.encode())
    st.send(producer, "text", wrong_d, call.encode())
    big = {m: raw_part("big", call, m, nested(m, 2000, 7)) for m in ("text", "audio", "visual")}
    assert sum(map(len, big.values())) > 1.2 * MB
    for m, v in big.items():
        st.send(producer, m, v, call.encode())
    good = [f"g{i:02d}" for i in range(20)]
    send_good(st, producer, call, good)

    wait_for(lambda: all_written(st, call, ["big", *good]), 60, "the big utterance and the 20 after it")
    assert worker.get("/readyz")[0] == 200
    preds = [m for m in st.consume_all(st.topics.predictions, None, timeout=20) if m.key() == call.encode()]
    assert sorted(json.loads(m.value())["utterance_id"] for m in preds) == sorted(["big", *good])  # each once
    joined = [m for m in st.consume_all(st.topics.joined, None, timeout=20) if m.key() == b"big"]
    assert len(joined) == 1 and len(joined[0].value()) > 1.2 * MB
    head, arrays = read_joined(joined[0].value())  # the binary joined record, holding the JSON parts as they came
    assert head.utterance_id == "big"
    np.testing.assert_array_equal(arrays["text"], np.asarray(nested("text", 2000, 7), np.float32))

    dead = st.dead_letters(call)
    assert sorted(dict(m.headers())["mmcl.reason"].decode() for m in dead) == ["dims", "oversize", "oversize"]
    (cut,) = [m for m in dead if dict(m.headers()).get("mmcl.truncated") == b"1"]
    h = dict(cut.headers())
    assert h["mmcl.original_bytes"] == str(len(huge)).encode()
    assert h["mmcl.original_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert huge.startswith(cut.value()) and len(cut.value()) > 4 * MB  # cut to the dead-letter topic's size
    assert {m.value() for m in dead} >= {long_audio, wrong_d}  # these fit whole
    assert worker.metric("mmcl_dead_letters_truncated_total") == 1
    assert worker.metric("mmcl_records_refused_total") == 0 and worker.metric("mmcl_kafka_produce_errors_total") == 0


def test_output_topics_smaller_than_needed_truncate_and_skip_instead_of_stalling(stack: Stack) -> None:
    """Topics made by someone else with Kafka's 1 MB default: the worker reads their max.message.bytes at start-up
    and fits dead letters to it; a joined record that cannot fit is skipped and counted, the result is still written."""
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"{stack.prefix}small"
    admin = AdminClient({"bootstrap.servers": stack.kafka.url})
    small = {"max.message.bytes": str(MB)}
    for name in (f"{prefix}.dlq", f"{prefix}.joined"):
        admin.create_topics([NewTopic(name, 4, 1, config=small)])[name].result(10)
    st = local_stack(stack, "small")
    worker = st.start_worker()
    call = f"{st.prefix}-c"
    producer = st.producer(max_record_bytes=12 * MB)
    long_audio = part("bad", call, "audio", array=np.zeros((100_000, DIMS["audio"]), np.float32))
    st.send(producer, "audio", long_audio, call.encode())
    for m in ("text", "audio", "visual"):
        st.send(producer, m, raw_part("big", call, m, nested(m, 2000, 3)), call.encode())
    send_good(st, producer, call, ["after"])
    wait_for(lambda: all_written(st, call, ["big", "after"]), 60, "both results")
    (dead,) = st.dead_letters(call)
    assert dict(dead.headers())["mmcl.truncated"] == b"1" and len(dead.value()) < MB
    assert long_audio.startswith(dead.value())
    wait_for(lambda: worker.metric("mmcl_records_refused_total", output="joined", why="too_large") == 1, 10,
             "the joined record counted as refused")
    assert [m.key() for m in st.consume_all(st.topics.joined, None, timeout=10)] == [b"after"]
    assert "max.message.bytes" in worker.log.read_text()  # the start-up warning says what to raise


# 3. producer clocks --------------------------------------------------------------------------------------------
def test_producer_clocks_ahead_or_behind_cost_no_one_their_utterances(stack: Stack) -> None:
    """One text part stamped ten years ahead used to move its partition's watermark past every deadline (good
    utterances dead-lettered as incomplete while traffic flowed, its partition's commit stuck at the poison), and a
    producer 5 s behind lost about half of its utterances. Parts leave audio first, text 200 ms later, then visual."""
    st = local_stack(stack, "clk")
    worker = st.start_worker()
    good = keys_on(1, st.topics.partitions, f"{st.prefix}-c", 2)
    slow, poison = keys_on(1, st.topics.partitions, f"{st.prefix}-s", 2)
    producer = st.producer()
    year_ms = 365 * 24 * 3600 * 1000
    st.send(producer, "text", part("p0", poison, "text", produced_at=int(time.time() * 1000) + 10 * year_ms),
            poison.encode())
    sent: dict[str, list[str]] = {c: [] for c in (*good, slow)}
    for i in range(30):  # 3 calls x 30 utterances, one every 100 ms per call, in real time
        for m_i, m in enumerate(("audio", "text", "visual")):
            for call in sent:
                skew = -5000 if call == slow else 0
                st.send(producer, m, part(f"u{i:02d}", call, m, seed=i, produced_at=int(time.time() * 1000) + skew),
                        call.encode())
            producer.poll(0)
            if m_i < 2:
                time.sleep(0.2)  # a producer's pace: the parts of one utterance leave 200 ms apart
        for call in sent:
            sent[call].append(f"u{i:02d}")
    producer.flush(10)
    wait_for(lambda: all(all_written(st, c, u) for c, u in sent.items()), 60, "every good utterance")
    dead = st.dead_letters(f"{st.prefix}-")
    assert [(m.key().decode(), dict(m.headers())["mmcl.reason"]) for m in dead] == [(poison, b"incomplete")]
    assert worker.metric("mmcl_clock_skew_parts_total", direction="ahead") >= 1
    assert worker.metric("mmcl_clock_skew_parts_total", direction="behind") >= 30
    for call in sent:
        assert st.redis.hget(call_key(call), "all:count") == "30"
    # the poison no longer holds its partition's commit: every feature partition 1 is committed to its end
    group = f"{st.prefix}-workers"
    for topic in st.topics.features:
        end = st.end_offset(topic, 1)
        wait_for(lambda t=topic, e=end: st.committed(group, t, 1) == e, 20, f"{topic}[1] committed to its end")


# 5. SIGTERM while a write is being retried ----------------------------------------------------------------------
def test_sigterm_while_redis_is_down_stops_within_the_grace_time_and_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    from streams.local.embedded import start_redis

    own = start_redis(tmp_path)
    st = local_stack(stack, "term", own)
    try:
        worker = st.start_worker(MMCL_REDIS__RETRY_MAX_S="0.5", MMCL_WORKER__SHUTDOWN_TIMEOUT_S="3")
        call, producer = f"{st.prefix}-c", st.producer()
        first = [f"a{i}" for i in range(5)]
        send_good(st, producer, call, first)
        wait_for(lambda: all_written(st, call, first), 30, "results before the outage")
        own.stop()
        held = [f"b{i}" for i in range(10)]
        send_good(st, producer, call, held)
        wait_for(lambda: worker.metric("mmcl_redis_errors_total") >= 3, 30, "writes being retried")
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(30)  # before: still running 60-120 s later
        took = time.monotonic() - t0
        assert took < 3 + 5, f"stopped after {took:.1f} s"
        assert worker.proc.returncode == 0
        assert "not written within 3 s" in worker.log.read_text()
        revived = start_redis(tmp_path, port=own.port)
        st.redis_svc = revived
        try:
            st.start_worker()
            wait_for(lambda: all_written(st, call, held), 60, "the held results, by the next worker")
            assert st.redis.hget(call_key(call), "all:count") == "15"
            assert st.dead_letters(call) == []
        finally:
            for w in st.workers:
                w.stop()
            revived.stop()
    finally:
        for w in st.workers:
            w.stop()
        own.stop()


# 6. Redis credentials ------------------------------------------------------------------------------------------
def start_secured_redis(tmp: Path, *conf: str, user: str = "default", password: str = "") -> Service:
    port = free_port()
    log = tmp / f"redis-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", *conf], stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, username=user, password=password, socket_timeout=1)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 20, "the secured Redis")
    return Service("redis", proc.pid, port, f"redis://127.0.0.1:{port}/0", str(log), proc)


def run_worker_to_exit(st: Stack, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "worker"],
                          env=st.env(MMCL_METRICS__PORT=str(free_port()), **env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_wrong_redis_credentials_stop_the_worker_at_start_with_one_line(stack: Stack, tmp_path: Path) -> None:
    """Before: ready (200) until traffic came, then AuthenticationError retried forever."""
    secured = start_secured_redis(tmp_path, "--requirepass", "right", password="right")
    try:
        st = local_stack(stack, "auth", secured)
        proc = run_worker_to_exit(st, MMCL_REDIS__PASSWORD="wrong")
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("mmcl: error: Redis refused the worker (AuthenticationError") and "MMCL_REDIS__PASSWORD" in last
        assert "Traceback" not in proc.stderr and "wrong" not in proc.stderr
        denied = start_secured_redis(tmp_path, *"--user mmcl on >pw ~mmcl:* +@all -evalsha -eval".split(), user="mmcl",
                                     password="pw")
        try:
            st2 = local_stack(stack, "acl", denied)
            proc = run_worker_to_exit(st2, MMCL_REDIS__USERNAME="mmcl", MMCL_REDIS__PASSWORD="pw")
            assert proc.returncode == 1 and "NoPermissionError" in proc.stderr.strip().splitlines()[-1]
        finally:
            denied.stop()
    finally:
        secured.stop()


def test_permissions_revoked_while_running_stop_the_worker_and_commit_nothing_unwritten(
        stack: Stack, tmp_path: Path) -> None:
    secured = start_secured_redis(tmp_path, *"--user mmcl on >pw ~mmcl:* +@all --user admin on >adm ~* +@all".split(),
                                  user="admin", password="adm")
    admin = redis.Redis(port=secured.port, username="admin", password="adm", decode_responses=True)
    st = local_stack(stack, "revoke", secured)
    st.redis = redis.Redis.from_url(secured.url, username="admin", password="adm", decode_responses=True)
    creds = {"MMCL_REDIS__USERNAME": "mmcl", "MMCL_REDIS__PASSWORD": "pw"}
    try:
        worker = st.start_worker(**creds)
        call, producer = f"{st.prefix}-c", st.producer()
        first = [f"a{i}" for i in range(5)]
        send_good(st, producer, call, first)
        wait_for(lambda: all_written(st, call, first), 30, "results while permitted")
        admin.acl_setuser("mmcl", enabled=True, commands=["-evalsha", "-eval"])
        later = [f"b{i}" for i in range(5)]
        send_good(st, producer, call, later)
        worker.proc.wait(30)  # before: retried forever as if Redis were down
        assert worker.proc.returncode == 1
        assert "\nmmcl: error: Redis refused the worker (NoPermissionError" in worker.log.read_text()
        assert not any(st.redis.exists(utt_key(call, u)) for u in later)
        admin.acl_setuser("mmcl", enabled=True, commands=["+@all"])
        st.start_worker(**creds)
        wait_for(lambda: all_written(st, call, later), 60, "the refused results, by the next worker")
        assert st.redis.hget(call_key(call), "all:count") == "10"
    finally:
        for w in st.workers:
            w.stop()
        secured.stop()


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Any:
    yield
    while LOCAL:
        for w in LOCAL.pop().workers:
            w.stop()
