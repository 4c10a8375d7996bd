"""The unit tier is pure logic: a test that opens a network connection or a listening socket fails."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mmcl.data.dataset import Dataset

NETWORK_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _refuse(original: Any) -> Any:
    def guarded(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if sock.family in NETWORK_FAMILIES:
            raise RuntimeError("unit tests use no network: put this test in tests/integration")
        return original(sock, *args, **kwargs)

    return guarded


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, _refuse(getattr(socket.socket, name)))



@dataclass(frozen=True)
class Trained:
    """A model trained on a MOSI-shaped synthetic dataset (dims 768 / 5 / 20, length 50), and that dataset."""

    checkpoint: Path
    dataset: Dataset


@pytest.fixture(scope="session")
def mosi_trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The reference network, trained for 3 epochs (~25 s on 2 cores; test correlation ~0.6): a model whose scores
    vary with its input, so comparing two ways of computing them means something."""
    from mmcl.config import ModelConfig, TrainConfig
    from mmcl.data.synth import SynthSpec, make_synthetic
    from mmcl.train import train

    ds = make_synthetic(SynthSpec(sizes=(384, 96, 200), seed=5))
    out = train(ds, ModelConfig(input_dims=ds.dims), TrainConfig(epochs=3, batch_size=32),
                tmp_path_factory.mktemp("mosi-trained"), progress=False, log=lambda _: None)
    return Trained(out.checkpoint, ds)
