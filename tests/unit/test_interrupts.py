from __future__ import annotations

import os
import signal
import threading

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


def test_no_signal_no_interrupt_and_the_handler_is_restored() -> None:
    def mine(_signum: int, _frame: object) -> None:
        raise AssertionError("not called: no signal was sent")

    previous = signal.signal(signal.SIGINT, mine)
    try:
        ran = []
        with deferred_sigint():
            assert signal.getsignal(signal.SIGINT) is not mine  # held while the block runs
            ran.append(True)
        assert ran == [True] and signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


def test_off_the_main_thread_it_changes_nothing() -> None:
    seen: list[object] = []

    def body() -> None:
        with deferred_sigint():
            seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=body)
    t.start()
    t.join(5)
    assert seen == [before] and signal.getsignal(signal.SIGINT) is before
