"""The binary feature wire (version 2): its layout, zero-copy decoding, its size, and every dead-letter reason the
worker gives a bad binary message. Pure logic, no sockets."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from streams.messages import FeatureMessage
from streams.settings import LimitSettings
from streams.sinks.deadletter import Reason
from streams.wire import (
    FEATURES_MAGIC,
    FeatureHeader,
    Features,
    FrameError,
    decode_features,
    encode_features,
    joined_record,
    read_joined,
)
from streams.worker.decode import ModelProfile, Part, Rejection, decode_part

PROFILE = ModelProfile({"text": 4, "audio": 3, "visual": 2}, {"text": "minilm-384"})
LIMITS = LimitSettings(max_message_bytes=64 * 1024, max_frames=50, max_dim=16)
HEAD = {"utterance_id": "u1", "call_id": "c1", "speaker": "customer", "modality": "text", "dtype": "float16",
        "shape": [2, 4], "produced_at": 1}


def frame(head: dict[str, object] | bytes, body: bytes, magic: bytes = FEATURES_MAGIC) -> bytes:
    """A binary message made by hand: any header, any body (no padding)."""
    header = head if isinstance(head, bytes) else json.dumps(head).encode()
    return struct.pack("<4sI", magic, len(header)) + header + body


def halves(*values: float, n: int = 8) -> bytes:
    return np.array([*values, *[0.5] * (n - len(values))], "<f2").tobytes()


def test_binary_round_trip_maps_the_array_without_a_copy_at_an_aligned_offset() -> None:
    arr = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    for call_id in (None, "c", "c" * 100):  # header lengths vary; the array always starts 8-aligned
        for dtype in ("float16", "float32"):
            raw = encode_features(Features("u1", "text", arr, 7, call_id=call_id, speaker="agent",
                                           feature_profile="minilm-384", start_ms=10, end_ms=20), dtype=dtype)
            assert raw[:4] == FEATURES_MAGIC
            _, got = decode_features(raw)
            assert (len(raw) - got.nbytes) % 8 == 0
            assert got.base is not None and np.shares_memory(got, np.frombuffer(raw, np.uint8))  # no copy
            assert got.dtype == np.dtype(dtype) and not got.flags.writeable
            np.testing.assert_allclose(got, arr, atol=2e-3 if dtype == "float16" else 0)
            part = decode_part(raw, "text", LIMITS, PROFILE)
            assert isinstance(part, Part) and part.raw is raw
            assert (part.utterance_id, part.call_id, part.speaker, part.produced_at, part.start_ms) == \
                ("u1", call_id, "agent", 7, 10)


def test_version_1_json_is_still_written_and_read() -> None:
    arr = np.ones((2, 4), np.float32)
    raw = encode_features(Features("u1", "text", arr, 7, call_id="c"), wire="v1")
    assert raw.startswith(b"{") and FeatureMessage.model_validate_json(raw).schema_version == 1
    part = decode_part(raw, "text", LIMITS, PROFILE)
    assert isinstance(part, Part) and part.array.dtype == np.float32


def test_a_text_part_is_well_under_half_its_json_size() -> None:
    arr = np.random.default_rng(0).standard_normal((50, 768)).astype(np.float32)
    f = Features("call-000123-u042", "text", arr, 1_800_000_000_000, call_id="call-000123", speaker="customer")
    v1, v2 = len(encode_features(f, "v1")), len(encode_features(f))
    assert v2 <= 0.4 * v1, (v2, v1)
    assert len(encode_features(f, dtype="float32")) <= 0.8 * v1


def test_float16_refuses_values_it_cannot_hold() -> None:
    big = Features("u1", "text", np.array([[1e5, 0, 0, 0]], np.float32), 1)
    with pytest.raises(ValueError, match="float16 range"):
        encode_features(big)
    _, arr = decode_features(encode_features(big, dtype="float32"))
    assert arr[0, 0] == 1e5


@pytest.mark.parametrize(("raw", "topic", "reason"), [
    (FEATURES_MAGIC + b"\x01", "text", Reason.SCHEMA),  # shorter than its preamble
    (struct.pack("<4sI", FEATURES_MAGIC, 1000) + b"{}", "text", Reason.SCHEMA),  # header past the end
    (frame(b"{not json", halves()), "text", Reason.NOT_JSON),
    (frame({**HEAD, "extra": 1}, halves()), "text", Reason.SCHEMA),
    (frame({**HEAD, "schema_version": 1}, halves()), "text", Reason.SCHEMA),
    (frame({**HEAD, "dtype": "float64"}, halves()), "text", Reason.SCHEMA),
    (frame({**HEAD, "shape": [0, 4]}, b""), "text", Reason.SCHEMA),
    (frame(HEAD, halves(n=7)), "text", Reason.SCHEMA),  # the array is short of its shape
    (frame(HEAD, halves(n=9)), "text", Reason.SCHEMA),  # and longer
    (frame({**HEAD, "utterance_id": "a/b"}, halves()), "text", Reason.BAD_ID),
    (frame({**HEAD, "call_id": ""}, halves()), "text", Reason.BAD_ID),
    (frame({**HEAD, "modality": "smell"}, halves()), "text", Reason.UNKNOWN_MODALITY),
    (frame({**HEAD, "modality": "audio"}, halves()), "text", Reason.MODALITY_MISMATCH),
    (frame({**HEAD, "shape": [2, 5]}, halves(n=10)), "text", Reason.DIMS),
    (frame(HEAD, halves(float("nan"))), "text", Reason.NON_FINITE),
    (frame(HEAD, halves(float("inf"))), "text", Reason.NON_FINITE),
    (frame(HEAD, halves(0.0, float("-inf"))), "text", Reason.NON_FINITE),
    (frame({**HEAD, "shape": [51, 4]}, halves(n=204)), "text", Reason.OVERSIZE),
    (frame({**HEAD, "shape": [1, 17]}, halves(n=17)), "text", Reason.OVERSIZE),
    (frame(HEAD, halves() + b"\0" * 70_000), "text", Reason.OVERSIZE),
    (frame({**HEAD, "feature_profile": "glove-50"}, halves()), "text", Reason.PROFILE_MISMATCH),
])
def test_a_bad_binary_message_is_rejected_with_the_right_reason(raw: bytes, topic: str, reason: Reason) -> None:
    got = decode_part(raw, topic, LIMITS, PROFILE)
    assert isinstance(got, Rejection) and got.reason is reason, got
    assert got.error


def test_a_good_hand_made_frame_is_accepted() -> None:
    """The layout in the docs is all a third-party producer needs (no padding is required of it)."""
    part = decode_part(frame(HEAD, halves(1.5, 65504.0, -65504.0, 6e-8)), "text", LIMITS, PROFILE)
    assert isinstance(part, Part) and part.array.shape == (2, 4)
    assert part.array[0, :3].tolist() == [1.5, 65504.0, -65504.0] and part.array[0, 3] > 0  # finite, subnormal


def test_a_joined_record_that_does_not_add_up_is_refused() -> None:
    good = encode_features(Features("u1", "text", np.ones((2, 4), np.float32), 1))
    head = {"utterance_id": "u1", "call_id": None, "speaker": "customer", "produced_at": 1, "model_version": "v",
            "score": 0.0}
    record = joined_record(head, {"text": good})
    assert set(read_joined(record)[1]) == {"text"}
    with pytest.raises(FrameError, match="runs past the end"):
        read_joined(record[:-1])


def test_the_documented_snippet_makes_a_message_the_worker_accepts() -> None:
    """docs/streaming.md shows third-party producers how to write version 2 by hand: it must stay true."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "streaming.md").read_text()
    snippet = doc.split("A producer in another language needs only the table above:\n\n```python\n")[1].split("```")[0]
    arr = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
    scope: dict[str, object] = {"json": json, "struct": struct, "time": time, "arr": arr}
    exec(snippet, scope)  # our own documentation, not input
    part = decode_part(scope["value"], "text", LIMITS, PROFILE)  # type: ignore[arg-type]
    assert isinstance(part, Part) and part.call_id == "c1"
    np.testing.assert_array_equal(part.array, arr)


def test_a_read_only_array_is_encoded_as_it_is() -> None:
    """Producers may hand over arrays they map from elsewhere (a part read from the wire, a memory map)."""
    arr = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    arr.flags.writeable = False
    for dtype in ("float16", "float32"):
        _, got = decode_features(encode_features(Features("u1", "text", arr, 1), dtype=dtype))  # type: ignore[arg-type]
        np.testing.assert_allclose(got, arr, atol=1e-3)


def test_a_replayed_dataset_value_beyond_float16_is_sent_as_float32() -> None:
    """`mmcl produce` replays datasets whose audio features can exceed float16's range: that message goes as
    float32 rather than stopping the replay (a producer given such features directly is told so, above)."""
    from streams.local.simulate import Planned, encode

    big = np.array([[1e6, -2.5, 0.0, 3.0]], np.float32)
    head, arr = decode_features(encode(Planned(0.0, "u1", "c1", "customer", "text", big), 7))
    assert isinstance(head, FeatureHeader) and head.dtype == "float32"
    np.testing.assert_array_equal(arr, big)
    head, _ = decode_features(encode(Planned(0.0, "u2", "c1", "customer", "text", big / 1e3), 7))
    assert isinstance(head, FeatureHeader) and head.dtype == "float16"
