"""Several worker processes on one host: the drain rate of a backlog with N workers in one consumer group (they
share the host's cores and, with `--device cuda`, its GPU), against one worker in the same run. Workers scale by
partitions: each feature partition is read by one worker, so the topics get `--partitions` of them.

    python benchmarks/workers_per_host.py --workers 1 2                       # 2 CPU cores: ~3 minutes
    python benchmarks/workers_per_host.py --device cuda --workers 1 2 4 8 --partitions 8 --backlog 6000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_throughput import ROOT, Harness, make_checkpoint


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200
    except OSError:
        return False


def measure(h: Harness, workers: int, backlog: int) -> dict[str, Any]:
    """Start `workers` workers on fresh topics, wait until every one is ready, drain a backlog; then stop them."""
    prefix = f"w{workers}{uuid.uuid4().hex[:6]}"
    procs, ports = [], []
    try:
        for _ in range(workers):
            procs.append(h.start("service", prefix))
            ports.append(h.port)
        deadline = time.monotonic() + 120
        while not all(ready(p) for p in ports):  # each joiner's rebalance: every worker assigned again
            if time.monotonic() > deadline:
                raise SystemExit(f"{workers} workers were not all ready within 120 s")
            time.sleep(0.5)
        h.offer(prefix, f"{prefix}-warm-", 50, 50 * workers)
        drained = h.offer(prefix, f"{prefix}-drain-", 10_000, backlog)
        return {"workers": workers, "drain": drained["achieved"], "results": drained["results"], "backlog": backlog}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--backlog", type=int, default=3000)
    p.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    p.add_argument("--results-name", default="workers_per_host")
    a = p.parse_args()
    if max(a.workers) > a.partitions:
        raise SystemExit(f"{max(a.workers)} workers need at least as many partitions (--partitions)")
    tmp = Path(tempfile.mkdtemp(prefix="mmcl-workers-"))
    h = Harness(tmp, make_checkpoint(tmp / "ckpt"), a.device)
    h.partitions = a.partitions
    try:
        h.use(a.broker)
        rows = [measure(h, n, a.backlog) for n in a.workers]
    finally:
        h.close()
    base = rows[0]["drain"]
    lines = ["| workers | drain utt/s | vs the first row |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['workers']} | {r['drain']:.0f} | {r['drain'] / base:.2f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{a.results_name}.json").write_text(json.dumps({"rows": rows, "device": a.device, "cpu_count": os.cpu_count(),
                                                            "command": " ".join(sys.argv)}, indent=2) + "\n")
    (res / f"{a.results_name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
