"""The `mmcl` command as a user runs it: real processes, real files; errors are one line, never a traceback."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mmcl(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def wait_for(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    """Poll a condition owned by another process (a file it writes) until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)  # the other process gives no event to wait on; bounded by the deadline
    return condition()


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


SMALL_SYNTH = ("--sizes", "64,24,32", "--dims", "16,5,8", "--seq-len", "10")
TINY_MODEL = ("--epochs", "1", "--d-model", "16", "--ff-dim", "32", "--batch-size", "16", "--no-progress")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    r = mmcl("data", "synth", "--out", "small.npz", *SMALL_SYNTH, cwd=d)
    assert r.returncode == 0, r.stderr
    assert "ideal test Acc-2" in r.stdout
    return d


def test_train_evaluate_and_inspect(workdir: Path) -> None:
    r = mmcl("train", "--data", "small.npz", "--out", "run", "--decoupling", "calibrated", *TINY_MODEL, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "acc2_has0" in r.stdout and "ideal" in r.stdout
    assert (workdir / "run" / "best" / "model.safetensors").is_file()
    r = mmcl("evaluate", "--checkpoint", "run/best", "--data", "small.npz", "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)["metrics"]
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert metrics["mae"] == pytest.approx(summary["test"]["mae"], rel=1e-6)
    r = mmcl("data", "inspect", "small.npz", cwd=workdir)
    info = json.loads(r.stdout)
    assert info["splits"]["train"]["n"] == 64 and info["splits"]["test"]["text"]["shape"] == [32, 10, 16]
    lengths, labels = info["splits"]["train"]["audio"], info["splits"]["train"]["labels"]
    assert 1 <= lengths["length_min"] <= lengths["length_mean"] <= lengths["length_max"] == 10
    assert labels["min"] < 0 < labels["max"] and labels["negative"] + labels["zero"] + labels["positive"] == 64


def test_baseline_and_classification(workdir: Path) -> None:
    r = mmcl("train", "--data", "small.npz", "--out", "base", "--model", "baseline", "--modalities", "text,audio",
             "--task", "classification", "--num-classes", "2", *TINY_MODEL, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "f1" in r.stdout


def test_pickle_convert_round_trip(workdir: Path) -> None:
    r = mmcl("data", "synth", "--out", "mmsa.pkl", "--pickle", *SMALL_SYNTH, cwd=workdir)
    assert r.returncode == 0, r.stderr
    with (workdir / "mmsa.pkl").open("rb") as f:
        assert set(pickle.load(f)["train"]) >= {"text", "audio", "vision", "regression_labels", "id"}
    r = mmcl("data", "convert", "mmsa.pkl", "converted.npz", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "mmsa layout" in r.stdout
    r = mmcl("data", "inspect", "converted.npz", cwd=workdir)
    assert json.loads(r.stdout)["splits"]["valid"]["n"] == 24


def test_errors_are_one_line(workdir: Path) -> None:
    assert_one_line_error(mmcl("train", "--data", "missing.npz", cwd=workdir), "no such dataset file")
    (workdir / "notes.txt").write_text("hello")
    assert_one_line_error(mmcl("data", "inspect", "notes.txt", cwd=workdir), "unknown format")
    assert_one_line_error(mmcl("data", "convert", "notes.txt", "x.npz", cwd=workdir), "not a readable pickle")
    assert_one_line_error(mmcl("train", "--data", "mmsa.pkl", cwd=workdir), "convert")
    assert_one_line_error(mmcl("evaluate", "--checkpoint", "nowhere", "--data", "small.npz", cwd=workdir),
                          "no checkpoint")
    assert_one_line_error(mmcl("train", "--data", "small.npz", "--d-model", "30", "--epochs", "1", cwd=workdir),
                          "divisible")
    if not torch_has_cuda():
        assert_one_line_error(mmcl("train", "--data", "small.npz", "--device", "cuda", *TINY_MODEL, cwd=workdir),
                              "CUDA is not available")
    assert_one_line_error(mmcl("train", "--data", "small.npz", "--device", "tpu9", *TINY_MODEL, cwd=workdir),
                          "unknown device")
    r = mmcl("train", "--data", "small.npz", "--decoupling", "magic", cwd=workdir)
    assert r.returncode == 2 and "Traceback" not in r.stderr  # argparse usage error


def test_dimension_mismatch_is_one_line(workdir: Path) -> None:
    r = mmcl("train", "--data", "small.npz", "--out", "dims", *TINY_MODEL, cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = mmcl("data", "synth", "--out", "other.npz", "--sizes", "8,8,8", "--dims", "16,6,8", "--seq-len", "10",
             cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert_one_line_error(mmcl("evaluate", "--checkpoint", "dims/best", "--data", "other.npz", cwd=workdir),
                          "do not match", "audio 6 vs 5")


def test_ctrl_c_stops_cleanly_and_keeps_the_best_checkpoint(workdir: Path) -> None:
    import signal

    run = workdir / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "train", "--data", "small.npz", "--out", str(run), "--epochs", "10000",
         "--early-stop-patience", "10000", "--d-model", "16", "--ff-dim", "32", "--batch-size", "16"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = run / "history.jsonl"
    try:
        two_epochs_done = wait_for(
            lambda: proc.poll() is not None or (history.is_file() and len(history.read_text().splitlines()) >= 2),
            timeout_s=90)
        assert two_epochs_done, "no two epochs within 90 s"
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["best_epoch"] >= 1 and summary["test"]
    assert (run / "best" / "checksums.sha256").is_file()
