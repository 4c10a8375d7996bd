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
    silent_ms: int = 0  # how long before this snapshot that was (the consumer's clock: the worker's loop may lag)
    # the consumer is not asking for the partition: the worker paused it, or has not yet taken records fetched from
    # its leader (no fetch goes to a broker whose records wait). Silence while held is the worker's own doing
    held: bool = False


@dataclass(frozen=True)
class Fetched:
    """What the join may rely on about one partition, in live time."""

    caught_up_at: float | None  # the latest fetch answer that showed it read to its end (None: none yet)
    answering_since: float  # since when its fetches have been answered without going silent
    # when the fetches of any partition the worker reads were last answered again after going silent, or partitions
    # were reassigned; "now" while one of them is silent (None: never). Any partition: a broker's outage holds up
    # the producers' other partitions too (an idempotent producer whose requests to the failed leader were lost
    # stops sending on every partition until they are resolved), so a part of a partition that never stopped
    # answering can still come seconds late, and it is held from the first moment of the outage
    resumed_at: float | None = None


class ReadProgress:
    """Per partition: when a fetch answer last showed it read to its end, and since when fetches are answered.

    A partition whose fetches have gone unanswered for `silence_s` while the consumer was asking for them is out.
    While any partition is out, and for as long after as the join gives stalled parts, no missing part is presumed
    never coming: the producers hold what they made from the first moment of an outage (on the failed leader's
    partitions and, draining, on every other), and deliver it only once they have reconnected, seconds after the
    worker's fetches are answered again (librdkafka backs its reconnects off up to 10 s by default), and not in one
    go: each partition's parts come when the producer reaches that partition's leader. A partition is quiet only
    from the moment its fetches are answered again, never across the outage. `silence_s` must be well above the
    consumer's fetch wait (an idle partition's fetches are answered once per wait) and well below the join's
    timeout (an utterance begun just before a leader died is decided no earlier than one timeout later).
    """

    def __init__(self, silence_s: float = 1.0) -> None:
        self.silence_ms = int(silence_s * 1000)
        self._polled: dict[Hashable, int] = {}
        self._answering_since: dict[Hashable, float] = {}
        self._caught_up_at: dict[Hashable, float] = {}
        self._out: set[Hashable] = set()
        # kept when partitions are revoked: the producers held up by an outage are held up whoever reads next
        self._resumed_at: float | None = None

    def observe(self, tp: Hashable, snap: FetchSnapshot | None, now: float) -> None:
        """Record a snapshot taken at live time `now` (None: the consumer knows nothing of the partition yet)."""
        if snap is None:
            return
        if snap.silent_ms > self.silence_ms and not snap.held:
            self._out.add(tp)
            self._resumed_at = now  # an outage under way: whatever is missing may be held by the producers
            return
        if tp in self._out:
            self._out.discard(tp)
            self._answering_since[tp] = self._resumed_at = now
        if snap.polled_ms == self._polled.get(tp):
            return  # no new answer from the broker: no new evidence either way
        self._polled[tp] = snap.polled_ms
        self._answering_since.setdefault(tp, now)
        if snap.position >= snap.highwater:
            self._caught_up_at[tp] = now

    @property
    def resumed_at(self) -> float | None:
        """When fetches were last answered again after an outage, or partitions reassigned; "now" during an outage."""
        return self._resumed_at

    def reassigned(self, now: float) -> None:
        """Partitions assigned again by a rebalance (not the worker's first assignment): a rebalance during an
        outage forgets what was seen of the outage, so the assignment itself counts as fetches answered again."""
        self._resumed_at = now

    def fetched(self, tp: Hashable) -> Fetched | None:
        """What is known of the partition (None: no fetch answer since its assignment)."""
        since = self._answering_since.get(tp)
        if since is None:
            return None
        return Fetched(self._caught_up_at.get(tp), since, self._resumed_at)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: what was seen of them is stale for their next assignment."""
        for tp in tps:
            for table in (self._polled, self._answering_since, self._caught_up_at):
                table.pop(tp, None)
            self._out.discard(tp)
