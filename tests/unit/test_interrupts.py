from __future__ import annotations

import os
import signal

import pytest

from mmcl.interrupts import deferred_sigint


def test_sigint_is_held_until_the_block_ends() -> None:
    done: list[str] = []

    def critical() -> None:
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("finished the critical section")

    with pytest.raises(KeyboardInterrupt):
        critical()
    assert done == ["finished the critical section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_interrupt() -> None:
    with deferred_sigint():
        pass
