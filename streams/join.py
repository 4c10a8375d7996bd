"""Join per-modality parts into utterances by (call_id, utterance_id). Pure logic with an injected clock.

Emit as soon as every modality the speaker's role allows is present. At the deadline (join timeout after the first
part) emit with the rest masked if the required modalities are present, else drop as `incomplete`. A duplicate part
before emission replaces the earlier one; a part after emission is `late`. Every part carries an opaque token (the
worker's handle on its source offset), and every token comes back exactly once in a Joined or Dropped result.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.decode import Part, Reason

JoinKey = tuple[str, str]


@dataclass
class _Pending:
    first_at: float
    speaker: str
    parts: dict[str, Part] = field(default_factory=dict)
    masked: set[str] = field(default_factory=set)
    tokens: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Joined:
    call_id: str | None
    utterance_id: str
    speaker: str
    parts: dict[str, Part]  # modality -> part, the allowed ones only
    masked: tuple[str, ...]  # modalities received (before emission) that this speaker's role does not allow
    tokens: tuple[Any, ...]
    complete: bool
    wait_s: float  # first part -> emission

    @property
    def produced_at(self) -> int:
        return max(p.produced_at for p in self.parts.values())


@dataclass(frozen=True)
class Dropped:
    reason: Reason
    error: str
    parts: tuple[Part, ...]
    tokens: tuple[Any, ...]


@dataclass(frozen=True)
class Ignored:
    """A part of a modality the speaker's role may not be analysed on: never held, never used."""

    part: Part
    token: Any


Outcome = Joined | Dropped | Ignored


class Joiner:
    def __init__(
        self,
        required: Iterable[str],
        allowed: Callable[[str], tuple[str, ...]],
        timeout_s: float,
        max_pending: int,
        remember_emitted: int,
        clock: Callable[[], float] = time.monotonic,
        count: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.required = tuple(required)
        self.allowed = allowed
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.remember_emitted = remember_emitted
        self.clock = clock
        self.count = count  # join outcome counter: complete, partial, incomplete, late, duplicate
        self._pending: OrderedDict[JoinKey, _Pending] = OrderedDict()  # in first-part order
        self._emitted: OrderedDict[JoinKey, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, part: Part, token: Any) -> list[Outcome]:
        key, now = part.join_key, self.clock()
        if part.modality not in self.allowed(part.speaker):
            if key in self._pending and self._pending[key].speaker == part.speaker:
                self._pending[key].masked.add(part.modality)
            return [Ignored(part, token)]
        if key in self._emitted:
            self.count("late")
            return [Dropped(Reason.LATE, f"{part.modality} part arrived after the utterance was emitted", (part,), (token,))]
        out: list[Outcome] = []
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self.max_pending:
                out.append(self._decide(*self._pending.popitem(last=False), now))
            entry = self._pending[key] = _Pending(first_at=now, speaker=part.speaker)
        elif part.speaker != entry.speaker:
            return [Dropped(Reason.SPEAKER_CONFLICT, f"speaker {part.speaker!r}, earlier parts said {entry.speaker!r}",
                            (part,), (token,))]
        entry.tokens.append(token)
        if part.modality in entry.parts:
            self.count("duplicate")
        entry.parts[part.modality] = part
        if all(m in entry.parts for m in self.allowed(entry.speaker)):
            del self._pending[key]
            out.append(self._emit(key, entry, now, complete=True))
        return out

    def expire(self) -> list[Outcome]:
        """Decide every pending utterance whose deadline has passed."""
        now, out = self.clock(), []
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if entry.first_at + self.timeout_s > now:
                break
            del self._pending[key]
            out.append(self._decide(key, entry, now))
        return out

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return next(iter(self._pending.values())).first_at + self.timeout_s

    def forget(self, keep: Callable[[Any], bool]) -> int:
        """Drop pending utterances holding a token `keep` rejects (revoked partitions: their new owner re-reads them)."""
        gone = [k for k, e in self._pending.items() if not all(keep(t) for t in e.tokens)]
        for k in gone:
            del self._pending[k]
        return len(gone)

    def _decide(self, key: JoinKey, entry: _Pending, now: float) -> Outcome:
        allowed = self.allowed(entry.speaker)
        need = [m for m in self.required if m in allowed] or list(allowed)
        if entry.parts and all(m in entry.parts for m in need):
            return self._emit(key, entry, now, complete=False)
        self.count("incomplete")
        missing = [m for m in need if m not in entry.parts]
        return Dropped(Reason.INCOMPLETE, f"no {', '.join(missing)} part within {self.timeout_s:g} s",
                       tuple(entry.parts.values()), tuple(entry.tokens))

    def _emit(self, key: JoinKey, entry: _Pending, now: float, complete: bool) -> Joined:
        self.count("complete" if complete else "partial")
        if self.remember_emitted:
            self._emitted[key] = None
            if len(self._emitted) > self.remember_emitted:
                self._emitted.popitem(last=False)
        return Joined(key[0] or None, key[1], entry.speaker, dict(entry.parts), tuple(sorted(entry.masked)),
                      tuple(entry.tokens),
                      complete, now - entry.first_at)
