"""The binary feature wire (schema version 2): a small JSON header and the array's raw bytes in one Kafka value.

    b"MMF2" | header length (uint32, little-endian) | header (UTF-8 JSON, space-padded) | array bytes

The header is a `FeatureHeader`: a feature message's fields without the array, plus the array's dtype (float16 by
default, float32 allowed) and shape [T, D]. The array is T * D little-endian values, row-major, and starts at an
offset that is a multiple of 8 (the header is padded with spaces, which JSON ignores), so a reader maps it without
a copy (`np.frombuffer`). A 768 x 50 text part is 77 kB in float16 against ~205 kB of base64 float32 JSON, and
decoding it costs no per-element Python. One value, rather than metadata in Kafka headers: a dead letter, the
joined-features record and any tool that keeps values but drops headers carry the whole message.

The first bytes tell the versions apart: a version 1 message is JSON and starts with `{` (or whitespace), never
with the magic. The joined-features record of binary parts uses the same framing with the magic b"MMJ2": its
header is the `JoinedHeader` (the result, and where each part's original bytes lie in the body).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streams.messages import EncodedArray, FeatureMessage, Id, JoinedFeatures, ModalityName, Shape, Speaker

FEATURES_MAGIC = b"MMF2"
JOINED_MAGIC = b"MMJ2"
_PREAMBLE = struct.Struct("<4sI")  # magic, header length
ALIGN = 8
Dtype = Literal["float16", "float32"]
WireFormat = Literal["v2", "v1"]
_NUMPY: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
FLOAT16_MAX = float(np.finfo(np.float16).max)


class FrameError(ValueError):
    """Bytes that claim to be a binary message (by their magic) and are not one."""


class FeatureHeader(BaseModel):
    """The JSON header of a binary feature message: everything but the array, and the array's layout."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[2] = 2
    utterance_id: Id
    call_id: Id | None = None
    speaker: Speaker = "unknown"
    modality: str = Field(description="text | audio | visual; must match the topic it was published to")
    dtype: Dtype = Field("float16", description="of the array bytes that follow the header, little-endian")
    shape: Shape = Field(description="[T, D]: the array bytes are exactly T * D values, row-major")
    feature_profile: str | None = Field(None, max_length=128)
    start_ms: int | None = Field(None, ge=0)
    end_ms: int | None = Field(None, ge=0)
    produced_at: int = Field(ge=0, description="ms since the epoch, when the producer sent it")

    @property
    def nbytes(self) -> int:
        """How many array bytes follow the header."""
        return self.shape[0] * self.shape[1] * int(_NUMPY[self.dtype].itemsize)


class JoinedHeader(BaseModel):
    """The JSON header of a binary joined-features record; `parts` says where each part's bytes lie in the body."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[2] = 2
    utterance_id: Id
    call_id: Id | None
    speaker: Speaker
    produced_at: int
    model_version: str
    score: float
    parts: dict[ModalityName, tuple[int, int]] = Field(
        description="modality -> (offset into the body, length): the part's message as it arrived, v1 or v2")


@dataclass(frozen=True)
class Features:
    """One modality of one utterance, ready to be sent in either wire version."""

    utterance_id: str
    modality: str
    array: np.ndarray  # (T, D)
    produced_at: int
    call_id: str | None = None
    speaker: str = "unknown"
    feature_profile: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None

    @property
    def key(self) -> str:
        """The Kafka key: the call id, or the utterance id when there is no call."""
        return self.call_id or self.utterance_id

    def message(self) -> FeatureMessage:
        """As a version 1 message (base64 float32 JSON)."""
        return FeatureMessage(utterance_id=self.utterance_id, call_id=self.call_id, speaker=self.speaker,
                              modality=self.modality, features=EncodedArray.from_numpy(self.array),
                              feature_profile=self.feature_profile, start_ms=self.start_ms, end_ms=self.end_ms,
                              produced_at=self.produced_at)


def _frame(magic: bytes, header: bytes, body_parts: list[bytes]) -> bytes:
    pad = -(_PREAMBLE.size + len(header)) % ALIGN
    return b"".join([_PREAMBLE.pack(magic, len(header) + pad), header, b" " * pad, *body_parts])


def _half(arr: np.ndarray) -> np.ndarray:
    """float16, converted by torch (its CPU kernels use the F16C instructions; numpy's conversion is 15x slower)."""
    import torch

    src = np.ascontiguousarray(arr, dtype=np.float32)
    if not src.flags.writeable:  # torch warns about read-only arrays even when it only reads them
        src = src.copy()
    half: np.ndarray = torch.from_numpy(src).to(torch.float16).numpy()
    return half.astype("<f2", copy=False)  # the wire is little-endian whatever the host


def encode_features(features: Features, wire: WireFormat = "v2", dtype: Dtype = "float16") -> bytes:
    """The bytes a producer sends for `features`: binary (v2, `dtype`) or JSON (v1, float32). Raises ValueError for an
    array float16 cannot hold (finite values beyond +-65504 would arrive as infinities)."""
    if wire == "v1":
        return features.message().model_dump_json(exclude_none=True).encode()
    arr = np.asarray(features.array)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"features must be [T, D], got shape {list(arr.shape)}")
    if dtype == "float16" and arr.size and max(-float(arr.min()), float(arr.max())) > FLOAT16_MAX:
        raise ValueError("features exceed the float16 range (|x| > 65504): send them as float32")
    data = _half(arr) if dtype == "float16" else np.ascontiguousarray(arr, dtype="<f4")
    head = FeatureHeader(utterance_id=features.utterance_id, call_id=features.call_id, speaker=features.speaker,
                         modality=features.modality, dtype=dtype, shape=(data.shape[0], data.shape[1]),
                         feature_profile=features.feature_profile, start_ms=features.start_ms, end_ms=features.end_ms,
                         produced_at=features.produced_at)
    return _frame(FEATURES_MAGIC, head.model_dump_json(exclude_none=True).encode(), [data.tobytes()])


