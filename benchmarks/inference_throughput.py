"""Inference throughput (utterances/s) on MOSI-shaped input, and the FLOP rate as a share of a matmul peak.

Everything is measured in one run on one device: the peak is a large float32 matmul timed right before, and
the MMCL reference model is compared with the quick preset and the late-fusion baseline (ratios, not absolute
times: shared machines are noisy). `predictor` adds the Predictor's per-utterance input preparation.

    python benchmarks/inference_throughput.py --device auto
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmcl.checkpoint import Checkpoint, FeatureProfile
from mmcl.config import ModelConfig
from mmcl.device import resolve_device
from mmcl.model import build_model
from mmcl.predictor import Predictor, resolve_precision
from mmcl.sequence import fit_length

DIMS, SEQ_LEN = (768, 5, 20), 50
BATCHES = (1, 8, 64, 256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, min_seconds: float, min_iters: int = 3) -> float:
    """Seconds per call: warm up, then repeat until both min_iters and min_seconds are reached; best of 3 rounds."""
    for _ in range(2):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while n < min_iters or time.perf_counter() - t0 < min_seconds / 3:
            fn()
            n += 1
        sync(device)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def matmul_peak(device: torch.device, min_seconds: float) -> float:
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, device, min_seconds)


def count_flops(model: torch.nn.Module, x: tuple) -> int:
    """Matmul FLOPs of one forward; the fused inference fast path hides them from the counter, so turn it off."""
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(*x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return fc.get_total_flops()


def inputs(b: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    xs = [torch.randn(b, SEQ_LEN, d, generator=g).to(device) for d in DIMS]
    masks = [torch.ones(b, SEQ_LEN, dtype=torch.bool, device=device) for _ in DIMS]
    return xs, masks, torch.ones(b, 3, dtype=torch.bool, device=device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=2.0, help="minimum measuring time per cell")
    p.add_argument("--predictor-only", action="store_true", help="only the Predictor against the eager reference")
    a = p.parse_args()
    device = resolve_device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    torch.manual_seed(0)
    variants = {
        "MMCL reference (ff 2048)": ModelConfig(input_dims=DIMS, seq_len=SEQ_LEN),
        "MMCL quick (ff 256)": ModelConfig(input_dims=DIMS, seq_len=SEQ_LEN, ff_dim=256),
        "late-fusion baseline": ModelConfig(input_dims=DIMS, seq_len=SEQ_LEN, kind="late_fusion"),
    }
    if a.predictor_only:
        predictor_rows(device, variants["MMCL reference (ff 2048)"], a.seconds)
        return
    peak = matmul_peak(device, a.seconds)
    print(f"device: {name}; torch {torch.__version__}; float32 matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print("| model | batch | utterances/s | ratio to MMCL reference | GFLOP/utt | achieved GFLOP/s | share of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    ref_rate: dict[int, float] = {}
    for label, cfg in variants.items():
        model = build_model(cfg).to(device).eval()
        for b in BATCHES:
            x = inputs(b, device)
            flops = count_flops(model, x)
            with torch.inference_mode():
                sec = timed(lambda m=model, x=x: m(*x), device, a.seconds)
            rate = b / sec
            ref_rate.setdefault(b, rate)
            print(f"| {label} | {b} | {rate:,.0f} | {rate / ref_rate[b]:.2f} | {flops / b / 1e9:.4f} | "
                  f"{flops / sec / 1e9:.1f} | {flops / sec / peak:.1%} |", flush=True)
    predictor_rows(device, variants["MMCL reference (ff 2048)"], a.seconds)


def eager_reference(model: torch.nn.Module, device: torch.device
                    ) -> Callable[[list[dict[str, np.ndarray]]], torch.Tensor]:
    """The plain way: fit each utterance alone (mmcl.sequence), one batch padded to the model's length, fp32."""
    def run(batch: list[dict[str, np.ndarray]]) -> torch.Tensor:
        xs, masks = [], []
        for m in ("text", "audio", "vision"):
            fitted = [fit_length(u[m][None], np.array([len(u[m])]), "back", SEQ_LEN) for u in batch]
            xs.append(torch.from_numpy(np.concatenate([f[0] for f in fitted])).to(device))
            masks.append(torch.from_numpy(np.concatenate([f[1] for f in fitted])).to(device))
        with torch.inference_mode():
            out: torch.Tensor = model(xs, masks, torch.ones(len(batch), 3, dtype=torch.bool, device=device)).logits
            return out.cpu()
    return run


def predictor_rows(device: torch.device, cfg: ModelConfig, seconds: float) -> None:
    """The Predictor (whole-batch preparation, length-sorted sub-batches; fp32, bf16 and, on a CPU with VNNI, int8)
    against the eager reference on the same utterances, for three length mixes; the ratio is to the reference in the
    same row group, measured round by round (`interleaved`)."""
    model = build_model(cfg).to(device).eval()
    ckpt = Checkpoint(model, cfg, FeatureProfile(DIMS), {}, None, "0" * 64, "0" * 12)  # type: ignore[arg-type]
    predictors = {"Predictor fp32": Predictor(ckpt, device, "fp32"), "Predictor bf16": Predictor(ckpt, device, "bf16")}
    if resolve_precision("auto", device, model) == "int8":
        predictors["Predictor int8"] = Predictor(ckpt, device, "int8")
    reference = eager_reference(model, device)
    rng = np.random.default_rng(0)
    lengths = {"10-50 frames (the benchmark set)": (10, 51), "10-120 frames (long ones resampled)": (10, 121),
               "50 frames (no padding)": (50, 51)}
    print("\n| path (numpy in) | lengths | batch | utterances/s | ratio to eager fp32 reference |")
    print("|---|---|---|---|---|")
    for mix, (lo, hi) in lengths.items():
        for b in (1, 64):
            frames = rng.integers(lo, hi, b)  # aligned: an utterance's modalities have its length, as in MOSI
            batch = [{m: rng.standard_normal((int(t), d)).astype(np.float32)
                      for m, d in zip(("text", "audio", "vision"), DIMS, strict=True)} for t in frames]
            paths: dict[str, Callable[[], object]] = {"eager fp32 reference": lambda batch=batch: reference(batch)}
            paths.update({name: lambda batch=batch, pred=pred: pred.predict(batch) for name, pred in predictors.items()})
            rates = interleaved(paths, device, seconds)
            base = rates["eager fp32 reference"]
            for name, per_round in rates.items():
                ratio = float(np.median(np.array(per_round) / np.array(base)))
                print(f"| {name} | {mix} | {b} | {b * float(np.median(per_round)):,.0f} | {ratio:.2f} |", flush=True)


def interleaved(paths: dict[str, Callable[[], object]], device: torch.device, seconds: float,
                rounds: int = 7) -> dict[str, list[float]]:
    """Calls per second of each path, per round; every round times each path in turn, so a slow spell of a shared
    machine hits all of them: a path's ratio to another is taken within a round, and the median over rounds kept."""
    for fn in paths.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            rates[name].append(1 / timed_once(fn, device, seconds / rounds))
    return rates


def timed_once(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Seconds per call over at least min_seconds (and two calls)."""
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n

if __name__ == "__main__":
    main()
