"""Training time per epoch on MOSI-sized synthetic data: MMCL (reference, quick, no act-reward) vs the baseline.

Each variant trains 2 epochs; the second epoch's time is reported (the first includes one-off warm-up), as a
ratio to the late-fusion baseline measured in the same run.

    python benchmarks/train_time.py
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from mmcl.config import ModelConfig, TrainConfig
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1284,229,686")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda")
    a = p.parse_args()
    sizes = tuple(int(s) for s in a.sizes.split(","))
    ds = make_synthetic(SynthSpec(sizes=sizes))  # type: ignore[arg-type]
    variants = {
        "late-fusion baseline": ({"kind": "late_fusion"}, {"batch_size": 64, "lr": 1e-3}),
        "MMCL reference (ff 2048, batch 128), act-reward": ({}, {}),
        "MMCL reference, supervised only": ({}, {"act_reward": False}),
        "MMCL quick (ff 256, batch 64), act-reward": ({"ff_dim": 256}, {"batch_size": 64, "lr": 1e-3}),
        "MMCL quick, calibrated": ({"ff_dim": 256, "decoupling": "calibrated"}, {"batch_size": 64, "lr": 1e-3}),
    }
    where = torch.cuda.get_device_name() if a.device != "cpu" and torch.cuda.is_available() else "CPU"
    print(f"{where}, {torch.get_num_threads()} threads; train split {sizes[0]} utterances, length 50, dims {ds.dims}\n")
    print("| variant | seconds / epoch | ratio to baseline |")
    print("|---|---|---|")
    base = None
    for name, (model_kw, train_kw) in variants.items():
        mcfg = ModelConfig(input_dims=ds.dims, seq_len=50, **model_kw)
        tcfg = TrainConfig(**{"epochs": 2, "early_stop_patience": 5, **train_kw})
        with tempfile.TemporaryDirectory() as tmp:
            r = train(ds, mcfg, tcfg, tmp, progress=False, log=lambda _: None, device=a.device)
        sec = r.history[-1]["seconds"]
        base = base or sec
        print(f"| {name} | {sec:.2f} | {sec / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
