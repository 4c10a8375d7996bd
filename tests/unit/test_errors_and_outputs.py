"""Errors classified at the boundary, size limits derived from one setting, dead-letter records that fit and cannot
be forged: pure logic, no sockets."""

from __future__ import annotations

import hashlib

import pytest
import redis
from confluent_kafka import KafkaError

from streams.errors import RecordRefused, SinkRefused, TransientError, classify, from_kafka_error, from_redis_error
from streams.kafka import HEADERS_ROOM, producer_config, record_limits, record_size, topic_specs
from streams.settings import KafkaSettings, TopicSettings
from streams.sinks.deadletter import Origin, dead_letter, stripped

ORIGIN = Origin("p.features.text", 3, 1234)


@pytest.mark.parametrize(("code", "kind", "why"), [
    (KafkaError.MSG_SIZE_TOO_LARGE, RecordRefused, "too_large"),
    (KafkaError.RECORD_LIST_TOO_LARGE, RecordRefused, "too_large"),
    (KafkaError.INVALID_RECORD, RecordRefused, "invalid"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, RecordRefused, "unauthorized"),
    (KafkaError.SASL_AUTHENTICATION_FAILED, SinkRefused, None),
    (KafkaError._AUTHENTICATION, SinkRefused, None),
    (KafkaError._MSG_TIMED_OUT, TransientError, None),
    (KafkaError.NOT_LEADER_FOR_PARTITION, TransientError, None),
    (KafkaError._ALL_BROKERS_DOWN, TransientError, None),
    (KafkaError.UNKNOWN_TOPIC_OR_PART, TransientError, None),
])
def test_kafka_errors_are_classified(code: int, kind: type, why: str | None) -> None:
    got = from_kafka_error(KafkaError(code))
    assert isinstance(got, kind) and (why is None or got.why == why)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("err", "kind"), [
    (redis.AuthenticationError("WRONGPASS invalid username-password pair"), SinkRefused),
    (redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run the 'evalsha' command"), SinkRefused),
    (redis.ResponseError("Error running script: @user_script:1: The user executing the script can't run this command"),
     SinkRefused),
    (redis.ConnectionError("Connection refused"), TransientError),
    (redis.TimeoutError("Timeout reading from socket"), TransientError),
    (redis.BusyLoadingError("LOADING Redis is loading the dataset in memory"), TransientError),
    (redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."), TransientError),
    (redis.ReadOnlyError("READONLY You can't write against a read only replica."), TransientError),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), RecordRefused),
])
def test_redis_errors_are_classified(err: Exception, kind: type) -> None:
    assert isinstance(from_redis_error(err), kind)
    assert isinstance(classify(err), kind)


@pytest.mark.parametrize(("reply", "kind"), [
    ("READONLY You can't write against a read only replica.", TransientError),
    ("OOM command not allowed when used memory > 'maxmemory'.", TransientError),
    ("LOADING Redis is loading the dataset in memory", TransientError),
    ("BUSY Redis is busy running a script.", TransientError),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", TransientError),
    ("TRYAGAIN Multiple keys request during rehashing of slot", TransientError),
    ("WRONGPASS invalid username-password pair or user is disabled.", SinkRefused),
    ("NOAUTH Authentication required.", SinkRefused),
    ("NOPERM this user has no permissions to run the 'evalsha' command", SinkRefused),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", RecordRefused),
])
def test_redis_replies_as_redis_py_parses_them_are_classified(reply: str, kind: type) -> None:
    """redis-py strips the code from the replies it has a class for ("READONLY ..." becomes a ReadOnlyError saying
    "You can't write ..."): a failover must not read as a refused record."""
    from redis._parsers.base import BaseParser

    assert isinstance(from_redis_error(BaseParser.parse_error(reply)), kind)


def test_classify_passes_ours_through_and_lets_bugs_surface() -> None:
    ours = TransientError("x")
    assert classify(ours) is ours
    assert isinstance(classify(TimeoutError()), TransientError) and isinstance(classify(OSError()), TransientError)
    with pytest.raises(KeyError):
        classify(KeyError("a bug of ours is not retried as if the network were down"))


