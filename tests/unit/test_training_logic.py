"""The trainer's pure parts: the time-ordered split, rebuilding a training split, the bounded store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streams.learning.gate import split_by_time, to_split
from streams.learning.store import Example, TrainingStore
from streams.messages import EncodedArray, FeatureMessage, FeedbackLabel, JoinedFeatures
from streams.wire import Features, WireFormat, encode_features, read_joined


def ex(i: int, t: int = 3) -> Example:
    return Example(f"u{i}", float(i), labeled_at=1000 + i,
                   arrays={"text": np.full((t, 4), i, np.float32), "audio": np.ones((2, 3), np.float32)})


def test_split_by_time_holds_out_the_newest() -> None:
    examples = [ex(i) for i in range(20)]
    train, valid, hold = split_by_time(examples, holdout_frac=0.2, valid_frac=0.25)
    assert [e.utterance_id for e in hold] == [f"u{i}" for i in range(16, 20)]
    assert [e.utterance_id for e in valid] == [f"u{i}" for i in range(12, 16)]
    assert len(train) == 12 and max(e.labeled_at for e in train) < min(e.labeled_at for e in valid)


def test_to_split_fits_lengths_and_marks_missing_modalities() -> None:
    split = to_split([ex(1, t=3), ex(2, t=9)], dims=(4, 3, 2), seq_len=6)
    assert split.features["text"].shape == (2, 6, 4)
    assert list(split.lengths["text"]) == [3, 6]  # 9 frames are averaged down to 6
    assert list(split.lengths["vision"]) == [0, 0]  # no visual part: missing, not zeros that look real
    np.testing.assert_array_equal(split.labels, [1.0, 2.0])
    assert split.features["text"][0, 3:].sum() == 0


def joined(u: str, produced_at: int | None = None) -> tuple[JoinedFeatures, dict[str, np.ndarray]]:
    """A joined-features record of an earlier worker (JSON, version 1) as the trainer reads it."""
    return read_joined(JoinedFeatures(
        utterance_id=u, call_id="c", speaker="customer", model_version="v", score=0.0,
        parts={"text": FeatureMessage(utterance_id=u, modality="text", produced_at=1,
                                      features=EncodedArray.from_numpy(np.ones((2, 4), np.float32)))},
        produced_at=produced_at or time.time_ns() // 1_000_000).model_dump_json().encode())  # type: ignore[return-value]


def label(u: str, value: float, at: int) -> FeedbackLabel:
    return FeedbackLabel(utterance_id=u, label=value, source="qa", labeled_at=at)


def test_store_matches_replaces_bounds_and_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    store = TrainingStore(db)
    store.add_features(*joined("a"))
    assert not store.add_label(label("a", 1.0, 10), b"raw-a", [])
    assert store.add_label(label("a", -1.0, 11), b"raw-a2", [])  # a second label replaces the first
    assert not store.add_label(label("ghost", 0.5, 12), b"raw-g", [("k", b"v")])
    store.commit()
    assert store.size() == 1 and store.matched("a") and not store.matched("ghost")
    assert [e.label for e in store.examples()] == [-1.0]
    assert store.take_unmatched(older_than_s=3600) == []  # still in its grace period
    gone = store.take_unmatched(older_than_s=0)
    assert gone == [("ghost", b"raw-g", [("k", b"v")])]
    store.set_meta("last_run_received", 123)
    store.commit()
    store.close()
    again = TrainingStore(db)
    assert again.size() == 1 and again.get_meta("last_run_received") == 123
    for i in range(5):
        again.add_features(*joined(f"f{i}", produced_at=10_000 + i))
        again.add_label(label(f"f{i}", 0.0, 100 + i), b"", [])
    again.prune(retention_s=10**9, max_features=3, max_examples=4)
    again.commit()
    assert again.size() <= 3 and {e.utterance_id for e in again.examples()} <= {"f2", "f3", "f4", "a"}


def test_the_workers_joined_record_keeps_each_parts_bytes_in_either_wire_version() -> None:
    from streams.messages import Prediction
    from streams.settings import LimitSettings
    from streams.worker.decode import ModelProfile, Part, decode_part
    from streams.worker.join import Joined
    from streams.worker.records import joined_record

    WIRES: tuple[WireFormat, ...] = ("v2", "v1")
    sent = {"text": np.full((3, 4), 0.5, np.float32), "audio": np.linspace(-2, 2, 6, dtype=np.float32).reshape(3, 2)}
    raws = {m: encode_features(Features("u1", m, a, 5, call_id="c1", speaker="customer"), wire)
            for (m, a), wire in zip(sent.items(), WIRES, strict=True)}
    profile = ModelProfile({"text": 4, "audio": 2, "visual": 2}, {})
    parts = {m: decode_part(raw, m, LimitSettings(), profile) for m, raw in raws.items()}
    assert all(isinstance(p, Part) for p in parts.values())
    item = Joined("c1", "u1", "customer", parts, (), (), False, 0.1)  # type: ignore[arg-type]
    pred = Prediction(utterance_id="u1", call_id="c1", speaker="customer", score=-1.25, label="negative",
                      modalities=["text", "audio"], model_version="abc", latency_ms=1.0, produced_at=5, predicted_at=6)
    record = joined_record(item, pred)
    assert raws["text"] in record and raws["audio"] in record  # the bytes as they arrived, not encoded again
    head, arrays = read_joined(record)
    assert head.score == -1.25 and head.model_version == "abc" and set(arrays) == {"text", "audio"}
    assert arrays["text"].dtype == np.float16 and arrays["audio"].dtype == np.float32
    np.testing.assert_array_equal(arrays["audio"], sent["audio"])
    np.testing.assert_allclose(arrays["text"], sent["text"], atol=1e-3)


def test_retraining_is_due_after_n_new_labels_or_on_schedule_from_the_first_start(tmp_path: Path) -> None:
    from streams.learning.registry import DirRegistry
    from streams.learning.trainer import Trainer
    from streams.settings import Settings, TrainerSettings

    s = Settings(state_dir=tmp_path, trainer=TrainerSettings(min_examples=10, retrain_after_labels=30,
                                                           retrain_every_s=3600))
    trainer = Trainer(s, DirRegistry(tmp_path / "registry"))
    started = trainer.store.get_meta("last_run_at")
    assert trainer.due() is None  # nothing to learn from
    for i in range(20):
        trainer.store.add_features(*joined(f"u{i}"))
        trainer.store.add_label(label(f"u{i}", 0.5, i), b"", [])
    trainer.store.commit()
    assert trainer.due() is None  # 20 new labels < 30, and the schedule started with the trainer
    assert trainer.due(now=started + 3600 * 1000 + 1) == "schedule (20 new labels)"
    for i in range(20, 30):
        trainer.store.add_features(*joined(f"u{i}"))
        trainer.store.add_label(label(f"u{i}", 0.5, i), b"", [])
    trainer.store.commit()
    assert trainer.due() == "30 new labels"
    trainer.store.set_meta("last_run_received", trainer.store.last_received())  # what a run records
    assert trainer.due(now=started + 10 * 3600 * 1000) is None  # no label is new: no run, however long it has been
    trainer.store.close()
