"""Event time that one producer's clock cannot bend. Pure logic: the worker gives each part's arrival time.

The join decides on event time (`produced_at`, the producer's clock), because arrival time would drop whole backlogs
whenever the three topics are read at different paces. But one producer's clock then decides for everyone on its
partition: a part stamped ten years ahead moved the partition's watermark past every deadline (later utterances
dead-lettered as incomplete, and the poisoned utterance itself waited forever, holding its partition's commit), and
a producer 5 s behind had its deadlines passed by everyone else's parts before its own parts arrived.

Each partition's consensus is the median delay (arrival - produced_at) of its recent parts, which a minority of
skewed producers cannot move, and a bound holds whatever the consensus: nothing was produced after it arrived.
A part further than `max_skew_ms` from them is corrected, asymmetrically so that every correction errs towards
waiting, never towards deciding early:
- its own deadline is raised when its clock is behind, to the latest time it can have been produced given the
  fastest recent delay on its partition (the median would cut its wait short whenever the worker had just been
  slow, as under CPU load), and capped at (arrival + skew) when ahead: a behind producer's utterances get their
  full wait; an ahead one's are not held forever;
- what it tells about its partition's progress (the watermark) is capped at (consensus + skew) and never raised: a
  part from the future cannot move the watermark past anyone's deadline.
A sudden jump of every delay (the worker paused by an outage, or a backlog being read faster) looks like skew for
the first parts after it; the corrections then only make those utterances wait longer until the median follows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

Skew = Literal["ahead", "behind"] | None


@dataclass(frozen=True)
class Stamped:
    """A part's times for the join, after its producer's clock was checked."""

    deadline_at: int  # ms: this part's time for its utterance's deadline
    watermark_at: int  # ms: what this part says about how far its partition has been read
    skew: Skew  # its clock's side when it was corrected, else None


class ClockGuard:
    """Keeps one producer's wrong clock from moving a partition's deadlines or watermark."""

    def __init__(self, max_skew_ms: int, window: int = 31) -> None:
        self.max_skew_ms = max_skew_ms
        self.window = window
        self._delays: dict[Hashable, deque[int]] = {}  # partition -> recent (arrival - produced_at), ms

    def stamp(self, partition: Hashable, produced_at: int, arrival_ms: int) -> Stamped:
        """The part's deadline and watermark times, its clock corrected when it is off."""
        s = self.max_skew_ms
        recent = self._delays.setdefault(partition, deque(maxlen=self.window))
        # The median of what came before; never below -s (nothing is produced after it arrives), so that even a
        # partition's first parts, when the consensus is one or two parts, cannot move it far.
        ordered = sorted(recent)
        consensus = max(ordered[len(ordered) // 2], -s) if ordered else None
        recent.append(arrival_ms - produced_at)
        latest = arrival_ms + s  # a part cannot have been produced after it arrived (clocks agree within s)
        earliest = None
        if consensus is not None:
            latest = min(latest, arrival_ms - consensus + s)
            earliest = arrival_ms - consensus - s
        deadline_at = min(produced_at, arrival_ms + s)
        skew: Skew = None
        if produced_at > latest:
            skew = "ahead"
        elif earliest is not None and produced_at < earliest:
            skew, deadline_at = "behind", arrival_ms - max(ordered[0], -s) - s
        return Stamped(deadline_at, min(produced_at, latest), skew)

    def forget(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop what was learnt about partitions this worker no longer reads (their next reader starts afresh)."""
        for partition in [p for p in self._delays if not keep(p)]:
            del self._delays[partition]
