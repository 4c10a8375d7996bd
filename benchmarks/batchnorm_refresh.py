"""BatchNorm statistics re-estimated after each epoch vs the running averages, on a planted-structure set.

Trains MMCL's quick preset on a small synthetic set with little label noise for each decoupling, learning rate and
seed, with `TrainConfig.refresh_batchnorm` on and off, and prints a markdown table: test Acc-2 (mean, worst seed),
runs that did not beat the best single modality's ideal by 0.05 (collapsed), and epochs whose validation MAE was
worse than a constant answer's (an eval-mode blow-up), with the time per run.

    python benchmarks/batchnorm_refresh.py --seeds 4 --json benchmarks/results/batchnorm_refresh.json
    python benchmarks/batchnorm_refresh.py --from-json benchmarks/results/batchnorm_refresh.json   # the table
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.config import ModelConfig, TrainConfig
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.presets import PRESETS
from mmcl.train import constant_metric, train

COLLAPSED = 0.05  # a run not this far above the best single modality's ideal learnt one modality at most
SPEC = SynthSpec(sizes=(600, 150, 300), seq_len=20, dims=(64, 5, 20), min_len=10, label_noise=0.05)


def run(seeds: int, decouplings: list[str], lrs: list[float]) -> dict[str, Any]:
    ds = make_synthetic(SPEC)
    ideal = ds.meta["ideal_test_metrics"]
    ceiling = max(ideal[m]["acc2_has0"] for m in ("text", "audio", "vision"))
    preset = PRESETS["quick"]
    mcfg0 = ModelConfig(**{**preset["model"], "input_dims": SPEC.dims, "seq_len": SPEC.seq_len})
    constant = constant_metric(mcfg0.task, ds.splits["train"].labels, ds.splits["valid"].labels, "mae")
    rows: dict[str, Any] = {}
    for decoupling in decouplings:
        for lr in lrs:
            for refresh in (False, True):
                name = f"{decoupling}, lr {lr:g}, refresh {'on' if refresh else 'off'}"
                runs = []
                for seed in range(seeds):
                    mcfg = mcfg0.model_copy(update={"decoupling": decoupling})
                    tcfg = TrainConfig(**{**preset["train"], "lr": lr, "seed": seed, "refresh_batchnorm": refresh})
                    with tempfile.TemporaryDirectory() as tmp:
                        t0 = time.monotonic()
                        r = train(ds, mcfg, tcfg, tmp, progress=False, log=lambda _line: None)
                        runs.append({"seed": seed, "acc2": r.test["acc2_has0"], "mae": r.test["mae"],
                                     "blowups": sum(h["valid_mae"] > constant for h in r.history),
                                     "seconds": time.monotonic() - t0})
                    print(name, runs[-1], flush=True)
                rows[name] = runs
    return {"ceiling": ceiling, "ideal_all": ideal["all"]["acc2_has0"], "constant_mae": constant, "rows": rows}


def table(res: dict[str, Any]) -> str:
    lines = [f"Ideal Acc-2 {res['ideal_all']:.3f}; best single modality {res['ceiling']:.3f}; a constant answer's "
             f"validation MAE {res['constant_mae']:.3f}.", "",
             "| quick preset | test Acc-2 mean | worst seed | collapsed (< single modality + 0.05) "
             "| epochs worse than constant | test MAE mean | s / run | seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in res["rows"].items():
        acc = np.array([r["acc2"] for r in runs])
        lines.append(f"| {name} | {acc.mean():.3f} | {acc.min():.3f} | {int((acc < res['ceiling'] + COLLAPSED).sum())} | "
                     f"{sum(r['blowups'] for r in runs)} | {np.mean([r['mae'] for r in runs]):.3f} | "
                     f"{np.mean([r['seconds'] for r in runs]):.0f} | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--decoupling", action="append", choices=["paper", "calibrated"])
    ap.add_argument("--lr", action="append", type=float)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (fixed: results repeat)")
    ap.add_argument("--json", type=Path, help="write (or add to) the results here")
    ap.add_argument("--from-json", type=Path, action="append", help="print the table of saved results")
    a = ap.parse_args()
    if a.from_json:
        merged: dict[str, Any] = {}
        for path in a.from_json:
            saved = json.loads(path.read_text())
            merged = {**saved, "rows": {**merged.get("rows", {}), **saved["rows"]}}
        print(table(merged))
        return
    torch.set_num_threads(a.threads)
    res = run(a.seeds, a.decoupling or ["paper", "calibrated"], a.lr or [1e-3, 3e-3])
    if a.json:
        if a.json.exists():
            res = {**res, "rows": {**json.loads(a.json.read_text())["rows"], **res["rows"]}}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
