from __future__ import annotations

import pytest
import torch

from mmcl.data.synth import SynthSpec, make_synthetic


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

