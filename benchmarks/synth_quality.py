"""Quality on the synthetic dataset: MMCL (paper, calibrated, ablations) vs the late-fusion baseline, 5 seeds.

Prints a markdown table of test metrics (mean +- std over seeds), selected on validation, next to the
dataset's ideal values. Also reports Acc-2 with the visual modality removed at test time (a call without video).

    python benchmarks/synth_quality.py --seeds 5 --json benchmarks/results/synth_quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.checkpoint import load_checkpoint
from mmcl.config import ModelConfig, TrainConfig
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.data.tensors import to_tensors
from mmcl.evaluate import evaluate
from mmcl.presets import PRESETS
from mmcl.train import train

QUICK_MODEL, QUICK_TRAIN = PRESETS["quick"]["model"], PRESETS["quick"]["train"]
BASELINE_TRAIN = {"epochs": 150, "batch_size": 64, "lr": 1e-3, "early_stop_patience": 30}

VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "MMCL paper": ({**QUICK_MODEL, "decoupling": "paper"}, QUICK_TRAIN),
    "MMCL calibrated": ({**QUICK_MODEL, "decoupling": "calibrated"}, QUICK_TRAIN),
    "MMCL calibrated, no aux loss": ({**QUICK_MODEL, "decoupling": "calibrated"}, {**QUICK_TRAIN, "aux_weight": 0.0}),
    "MMCL paper, no act-reward": ({**QUICK_MODEL, "decoupling": "paper"}, {**QUICK_TRAIN, "act_reward": False}),
    "MMCL calibrated, modality dropout 0.3": (
        {**QUICK_MODEL, "decoupling": "calibrated"}, {**QUICK_TRAIN, "modality_dropout": 0.3}),
    "baseline (late fusion)": ({"kind": "late_fusion"}, BASELINE_TRAIN),
    "baseline, modality dropout 0.3": ({"kind": "late_fusion"}, {**BASELINE_TRAIN, "modality_dropout": 0.3}),
    "baseline, text only": ({"kind": "late_fusion", "use_modalities": ("text",)}, BASELINE_TRAIN),
    "baseline, audio only": ({"kind": "late_fusion", "use_modalities": ("audio",)}, BASELINE_TRAIN),
    "baseline, vision only": ({"kind": "late_fusion", "use_modalities": ("vision",)}, BASELINE_TRAIN),
}
COLUMNS = ("acc2_has0", "acc2_non0", "f1_has0", "acc7", "mae", "corr")


def run(seeds: int, only: list[str] | None, sizes: tuple[int, int, int], device: str) -> dict[str, Any]:
    ds = make_synthetic(SynthSpec(sizes=sizes))
    test = ds.splits["test"]
    results: dict[str, Any] = {"ideal": ds.meta["ideal_test_metrics"], "variants": {}}
    for name, (model_kw, train_kw) in VARIANTS.items():
        if only and name not in only:
            continue
        rows = []
        for seed in range(seeds):
            mcfg = ModelConfig(input_dims=ds.dims, seq_len=50, **model_kw)
            tcfg = TrainConfig(**{**train_kw, "seed": seed})
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.monotonic()
                r = train(ds, mcfg, tcfg, tmp, progress=False, log=lambda _: None, device=device)
                row = {**r.test, "seconds": time.monotonic() - t0, "best_epoch": r.best_epoch}
                ckpt = load_checkpoint(r.checkpoint, device=r.device)
                data = to_tensors(test, mcfg).to(r.device)
                no_vision = dataclasses.replace(data, modality_mask=data.modality_mask.clone())
                no_vision.modality_mask[:, 2] = False
                row["acc2_no_vision"] = evaluate(ckpt.model, no_vision, mcfg.task).metrics["acc2_has0"]
            rows.append(row)
            print(f"{name} seed {seed}: acc2 {row['acc2_has0']:.4f} mae {row['mae']:.4f} ({row['seconds']:.0f} s)",
                  flush=True)
        results["variants"][name] = rows
    return results


def table(results: dict[str, Any]) -> str:
    cols = (*COLUMNS, "acc2_no_vision", "seconds")
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    ideal = results["ideal"]
    for key in ("all", "text", "audio", "vision"):
        name = f"ideal: {'all modalities' if key == 'all' else key + ' only'}"
        vals = [f"{ideal[key][c]:.3f}" if ideal[key].get(c) is not None else "-" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(vals) + " | - | - |")
    for name, rows in results["variants"].items():
        cells = []
        for c in cols:
            v = np.array([r[c] for r in rows], dtype=np.float64)
            cells.append(f"{v.mean():.0f} ± {v.std():.0f}" if c == "seconds" else f"{v.mean():.3f} ± {v.std():.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--only", action="append", help="variant name (repeatable)")
    p.add_argument("--sizes", default="1284,229,686")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda")
    p.add_argument("--tag", default="", help="appended to each variant's name in the results, to keep a rerun apart "
                                              "from earlier results when tables are merged")
    p.add_argument("--json", type=Path, default=None, help="write the raw results here")
    p.add_argument("--from-json", type=Path, action="append", help="print the table of saved results (repeatable)")
    a = p.parse_args()
    if a.from_json:
        merged: dict[str, Any] = {"variants": {}}
        for path in a.from_json:
            saved = json.loads(path.read_text())
            merged["ideal"] = saved["ideal"]
            merged["variants"].update(saved["variants"])
        print(table(merged))
        return
    sizes = tuple(int(s) for s in a.sizes.split(","))
    results = run(a.seeds, a.only, sizes, a.device)  # type: ignore[arg-type]
    if a.tag:
        results["variants"] = {f"{name}{a.tag}": rows for name, rows in results["variants"].items()}
    print(table(results))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
