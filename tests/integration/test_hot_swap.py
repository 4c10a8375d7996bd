"""Promotion, rollback and a corrupt entry while a worker serves a live stream: it swaps between batches, drops and
duplicates nothing, and keeps the old model when the new one is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mmcl.data.synth import SynthSpec, make_synthetic
from streams.learning.follower import announce
from streams.learning.registry import DirRegistry
from streams.local import simulate
from streams.settings import Settings
from streams.sinks.redis_store import FEED

from .conftest import DIMS, SEQ_LEN, Stack, make_checkpoint, quick_kafka, wait_for
from .test_delivery import assert_counted_once, feed_in_background, results_complete

SPLIT = make_synthetic(SynthSpec(sizes=(8, 8, 3000), seq_len=SEQ_LEN, dims=(DIMS["text"], DIMS["audio"], DIMS["visual"]),
                                 min_len=4, seed=12)).splits["test"]


def feed_versions(stack: Stack, run_id: str) -> list[str]:
    return [f["model_version"] for _, f in stack.redis.xrange(FEED) if f["call_id"].startswith(run_id)]


def mmcl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=stack.env(), capture_output=True,
                          text=True, timeout=120, check=False)


def test_promote_rollback_and_a_corrupt_version_under_load(stack: Stack, tmp_path: Path) -> None:
    s = Settings(kafka=quick_kafka(stack.kafka.url), topics=stack.topics)
    reg = DirRegistry(stack.state_dir / f"registry-{stack.prefix}")
    a = reg.publish(make_checkpoint(tmp_path / "a", seed=10)).version
    reg.promote(a)
    worker = stack.start_worker()  # MMCL_MODEL__CHECKPOINT is set too: the registry's current version wins
    assert worker.metric("mmcl_model_info", version=a) == 1

    # the stream runs until the new model has served a share of it (a minute at most), so the swap always lands
    # mid-stream however slowly the publishing command starts on a loaded machine
    spec = simulate.SimSpec(calls=8, rate=50, jitter_ms=100, seed=9, run_id=f"{stack.prefix}-swap-")
    finish = feed_in_background(stack, spec, open_ended=True, split=SPLIT)
    try:
        wait_for(lambda: worker.status().get("written", 0) >= 60, 30, "results from the first model")
        make_checkpoint(tmp_path / "b", seed=11)
        out = mmcl(stack, "model", "publish", str(tmp_path / "b"), "--parent", a, "--promote")
        assert out.returncode == 0, out.stderr
        b = reg.current()
        assert b != a and f"current: {b} (promoted" in out.stdout
        wait_for(lambda: worker.metric("mmcl_model_info", version=b) == 1, 30, "the swap")
        swapped_at = worker.status().get("written", 0)
        wait_for(lambda: worker.status().get("written", 0) >= swapped_at + 60, 30, "results from the second model")
    finally:
        stats = finish(60)
    assert stats.utterances < len(SPLIT)  # the stream was still running when it was told to finish
    wait_for(lambda: results_complete(stack, stats), 60, "every result across the swap")
    assert_counted_once(stack, stats)  # none dropped, none twice
    versions = feed_versions(stack, spec.run_id)
    n = stats.utterances
    assert len(versions) == n and set(versions) == {a, b}
    switch = versions.index(b)
    assert versions[:switch] == [a] * switch and versions[switch:] == [b] * (n - switch)  # swapped between batches
    assert worker.metric("mmcl_model_swaps_total", result="ok") == 1
    assert worker.metric("mmcl_model_info", version=b) == 1

    out = mmcl(stack, "model", "rollback")
    assert out.returncode == 0 and f"current: {a} (rolled back" in out.stdout, out.stderr
    wait_for(lambda: worker.metric("mmcl_model_info", version=a) == 1, 30, "the worker back on the first model")
    listed = mmcl(stack, "model", "list").stdout
    assert f"* {a}" in listed and f"  {b}" in listed
    shown = json.loads(mmcl(stack, "model", "show", b).stdout)
    assert shown["parent"] == a and shown["current"] is False
    assert shown["model"] == {"kind": "mmcl", "task": "regression", "seq_len": SEQ_LEN,
                              "modalities": ["text", "audio", "visual"]}

    # a version whose weights no longer match their checksum: the worker refuses it and keeps serving
    c = reg.publish(make_checkpoint(tmp_path / "c", seed=12)).version
    weights = reg.root / "versions" / c / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    (reg.root / "state.json").write_text(json.dumps({"current": c, "history": [a, c]}))  # as if corrupted after promotion
    announce(s, c, "0" * 64, "promote")
    wait_for(lambda: worker.metric("mmcl_model_swaps_total", result="checksum_mismatch") == 1, 30, "the refusal")
    spec2 = simulate.SimSpec(calls=2, rate=50, jitter_ms=20, limit=10, seed=10, run_id=f"{stack.prefix}-after-")
    stats2 = simulate.run(s, SPLIT, spec2)
    wait_for(lambda: results_complete(stack, stats2), 30, "results after the refusal")
    assert set(feed_versions(stack, spec2.run_id)) == {a}
    assert worker.get("/readyz")[0] == 200
