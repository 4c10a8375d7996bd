"""What the pipeline reads and writes: a part's source, the publisher it writes through, and the records it makes
from a batch's results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mmcl.predictor import PredictionBatch
from streams import wire
from streams.errors import ServiceError
from streams.messages import Prediction
from streams.settings import WIRE_MODALITIES
from streams.sinks.deadletter import Headers, OutRecord
from streams.worker.inference import BatchResult
from streams.worker.join import Joined


class Publisher(Protocol):
    """Publishes records and says, per record, whether the broker acknowledged it."""

    async def send_many(self, records: Sequence[OutRecord]) -> list[ServiceError | None]:
        """Publish; per record None (acknowledged by the broker) or why not. Never raises for a record."""


@dataclass(frozen=True)
class Source:
    """Where a part came from: enough to dead-letter it and to ack it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    handle: Any  # the consumer's own message/event object, given back to `ack`

    @property
    def tp(self) -> tuple[str, int]:
        """The (topic, partition) the part came from."""
        return (self.topic, self.partition)


def model_answer(pb: PredictionBatch, row: int, label_names: Sequence[str]) -> dict[str, Any]:
    """The answer in a batch's row `row` as a Prediction carries it: score, label, probabilities per label, fusion
    weight per modality (wire names) and the modalities used. `mmcl evaluate --predictions` writes the same fields."""
    probs = None if pb.probabilities is None or pb.probabilities.ndim != 2 or \
        pb.probabilities.shape[1] != len(label_names) else \
        {n: float(v) for n, v in zip(label_names, pb.probabilities[row], strict=True)}
    weights = None if pb.modality_weights is None else \
        {w: float(pb.modality_weights[row, j]) for j, w in enumerate(WIRE_MODALITIES)}
    score = pb.scores[row]
    return {"score": float(score) if score.ndim == 0 else score.tolist(),  # a list per sub-task (multitask)
            "label": pb.labels[row], "probabilities": probs, "modality_weights": weights,
            "modalities": [w for j, w in enumerate(WIRE_MODALITIES) if pb.modality_mask[row, j]]}


def predictions_of(result: BatchResult, label_names: list[str], predicted_at: int) -> list[Prediction]:
    """A batch's results as Prediction messages, stamped `t` (ms)."""
    pb = result.predictions
    assert pb is not None
    return [Prediction(utterance_id=item.utterance_id, call_id=item.call_id, speaker=item.speaker,
                       **model_answer(pb, i, label_names), masked=list(item.masked), model_version=pb.model_version,
                       latency_ms=float(max(0, predicted_at - item.event_at)), produced_at=item.produced_at,
                       predicted_at=predicted_at)
            for i, item in enumerate(result.items)]


def joined_record(item: Joined, prediction: Prediction) -> bytes:
    """The binary joined-features record: the result and the parts' original bytes, whichever wire version each
    came in (re-encoding ~200 kB of arrays per utterance cost ~2 ms of CPU, as much as scoring it). Each part was
    validated on the way in."""
    head = {"utterance_id": prediction.utterance_id, "call_id": prediction.call_id, "speaker": prediction.speaker,
            "produced_at": item.produced_at, "model_version": prediction.model_version, "score": prediction.score}
    return wire.joined_record(head, {m: part.raw for m, part in item.parts.items()})
