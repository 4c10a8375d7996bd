"""Worker latency while a retraining run trains on the same machine (issue: it must stay bounded).

The worker serves a steady rate on the embedded broker and Redis (as in pipeline_throughput.py) in three
conditions, one after the other in the same run: nothing else running; a training run as `mmcl trainer` runs it
(MMCL act-reward trainer, MOSI-sized synthetic data, 1 thread at nice 10: the trainer's defaults); and the same
training unthrottled (all threads, normal priority), to show what the defaults buy.

    python benchmarks/retrain_latency.py          # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_throughput as pt

ROOT = Path(__file__).resolve().parents[1]
TRAIN = """
import os, sys, torch
from mmcl.config import ModelConfig, TrainConfig
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.train import train
threads, nice = int(sys.argv[1]), int(sys.argv[2])
os.nice(nice)
if threads:
    torch.set_num_threads(threads)
ds = make_synthetic(SynthSpec(sizes=(1284, 229, 100), seed=1))
print("training", flush=True)
train(ds, ModelConfig(input_dims=ds.dims, ff_dim=256), TrainConfig(epochs=50, batch_size=64, lr=1e-3), sys.argv[3],
      progress=False, log=lambda m: None)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=40.0, help="utterances per second offered in every condition")
    p.add_argument("--seconds", type=float, default=15.0)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmcl-retrain-bench-"))
    h = pt.Harness(tmp, pt.make_checkpoint(tmp / "ckpt"), "cpu")
    rows = []
    try:
        prefix = f"rl{uuid.uuid4().hex[:6]}"
        worker = h.start("service", prefix)
        h.offer(prefix, "warm-", 50, 50)
        n = int(a.rate * a.seconds)
        for label, threads, nice in (("no training", None, 0), ("training, trainer defaults (1 thread, nice 10)", 1, 10),
                                     ("training, unthrottled (all threads, nice 0)", 0, 0)):
            trainer = None
            if threads is not None:
                trainer = subprocess.Popen([sys.executable, "-c", TRAIN, str(threads), str(nice), str(tmp / "run")],
                                           stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                assert trainer.stdout is not None and trainer.stdout.readline().strip() == "training"
                time.sleep(3)  # into the epochs
            r = h.offer(prefix, f"{uuid.uuid4().hex[:4]}-", a.rate, n)
            if trainer is not None:
                alive = trainer.poll() is None
                trainer.kill()
                trainer.wait(10)
                assert alive, "the training run ended before the measurement did"
            rows.append({"condition": label, **r})
            print(json.dumps(rows[-1]), flush=True)
        worker.terminate()
        worker.wait(30)
    finally:
        h.close()
    lines = [f"worker at {a.rate:.0f} utt/s for {a.seconds:.0f} s per condition; CPU, {os.cpu_count()} cores", "",
             "| condition | achieved utt/s | p50 ms | p95 ms | p99 ms | p95 / no training |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = rows[0]["p95"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['achieved']:.0f} | {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} | "
                     f"{r['p99'] * 1000:.0f} | {r['p95'] / base:.2f} |")
    table = "\n".join(lines) + "\n"
    res = ROOT / "benchmarks" / "results"
    (res / "retrain_latency.json").write_text(json.dumps({"rows": rows, "rate": a.rate}, indent=2) + "\n")
    (res / "retrain_latency.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
