"""Which feature partitions are known to be read to their end, and since when. Pure logic.

The join may decide an utterance without a modality once that modality's partition has been quiet for the
timeout. Quiet must mean "nothing more was produced", not "nothing more could be fetched": while a partition's
leader is failing over, or the consumer's fetches to one broker are stuck, the text partition flows and the audio
partition is silent, and the quiet rule dead-lettered every utterance waiting for its audio (on a 3-broker cluster,
a full restart dead-lettered 52 of 450 good utterances this way). A partition is therefore caught up only on
evidence: a fetch answered (the consumer's poll time moved) showing that everything up to the high watermark was
handed to the worker. Without that evidence, an utterance waits for the part, up to the join's last-resort bound.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FetchSnapshot:
    """The consumer's view of one partition: what it handed out, what the broker holds, when it last answered."""

    position: int  # the next offset the consumer hands out
    highwater: int  # the partition's end, as of the last fetch answer
    polled_ms: int  # when that answer came (the consumer's wall clock, ms)


class ReadProgress:
    """Per partition, the live time of the latest fetch answer that showed nothing left to read."""

    def __init__(self) -> None:
        self._polled: dict[Hashable, int] = {}
        self._caught_up_at: dict[Hashable, float] = {}

    def observe(self, tp: Hashable, snap: FetchSnapshot | None, now: float) -> None:
        """Record a snapshot taken at live time `now` (None: the consumer knows nothing of the partition yet)."""
        if snap is None or snap.polled_ms == self._polled.get(tp):
            return  # no new answer from the broker: no new evidence either way
        self._polled[tp] = snap.polled_ms
        if snap.position >= snap.highwater:
            self._caught_up_at[tp] = now

    def caught_up_at(self, tp: Hashable) -> float | None:
        """The live time the partition was last seen read to its end (None: never, since its assignment)."""
        return self._caught_up_at.get(tp)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: what was seen of them is stale for their next assignment."""
        for tp in tps:
            self._polled.pop(tp, None)
            self._caught_up_at.pop(tp, None)
