"""What a test leaves behind: threads, child processes, files in the repository."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# written by the tools themselves, not by tests
# threads a library starts once per process and keeps (tqdm's monitor of slow bars)
PROCESS_SINGLETONS = {"tqdm_monitor"}
TOOL_CACHES = (".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".egg-info")


def children(pid: int | None = None) -> set[int]:
    """Live (not zombie) child processes of `pid` (default: this process), from /proc."""
    parent = pid or os.getpid()
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def left_behind(threads_before: set[threading.Thread], children_before: set[int],
                grace_s: float = 5.0) -> tuple[list[str], list[int]]:
    """Threads and child processes that appeared since the snapshot and are still alive after `grace_s`."""
    end = time.monotonic() + grace_s
    while True:
        threads = [t for t in threading.enumerate()
                   if t not in threads_before and t.is_alive() and t.name not in PROCESS_SINGLETONS]
        procs = sorted(children() - children_before)
        if (not threads and not procs) or time.monotonic() >= end:
            return [t.name for t in threads], procs
        time.sleep(0.05)


def repository_changes() -> set[str]:
    """Untracked and ignored paths in the repository, other than the tools' caches."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True,
                         check=False).stdout
    paths = {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(c in p for c in TOOL_CACHES)}
