"""Join per-modality parts into utterances by (call_id, utterance_id). Pure logic with an injected clock.

Emit as soon as every modality the speaker's role allows is present. Otherwise the utterance is decided at its
deadline, with the rest masked if the required modalities are present, else dropped as `incomplete`. A duplicate
part before emission replaces the earlier one; a part after emission is `late`. Every part carries an opaque token
(the worker's handle on its source offset), and every token comes back exactly once in an outcome.

The deadline is in event time, not arrival time: an utterance whose first part was produced at P may still get a part
from modality m until m's partition (`group`: the partition number, the same for the three co-partitioned topics) has
delivered parts produced after P + timeout (its watermark passed), or until that partition has been quiet for the
timeout while the utterance waited at least as long, and (when the worker tells) a fetch answered after that wait showed
the partition read to its end: quiet because nothing was produced, not because nothing could be fetched. A required
modality's partition that was delivering parts when the utterance began and then fell silent is given `stall_wait_s`
instead of the timeout: a leader failing over holds that partition's parts in the producers while the other modalities
flow. So is any modality's partition for an utterance begun before fetches were answered again after an outage of any
partition (or a reassignment), or less than `stall_wait_s` after, and while an outage lasts: the producers deliver what
they held as they reconnect. Deciding on arrival time alone would drop whole backlogs as incomplete whenever the worker
is behind (after a restart, a burst, an outage), because the three topics are not read at the same pace. `clock` is
live time: the worker stops it while it is not taking messages (back-pressure, a rebalance), so a pause does not make
partitions look quiet.
Producer clocks are kept honest by streams.worker.event_time, and `max_wait_s` of live time decides any utterance
whatever the clocks say; that bound counts from the end of the last outage (`resumed`), never across one: a whole
cluster restarting under load held a part in its producer for more than 30 s, and the bound dead-lettered good
utterances whose parts all came.

A part whose utterance was already emitted is `redelivered` when its modality was used (a re-read after a
rebalance or restart, a producer's retry: acknowledged, not dead-lettered) and `late` when it was not. What the
join learnt about a partition (pending parts, watermarks, quiet times, emitted utterances, clocks) is forgotten
when the partition is revoked: its next reader, maybe this worker again, re-reads it from the committed offset.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.sinks.deadletter import Reason
from streams.worker.decode import Part
from streams.worker.event_time import ClockGuard, Stamped
from streams.worker.progress import Fetched

JoinKey = tuple[str, str]


@dataclass
class _Pending:
    first_at: float  # live clock at the first part's arrival
    deadline_ms: int  # event time: earliest (clock-corrected) part + timeout
    speaker: str
    group: Hashable
    parts: dict[str, Part] = field(default_factory=dict)
    masked: set[str] = field(default_factory=set)
    tokens: list[Any] = field(default_factory=list)
    event_at: int = 0  # the latest part's clock-corrected production time (for latency)


@dataclass(frozen=True)
class Joined:
    """An utterance ready to score: its parts by modality, and those masked by policy."""

    call_id: str | None
    utterance_id: str
    speaker: str
    parts: dict[str, Part]  # modality -> part, the allowed ones only
    masked: tuple[str, ...]  # modalities received (before emission) that this speaker's role does not allow
    tokens: tuple[Any, ...]
    complete: bool
    wait_s: float  # first part -> emission, live time
    event_at: int = 0  # the last part's production time, corrected for its producer's clock (latency starts here)

    @property
    def produced_at(self) -> int:
        """The last part's produced_at as its producer stamped it."""
        return max(p.produced_at for p in self.parts.values())


@dataclass(frozen=True)
class Dropped:
    """An utterance that cannot be scored: its parts go to the dead-letter topic with the reason."""

    reason: Reason
    error: str
    parts: tuple[Part, ...]
    tokens: tuple[Any, ...]


@dataclass(frozen=True)
class Ignored:
    """A part of a modality the speaker's role may not be analysed on: never held, never used."""

    part: Part
    token: Any


