"""The README's two commands, and the offline training quickstart (one epoch instead of fifteen, to keep CI short).

The main command itself, the demo, is run in test_demo.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from mmcl.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]


def test_readme_names_the_two_scripts() -> None:
    head = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert re.findall(r"^bash (\S+)", head, flags=re.M) == ["scripts/demo.sh", "scripts/test.sh"]


@pytest.mark.timeout(420)  # synthesises a dataset and trains an epoch
def test_quickstart_runs_from_the_readme(tmp_path: Path) -> None:
    env = {**os.environ, "QUICKSTART_DIR": str(tmp_path)}  # what a user gets in the repository, here in tmp_path
    r = subprocess.run(["bash", "scripts/quickstart.sh", "--epochs", "1", "--no-progress"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=360, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "acc2_has0" in r.stdout and "ideal" in r.stdout
    summary = json.loads((tmp_path / "runs" / "quickstart" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["model"]["decoupling"] == "paper"  # mmcl train's defaults
    assert summary["model"]["ff_dim"] == 256 and summary["train"]["lr"] == PRESETS["quick"]["train"]["lr"]  # quick
    assert (tmp_path / "runs" / "quickstart" / "best" / "checksums.sha256").is_file()
