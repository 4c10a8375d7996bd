"""`mmcl data build`: a labelled manifest of raw utterances -> a dataset file that `mmcl train` reads, with the
extractor of each modality recorded so the trained checkpoint names them."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from extractors.base import ExtractionError
from extractors.profile import checkpoint_ids
from extractors.registry import extractor_dim
from extractors.utterance import FeatureMaker, Utterance
from mmcl.config import MODALITIES, WIRE_MODALITIES, model_modality
from mmcl.data.dataset import SPLITS, Dataset, Split
from mmcl.errors import ConfigError


@dataclass
class BuildReport:
    """What building a dataset did: utterances per split, missing modalities, failures."""

    utterances: int
    per_split: dict[str, int]
    missing: dict[str, int]  # modality some utterances have -> utterances without it (kept, with it masked)
    failed: list[tuple[str, str]]  # (utterance_id, reason): skipped


def split_by_call(utts: Sequence[Utterance], fractions: tuple[float, float], seed: int) -> dict[str, list[Utterance]]:
    """Whole calls go to one split: utterances of a call share a speaker and a topic, and a model that saw half a
    call in training would look better on the other half than it will on a new call."""
    groups: dict[str, list[Utterance]] = {}
    for u in utts:
        groups.setdefault(u.call_id or u.utterance_id, []).append(u)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n = len(keys)
    n_valid = max(1, round(n * fractions[0])) if fractions[0] > 0 else 0
    n_test = max(1, round(n * fractions[1])) if fractions[1] > 0 else 0
    if n - n_valid - n_test < 1:
        raise ConfigError(f"{n} calls cannot fill train, valid and test: label more calls or lower --valid/--test")
    chosen = {"valid": keys[:n_valid], "test": keys[n_valid:n_valid + n_test], "train": keys[n_valid + n_test:]}
    return {s: [u for k in chosen[s] for u in groups[k]] for s in SPLITS}


def given_splits(utts: Sequence[Utterance]) -> dict[str, list[Utterance]]:
    """The manifest's own split (its `split` column; read_manifest checked that calls do not straddle them)."""
    out = {s: [u for u in utts if u.split == s] for s in SPLITS}
    if not out["train"]:
        raise ConfigError("the manifest's split column puts no utterance in train")
    return out


def build(utts: Sequence[Utterance], maker: FeatureMaker, fractions: tuple[float, float] = (0.1, 0.1),
          seed: int = 0, score_range: float = 3.0,
          progress: Callable[[int, int], None] | None = None) -> tuple[Dataset, BuildReport]:
    """Extract every utterance of a labelled manifest and split the calls into a dataset."""
    unlabeled = [u.utterance_id for u in utts if u.label is None]
    if unlabeled:
        raise ConfigError(f"{len(unlabeled)} of {len(utts)} utterances have no label (first: {unlabeled[0]}); "
                          "data build needs labels")
    out_of_range = [u.utterance_id for u in utts if abs(float(u.label or 0.0)) > score_range]
    if out_of_range:
        raise ConfigError(f"label of {out_of_range[0]} is outside [-{score_range}, {score_range}] (--score-range)")
    have = {m for u in utts for m in u.available(maker.use_asr)}
    wanted = [m for m in WIRE_MODALITIES if m in have]
    if not wanted:
        raise ConfigError("no utterance has a transcript, audio or video to extract")
    maker.setup(wanted)
    report = BuildReport(len(utts), {}, dict.fromkeys(wanted, 0), [])
    feats: dict[str, dict[str, np.ndarray]] = {}
    done = 0
    for u in utts:
        try:
            got = {}
            for m in u.available(maker.use_asr):
                got[m] = maker.extract(u, m).features
        except ExtractionError as e:
            report.failed.append((u.utterance_id, str(e)))
            got = {}
        else:
            for m in wanted:
                if m not in got:
                    report.missing[m] += 1
            feats[u.utterance_id] = got
        done += 1
        if progress is not None:
            progress(done, len(utts))
    kept = [u for u in utts if u.utterance_id in feats]
    if not kept:
        first = report.failed[0] if report.failed else ("-", "nothing extracted")
        raise ConfigError(f"no utterance could be extracted (first failure, {first[0]}: {first[1]})")
    # A modality no utterance has keeps its extractor's dim, with every sequence empty (masked): a model trained on
    # this set reads the others only, and its checkpoint still describes the features that modality would carry.
    dims = {m: next((f[m].shape[1] for f in feats.values() if m in f), extractor_dim(maker.chosen[m]))
            for m in WIRE_MODALITIES}
    splits = {}
    for name, members in (given_splits(kept) if kept[0].split else split_by_call(kept, fractions, seed)).items():
        splits[name] = _split(members, feats, dims)
        report.per_split[name] = len(members)
    ds = Dataset(splits, {
        "source": "raw-media",
        "label_kind": "score",
        "score_range": score_range,
        "extractor_ids": checkpoint_ids({m: maker.chosen[m] for m in wanted}),
        "alignment": maker.align,
        "seq_len": maker.seq_len,
    })
    return ds, report


def _split(members: Sequence[Utterance], feats: dict[str, dict[str, np.ndarray]], dims: dict[str, int]) -> Split:
    n = len(members)
    features, lengths = {}, {}
    for wire in WIRE_MODALITIES:
        model = model_modality(wire)
        t = max([feats[u.utterance_id][wire].shape[0] for u in members if wire in feats[u.utterance_id]] or [1])
        x = np.zeros((n, t, dims[wire]), np.float32)
        ln = np.zeros(n, np.int64)
        for i, u in enumerate(members):
            arr = feats[u.utterance_id].get(wire)
            if arr is not None:
                x[i, : arr.shape[0]] = arr
                ln[i] = arr.shape[0]
        features[model], lengths[model] = x, ln
    labels = np.asarray([float(u.label or 0.0) for u in members], np.float32)
    ids = np.asarray([u.utterance_id for u in members], dtype=np.str_)
    return Split(features, lengths, dict.fromkeys(MODALITIES, "back"), labels, ids)


def print_progress(done: int, total: int) -> None:
    """A one-line progress counter on stderr."""
    if done == total or done % 10 == 0:
        print(f"\rextracted {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
