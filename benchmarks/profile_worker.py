"""Profile the worker's event loop under load: `mmcl worker` runs under pyinstrument on Apache Kafka while a backlog
of MOSI-shaped utterances (all three modalities) drains, then stops (SIGTERM) and the profile is written.

pyinstrument samples the main thread, where Faust's agent, the join, decoding and the result writes run; the
model runs on the inference thread and is measured by the worker's own metrics (printed at the end).

    pip install pyinstrument
    python benchmarks/profile_worker.py [--wire v1]     # ~2 minutes; writes benchmarks/results/worker_profile_<wire>.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_throughput import ROOT, Harness, make_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backlog", type=int, default=3000, help="utterances to drain while profiling")
    p.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    p.add_argument("--wire", choices=("v2", "v1"), default="v2", help="the feature messages the producer sends")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/worker_profile_<wire>.txt")
    a = p.parse_args()
    os.environ["MMCL_WIRE__FORMAT"] = a.wire  # read by the producer's Settings
    tmp = Path(tempfile.mkdtemp(prefix="mmcl-profile-"))
    h = Harness(tmp, make_checkpoint(tmp / "ckpt"), "cpu")
    report = tmp / "profile.txt"
    try:
        h.use(a.broker)
        prefix = f"prof{uuid.uuid4().hex[:6]}"
        wrap = [sys.executable, "-m", "pyinstrument", "--renderer", "text", "--outfile", str(report), "-m"]
        proc = h.start("service", prefix, wrap=wrap)
        try:
            h.offer(prefix, "warm-", 50, 50)
            drained = h.offer(prefix, "drain-", 5000, a.backlog)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{h.port}/metrics", timeout=5).read().decode()
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        h.close()
    wanted = ("mmcl_inference_seconds_sum", "mmcl_inference_seconds_count", "mmcl_batch_size_sum",
              "mmcl_batch_size_count", "process_cpu_seconds_total")
    lines = [ln for ln in metrics.splitlines() if ln.startswith(wanted)]
    head = (f"# {' '.join(sys.argv)}\n# drained {drained['results']} utterances at {drained['achieved']:.0f} utt/s\n"
            + "".join(f"# {ln}\n" for ln in lines))
    out = a.out or ROOT / "benchmarks" / "results" / f"worker_profile_{a.wire}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + report.read_text())
    print(head + report.read_text()[:6000])


if __name__ == "__main__":
    main()
