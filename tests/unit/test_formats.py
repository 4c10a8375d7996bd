"""Loaders read small files built here in exactly the public layouts (MMSA, CMU/MulT, MAG-BERT)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mmcl.data import load_dataset, save_dataset
from mmcl.data.formats import detect_layout, load_public_pickle
from mmcl.errors import DataFormatError


def _dump(obj: object, path: Path) -> Path:
    with path.open("wb") as f:
        pickle.dump(obj, f)
    return path


def mmsa_split(n: int, rng: np.random.Generator, unaligned: bool) -> dict:
    lt, la, lv = (50, 375, 500) if unaligned else (50, 50, 50)
    text = rng.standard_normal((n, lt, 768)).astype(np.float32)
    bert_mask = np.zeros((n, lt), np.float32)
    bert_mask[:, :30] = 1
    audio = rng.standard_normal((n, la, 5)).astype(np.float32)
    audio[0, 3, 2] = -np.inf
    audio[1, 4, 0] = np.nan
    vision = rng.standard_normal((n, lv, 20)).astype(np.float32)
    d = {
        "raw_text": ["hello"] * n, "text": text, "text_bert": np.stack([bert_mask, bert_mask, 0 * bert_mask], 1),
        "audio": audio, "vision": vision, "id": [f"vid$_${i}" for i in range(n)],
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "classification_labels": np.zeros(n), "annotations": ["Neutral"] * n,
    }
    if unaligned:
        d["audio_lengths"] = [200] * n
        d["vision_lengths"] = [400] * n
        audio[:, 200:] = 0
        vision[:, 400:] = 0
    return d


@pytest.mark.parametrize("unaligned", [False, True])
def test_mmsa(tmp_path: Path, unaligned: bool) -> None:
    rng = np.random.default_rng(0)
    obj = {s: mmsa_split(n, rng, unaligned) for s, n in (("train", 4), ("valid", 2), ("test", 3))}
    ds = load_public_pickle(_dump(obj, tmp_path / "aligned_50.pkl"))
    assert ds.meta["layout"] == "mmsa" and ds.dims == (768, 5, 20)
    tr = ds.splits["train"]
    assert len(tr) == 4 and tr.ids[1] == "vid$_$1"
    assert np.isfinite(tr.features["audio"]).all() and tr.features["audio"][0, 3, 2] == 0
    assert (tr.lengths["text"] == 30).all()  # from the BERT attention mask
    if unaligned:
        assert (tr.lengths["audio"] == 200).all() and (tr.lengths["vision"] == 400).all()
    np.testing.assert_allclose(tr.labels, obj["train"]["regression_labels"])
    assert ds.meta["score_range"] == 3.0


def cmu_split(n: int, rng: np.random.Generator, iemocap: bool) -> dict:
    lt = 20 if iemocap else 50
    da, dv = (74, 35) if iemocap else (5, 20)
    d = {"text": rng.standard_normal((n, lt, 300)), "audio": rng.standard_normal((n, lt, da)),
         "vision": rng.standard_normal((n, lt, dv))}
    for k in ("text", "audio", "vision"):
        d[k][:, :5] = 0  # left padding
    d["audio"][0, 7, 1] = -np.inf
    if iemocap:
        labels = np.zeros((n, 4, 2))
        labels[:, :, 0] = 1
        labels[0, 1] = [0, 1]  # happy
        labels[1, 3] = [0, 1]  # angry
        d["labels"] = labels
    else:
        d["labels"] = rng.uniform(-3, 3, (n, 1, 1))
        d["id"] = np.array([[b"vidA", b"0", b"1"]] * n)
    return d


def test_cmu_mosi_with_byte_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    obj = {s: cmu_split(3, rng, False) for s in ("train", "valid", "test")}
    ds = load_public_pickle(_dump(obj, tmp_path / "mosi_data.pkl"))
    tr = ds.splits["train"]
    assert ds.meta["layout"] == "cmu" and ds.meta["label_kind"] == "score"
    assert tr.ids[0] == "vidA_0_1"
    assert tr.pad_side["text"] == "front" and (tr.lengths["text"] == 45).all()
    assert tr.features["audio"][0, 7, 1] == 0
    assert tr.labels.shape == (3,)


def test_cmu_iemocap_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    obj = {s: cmu_split(3, rng, True) for s in ("train", "valid", "test")}
    ds = load_public_pickle(_dump(obj, tmp_path / "iemocap_data.pkl"))
    tr = ds.splits["train"]
    assert ds.meta["label_kind"] == "multitask" and ds.meta["subtask_names"] == ["neutral", "happy", "sad", "angry"]
    np.testing.assert_array_equal(tr.labels, [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert ds.dims == (300, 74, 35) and tr.ids[2] == "2"


def test_magbert(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)

    def item(n_words: int, i: int) -> tuple:
        words = ["this", "is", "great", "stuff", "ok"][:n_words]
        return ((words, rng.standard_normal((n_words, 47)), rng.standard_normal((n_words, 74))), np.array([[1.4]]),
                f"seg{i}")

    obj = {"train": [item(5, 0), item(3, 1)], "dev": [item(2, 2)], "test": [item(4, 3)]}
    ds = load_public_pickle(_dump(obj, tmp_path / "mosi.pkl"))
    tr = ds.splits["train"]
    assert ds.meta["layout"] == "magbert" and ds.dims == (300, 74, 47)
    assert list(tr.lengths["text"]) == [5, 3] and tr.ids[1] == "seg1"
    assert tr.labels[0] == pytest.approx(1.4)
    # the same word gets the same vector in every utterance
    np.testing.assert_array_equal(tr.features["text"][0, 0], tr.features["text"][1, 0])


def test_safe_round_trip_never_unpickles(tmp_path: Path, tiny_dataset) -> None:
    path = save_dataset(tiny_dataset, tmp_path / "d.npz")
    with np.load(path, allow_pickle=False) as z:  # would raise if any entry needed pickle
        assert "train/text" in z
    back = load_dataset(path)
    for name, split in tiny_dataset.splits.items():
        np.testing.assert_array_equal(back.splits[name].features["audio"], split.features["audio"])
        np.testing.assert_array_equal(back.splits[name].labels, split.labels)
        assert list(back.splits[name].ids) == list(split.ids)
    assert back.meta["ideal_test_metrics"] == tiny_dataset.meta["ideal_test_metrics"]


@pytest.mark.parametrize(
    ("obj", "message"),
    [([1, 2], "top level"), ({"a": 1}, "expected splits"), ({"train": {"x": 1}, "valid": {}, "test": {}}, "unknown")],
)
def test_unknown_layouts(obj: object, message: str) -> None:
    with pytest.raises(DataFormatError, match=message):
        detect_layout(obj)


def test_not_a_pickle(tmp_path: Path) -> None:
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"definitely not a pickle")
    with pytest.raises(DataFormatError, match="not a readable pickle"):
        load_public_pickle(bad)


def test_pickle_refused_by_the_safe_loader(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="convert it first"):
        load_dataset(_dump({}, tmp_path / "x.pkl"))
