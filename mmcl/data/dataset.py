"""The in-memory dataset and its safe file format (.npz without pickled objects + JSON metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.config import MODALITIES
from mmcl.errors import DataFormatError
from mmcl.sequence import PadSide

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
FORMAT_VERSION = 1


@dataclass
class Split:
    """One split. Features are cleaned (finite) float32 (N, T_m, d_m) with zero padding on `pad_side`."""

    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]  # valid rows per sample and modality, (N,)
    pad_side: dict[str, PadSide]
    labels: np.ndarray  # "score": (N,) float32; "multitask": (N, S) int64 in {0, 1}
    ids: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """Named splits of one dataset, with its metadata (label kind, score range, provenance)."""

    splits: dict[str, Split]
    # label_kind ("score" | "multitask"), score_range, subtask_names, source, extras (e.g. synth ideal metrics)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities some training utterance has (MODALITIES names and order): what a model can learn here."""
        lengths = self.splits["train"].lengths
        return tuple(m for m in MODALITIES if bool((lengths[m] > 0).any()))

    @property
    def dims(self) -> tuple[int, int, int]:
        """Feature dims per modality (text, audio, vision), from the train split."""
        f = self.splits["train"].features
        text, audio, vision = (int(f[m].shape[2]) for m in MODALITIES)
        return text, audio, vision


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write a dataset as a plain .npz (no pickles), with its metadata as JSON."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    meta = dict(ds.meta, format_version=FORMAT_VERSION, pad_side={})
    for name, split in ds.splits.items():
        for m in MODALITIES:
            arrays[f"{name}/{m}"] = np.ascontiguousarray(split.features[m], dtype=np.float32)
            arrays[f"{name}/{m}_lengths"] = split.lengths[m].astype(np.int64)
        meta["pad_side"][name] = split.pad_side
        arrays[f"{name}/labels"] = split.labels
        arrays[f"{name}/ids"] = np.asarray(split.ids, dtype=np.str_)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **arrays for its allow_pickle flag
    return path


def load_dataset(path: str | Path) -> Dataset:
    """Read a file written by save_dataset. Never unpickles (allow_pickle=False)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"no such dataset file: {path}")
    if path.suffix in {".pkl", ".pickle"}:
        raise DataFormatError(f"{path} is a pickle: convert it first with `mmcl data convert {path} OUT.npz`")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            splits = {}
            for name in SPLITS:
                if f"{name}/labels" not in z:
                    raise DataFormatError(f"{path}: split {name!r} is missing")
                splits[name] = Split(
                    features={m: z[f"{name}/{m}"] for m in MODALITIES},
                    lengths={m: z[f"{name}/{m}_lengths"] for m in MODALITIES},
                    pad_side=meta["pad_side"][name],
                    labels=z[f"{name}/labels"],
                    ids=z[f"{name}/ids"],
                )
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path} is not an mmcl dataset file ({type(e).__name__}: {e})") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataFormatError(f"{path}: unsupported dataset format version {meta.get('format_version')}")
    return Dataset(splits, meta)


def describe(ds: Dataset) -> dict[str, Any]:
    """Splits, shapes, dims and label statistics, for `mmcl data inspect`."""
    out: dict[str, Any] = {"label_kind": ds.meta.get("label_kind"), "source": ds.meta.get("source"), "splits": {}}
    if ds.meta.get("extractor_ids"):
        out["extractor_ids"] = ds.meta["extractor_ids"]
    for name, split in ds.splits.items():
        info: dict[str, Any] = {"n": len(split)}
        for m in MODALITIES:
            x, ln = split.features[m], split.lengths[m]
            info[m] = {
                "shape": list(x.shape),
                "pad_side": split.pad_side[m],
                "length_min": int(ln.min()) if ln.size else 0,
                "length_mean": round(float(ln.mean()) if ln.size else 0.0, 2),
                "length_max": int(ln.max()) if ln.size else 0,
            }
        y = split.labels
        if y.ndim == 1 and y.size:
            info["labels"] = {
                "mean": round(float(y.mean()), 4), "std": round(float(y.std()), 4),
                "min": float(y.min()), "max": float(y.max()),
                "negative": int((y < 0).sum()), "zero": int((y == 0).sum()), "positive": int((y > 0).sum()),
            }
        elif y.ndim == 2:
            names = ds.meta.get("subtask_names") or [str(i) for i in range(y.shape[1])]
            info["labels"] = {n: int(y[:, i].sum()) for i, n in enumerate(names)}
        out["splits"][name] = info
    return out
