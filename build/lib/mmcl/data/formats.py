"""Readers for the public dataset pickles in their three published layouts: MMSA (`aligned_50.pkl`,
`unaligned_50.pkl`, `unaligned_39.pkl`), CMU/MulT (`*_data.pkl`) and MAG-BERT (`mosi.pkl`).

Pickle can run code: these functions are only for files the user names on the command line (`mmcl data
convert`), never for anything received over a network. Everything downstream reads the safe .npz instead.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.config import IEMOCAP_EMOTIONS, MODALITIES
from mmcl.data.dataset import SPLITS, Dataset, Split
from mmcl.errors import DataFormatError
from mmcl.sequence import PadSide, detect_padding_side, valid_lengths

HASHED_TEXT_DIM = 300  # MAG-BERT files hold words, not vectors; see hashed_word_vectors


def clean(x: Any, name: str) -> np.ndarray:
    """float32 copy-free where possible; -inf / +inf / NaN -> 0 (audio in these files holds -inf)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise DataFormatError(f"{name}: expected numbers, found dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not arr.flags.writeable:
        arr = arr.copy()
    np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if arr.ndim != 3:
        raise DataFormatError(f"{name}: expected (N, T, d), found shape {arr.shape}")
    return arr


def decode_id(raw: Any) -> str:
    """ids come as str, bytes, or arrays of byte strings (CMU MOSI: video, start, end)."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    if isinstance(raw, np.ndarray) and raw.ndim > 0:
        return "_".join(decode_id(r) for r in raw.ravel())
    if isinstance(raw, (list, tuple)):
        return "_".join(decode_id(r) for r in raw)
    return str(raw.item() if isinstance(raw, np.generic) else raw)


def detect_layout(obj: Any) -> str:
    """Which public layout an unpickled dataset dict has (MMSA aligned, CMU-MultimodalSDK ...)."""
    if not isinstance(obj, dict):
        raise DataFormatError(f"top level is a {type(obj).__name__}, expected a dict of splits")
    if {"train", "dev", "test"} <= obj.keys() and isinstance(obj["train"], list):
        return "magbert"
    if not {"train", "valid", "test"} <= obj.keys():
        raise DataFormatError(f"expected splits train/valid/test (or train/dev/test), found {sorted(obj)[:6]}")
    split = obj["train"]
    if not isinstance(split, dict):
        raise DataFormatError("split 'train' is not a dict")
    if "regression_labels" in split:
        return "mmsa"
    if "labels" in split:
        return "cmu"
    raise DataFormatError(f"unknown layout: split keys {sorted(split)[:8]}")


def _lengths(x: np.ndarray, given: Any | None) -> tuple[np.ndarray, PadSide]:
    side = detect_padding_side(x)
    if given is not None:
        return np.minimum(np.asarray(given, dtype=np.int64).ravel(), x.shape[1]), side if side != "none" else "back"
    return valid_lengths(x, side), side


def _mmsa_split(d: dict[str, Any], name: str) -> Split:
    feats, lengths, sides = {}, {}, {}
    for m in MODALITIES:
        if m not in d:
            raise DataFormatError(f"MMSA split {name!r} lacks {m!r}")
        # pop: the source array can be freed as soon as its float32 copy exists (MOSEI files are GBs)
        feats[m] = clean(d.pop(m), f"{name}/{m}")
    text_len = None
    if "text_bert" in d:  # (N, 3, Lt): ids, attention mask, segments; the mask gives the true text length
        tb = np.asarray(d["text_bert"])
        if tb.ndim == 3 and tb.shape[1] == 3:
            text_len = tb[:, 1, :].sum(axis=1)
    for m, given in (("text", text_len), ("audio", d.get("audio_lengths")), ("vision", d.get("vision_lengths"))):
        lengths[m], sides[m] = _lengths(feats[m], given)
    labels = np.asarray(d["regression_labels"], dtype=np.float32).reshape(-1)
    ids = np.asarray([decode_id(i) for i in d.get("id", range(len(labels)))], dtype=np.str_)
    return Split(feats, lengths, sides, labels, ids)


def _cmu_split(d: dict[str, Any], name: str) -> tuple[Split, str]:
    feats, lengths, sides = {}, {}, {}
    for m in MODALITIES:
        if m not in d:
            raise DataFormatError(f"CMU split {name!r} lacks {m!r}")
        feats[m] = clean(d.pop(m), f"{name}/{m}")
        lengths[m], sides[m] = _lengths(feats[m], None)
    y = np.nan_to_num(np.asarray(d["labels"], dtype=np.float32))
    if y.ndim == 3 and y.shape[1:] == (4, 2):  # IEMOCAP: one-hot per emotion
        labels, kind = y.argmax(-1).astype(np.int64), "multitask"
    elif y.size == y.shape[0]:
        labels, kind = y.reshape(-1), "score"
    else:
        raise DataFormatError(f"{name}/labels: unsupported shape {y.shape}")
    raw_ids = d.get("id")
    ids = np.asarray([decode_id(i) for i in (raw_ids if raw_ids is not None else range(len(labels)))], dtype=np.str_)
    return Split(feats, lengths, sides, labels, ids), kind


def hashed_word_vectors(words: list[str], dim: int = HASHED_TEXT_DIM) -> np.ndarray:
    """A fixed random unit vector per lower-cased word, seeded by its hash: an offline, model-free text feature."""
    out = np.zeros((len(words), dim), dtype=np.float32)
    for i, w in enumerate(words):
        seed = int.from_bytes(hashlib.blake2b(w.lower().encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        out[i] = v / np.linalg.norm(v)
    return out


def _pad_stack(rows: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    t = max((r.shape[0] for r in rows), default=0)
    out = np.zeros((len(rows), max(t, 1), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out, np.asarray([r.shape[0] for r in rows], dtype=np.int64)


def _magbert_split(items: list[Any], name: str) -> Split:
    texts, visuals, acoustics, labels, ids = [], [], [], [], []
    for k, item in enumerate(items):
        try:
            (words, visual, acoustic), label, segment = item
        except (TypeError, ValueError) as e:
            raise DataFormatError(f"MAG-BERT {name}[{k}]: expected ((words, visual, acoustic), label, segment)") from e
        texts.append(hashed_word_vectors([str(w) for w in words]))
        visuals.append(clean(np.asarray(visual)[None], f"{name}[{k}]/visual")[0])
        acoustics.append(clean(np.asarray(acoustic)[None], f"{name}[{k}]/acoustic")[0])
        labels.append(float(np.asarray(label, dtype=np.float32).reshape(-1)[0]))
        ids.append(decode_id(segment))
    dims = {m: (a[0].shape[1] if a else 1) for m, a in zip(MODALITIES, (texts, acoustics, visuals), strict=True)}
    feats, lengths = {}, {}
    for m, rows in zip(MODALITIES, (texts, acoustics, visuals), strict=True):
        feats[m], lengths[m] = _pad_stack(rows, dims[m])
    sides: dict[str, PadSide] = {m: "back" for m in MODALITIES}
    return Split(feats, lengths, sides, np.asarray(labels, dtype=np.float32), np.asarray(ids, dtype=np.str_))


def load_public_pickle(path: str | Path, score_range: float | None = None) -> Dataset:
    """Load one of the public layouts from a path the user named. Unpickles: trusted files only."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"no such file: {path}")
    try:
        with path.open("rb") as f:
            obj = pickle.load(f)  # noqa: S301 - user-named public dataset file, offline tool only
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as e:
        raise DataFormatError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from e
    layout = detect_layout(obj)
    meta: dict[str, Any] = {"source": f"{layout}:{path.name}", "layout": layout, "label_kind": "score"}
    splits: dict[str, Split] = {}
    if layout == "magbert":
        for ours, theirs in zip(SPLITS, ("train", "dev", "test"), strict=True):
            splits[ours] = _magbert_split(obj[theirs], theirs)
        meta["text_features"] = f"hashed-words-{HASHED_TEXT_DIM}"
    elif layout == "mmsa":
        for name in SPLITS:
            splits[name] = _mmsa_split(obj[name], name)
    else:
        kinds = set()
        for name in SPLITS:
            splits[name], kind = _cmu_split(obj[name], name)
            kinds.add(kind)
        meta["label_kind"] = kinds.pop() if len(kinds) == 1 else "score"
    del obj
    if meta["label_kind"] == "multitask":
        meta["subtask_names"] = list(IEMOCAP_EMOTIONS)
    else:
        biggest = max(float(np.abs(s.labels).max(initial=0)) for s in splits.values())
        meta["score_range"] = score_range or (1.0 if biggest <= 1.0 else 3.0)
    _check_dims(splits)
    return Dataset(splits, meta)


def _check_dims(splits: dict[str, Split]) -> None:
    for m in MODALITIES:
        dims = {name: s.features[m].shape[2] for name, s in splits.items()}
        if len(set(dims.values())) > 1:
            raise DataFormatError(f"{m} feature dims differ between splits: {dims}")
