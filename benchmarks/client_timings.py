"""Client timings on Apache Kafka: the measurements behind the production defaults of MMCL_KAFKA__*.

One KRaft node from the pinned jars with its own defaults, Redis, the worker as it ships, the reference-size model
with random weights, 16 simulated calls (the harness of pipeline_throughput.py). Two questions:

1. Fetch wait and linger. For each setting: the drain rate of a backlog and the latency (last part produced ->
   result in Redis) at a steady rate well under it. `MMCL_KAFKA__LINGER_MS` applies to the simulator's producer and
   to the worker's output producer alike.
2. Session timeout. Two workers share the partitions under a steady stream; one is killed with SIGKILL (a crash, an
   OOM kill: no goodbye to the group). Measured: how long the dead worker's calls get no results, and the worst
   latency of their utterances. Then the survivor drains a backlog on the machine's two cores, and the rebalances it
   went through meanwhile are counted: a session too short for a loaded worker shows as rebalances here.

    python benchmarks/client_timings.py     # ~6 minutes on 2 cores; writes benchmarks/results/client_timings.*
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_throughput import ROOT, Harness, latency_cells, make_checkpoint

FETCH_LINGER = [(500, 2), (50, 2), (500, 0), (500, 5), (500, 20)]  # (fetch_max_wait_ms, linger_ms); the first: before
SESSIONS = [(10.0, 1.0), (45.0, 3.0)]  # (session_timeout_s, heartbeat_interval_s)


def metric(port: int, name: str) -> float:
    """One unlabelled sample of a worker's /metrics (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def owned_partitions(port: int) -> set[int]:
    """The feature partitions a worker owns, from its /healthz."""
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    return {int(tp.rsplit(":", 1)[1]) for tp in status.get("assignment", [])}


