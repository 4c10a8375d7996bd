"""Dead-letter records: the original key, bytes and headers, plus ours (`mmcl.reason`, `mmcl.stage`, `mmcl.error`,
`mmcl.source_topic`, `mmcl.source_partition`, `mmcl.source_offset`), made to fit the dead-letter topic.

Ours are the only `mmcl.*` headers on a dead letter: a producer's own `mmcl.*` headers are kept as `producer.mmcl.*`,
so a record cannot carry a forged reason or source offset next to the real one. A record too large for the topic
is truncated to what fits, with its original size and SHA-256 in `mmcl.original_bytes` / `mmcl.original_sha256`
(and, if even its headers do not fit, without the producer's headers): a dead letter is never refused for its size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from streams.kafka import record_size

Headers = list[tuple[str, bytes]]
OURS = "mmcl."
FOREIGN = "producer."  # prefix for a producer's own headers that use ours
ERROR_BYTES = 1000  # an error text longer than this is cut: it is for people, and it counts against the limit


class Reason(StrEnum):
    """Dead-letter reasons: a closed set, so the metric's label values stay bounded."""

    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    BAD_ID = "bad_id"
    UNKNOWN_MODALITY = "unknown_modality"
    MODALITY_MISMATCH = "modality_mismatch"
    DIMS = "dims"
    NON_FINITE = "non_finite"
    PROFILE_MISMATCH = "profile_mismatch"
    INCOMPLETE = "incomplete"
    LATE = "late"
    SPEAKER_CONFLICT = "speaker_conflict"
    INFERENCE_ERROR = "inference_error"
    UNWRITABLE = "unwritable"
    INVALID_LABEL = "invalid_label"
    UNMATCHED = "unmatched"


@dataclass(frozen=True)
class Origin:
    """Where a dead letter's message was read."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class OutRecord:
    """A record to publish: topic, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def size(self) -> int:
        """The record's size as the broker counts it against its limits."""
        return record_size(self.key, self.value, self.headers)


def dead_letter(topic: str, key: bytes | None, value: bytes | None, headers: Headers, origin: Origin, reason: str,
                stage: str, error: str, limit: int) -> tuple[OutRecord, bool]:
    """-> (the record for the dead-letter topic, whether it had to be truncated to fit `limit` bytes)."""
    value = value or b""
    foreign = [(FOREIGN + k if k.startswith(OURS) else k, v or b"") for k, v in headers]
    ours = [("mmcl.reason", reason.encode()), ("mmcl.stage", stage.encode()),
            ("mmcl.error", error.encode("utf-8", "replace")[:ERROR_BYTES]),
            ("mmcl.source_topic", origin.topic.encode()), ("mmcl.source_partition", str(origin.partition).encode()),
            ("mmcl.source_offset", str(origin.offset).encode())]
    rec = OutRecord(topic, key, value, [*foreign, *ours])
    if rec.size <= limit:
        return rec, False
    return truncated(rec, value, foreign, ours, limit), True


def truncated(rec: OutRecord, value: bytes, foreign: Headers, ours: Headers, limit: int) -> OutRecord:
    """A dead letter cut to fit `limit`, recording what was cut in its headers."""
    ours = [*ours, ("mmcl.truncated", b"1"), ("mmcl.original_bytes", str(len(value)).encode()),
            ("mmcl.original_sha256", hashlib.sha256(value).hexdigest().encode())]
    for kept in (foreign, [("mmcl.producer_headers_dropped", str(len(foreign)).encode())]):
        headers = [*kept, *ours]
        room = limit - record_size(rec.key, b"", headers)
        if room >= 0:
            return OutRecord(rec.topic, rec.key, value[:room], headers)
    # not even our headers and the key fit (a limit below a few kB): the headers alone, as small as they come
    return OutRecord(rec.topic, None, b"", [h for h in ours if h[0] != "mmcl.error"])


def stripped(rec: OutRecord) -> OutRecord:
    """The last resort after the broker refused a record as too large although it fit our limit: no value at all
    (its size and hash stay in the headers), so that something of it still reaches the topic."""
    if dict(rec.headers).get("mmcl.truncated") == b"1":
        headers = [(k, v) for k, v in rec.headers if k.startswith(OURS)]
    else:
        headers = [*(h for h in rec.headers if h[0].startswith(OURS)), ("mmcl.truncated", b"1"),
                   ("mmcl.original_bytes", str(len(rec.value)).encode()),
                   ("mmcl.original_sha256", hashlib.sha256(rec.value).hexdigest().encode())]
    return OutRecord(rec.topic, rec.key, b"", headers)


__all__ = ["ERROR_BYTES", "Origin", "OutRecord", "dead_letter", "stripped"]