def is_binary(raw: bytes, magic: bytes = FEATURES_MAGIC) -> bool:
    """Whether `raw` claims to be a binary message of this kind (by its magic)."""
    return raw[:4] == magic


def split_frame(raw: bytes, magic: bytes) -> tuple[bytes, int]:
    """A binary message -> (its header's JSON bytes, where its body starts). Raises FrameError."""
    if len(raw) < _PREAMBLE.size:
        raise FrameError(f"{len(raw)} bytes: too short for a binary message")
    got, length = _PREAMBLE.unpack_from(raw)
    if got != magic:
        raise FrameError(f"magic {got!r}, expected {magic!r}")
    body = _PREAMBLE.size + length
    if body > len(raw):
        raise FrameError(f"header length {length} runs past the end of the {len(raw)}-byte message")
    return raw[_PREAMBLE.size:body], body


def feature_array(raw: bytes, head: FeatureHeader, body: int) -> np.ndarray:
    """The array of a binary feature message, mapped on its bytes (read-only, no copy). Raises FrameError."""
    if len(raw) - body != head.nbytes:
        t, d = head.shape
        raise FrameError(f"the array holds {len(raw) - body} bytes, shape [{t}, {d}] of {head.dtype} needs {head.nbytes}")
    arr: np.ndarray = np.frombuffer(raw, dtype=_NUMPY[head.dtype], count=head.shape[0] * head.shape[1], offset=body)
    return arr.reshape(head.shape)


def decode_features(raw: bytes) -> tuple[FeatureHeader | FeatureMessage, np.ndarray]:
    """Either version -> (its header or message, its array). For stored records the worker already validated;
    raises ValueError (pydantic's ValidationError included) or FrameError."""
    if is_binary(raw):
        header, body = split_frame(raw, FEATURES_MAGIC)
        head = FeatureHeader.model_validate_json(header)
        return head, feature_array(raw, head, body)
    msg = FeatureMessage.model_validate_json(raw)
    return msg, msg.array()


def joined_record(head: Mapping[str, object], parts: Mapping[str, bytes]) -> bytes:
    """A binary joined-features record: `head` (a JoinedHeader's fields but `parts`) and each part's bytes as they
    arrived, each starting at an aligned offset of the body."""
    where: dict[str, tuple[int, int]] = {}
    body: list[bytes] = []
    at = 0
    for modality, raw in parts.items():
        pad = -at % ALIGN
        body += [b"\0" * pad, raw]
        at += pad
        where[modality] = (at, len(raw))
        at += len(raw)
    header = json.dumps({"schema_version": 2, **head, "parts": where}).encode()
    return _frame(JOINED_MAGIC, header, body)


def read_joined(raw: bytes) -> tuple[JoinedHeader | JoinedFeatures, dict[str, np.ndarray]]:
    """A joined-features record, binary or (written by earlier workers) JSON -> its header and each part's array.
    Raises ValueError (pydantic's ValidationError included) or FrameError."""
    if not is_binary(raw, JOINED_MAGIC):
        old = JoinedFeatures.model_validate_json(raw)
        return old, {m: part.array() for m, part in old.parts.items()}
    header, body = split_frame(raw, JOINED_MAGIC)
    head = JoinedHeader.model_validate_json(header)
    arrays: dict[str, np.ndarray] = {}
    for modality, (offset, length) in head.parts.items():
        start = body + offset
        if offset < 0 or length < 0 or start + length > len(raw):
            raise FrameError(f"the {modality} part ({offset}, {length}) runs past the end of the record")
        _, arrays[modality] = decode_features(raw[start:start + length])
    return head, arrays