def test_every_size_limit_comes_from_the_input_limit() -> None:
    t = TopicSettings(prefix="p")
    lim = record_limits(2_000_000)
    assert lim.feature == lim.dead_letter == 2_000_000 + HEADERS_ROOM
    assert lim.joined >= 3 * 2_000_000 and lim.producer > lim.joined
    specs = topic_specs(t, 2_000_000)
    for name in t.all:
        assert int(specs[name].config["max.message.bytes"]) == lim.for_topic(t, name), name
    # librdkafka's own default (1,000,000) refused the joined record of a valid utterance and large dead letters
    assert producer_config(KafkaSettings(), max_record_bytes=lim.producer)["message.max.bytes"] >= lim.joined
    assert "message.max.bytes" not in producer_config(KafkaSettings())
    low = lim.lowered(t, {t.dlq: 1_048_588, t.joined: 50_000_000})
    assert low.dead_letter == 1_048_588 and low.joined == lim.joined and low.feature == lim.feature


def test_a_dead_letter_carries_only_our_mmcl_headers() -> None:
    forged = [("mmcl.reason", b"forged"), ("mmcl.source_offset", b"0"), ("trace", b"abc")]
    rec, cut = dead_letter("p.dlq", b"k", b"value", forged, ORIGIN, "schema", "decode", "bad", 10_000)
    names = [k for k, _ in rec.headers]
    assert not cut and rec.value == b"value" and rec.key == b"k"
    assert names.count("mmcl.reason") == 1 and dict(rec.headers)["mmcl.reason"] == b"schema"
    assert dict(rec.headers)["mmcl.source_offset"] == b"1234"
    assert dict(rec.headers)["producer.mmcl.reason"] == b"forged" and dict(rec.headers)["trace"] == b"abc"


def test_a_dead_letter_too_large_is_cut_to_fit_with_its_size_and_hash() -> None:
    value = bytes(range(256)) * 4000  # 1 MB
    rec, cut = dead_letter("p.dlq", b"k", value, [("trace", b"abc")], ORIGIN, "oversize", "decode", "e" * 5000, 100_000)
    h = dict(rec.headers)
    assert cut and rec.size <= 100_000 and len(rec.value) > 90_000 and value.startswith(rec.value)
    assert h["mmcl.truncated"] == b"1" and h["mmcl.original_bytes"] == str(len(value)).encode()
    assert h["mmcl.original_sha256"] == hashlib.sha256(value).hexdigest().encode() and h["trace"] == b"abc"
    assert len(h["mmcl.error"]) == 1000
    # headers so large that only ours fit: the producer's are dropped, and that is said
    big_headers = [(f"h{i}", b"x" * 1000) for i in range(200)]
    rec2, _ = dead_letter("p.dlq", b"k", value, big_headers, ORIGIN, "oversize", "decode", "e", 100_000)
    assert rec2.size <= 100_000 and dict(rec2.headers)["mmcl.producer_headers_dropped"] == b"200"
    last = stripped(rec2)
    assert last.value == b"" and dict(last.headers)["mmcl.original_bytes"] == str(len(value)).encode()
    assert record_size(last.key, last.value, last.headers) < 2000


def test_secret_urls_print_masked_everywhere() -> None:
    from streams.settings import RedisSettings, RegistrySettings

    r = RedisSettings(url="redis://svc:hunter2@db:6379/0")
    g = RegistrySettings(backend="redis", redis_url="rediss://:hunter3@reg:6380/1")
    for shown in (str(r.url), repr(r), repr(g), str(g.redis_url), r.model_dump_json(), g.model_dump_json()):
        assert "hunter" not in shown, shown
    assert str(r.url) == "redis://svc:***@db:6379/0" and str(g.redis_url) == "rediss://:***@reg:6380/1"
    assert r.url.get_secret_value() == "redis://svc:hunter2@db:6379/0"
