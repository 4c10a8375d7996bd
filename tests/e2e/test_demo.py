"""The README's main command, `bash scripts/demo.sh`, run for a bounded time on the embedded broker and Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import redis

from streams.local.embedded import free_port, pid_alive
from streams.sinks.redis_store import FEED, call_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)  # trains the demo's model, then runs 20 s
def test_demo_leaves_results_in_redis_and_counts_predictions(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
    # point at ports where nothing listens: the demo must start its own broker and Redis, as on a fresh machine
    env.update({"MMCL_STATE_DIR": str(tmp_path / "state"), "MMCL_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                "MMCL_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0", "MMCL_METRICS__PORT": str(free_port())})
    try:  # `mmcl down` also after a failure: --keep leaves the broker and Redis running
        r = subprocess.run(["bash", "scripts/demo.sh", "--duration", "20", "--rate", "30", "--keep"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=360, check=False)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        m = re.search(r"results: (\d+) predictions, p95 latency (\d+) ms", r.stdout)
        assert m and int(m.group(1)) > 100, r.stdout[-2000:]  # read from the worker's /metrics before it stopped
        assert "customer ewma" in r.stdout and "call-" in r.stdout  # the view's snapshot: calls and their sentiment
        runtime = json.loads((tmp_path / "state" / "runtime.json").read_text())
        client = redis.Redis.from_url(runtime["redis"]["url"], decode_responses=True)
        feed = client.xrange(FEED)
        assert len(feed) >= int(m.group(1))
        call = feed[0][1]["call_id"]
        agg = client.hgetall(call_key(call))
        assert int(agg["all:count"]) >= 1 and ("customer:ewma" in agg or "agent:ewma" in agg)
        shown = subprocess.run([str(ROOT / ".venv" / "bin" / "mmcl"), "--local", "results", call], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert call in shown and "utterances" in shown
    finally:
        down = subprocess.run([str(ROOT / ".venv" / "bin" / "mmcl"), "down"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
    assert "stopped: kafka, redis" in down.stdout
    assert not any(pid_alive(s["pid"]) for s in runtime.values())
