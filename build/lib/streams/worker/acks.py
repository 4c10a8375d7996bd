"""Ack source messages in offset order per partition, so a commit never passes an unfinished message.

Faust commits the highest run of acked offsets it finds, and with nothing committed yet (or one message missing
right after the committed offset) it can commit past a message that was never acked (faust #312). Utterances finish
out of order (a call's parts wait for each other; batches finish when they finish), so the worker marks messages
done here and this hands them to Faust strictly in order: Faust's acked set is then always a contiguous prefix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any


class OrderedAcker:
    """Acknowledges offsets in order per partition: an offset is acked once all before it are done."""

    def __init__(self, ack: Callable[[Any], None]) -> None:
        self._ack = ack
        self._queues: dict[Hashable, deque[list[Any]]] = {}  # tp -> [[offset, done, handle], ...] in arrival order
        self._index: dict[tuple[Hashable, int], list[Any]] = {}

    def track(self, tp: Hashable, offset: int, handle: Any) -> bool:
        """Start tracking a message; False when this offset is tracked already (delivered twice: a second entry
        could never be marked done, and would hold its partition's acks back for good)."""
        if (tp, offset) in self._index:
            return False
        entry = [offset, False, handle]
        self._queues.setdefault(tp, deque()).append(entry)
        self._index[(tp, offset)] = entry
        return True

    def pending(self, tp: Hashable, offset: int) -> bool:
        """Tracked and not done yet (False once its partition was revoked)."""
        entry = self._index.get((tp, offset))
        return entry is not None and not entry[1]

    def done(self, tp: Hashable, offset: int) -> int:
        """Mark one message finished; ack every finished message at the head of its partition. Returns how many."""
        entry = self._index.get((tp, offset))
        if entry is None:  # revoked meanwhile, or already done
            return 0
        entry[1] = True
        q, n = self._queues[tp], 0
        while q and q[0][1]:
            off, _, handle = q.popleft()
            del self._index[(tp, off)]
            self._ack(handle)
            n += 1
        return n

    def outstanding(self, tp: Hashable | None = None) -> int:
        """Offsets tracked and not yet acked (for one partition, or all)."""
        if tp is not None:
            return len(self._queues.get(tp, ()))
        return sum(len(q) for q in self._queues.values())

    def forget(self, tps: set[Hashable]) -> None:
        """Partitions revoked: their unfinished messages belong to the next owner; never ack them here."""
        for tp in tps:
            for off, _, _ in self._queues.pop(tp, ()):
                self._index.pop((tp, off), None)
