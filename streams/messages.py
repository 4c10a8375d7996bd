"""Wire messages (pydantic v2, JSON, `schema_version` on each) and the feature array codec."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION: Literal[1] = 1


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the time unit of every *_at field on the wire."""
    return time.time_ns() // 1_000_000
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Speaker = Literal["agent", "customer", "unknown"]
ModalityName = Literal["text", "audio", "visual"]


def _positive(shape: tuple[int, int]) -> tuple[int, int]:
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError("both dimensions must be >= 1")
    return shape


Shape = Annotated[tuple[int, int], AfterValidator(_positive)]  # an array's [T, D]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = SCHEMA_VERSION


class EncodedArray(BaseModel):
    """A float32 little-endian array: base64 of the raw bytes, with its shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dtype: Literal["float32"] = "float32"
    shape: Shape = Field(description="[T, D]")
    data: str = Field(description="base64 of T*D little-endian float32 values, row-major")

    def to_numpy(self) -> np.ndarray:
        """The float32 (T, D) array, checked against its shape."""
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"features.data is not valid base64: {e}") from None
        t, d = self.shape
        if len(raw) != t * d * 4:
            raise ValueError(f"features.data holds {len(raw)} bytes, shape {list(self.shape)} needs {t * d * 4}")
        return np.frombuffer(raw, dtype="<f4").reshape(t, d)

    @classmethod
    def from_numpy(cls, arr: np.ndarray) -> EncodedArray:
        """Encode a (T, D) array as little-endian float32, base64."""
        a = np.ascontiguousarray(arr, dtype="<f4")
        if a.ndim == 1:
            a = a[None, :]
        return cls(shape=(a.shape[0], a.shape[1]), data=base64.b64encode(a.tobytes()).decode("ascii"))


class FeatureMessage(_Wire):
    """One modality of one utterance. Topic key: call_id (utterance_id when there is no call)."""

    utterance_id: Id
    call_id: Id | None = None
    speaker: Speaker = "unknown"
    modality: str = Field(description="text | audio | visual; must match the topic it was published to")
    features: EncodedArray | list[list[float]] = Field(description="[T, D] float32: encoded, or a plain nested list")
    feature_profile: Annotated[str, StringConstraints(max_length=128)] | None = None
    start_ms: int | None = Field(None, ge=0)
    end_ms: int | None = Field(None, ge=0)
    produced_at: int = Field(ge=0, description="ms since the epoch, when the producer sent it")

    def array(self) -> np.ndarray:
        """The features as float32 (T, D)."""
        if isinstance(self.features, EncodedArray):
            return self.features.to_numpy()
        rows = self.features
        if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("features must be a non-empty rectangular [T, D] list")
        return np.asarray(rows, dtype=np.float32)

    @property
    def key(self) -> str:
        """The Kafka key: the call id, or the utterance id when there is no call."""
        return self.call_id or self.utterance_id


class Prediction(_Wire):
    """One utterance's result, as written to Redis and the predictions topic."""

    utterance_id: Id
    call_id: Id | None
    speaker: Speaker
    score: float = Field(description="sentiment in [-3, 3] (MOSI scale) for regression models, [-1, 1] polarity otherwise")
    label: str = Field(description="negative | neutral | positive (or the model's class name)")
    probabilities: dict[str, float] | None = None
    modality_weights: dict[ModalityName, float] | None = Field(
        None, description="MMCL's fusion weight per modality: which modality drove the result (0 = not used)")
    modalities: list[ModalityName] = Field(description="modalities the model used")
    masked: list[ModalityName] = Field(default_factory=list, description="parts received but not used (policy)")
    model_version: str
    latency_ms: float = Field(description="last modality produced_at -> Redis write")
    produced_at: int
    predicted_at: int


class Alert(_Wire):
    """A speaker's sentiment crossed the alert rule in a call (raised once until it clears)."""

    call_id: Id
    speaker: Speaker
    utterance_id: Id
    rule: str = Field(description="the rule in words, e.g. 'negative (< -0.5) in 3 of the last 4'")
    negative: int
    window: int
    mean_score: float
    raised_at: int


class FeedbackLabel(_Wire):
    """A label for an utterance, after the fact. A second label for the same utterance replaces the first."""

    utterance_id: Id
    call_id: Id | None = None
    label: float = Field(description="sentiment score on the model's scale (MOSI: -3..3); class models learn from "
                                     "scores too (their classes are score bins)", allow_inf_nan=False)
    source: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    labeled_at: int = Field(ge=0)


class JoinedFeatures(_Wire):
    """What the worker joined for one utterance, kept on the joined topic (key: utterance id) so feedback labels
    that arrive minutes to days later can be matched to the exact features the model saw. The parts are the
    feature messages as they arrived (the worker splices their bytes in rather than encoding the arrays again)."""

    utterance_id: Id
    call_id: Id | None
    speaker: Speaker
    parts: dict[ModalityName, FeatureMessage]
    produced_at: int
    model_version: str
    score: float


class ModelAnnouncement(_Wire):
    """On the model-updates topic (key: the model name) after a promotion or rollback. The registry stays the
    truth: a worker that hears one re-reads `current` there."""

    version: str
    checksum: str
    action: Literal["promote", "rollback"]
    announced_at: int


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "feature_message": FeatureMessage,
    "prediction": Prediction,
    "alert": Alert,
    "feedback_label": FeedbackLabel,
    "model_announcement": ModelAnnouncement,
    "joined_features": JoinedFeatures,
}