@dataclass(frozen=True)
class Redelivered:
    """A part of an utterance already emitted with this modality: read again (rebalance, restart) or sent twice."""

    part: Part
    token: Any


Outcome = Joined | Dropped | Ignored | Redelivered


class LiveClock:
    """Monotonic time that stands still while anyone holds it paused (pauses nest: each resume ends one)."""

    def __init__(self, base: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._paused_at: float | None = None
        self._paused_total = 0.0
        self._holds = 0

    def pause(self) -> None:
        """Stop the clock (nested pauses count)."""
        self._holds += 1
        if self._holds == 1:
            self._paused_at = self._base()

    def resume(self) -> None:
        """Resume the clock when the last pause ends."""
        if self._holds == 0:
            raise RuntimeError("resume without a pause")
        self._holds -= 1
        if self._holds == 0 and self._paused_at is not None:
            self._paused_total += self._base() - self._paused_at
            self._paused_at = None

    def __call__(self) -> float:
        now = self._base() if self._paused_at is None else self._paused_at
        return now - self._paused_total


class Joiner:
    """Joins an utterance's parts by id, within a timeout measured on the live clock."""

    def __init__(
        self,
        required: Iterable[str],
        allowed: Callable[[str], tuple[str, ...]],
        timeout_s: float,
        max_pending: int,
        remember_emitted: int,
        clock: Callable[[], float] = time.monotonic,
        count: Callable[[str], None] = lambda outcome: None,
        max_clock_skew_s: float = 0.5,
        max_wait_s: float | None = None,
        count_skew: Callable[[str, str], None] = lambda modality, side: None,
        fetched: Callable[[str, Hashable], Fetched | None] | None = None,
        stall_wait_s: float | None = None,
        resumed: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.required = tuple(required)
        self.allowed = allowed
        self.timeout_s = timeout_s
        self.timeout_ms = int(timeout_s * 1000)
        self.max_pending = max_pending
        self.remember_emitted = remember_emitted
        self.clock = clock
        self.count = count  # join outcome counter: complete, partial, incomplete, late, duplicate, redelivered
        self.count_skew = count_skew  # (modality, "ahead" | "behind") of a part whose clock was corrected
        # (modality, group) -> what the consumer saw of its partition; None: quiet is trusted as is
        self.fetched = fetched
        self.max_wait_s = max_wait_s if max_wait_s is not None else 15 * timeout_s
        self.stall_wait_s = stall_wait_s if stall_wait_s is not None else timeout_s
        # live time at which the fetches of every partition the worker reads were last answered again after an outage
        # ("now" while one is out; None: never)
        self.resumed = resumed
        self.clocks = ClockGuard(int(max_clock_skew_s * 1000))
        self._pending: OrderedDict[JoinKey, _Pending] = OrderedDict()  # in arrival order
        self._emitted: OrderedDict[JoinKey, tuple[Hashable, frozenset[str]]] = OrderedDict()  # -> (group, used)
        self._deadlines: dict[Hashable, list[tuple[int, int, JoinKey]]] = {}  # group -> heap (lazy deletion)
        self._seq = 0
        self._watermark: dict[tuple[str, Hashable], int] = {}  # (modality, group) -> furthest event time seen
        self._last_arrival: dict[tuple[str, Hashable], float] = {}
        self._group_start: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, part: Part, token: Any, group: Hashable = 0, arrival_ms: int | None = None) -> list[Outcome]:
        """`arrival_ms`: wall-clock time the part was received, to keep its producer's clock honest (None: trust it)."""
        key, now = part.join_key, self.clock()
        self._group_start.setdefault(group, now)
        wk = (part.modality, group)
        st = self._stamp(part, wk, arrival_ms)
        self._watermark[wk] = max(self._watermark.get(wk, st.watermark_at), st.watermark_at)
        self._last_arrival[wk] = now
        if part.modality not in self.allowed(part.speaker):
            if key in self._pending and self._pending[key].speaker == part.speaker:
                self._pending[key].masked.add(part.modality)
            return [Ignored(part, token)]
        if key in self._emitted:
            if part.modality in self._emitted[key][1]:
                self.count("redelivered")
                return [Redelivered(part, token)]
            self.count("late")
            return [Dropped(Reason.LATE, f"{part.modality} part arrived after the utterance was emitted", (part,), (token,))]
        out: list[Outcome] = []
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self.max_pending:
                out.append(self._decide(*self._pending.popitem(last=False), now))
            entry = self._pending[key] = _Pending(now, st.deadline_at + self.timeout_ms, part.speaker, group)
            self._push(entry, key)
        elif part.speaker != entry.speaker:
            return [Dropped(Reason.SPEAKER_CONFLICT, f"speaker {part.speaker!r}, earlier parts said {entry.speaker!r}",
                            (part,), (token,))]
        elif st.deadline_at + self.timeout_ms < entry.deadline_ms:
            entry.deadline_ms = st.deadline_at + self.timeout_ms
            self._push(entry, key)
        entry.tokens.append(token)
        entry.event_at = max(entry.event_at, st.deadline_at)
        if part.modality in entry.parts:
            self.count("duplicate")
        entry.parts[part.modality] = part
        if all(m in entry.parts for m in self.allowed(entry.speaker)):
            del self._pending[key]
            out.append(self._emit(key, entry, now, complete=True))
        return out

    def _stamp(self, part: Part, wk: tuple[str, Hashable], arrival_ms: int | None) -> Stamped:
        if arrival_ms is None:
            return Stamped(part.produced_at, part.produced_at, None)
        st = self.clocks.stamp(wk, part.produced_at, arrival_ms)
        if st.skew is not None:
            self.count_skew(part.modality, st.skew)
        return st

    def expire(self) -> list[Outcome]:
        """Decide every pending utterance whose missing modalities can no longer arrive in time."""
        now, out = self.clock(), []
        for group, heap in self._deadlines.items():
            while heap:
                deadline, _, key = heap[0]
                entry = self._pending.get(key)
                if entry is None or entry.deadline_ms != deadline or entry.group != group:
                    heapq.heappop(heap)  # emitted, forgotten or re-scheduled
                    continue
                missing = [m for m in self.allowed(entry.speaker) if m not in entry.parts]
                waited_out = self._waited_out(entry, now)
                if not waited_out and not all(self._passed(m, entry, now) for m in missing):
                    break  # later deadlines in this group are not due either (max_wait is swept below)
                heapq.heappop(heap)
                del self._pending[key]
                out.append(self._decide(key, entry, now))
        # Whatever clocks said, nothing waits more than max_wait_s: the oldest arrivals come first in _pending.
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if not self._waited_out(entry, now):
                break
            del self._pending[key]
            out.append(self._decide(key, entry, now))
        return out

    def _waited_out(self, entry: _Pending, now: float) -> bool:
        """The last-resort bound: max_wait_s of live time since the utterance began or, later, since the last outage
        ended. While an outage lasts, the producers hold the parts they made: nothing is waited out."""
        since = max(entry.first_at, self.resumed() or entry.first_at)
        return now - since >= self.max_wait_s

    def _passed(self, modality: str, entry: _Pending, now: float) -> bool:
        wk = (modality, entry.group)
        if self._watermark.get(wk, -1) >= entry.deadline_ms:
            return True  # that partition already delivered parts produced after the deadline
        last = self._last_arrival.get(wk)
        quiet_since = last if last is not None else self._group_start[entry.group]
        # a partition that was delivering parts when the utterance began and fell silent is more likely stalled (a
        # leader failing over holds its parts in the producers) than done: it gets stall_wait_s, not timeout_s. Only
        # for a required modality, whose absence dead-letters the utterance; an optional one missing costs a partial
        # result, which sparse traffic would otherwise wait stall_wait_s for every time
        stalled = modality in self.required and last is not None and entry.first_at - last < self.stall_wait_s
        if self.fetched is not None:
            # quiet because nothing more was produced, not because nothing could be fetched: a fetch answered after
            # the utterance had waited its timeout and everything up to the partition's end had been handed over;
            # and quiet is counted from when fetches were answered again after an outage, never across it
            seen = self.fetched(modality, entry.group)
            if seen is None or seen.caught_up_at is None or seen.caught_up_at < entry.first_at + self.timeout_s:
                return False
            quiet_since = max(quiet_since, seen.answering_since)
            # an utterance begun before, during or just after an outage (of any partition the worker reads): the
            # producers deliver what they held partition by partition as they reconnect, so its other parts
            # arriving says nothing of this one, whether the modality is required or not, however long it lasted
            if seen.resumed_at is not None and entry.first_at < seen.resumed_at + self.stall_wait_s:
                stalled, quiet_since = True, max(quiet_since, seen.resumed_at)  # silence counts from the recovery
        quiet_for = self.stall_wait_s if stalled else self.timeout_s
        return now - entry.first_at >= self.timeout_s and now - quiet_since >= quiet_for

    def _push(self, entry: _Pending, key: JoinKey) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines.setdefault(entry.group, []), (entry.deadline_ms, self._seq, key))

    def forget(self, keep: Callable[[Any], bool]) -> int:
        """Drop pending utterances holding a token `keep` rejects (revoked partitions: their new owner re-reads them)."""
        gone = [k for k, e in self._pending.items() if not all(keep(t) for t in e.tokens)]
        for k in gone:
            del self._pending[k]
        return len(gone)

    def forget_groups(self, groups: set[Hashable]) -> int:
        """Forget everything learnt from these groups (partitions revoked): pending utterances (their parts are
        re-read by the next owner, never acknowledged here), watermarks, quiet times, emitted ids, clocks."""
        gone = [k for k, e in self._pending.items() if e.group in groups]
        for k in gone:
            del self._pending[k]
        for table in (self._watermark, self._last_arrival):
            for wk in [wk for wk in table if wk[1] in groups]:
                del table[wk]
        for g in groups:
            self._group_start.pop(g, None)
            self._deadlines.pop(g, None)
        for k in [k for k, (g, _) in self._emitted.items() if g in groups]:
            del self._emitted[k]
        self.clocks.forget(lambda wk: not (isinstance(wk, tuple) and wk[1] in groups))  # keys are (modality, group)
        return len(gone)

    def assigned(self, groups: set[Hashable]) -> None:
        """Partitions (re)assigned now: a partition is quiet since its assignment, not since its last part before."""
        now = self.clock()
        for g in groups:
            self._group_start[g] = now

    def _decide(self, key: JoinKey, entry: _Pending, now: float) -> Outcome:
        allowed = self.allowed(entry.speaker)
        need = [m for m in self.required if m in allowed] or list(allowed)
        if entry.parts and all(m in entry.parts for m in need):
            return self._emit(key, entry, now, complete=False)
        missing = [m for m in need if m not in entry.parts]
        return Dropped(Reason.INCOMPLETE, f"no {', '.join(missing)} part within {self.timeout_s:g} s",
                       tuple(entry.parts.values()), tuple(entry.tokens))

    def _emit(self, key: JoinKey, entry: _Pending, now: float, complete: bool) -> Joined:
        self.count("complete" if complete else "partial")
        if self.remember_emitted:
            self._emitted[key] = (entry.group, frozenset(entry.parts))
            if len(self._emitted) > self.remember_emitted:
                self._emitted.popitem(last=False)
        return Joined(key[0] or None, key[1], entry.speaker, dict(entry.parts), tuple(sorted(entry.masked)),
                      tuple(entry.tokens), complete, now - entry.first_at, entry.event_at)