def fetch_and_linger(h: Harness, a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for fetch_ms, linger_ms in FETCH_LINGER:
        h.overrides = {"fetch_max_wait_ms": fetch_ms, "linger_ms": linger_ms}
        prefix = f"t{uuid.uuid4().hex[:6]}"
        proc = h.start("service", prefix)
        try:
            h.offer(prefix, f"fl{fetch_ms}-{linger_ms}-warm-", 50, 50)
            drain = h.offer(prefix, f"fl{fetch_ms}-{linger_ms}-drain-", 5000, a.backlog)
            steady = h.offer(prefix, f"fl{fetch_ms}-{linger_ms}-r{a.rate:.0f}-", a.rate, int(a.rate * a.seconds))
        finally:
            proc.terminate()
            proc.wait(60)
        row = {"fetch_max_wait_ms": fetch_ms, "linger_ms": linger_ms, "drain": drain["achieved"], "rate": a.rate,
               "sustained": steady["sustained"], **{k: steady[k] for k in ("p50", "p95", "p99")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    h.overrides = {}
    return rows


def results_since(h: Harness, run_id: str, since_ms: int) -> dict[str, tuple[str, int]]:
    """utterance -> (call, Redis time of its result in ms) for this run's results written after since_ms."""
    out = {}
    for entry_id, f in h.redis.xrange("mmcl:feed", min=str(since_ms)):
        if f["call_id"].startswith(run_id):
            out[f["utterance_id"]] = (f["call_id"], int(entry_id.split("-")[0]))
    return out


def crash_takeover(h: Harness, a: argparse.Namespace, session_s: float, heartbeat_s: float) -> dict[str, Any]:
    from aiokafka.partitioner import DefaultPartitioner

    from streams.local import simulate

    h.overrides = {"session_timeout_s": session_s, "heartbeat_interval_s": heartbeat_s}
    prefix = f"s{uuid.uuid4().hex[:6]}"
    procs, ports = [], []
    for i in range(2):
        procs.append(h.start("service", prefix, MMCL_STATE_DIR=str(h.state / f"{prefix}-w{i}")))
        ports.append(h.port)
    run_id = f"crash{session_s:.0f}-"
    stats_box: list[Any] = []
    duration = session_s + 35
    spec = simulate.SimSpec(calls=16, rate=a.takeover_rate, jitter_ms=20, limit=int(a.takeover_rate * duration),
                            seed=3, run_id=run_id)
    feed = threading.Thread(target=lambda: stats_box.append(simulate.run(h.settings(prefix), h.split, spec)))
    try:
        deadline = time.monotonic() + 60
        while not (owned_partitions(ports[0]) and owned_partitions(ports[1])) and time.monotonic() < deadline:
            time.sleep(0.2)  # the second worker's arrival rebalances the group: wait until both own partitions
        feed.start()
        time.sleep(8)
        dead = owned_partitions(ports[1])
        killed_ms = int(time.time() * 1000)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(30)
        feed.join()
        time.sleep(5)
        sent = stats_box[0].last_sent
        partitioner = DefaultPartitioner()
        got = results_since(h, run_id, killed_ms - 1000)
        on_dead = {u: t for u, (call, t) in got.items()
                   if partitioner(call.encode(), list(range(4)), None) in dead}
        after = [t for t in on_dead.values() if t > killed_ms]
        lat = [(t - sent[u]) / 1000 for u, t in on_dead.items() if u in sent and sent[u] > killed_ms]
        missing = [u for u in sent if sent[u] > killed_ms and u not in got]
        rebalances_before = metric(ports[0], "mmcl_rebalances_total")
        drain = h.offer(prefix, f"sat{session_s:.0f}-", 5000, a.backlog)
        rebalances_during = metric(ports[0], "mmcl_rebalances_total") - rebalances_before
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        h.overrides = {}
    row = {"session_timeout_s": session_s, "heartbeat_interval_s": heartbeat_s, "dead_partitions": sorted(dead),
           "first_result_after_kill_s": (min(after) - killed_ms) / 1000 if after else float("nan"),
           "worst_latency_s": max(lat) if lat else float("nan"), "missing_after_kill": len(missing),
           "saturated_drain": drain["achieved"], "rebalances_while_saturated": rebalances_during}
    print(json.dumps(row), flush=True)
    return row


def render(out: dict[str, Any]) -> str:
    lines = ["| fetch_max_wait_ms | linger_ms | drain utt/s | offered utt/s | sustained | p50 ms | p95 ms | p99 ms |",
             "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in out["fetch_linger"]:
        lines.append(f"| {r['fetch_max_wait_ms']} | {r['linger_ms']} | {r['drain']:.0f} | {r['rate']:.0f} | "
                     + latency_cells(r))
    lines += ["", "| session s / heartbeat s | dead worker's partitions | first result there after the kill, s | "
              "worst latency there, s | lost | saturated drain utt/s | rebalances while saturated |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["sessions"]:
        lines.append(f"| {r['session_timeout_s']:.0f} / {r['heartbeat_interval_s']:.0f} | {r['dead_partitions']} | "
                     f"{r['first_result_after_kill_s']:.1f} | {r['worst_latency_s']:.1f} | {r['missing_after_kill']} | "
                     f"{r['saturated_drain']:.0f} | {r['rebalances_while_saturated']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backlog", type=int, default=800, help="utterances for each drain measurement")
    p.add_argument("--rate", type=float, default=40.0, help="the steady rate of the latency measurements, utt/s")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each steady-rate run")
    p.add_argument("--takeover-rate", type=float, default=20.0, help="the stream's rate while a worker is killed")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmcl-timings-"))
    h = Harness(tmp, make_checkpoint(tmp / "ckpt"), "cpu")
    try:
        h.use("kafka")
        out = {"fetch_linger": fetch_and_linger(h, a),
               "sessions": [crash_takeover(h, a, s, hb) for s, hb in SESSIONS],
               "cpu_count": os.cpu_count(), "command": " ".join(sys.argv)}
    finally:
        h.close()
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "client_timings.json").write_text(json.dumps(out, indent=2) + "\n")
    table = render(out)
    (res / "client_timings.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
