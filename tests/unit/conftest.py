"""The unit tier is pure logic: a test that opens a network connection or a listening socket fails."""

from __future__ import annotations

import socket
from typing import Any

import pytest

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

