"""A synthetic dataset whose label needs all three modalities (MOSI-shaped by default).

Each utterance has three hidden factors, each carried by one modality only:
  polarity  p in {-1, +1}       text:   words from a fixed vocabulary; 2-4 of them are sentiment words of sign p
  intensity s ~ U(0, 3)          audio:  loudness / pitch-range channels proportional to s, on every frame
  flip      f ~ Bernoulli(0.3)   vision: a short burst of a fixed expression pattern (e.g. an ironic smile)
label y = clip((1 - 2f) * p * s + N(0, noise^2), -3, 3), rounded to 0.2 like averaged annotator scores.
`ideal_metrics` scores the Bayes-optimal predictor that knows the factors of a modality subset, on the very
test split generated: the ceiling each model can reach (the features add noise, so it is an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmcl.config import MODALITIES
from mmcl.data.dataset import SPLITS, Dataset, Split
from mmcl.metrics import mosi_metrics


@dataclass(frozen=True)
class SynthSpec:
    """The shape of a synthetic MOSI-like dataset: sizes, sequence length, dims, seed."""

    sizes: tuple[int, int, int] = (1284, 229, 686)  # MOSI's train / valid / test
    seq_len: int = 50
    dims: tuple[int, int, int] = (768, 5, 20)  # MOSI's text (BERT) / audio / vision
    flip_rate: float = 0.3
    label_noise: float = 0.3
    min_len: int = 10
    seed: int = 0


N_NEUTRAL, N_SENTIMENT = 400, 25  # vocabulary: neutral words, then positive words, then negative words


@dataclass(frozen=True)
class Latents:
    """The hidden factors a synthetic utterance is made from (what an ideal model would know)."""

    polarity: np.ndarray  # (N,) +-1
    intensity: np.ndarray  # (N,) [0, 3]
    flip: np.ndarray  # (N,) bool


def _directions(spec: SynthSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(10_000 + spec.seed)

    def unit(d: int) -> np.ndarray:
        v = rng.standard_normal(d)
        return (v / np.linalg.norm(v)).astype(np.float32)

    dt = spec.dims[0]
    # Word vectors like GloVe/BERT: a shared vocabulary, so a model must learn words, not memorise utterances.
    # Sentiment words share a direction +-u on top of their own identity.
    u = unit(dt)
    vocab = np.stack([unit(dt) for _ in range(N_NEUTRAL + 2 * N_SENTIMENT)]) * 4.0
    vocab[N_NEUTRAL : N_NEUTRAL + N_SENTIMENT] += 3.0 * u
    vocab[N_NEUTRAL + N_SENTIMENT :] -= 3.0 * u
    return {"vocab": vocab.astype(np.float32), "cue": unit(spec.dims[2]), "decoy": unit(spec.dims[2])}


def _make_split(n: int, spec: SynthSpec, rng: np.random.Generator, dirs: dict[str, np.ndarray], tag: str
                ) -> tuple[Split, Latents]:
    lat = Latents(
        polarity=rng.choice([-1.0, 1.0], size=n).astype(np.float32),
        intensity=rng.uniform(0.0, 3.0, size=n).astype(np.float32),
        flip=rng.random(n) < spec.flip_rate,
    )
    y = (1 - 2 * lat.flip) * lat.polarity * lat.intensity + rng.normal(0, spec.label_noise, n)
    y = np.round(np.clip(y, -3, 3) * 5) / 5  # multiples of 0.2, with exact zeros, like MOSI's averaged labels
    L, (dt, da, dv) = spec.seq_len, spec.dims
    lengths = rng.integers(spec.min_len, L + 1, size=n)
    text = np.zeros((n, L, dt), np.float32)
    audio = np.zeros((n, L, da), np.float32)
    vision = np.zeros((n, L, dv), np.float32)
    for i in range(n):
        ln = int(lengths[i])
        words = rng.integers(0, N_NEUTRAL, size=ln)
        k = int(rng.integers(2, 5))  # sentiment words, of the utterance's polarity
        first = N_NEUTRAL if lat.polarity[i] > 0 else N_NEUTRAL + N_SENTIMENT
        words[rng.choice(ln, size=k, replace=False)] = rng.integers(first, first + N_SENTIMENT, size=k)
        text[i, :ln] = dirs["vocab"][words] + rng.normal(0, 0.05, (ln, dt))
        s = lat.intensity[i] / 3.0
        audio[i, :ln] = rng.normal(0, 0.3, (ln, da))
        audio[i, :ln, 0] += 2.0 * s  # loudness
        audio[i, :ln, 1] += 1.5 * s * np.sin(np.linspace(0, 3 * np.pi, ln))  # pitch movement
        vision[i, :ln] = rng.normal(0, 0.3, (ln, dv))
        w = int(rng.integers(3, 7))
        start = int(rng.integers(0, max(ln - w, 0) + 1))
        if lat.flip[i]:
            vision[i, start : start + w] += 2.5 * dirs["cue"]
        if rng.random() < 0.5:  # a decoy expression, unrelated to the label, in both classes
            start = int(rng.integers(0, max(ln - w, 0) + 1))
            vision[i, start : start + w] += 2.5 * dirs["decoy"]
    lens = {m: lengths.astype(np.int64) for m in MODALITIES}
    ids = np.asarray([f"synth{tag}{i:05d}$_${i % 7}" for i in range(n)], dtype=np.str_)
    split = Split({"text": text, "audio": audio, "vision": vision}, lens, {m: "back" for m in MODALITIES},
                  y.astype(np.float32), ids)
    return split, lat


def oracle_prediction(lat: Latents, known: set[str], flip_rate: float) -> np.ndarray:
    """E[y | the factors carried by `known` modalities] (clipping ignored: it changes no sign and little else)."""
    p = lat.polarity if "text" in known else np.zeros_like(lat.polarity)
    s = lat.intensity if "audio" in known else np.full_like(lat.intensity, 1.5)
    sign = (1 - 2 * lat.flip.astype(np.float32)) if "vision" in known else np.float32(1 - 2 * flip_rate)
    scores: np.ndarray = p * s * sign
    return scores


def ideal_metrics(lat: Latents, y: np.ndarray, flip_rate: float) -> dict[str, dict[str, float | None]]:
    """Test metrics of predicting from the latents each modality reveals: the ceiling a model can reach."""
    subsets = {"all": set(MODALITIES), "text": {"text"}, "audio": {"audio"}, "vision": {"vision"}}
    out = {}
    for name, known in subsets.items():
        pred = oracle_prediction(lat, known, flip_rate)
        if not np.any(pred):  # knows no sign: the best constant guess is the label median
            pred = np.full_like(y, float(np.median(y)))
        # NaN (the correlation of a constant) becomes None, so the metadata stays strict JSON
        out[name] = {k: (round(v, 4) if np.isfinite(v) else None) for k, v in mosi_metrics(pred, y).items()}
    return out


def make_synthetic(spec: SynthSpec = SynthSpec()) -> Dataset:
    """A synthetic dataset whose label depends on factors spread over the three modalities."""
    rng = np.random.default_rng(spec.seed)
    dirs = _directions(spec)
    splits: dict[str, Split] = {}
    test_lat = None
    for name, n, tag in zip(SPLITS, spec.sizes, ("tr", "va", "te"), strict=True):
        splits[name], lat = _make_split(n, spec, rng, dirs, tag)
        if name == "test":
            test_lat = lat
    assert test_lat is not None
    meta: dict[str, Any] = {
        "source": "synthetic",
        "layout": "mmsa",
        "label_kind": "score",
        "score_range": 3.0,
        "synth": {"seed": spec.seed, "sizes": list(spec.sizes), "seq_len": spec.seq_len, "dims": list(spec.dims),
                  "flip_rate": spec.flip_rate, "label_noise": spec.label_noise},
        "ideal_test_metrics": ideal_metrics(test_lat, splits["test"].labels, spec.flip_rate),
    }
    return Dataset(splits, meta)


def to_mmsa_dict(ds: Dataset) -> dict[str, dict[str, Any]]:
    """The MMSA pickle layout (aligned_50.pkl) of a dataset, for users and for loader tests."""
    out = {}
    for name, s in ds.splits.items():
        n, lt = s.features["text"].shape[:2]
        mask = (np.arange(lt)[None, :] < s.lengths["text"][:, None]).astype(np.float32)
        out[name] = {
            "raw_text": [f"utterance {i}" for i in range(n)],
            "text": s.features["text"],
            "text_bert": np.stack([mask * 101, mask, np.zeros_like(mask)], axis=1),
            "audio": s.features["audio"],
            "vision": s.features["vision"],
            "id": list(s.ids),
            "regression_labels": s.labels,
            "classification_labels": (np.sign(s.labels) + 1).astype(np.float32),
            "annotations": ["Negative" if v < 0 else "Neutral" if v == 0 else "Positive" for v in s.labels],
        }
    return out
