from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from mmcl.data.synth import SynthSpec, make_synthetic
from tests.hygiene import children, left_behind, repository_changes

REPO_BEFORE = pytest.StashKey[set[str]]()


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dataset():
    """A small synthetic dataset with small dims: quick to train on."""
    return make_synthetic(SynthSpec(sizes=(96, 32, 40), seq_len=12, dims=(24, 5, 8), min_len=4, seed=3))


def batch_inputs(dims: tuple[int, ...], b: int, seq_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, seq_len, d, generator=g) for d in dims]
    masks = [torch.ones(b, seq_len, dtype=torch.bool) for _ in dims]
    return xs, masks, torch.ones(b, 3, dtype=torch.bool)



@pytest.fixture(autouse=True)
def _leaves_nothing_running() -> Iterator[None]:
    """Fail a test that leaves a thread or a child process running (session services start before the snapshot)."""
    threads, procs = set(threading.enumerate()), children()
    yield
    threads_left, procs_left = left_behind(threads, procs)
    assert not threads_left, f"the test left threads running: {threads_left}"
    assert not procs_left, f"the test left child processes running: {procs_left}"


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[REPO_BEFORE] = repository_changes()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    written = repository_changes() - session.config.stash.get(REPO_BEFORE, set())
    if written:
        print(f"\nthe tests wrote into the repository: {sorted(written)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
