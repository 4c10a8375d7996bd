"""Raw Kafka bytes (either wire version) -> a validated feature part, or a rejection with a dead-letter reason. No I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from mmcl.config import by_wire
from mmcl.predictor import Predictor
from streams.messages import FeatureMessage
from streams.settings import WIRE_MODALITIES, LimitSettings
from streams.sinks.deadletter import Reason
from streams.wire import FEATURES_MAGIC, FeatureHeader, FrameError, feature_array, is_binary, split_frame


@dataclass(frozen=True)
class Part:
    """A validated feature part of an utterance."""

    utterance_id: str
    call_id: str | None
    speaker: str
    modality: str  # wire name: text | audio | visual
    array: np.ndarray  # (T, D) float32, or float16 from the binary wire (read-only: it maps the message's bytes)
    produced_at: int
    start_ms: int | None
    raw: bytes = b""  # the message as it arrived (kept by reference, for the joined-features record)

    @property
    def join_key(self) -> tuple[str, str]:
        """What the join groups parts by: (call key, utterance id)."""
        return (self.call_id or "", self.utterance_id)


@dataclass(frozen=True)
class Rejection:
    """A message that cannot be a part: why, for the dead-letter topic."""

    reason: Reason
    error: str


@dataclass(frozen=True)
class ModelProfile:
    """What the loaded model accepts: feature dim per wire modality, and extractor ids where the checkpoint names them."""

    dims: dict[str, int]
    extractor_ids: dict[str, str]


def decode_part(raw: bytes | None, topic_modality: str, limits: LimitSettings, profile: ModelProfile) -> Part | Rejection:
    """Raw bytes from a feature topic, either wire version -> a Part, or a Rejection with its dead-letter reason."""
    if raw is None:
        return Rejection(Reason.NOT_JSON, "empty message value")
    if len(raw) > limits.max_message_bytes:
        return Rejection(Reason.OVERSIZE, f"{len(raw)} bytes > limit {limits.max_message_bytes}")
    read = _read_binary(raw) if is_binary(raw) else _read_json(raw)
    if isinstance(read, Rejection):
        return read
    meta, (t, d), load = read
    if meta.modality not in WIRE_MODALITIES:
        return Rejection(Reason.UNKNOWN_MODALITY, f"modality {meta.modality[:32]!r} is not one of {', '.join(WIRE_MODALITIES)}")
    if meta.modality != topic_modality:
        return Rejection(Reason.MODALITY_MISMATCH, f"a {meta.modality} message on the {topic_modality} topic")
    if t > limits.max_frames or d > limits.max_dim:
        return Rejection(Reason.OVERSIZE, f"features [{t}, {d}] exceed the limit [{limits.max_frames}, {limits.max_dim}]")
    want = profile.extractor_ids.get(meta.modality)
    if meta.feature_profile is not None and want is not None and meta.feature_profile != want:
        return Rejection(Reason.PROFILE_MISMATCH,
                         f"{meta.modality} features from {meta.feature_profile!r}, the model needs {want!r}")
    try:
        arr = load()
    except ValueError as e:
        return Rejection(Reason.SCHEMA, str(e))
    if arr.shape[1] != profile.dims[meta.modality]:
        need = profile.dims[meta.modality]
        return Rejection(Reason.DIMS, f"{meta.modality} features have D={arr.shape[1]}, the model needs {need}")
    if not all_finite(arr):
        return Rejection(Reason.NON_FINITE, f"{meta.modality} features contain NaN or Inf")
    return Part(meta.utterance_id, meta.call_id, meta.speaker, meta.modality, arr, meta.produced_at, meta.start_ms, raw)


def all_finite(arr: np.ndarray) -> bool:
    """No NaN or infinity. float16 is read by its exponent bits: numpy has no native float16 arithmetic, and
    `np.isfinite` on a 768 x 50 float16 array cost 5x the rest of decoding it."""
    if arr.dtype == np.float16:
        return not bool(((arr.view(np.uint16) & 0x7C00) == 0x7C00).any())
    return bool(np.isfinite(arr).all())


_Read = tuple[FeatureHeader | FeatureMessage, tuple[int, int], Callable[[], np.ndarray]]


def _read_json(raw: bytes) -> _Read | Rejection:
    try:
        msg = FeatureMessage.model_validate_json(raw)
    except ValidationError as e:
        return _schema_rejection(e)
    if isinstance(msg.features, list):
        shape = (len(msg.features), len(msg.features[0]) if msg.features else 0)
    else:
        shape = msg.features.shape
    return msg, shape, msg.array


def _read_binary(raw: bytes) -> _Read | Rejection:
    try:
        header, body = split_frame(raw, FEATURES_MAGIC)
        head = FeatureHeader.model_validate_json(header)
    except FrameError as e:
        return Rejection(Reason.SCHEMA, str(e))
    except ValidationError as e:
        return _schema_rejection(e, "header")
    return head, head.shape, lambda: feature_array(raw, head, body)


def _schema_rejection(e: ValidationError, within: str = "") -> Rejection:
    errs = e.errors(include_url=False, include_input=False)
    first = errs[0]
    if first["type"] == "json_invalid":
        return Rejection(Reason.NOT_JSON, f"{within + ': ' if within else ''}{first['msg']}"[:200])
    for err in errs:
        if err["loc"] and err["loc"][0] in ("utterance_id", "call_id") and err["type"] != "missing":
            return Rejection(Reason.BAD_ID, f"{err['loc'][0]}: {err['msg']}"[:200])
    where = ".".join(str(p) for p in first["loc"])
    return Rejection(Reason.SCHEMA, f"{where}: {first['msg']}"[:200])


def profile_of(predictor: Predictor) -> ModelProfile:
    """What a part must match to be scored by `predictor`: its dims and extractors, by wire modality."""
    dims = dict(zip(WIRE_MODALITIES, predictor.input_dims, strict=True))
    return ModelProfile(dims, by_wire(predictor.checkpoint.profile.extractor_ids))
