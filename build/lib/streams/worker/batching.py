"""Micro-batching for the inference thread: up to `max_size` items, or `wait_s` after the first, whichever first."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

STOP = object()  # put on the queue to end the thread


def collect_batch(pending: queue.Queue[Any], max_size: int, wait_s: float,
                  clock: Callable[[], float] = time.monotonic) -> list[Any] | None:
    """Block for the first item (None when STOP arrives), then gather more until full or the wait has passed.

    Items already queued are taken without waiting, so under load batches fill up to max_size at no latency cost;
    with a trickle, no item waits more than wait_s for company.
    """
    first = pending.get()
    if first is STOP:
        return None
    batch = [first]
    deadline = clock() + wait_s
    while len(batch) < max_size:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            left = deadline - clock()
            if left <= 0:
                break
            try:
                item = pending.get(timeout=left)
            except queue.Empty:
                break
        if item is STOP:
            pending.put(STOP)  # finish this batch, stop on the next call
            break
        batch.append(item)
    return batch
