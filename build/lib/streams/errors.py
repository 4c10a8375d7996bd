"""Errors of the streaming service, and the translation of librdkafka's and redis-py's errors at the boundary.

    MMCLError (mmcl.errors)
    └── ServiceError             base of the service's own errors; the CLI prints its message as one line
        ├── TransientError       may succeed if tried again (broker or Redis unreachable, timeouts, leader moves,
        │                        Redis loading or out of memory): retried with capped back-off until shutdown
        ├── RecordRefused        this one record can never be written as it is (too large, invalid, or a topic we
        │                        may not write to): handled for that record (truncated, skipped or dead-lettered)
        │                        and counted; the partition goes on
        ├── SinkRefused          no record can be written: credentials refused, permissions missing; the worker stops
        │                        without committing what it did not write, and says why in one line
        └── ShuttingDown         a write abandoned because the worker is stopping (its offsets stay uncommitted)

Retrying a permanent error forever is what stalls a partition; giving up on a transient one is what loses data. So
every third-party error is classified here, once, and the rest of the service sees only these classes.
"""

from __future__ import annotations

from typing import Any, Literal

import redis
from confluent_kafka import KafkaError

from mmcl.errors import MMCLError

RefusedWhy = Literal["too_large", "invalid", "unauthorized"]


class ServiceError(MMCLError):
    """A failure of a broker or Redis operation, classified by what can be done about it."""

    pass


class TransientError(ServiceError):
    """May succeed when tried again: retried with back-off until shutdown."""

    pass


class RecordRefused(ServiceError):
    """This record can never be written (too large, invalid, refused); `why` says which."""

    def __init__(self, why: RefusedWhy, message: str) -> None:
        super().__init__(message)
        self.why = why


class SinkRefused(ServiceError):
    """The sink refuses the worker itself (credentials, permissions): nothing more can be written."""

    pass


class ShuttingDown(ServiceError):
    """The worker is stopping: the operation was abandoned unacknowledged."""

    pass


# librdkafka errors that no retry can fix, for one record or for the whole client.
_KAFKA_RECORD: dict[int, RefusedWhy] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",  # the broker's limit, or librdkafka's own message.max.bytes
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.INVALID_MSG: "invalid",  # CORRUPT_MESSAGE
    KafkaError.INVALID_RECORD: "invalid",
    KafkaError.INVALID_TIMESTAMP: "invalid",
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT: "invalid",
    KafkaError.POLICY_VIOLATION: "invalid",
    KafkaError._INVALID_ARG: "invalid",
    KafkaError._BAD_MSG: "invalid",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "unauthorized",
}
_KAFKA_CLIENT = {KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                 KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION, KafkaError._SSL}


def from_kafka_error(err: Any) -> TransientError | RecordRefused | SinkRefused:
    """A confluent_kafka.KafkaError (a delivery report's, or a KafkaException's first argument) -> our class.
    Anything not known to be permanent is transient: librdkafka already retried it, and dropping data on an
    unknown error is worse than retrying it until shutdown."""
    code, text = err.code(), f"{err.name()}: {err.str()}"
    if code in _KAFKA_RECORD:
        return RecordRefused(_KAFKA_RECORD[code], text)
    if code in _KAFKA_CLIENT:
        return SinkRefused(f"Kafka refused the worker's producer ({text})")
    return TransientError(text)


# Redis error replies that mean "not now" rather than "never": a replica taking over, a server loading its data
# or out of memory, a busy script, a cluster slot moving. redis-py turns most of them into classes of their own and
# strips the code from the message, so both the class and the words are checked.
_REDIS_TRANSIENT = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError, redis.exceptions.BusyLoadingError,
                    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError, redis.exceptions.MasterDownError,
                    redis.exceptions.MovedError, redis.exceptions.AskError)
_REDIS_TRANSIENT_REPLIES = ("OOM", "LOADING", "READONLY", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK")


# How Redis words an ACL refusal of a command run inside a script (not a NoPermissionError in redis-py: the script
# fails with a plain error reply that quotes it).
_REDIS_ACL_REFUSALS = ("NOPERM", "can't run this command", "no permissions to")


def from_redis_error(error: BaseException) -> TransientError | RecordRefused | SinkRefused:
    """A redis-py exception -> our class. AuthenticationError is a ConnectionError subclass and NoPermissionError a
    ResponseError one in redis-py: they are tested first."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, (redis.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError,
                      redis.exceptions.NoPermissionError)):
        return SinkRefused(f"Redis refused the worker ({text}): check MMCL_REDIS__USERNAME / MMCL_REDIS__PASSWORD "
                           "and the user's ACL (it needs scripts, hashes and streams on mmcl:* keys)")
    if isinstance(error, redis.ResponseError) and any(m in str(error) for m in _REDIS_ACL_REFUSALS):
        return SinkRefused(f"Redis refused a command to the worker's user ({text}): its ACL needs scripts, hashes "
                           "and streams on mmcl:* keys")
    if isinstance(error, redis.ResponseError) and not isinstance(error, _REDIS_TRANSIENT) \
            and not str(error).startswith(_REDIS_TRANSIENT_REPLIES):
        return RecordRefused("invalid", text)  # e.g. WRONGTYPE: another program wrote one of this call's keys
    return TransientError(text)


def classify(error: BaseException) -> ServiceError:
    """Any error a write raised -> our class (ours pass through; timeouts and OS errors are transient)."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, redis.RedisError):
        return from_redis_error(error)
    if len(error.args) == 1 and hasattr(error.args[0], "code") and hasattr(error.args[0], "str"):  # a KafkaException
        return from_kafka_error(error.args[0])
    if isinstance(error, (TimeoutError, OSError, ConnectionError)):
        return TransientError(f"{type(error).__name__}: {error}")
    raise error  # a bug of ours: let it surface rather than retry it
