"""The join under producer clocks that lie and partitions that move: pure logic, injected clocks, no sockets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from streams.settings import JoinSettings, PolicySettings
from streams.sinks.deadletter import Reason
from streams.worker.decode import Part
from streams.worker.event_time import ClockGuard
from streams.worker.join import Dropped, Joined, Joiner, Outcome
from streams.worker.progress import Fetched, FetchSnapshot, ReadProgress

YEAR_MS = 365 * 24 * 3600 * 1000


class Clocks:
    """The worker's live clock (seconds) and its wall clock (ms), moved together."""

    def __init__(self) -> None:
        self.t = 100.0
        self.wall = 1_700_000_000_000

    def __call__(self) -> float:
        return self.t

    def step(self, s: float) -> None:
        self.t += s
        self.wall += int(s * 1000)


def part(modality: str, utt: str, call: str, at: int, speaker: str = "customer") -> Part:
    return Part(utt, call, speaker, modality, np.zeros((2, 2), np.float32), produced_at=at, start_ms=None)


def joiner(clocks: Clocks, counts: dict[str, int] | None = None, **kw: object) -> Joiner:
    counts = counts if counts is not None else {}
    args = {"required": ("text", "audio"), "allowed": PolicySettings().allowed, "timeout_s": 2.0, "max_pending": 1000,
            "remember_emitted": 1000, "max_clock_skew_s": 0.5, **kw}
    return Joiner(clock=clocks, count=lambda o: counts.__setitem__(o, counts.get(o, 0) + 1), **args)  # type: ignore[arg-type]


def live_traffic(j: Joiner, clocks: Clocks, calls: list[str], utterances: int, skew_ms: dict[str, int],
                 gap_ms: int = 300, step_s: float = 0.1, late_call: str | None = None, prefix: str = "u") -> list[Outcome]:
    """Each call speaks an utterance every `step_s`: its text now, audio `gap_ms` later, visual after that; every
    producer stamps produced_at with its own clock (true time + skew). `late_call`'s visual part never comes."""
    out: list[Outcome] = []
    plan: list[tuple[int, str, str, str]] = []  # (true send ms, modality, utterance, call)
    start = clocks.wall
    for i in range(utterances):
        for k, call in enumerate(calls):
            t0 = start + int(i * step_s * 1000) + k
            plan += [(t0, "text", f"{prefix}{i}", call), (t0 + gap_ms, "audio", f"{prefix}{i}", call)]
            if call != late_call:
                plan.append((t0 + 2 * gap_ms, "visual", f"{prefix}{i}", call))
    plan.sort()
    for sent, modality, utt, call in plan:
        if sent > clocks.wall:
            clocks.step((sent - clocks.wall) / 1000)
            out += j.expire()
        out += j.add(part(modality, utt, call, sent + skew_ms.get(call, 0)), (call, utt, modality),
                     arrival_ms=clocks.wall + 5)
    for _ in range(100):
        clocks.step(0.05)
        out += j.expire()
    return out


def test_a_producer_behind_by_5s_loses_nothing_and_is_counted() -> None:
    """Before: its deadlines were passed by everyone else's parts at once (158 of 300 utterances dead-lettered)."""
    clocks, skewed = Clocks(), []
    j = joiner(clocks, count_skew=lambda m, side: skewed.append(side))
    out = live_traffic(j, clocks, ["good1", "good2", "slow"], 60, {"slow": -5000})
    joined = [o for o in out if isinstance(o, Joined)]
    assert not [o for o in out if isinstance(o, Dropped)]
    assert len(joined) == 180 and all(o.complete for o in joined)
    assert skewed and set(skewed) == {"behind"}


def test_one_part_ten_years_ahead_poisons_nobody_and_is_decided() -> None:
    """Before: that part moved its partition's watermark past every deadline (later utterances dead-lettered as
    incomplete) and itself waited forever for a deadline ten years away, holding its partition's commit."""
    clocks, counts, skewed = Clocks(), {}, []
    j = joiner(clocks, counts, count_skew=lambda m, side: skewed.append(side))
    out = live_traffic(j, clocks, ["a", "b"], 5, {})
    # the poison: a text part from a clock ten years ahead, whose other parts never come
    out += j.add(part("text", "poison", "c", clocks.wall + 10 * YEAR_MS), "poison", arrival_ms=clocks.wall)
    out += live_traffic(j, clocks, ["a", "b"], 40, {}, late_call="b", prefix="v")  # b's visual parts never come: partials
    dropped = [o for o in out if isinstance(o, Dropped)]
    assert [d.tokens for d in dropped] == [("poison",)] and dropped[0].reason is Reason.INCOMPLETE
    joined = [o for o in out if isinstance(o, Joined)]
    assert len(joined) == 90 and sum(not o.complete for o in joined) == 40  # b's partials waited their full time
    assert all(o.wait_s >= 2.0 - 2 * 0.5 for o in joined if not o.complete)
    assert skewed == ["ahead"] and len(j) == 0


def test_a_stale_watermark_after_reassignment_decides_nothing_early() -> None:
    """A partition re-read from its commit after a rebalance starts again at older parts; the watermark from before
    must not say their partners' partition has moved past them."""
    clocks = Clocks()
    j = joiner(clocks)
    for i in range(20):  # read far ahead on every topic of partition 0 (group 0)
        for m in ("text", "audio", "visual"):
            j.add(part(m, f"old{i}", "c", 10_000 + 100 * i), (m, i))
    j.forget_groups({0})
    j.assigned({0})
    assert j.add(part("text", "old3", "c", 10_300), "t") == []  # re-read from the commit: the text comes first
    assert j.expire() == []  # before: decided at once (the old audio watermark was past its deadline): incomplete
    (out,) = j.add(part("audio", "old3", "c", 10_305), "a") + j.add(part("visual", "old3", "c", 10_307), "v")
    assert isinstance(out, Joined) and out.complete


def test_a_redelivered_part_after_reassignment_joins_again_instead_of_being_late() -> None:
    clocks = Clocks()
    j = joiner(clocks)
    for m in ("text", "audio", "visual"):
        j.add(part(m, "u1", "c", 1), m)
    j.forget_groups({0})  # revoked: emitted ids go too, the re-read is joined and scored again (Redis ignores it)
    j.assigned({0})
    assert j.add(part("text", "u1", "c", 1), "t2") == []


def test_quiet_counts_from_the_assignment_not_from_the_last_part_before_it() -> None:
    clocks = Clocks()
    j = joiner(clocks)
    j.add(part("visual", "u0", "c", 0), "v0")  # the visual partition was last heard from long ago
    j.add(part("text", "u0", "c", 0), "t0")
    j.add(part("audio", "u0", "c", 0), "a0")
    clocks.step(60)
    j.forget_groups({0})
    j.assigned({0})
    j.add(part("text", "u1", "c", 60_000), "t1")
    j.add(part("audio", "u1", "c", 60_000), "a1")
    clocks.step(1.9)
    assert j.expire() == []  # the visual partition has been quiet 1.9 s since the assignment, not 61.9 s
    clocks.step(0.2)
    (out,) = j.expire()
    assert isinstance(out, Joined) and not out.complete


def test_nothing_waits_longer_than_max_wait() -> None:
    clocks = Clocks()
    j = joiner(clocks, max_wait_s=5.0)
    j.add(part("text", "u1", "c", 0), "t")
    decided_at = None
    for i in range(60):  # the audio partition keeps delivering other calls' parts stamped before u1's deadline
        j.add(part("audio", f"x{i}", "d", 0), f"a{i}")
        clocks.step(0.1)
        if any(isinstance(o, Dropped) and o.tokens == ("t",) for o in j.expire()):
            decided_at = clocks.t - 100
    assert decided_at is not None and 5.0 <= decided_at < 5.2  # by max_wait, not earlier: nothing else could


def test_clock_guard_corrects_outliers_not_the_consensus() -> None:
    g = ClockGuard(max_skew_ms=500)
    for i in range(10):  # the partition's parts arrive 20 ms after they were produced
        st = g.stamp("p", 1000 * i, 1000 * i + 20)
        assert st.skew is None and st.deadline_at == st.watermark_at == 1000 * i
    behind = g.stamp("p", 10_000 - 5000, 10_020)
    assert behind.skew == "behind" and behind.deadline_at == 10_020 - 20 - 500 and behind.watermark_at == 5000
    ahead = g.stamp("p", 11_000 + 3000, 11_020)
    assert ahead.skew == "ahead" and ahead.watermark_at == 11_020 - 20 + 500 and ahead.deadline_at == 11_020 + 500
    # after a slow spell (the worker busy: recent parts waited 400 ms) a behind part's deadline still counts from
    # the fastest recent delay, not the median: its wait is not cut short by the worker's own slowness
    for i in range(12, 60):
        g.stamp("p", 1000 * i, 1000 * i + (400 if i % 3 else 20))
    late = g.stamp("p", 60_000 - 5000, 60_020)
    assert late.skew == "behind" and late.deadline_at == 60_020 - 20 - 500
    g.forget(lambda p: p != "p")
    first = g.stamp("p", 20_000 + 10 * YEAR_MS, 20_020)  # no consensus yet: only "not after it arrived" holds
    assert first.skew == "ahead" and first.watermark_at == first.deadline_at == 20_520
    second = g.stamp("p", 21_000, 21_020)  # a consensus of one poisoned part cannot move the next one far
    assert second.deadline_at - 21_000 <= 20 and second.watermark_at == 21_000


def test_skew_must_leave_the_join_a_window() -> None:
    with pytest.raises(ValueError, match="below half"):
        JoinSettings(timeout_s=1.0, max_clock_skew_s=0.5)


def test_a_quiet_partition_that_cannot_be_fetched_is_waited_for_not_decided() -> None:
    """Audio's leader is failing over: its partition is silent but not read to its end. The text-only utterance
    waits for its audio (up to max_wait) instead of being dead-lettered as incomplete."""
    clocks = Clocks()
    progress = ReadProgress()
    j = joiner(clocks, fetched=lambda m, g: progress.fetched((m, g)), max_wait_s=30.0)
    j.add(part("text", "u1", "c", 0), "t1")
    clocks.step(5)
    progress.observe(("audio", 0), None, clocks())  # no fetch answer at all: nothing known
    assert j.expire() == []
    # a fetch answers, but the broker holds audio the worker has not been handed yet
    progress.observe(("audio", 0), FetchSnapshot(position=10, highwater=12, polled_ms=1), clocks())
    assert j.expire() == []
    clocks.step(10)
    assert j.expire() == []  # 15 s: still waiting, well inside max_wait
    j.add(part("audio", "u1", "c", 0), "a1")  # it arrives; visual's partition is then seen read to its end
    for polled in range(1, 6):
        clocks.step(0.5)
        progress.observe(("visual", 0), FetchSnapshot(3, 3, polled_ms=polled), clocks())
    (out,) = j.expire()
    assert isinstance(out, Joined) and set(out.parts) == {"text", "audio"}


def test_a_partition_read_to_its_end_after_the_wait_lets_the_join_decide() -> None:
    clocks = Clocks()
    progress = ReadProgress()
    j = joiner(clocks, fetched=lambda m, g: progress.fetched((m, g)))
    j.add(part("text", "u1", "c", 0), "t1")
    j.add(part("audio", "u1", "c", 0), "a1")  # visual never comes, and its partition is read to its end
    for polled in range(1, 3):  # fetches answered every half second, the partition caught up, before the wait ended
        clocks.step(0.5)
        progress.observe(("visual", 0), FetchSnapshot(12, 12, polled_ms=polled), clocks())
    clocks.step(1.5)
    assert j.expire() == []  # quiet for 2.5 s, yet no fetch answered since the utterance waited its timeout
    progress.observe(("visual", 0), FetchSnapshot(12, 12, polled_ms=2), clocks())  # the same answer: no evidence
    assert j.expire() == []
    progress.observe(("visual", 0), FetchSnapshot(12, 12, polled_ms=3), clocks())  # a new answer: nothing left
    (out,) = j.expire()
    assert isinstance(out, Joined) and not out.complete and set(out.parts) == {"text", "audio"}


def test_quiet_is_counted_from_when_fetches_are_answered_again_after_an_outage() -> None:
    """The whole cluster was down for 20 s: the producers deliver what they made meanwhile only after reconnecting.
    Silence during the outage is no evidence; the partition must stay quiet while its fetches are answered."""
    clocks = Clocks()
    progress = ReadProgress(silence_s=1.0)
    j = joiner(clocks, fetched=lambda m, g: progress.fetched((m, g)), stall_wait_s=10.0, max_wait_s=60.0)
    progress.observe(("audio", 0), FetchSnapshot(3, 3, polled_ms=1), clocks())
    j.add(part("audio", "u0", "c", 0), "a0")
    j.add(part("text", "u0", "c", 0), "t0")
    j.add(part("visual", "u0", "c", 0), "v0")
    j.add(part("text", "u1", "c", 100), "t1")  # then the cluster goes down: no fetch answers for 20 s
    j.add(part("visual", "u1", "c", 100), "v1")
    answered(progress, clocks, [], 20.0, [1], silent=[("audio", 0)])
    progress.observe(("audio", 0), FetchSnapshot(4, 4, polled_ms=2), clocks())  # back, and caught up
    clocks.step(0.5)
    assert j.expire() == []  # silent 20.5 s, but answered for 0.5 s only: its producers may not have reconnected
    for polled in range(3, 23):
        clocks.step(0.5)
        progress.observe(("audio", 0), FetchSnapshot(4, 4, polled_ms=polled), clocks())
    (out,) = j.expire()  # 10.5 s of answered fetches and still no audio: it is not coming
    assert isinstance(out, Dropped) and out.reason == Reason.INCOMPLETE


def test_the_last_resort_bound_does_not_run_during_an_outage() -> None:
    """A whole cluster restarting under load held an utterance's audio in its producer for more than max_wait_s:
    the bound counts from the end of the outage, so the part that comes is joined, and one that never comes is
    decided max_wait_s after the recovery."""
    clocks = Clocks()
    progress = ReadProgress(silence_s=1.0)
    j = joiner(clocks, fetched=lambda m, g: progress.fetched((m, g)), resumed=lambda: progress.resumed_at,
               stall_wait_s=10.0, max_wait_s=30.0)
    progress.observe(("audio", 0), FetchSnapshot(3, 3, polled_ms=1), clocks())
    for utt in ("u1", "u2"):
        j.add(part("text", utt, "c", 0), f"t-{utt}")
        j.add(part("visual", utt, "c", 0), f"v-{utt}")
    answered(progress, clocks, [("text", 0), ("visual", 0)], 40.0, [1], silent=[("audio", 0)])
    assert j.expire() == []  # 40 s pending, beyond max_wait: the outage holds it
    progress.observe(("audio", 0), FetchSnapshot(4, 4, polled_ms=100), clocks())  # answered again
    recovered = clocks()
    (joined,) = j.add(part("audio", "u1", "c", 0), "a-u1")
    assert isinstance(joined, Joined) and joined.complete
    decided_at = None
    for polled in range(101, 200):  # u2's audio never comes
        clocks.step(0.5)
        progress.observe(("audio", 0), FetchSnapshot(4, 4, polled_ms=polled), clocks())
        progress.observe(("text", 0), FetchSnapshot(4, 4, polled_ms=polled), clocks())
        if out := j.expire():
            decided_at = clocks() - recovered
            break
    assert isinstance(out[0], Dropped) and out[0].reason == Reason.INCOMPLETE
    assert decided_at is not None and 10.0 <= decided_at <= 30.5


def watched() -> tuple[Clocks, list[int], ReadProgress, Joiner]:
    """A join that reads the consumer's fetch progress (silence 1 s, stall wait 10 s), and a fetch-answer counter."""
    clocks, progress = Clocks(), ReadProgress(silence_s=1.0)
    j = joiner(clocks, fetched=lambda m, g: progress.fetched((m, g)), stall_wait_s=10.0, max_wait_s=60.0)
    return clocks, [0], progress, j


def answered(progress: ReadProgress, clocks: Clocks, tps: list[tuple[str, int]], seconds: float,
             polled: list[int], silent: Sequence[tuple[str, int]] = (), held: Sequence[tuple[str, int]] = ()) -> None:
    """Fetches of `tps` answered every half second for `seconds`, each showing the partition read to its end; those
    of `silent` unanswered all along, and `held` not asked for by the consumer (records of its leader wait)."""
    for k in range(1, int(seconds * 2) + 1):
        clocks.step(0.5)
        polled[0] += 1
        for tp in tps:
            progress.observe(tp, FetchSnapshot(7, 7, polled_ms=polled[0]), clocks())
        for tp in [*silent, *held]:
            progress.observe(tp, FetchSnapshot(7, 7, polled_ms=-1, silent_ms=500 * k, held=tp in held), clocks())


def assert_decided_after_timeout(j: Joiner, progress: ReadProgress, clocks: Clocks, tps: list[tuple[str, int]],
                                 polled: list[int], utt: str, at: int) -> None:
    """An utterance with text and audio and no visual is decided without visual after the plain timeout."""
    j.add(part("text", utt, "c", at), f"t-{utt}")
    j.add(part("audio", utt, "c", at), f"a-{utt}")
    answered(progress, clocks, tps, 2.5, polled)
    (out,) = j.expire()
    assert isinstance(out, Joined) and set(out.parts) == {"text", "audio"}


def test_after_an_outage_longer_than_the_stall_wait_each_partition_gets_its_producers_time() -> None:
    """The whole cluster was down for 30 s, longer than stall_wait_s. Back up, the producers deliver what they
    held partition by partition as they reconnect: an utterance's text comes at once, its audio (required) and its
    visual (optional) 8 s later. Neither is decided without them, though every partition reads to its end."""
    clocks, polled, progress, j = watched()
    tps = [(m, 0) for m in ("text", "audio", "visual")]
    answered(progress, clocks, tps, 1.0, polled)
    for m in ("text", "audio", "visual"):
        j.add(part(m, "u0", "c", 0), f"{m}0")
    answered(progress, clocks, [], 30.0, polled, silent=tps)  # the outage: no fetch answers
    answered(progress, clocks, tps, 0.5, polled)
    j.add(part("text", "u1", "c", 5_000), "t1")  # made during the outage, delivered first
    j.add(part("text", "u2", "c", 5_000), "t2")
    j.add(part("audio", "u2", "c", 5_000), "a2")
    answered(progress, clocks, tps, 8.0, polled)
    assert j.expire() == []  # audio and visual quiet 8 s after a 30 s outage: still being delivered
    assert j.add(part("audio", "u1", "c", 5_000), "a1") == []  # u1 still waits for its visual
    (whole,) = [o for o in j.add(part("visual", "u1", "c", 5_000), "v1") if isinstance(o, Joined)]
    assert whole.complete
    answered(progress, clocks, tps, 9.5, polled)
    assert j.expire() == []  # u2's visual: the partition delivered a part 9.5 s ago
    answered(progress, clocks, tps, 1.0, polled)
    (partial,) = j.expire()  # quiet for stall_wait_s after the outage, and it never came
    assert isinstance(partial, Joined) and not partial.complete and set(partial.parts) == {"text", "audio"}
    # an utterance begun well after the outage is back to the plain timeout
    assert_decided_after_timeout(j, progress, clocks, tps, polled, "u3", 60_000)


def test_an_outage_of_one_partition_gives_every_partition_time() -> None:
    """Only audio's leader failed; visual's fetches never stopped being answered. An idempotent producer that lost
    requests to the failed leader drains every partition before it sends again, so the visual part of an utterance
    begun around the failover can still come seconds late: it is waited for stall_wait_s, not timeout_s."""
    clocks, polled, progress, j = watched()
    healthy = [("text", 0), ("visual", 0)]
    answered(progress, clocks, [*healthy, ("audio", 0)], 1.0, polled)
    answered(progress, clocks, healthy, 9.0, polled, silent=[("audio", 0)])  # audio's leader is down
    answered(progress, clocks, [*healthy, ("audio", 0)], 0.5, polled)  # a new leader answers
    j.add(part("text", "u1", "c", 11_000), "t1")
    j.add(part("audio", "u1", "c", 11_000), "a1")
    answered(progress, clocks, [*healthy, ("audio", 0)], 5.0, polled)
    assert j.expire() == []  # visual quiet for 5 s: held by a draining producer, maybe
    (whole,) = j.add(part("visual", "u1", "c", 11_000), "v1")
    assert isinstance(whole, Joined) and whole.complete


def test_an_utterance_begun_as_a_leader_dies_waits_for_the_parts_its_producers_hold() -> None:
    """Audio's leader dies just after an utterance's text and audio were sent; its visual was made a moment later and
    is held by the draining producer, though visual's partition answers every fetch, read to its end. The outage
    shows as audio's silence a second later, before the timeout, and from then on the visual part is waited for."""
    clocks, polled, progress, j = watched()
    healthy, audio = [("text", 0), ("visual", 0)], ("audio", 0)
    answered(progress, clocks, [*healthy, audio], 1.0, polled)
    j.add(part("text", "u1", "c", 1_000), "t1")
    j.add(part("audio", "u1", "c", 1_000), "a1")
    for k in range(1, 11):  # 5 s: audio's fetches unanswered until a new leader is elected
        answered(progress, clocks, healthy, 0.5, polled)
        progress.observe(audio, FetchSnapshot(7, 7, polled_ms=polled[0] - k, silent_ms=500 * k), clocks())
        assert j.expire() == []
    answered(progress, clocks, [*healthy, audio], 3.0, polled)
    assert j.expire() == []  # answered again 3 s ago: the producer may not have reached visual's leader yet
    (whole,) = j.add(part("visual", "u1", "c", 1_000), "v1")
    assert isinstance(whole, Joined) and whole.complete
    answered(progress, clocks, [*healthy, audio], 10.0, polled)
    assert_decided_after_timeout(j, progress, clocks, [*healthy, audio], polled, "u2", 20_000)


def test_silence_the_consumer_chose_is_no_outage() -> None:
    """A partition of another group goes unfetched for 4 s because the worker has not yet taken the records fetched
    from its leader (back-pressure), and the worker's own loop observes the consumer only every 3 s (a slow batch):
    neither is an outage, so a missing part is decided after the plain timeout."""
    clocks, polled, progress, j = watched()
    tps = [(m, 0) for m in ("text", "audio", "visual")]
    answered(progress, clocks, tps, 1.0, polled)
    j.add(part("text", "u1", "c", 1_000), "t1")
    j.add(part("audio", "u1", "c", 1_000), "a1")
    answered(progress, clocks, tps, 2.5, polled, held=[("audio", 1)])
    (partial,) = j.expire()
    assert isinstance(partial, Joined) and set(partial.parts) == {"text", "audio"}
    j.add(part("text", "u2", "c", 4_000), "t2")
    j.add(part("audio", "u2", "c", 4_000), "a2")
    clocks.step(3.0)  # the loop stalls; the consumer's thread went on fetching
    for tp in tps:
        progress.observe(tp, FetchSnapshot(7, 7, polled_ms=polled[0] + 1, silent_ms=100), clocks())
    (partial,) = j.expire()
    assert isinstance(partial, Joined) and set(partial.parts) == {"text", "audio"}


def test_partitions_assigned_again_by_a_rebalance_wait_for_parts_producers_may_still_hold() -> None:
    """A rebalance during an outage forgets what was seen of the outage; the partitions come back re-read from their
    commit while producers still hold parts. A part missing right after a reassignment gets stall_wait_s, the first
    assignment of a worker does not (nothing was held for it), and neither does an utterance begun long after."""
    clocks, polled, progress, j = watched()
    tps = [(m, 0) for m in ("text", "audio", "visual")]
    answered(progress, clocks, tps, 1.0, polled)
    j.add(part("text", "u0", "c", 0), "t0")
    j.add(part("audio", "u0", "c", 0), "a0")
    answered(progress, clocks, tps, 2.5, polled)
    (first,) = j.expire()  # first assignment: visual decided missing after the timeout
    assert isinstance(first, Joined) and set(first.parts) == {"text", "audio"}
    progress.forget(tps)  # a rebalance: revoked, then assigned again
    j.forget(lambda token: False)
    j.assigned({0})
    progress.reassigned(clocks())
    answered(progress, clocks, tps, 0.5, polled)
    j.add(part("text", "u1", "c", 4_000), "t1")
    j.add(part("audio", "u1", "c", 4_000), "a1")
    answered(progress, clocks, tps, 5.0, polled)
    assert j.expire() == []  # 5.5 s after the reassignment: its producer may not have reconnected yet
    (whole,) = j.add(part("visual", "u1", "c", 4_000), "v1")
    assert isinstance(whole, Joined) and whole.complete
    answered(progress, clocks, tps, 10.0, polled)
    assert_decided_after_timeout(j, progress, clocks, tps, polled, "u2", 20_000)


def test_read_progress_is_forgotten_with_the_partition() -> None:
    progress = ReadProgress(silence_s=1.0)
    progress.observe("tp", FetchSnapshot(5, 5, polled_ms=1), 3.0)
    assert progress.fetched("tp") == Fetched(3.0, 3.0)
    progress.observe("tp", FetchSnapshot(5, 9, polled_ms=2), 4.0)  # more arrived: the last evidence stands
    assert progress.fetched("tp") == Fetched(3.0, 3.0)
    progress.observe("tp", FetchSnapshot(5, 9, polled_ms=2, silent_ms=900), 4.9)  # a fetch wait: not silent yet
    assert progress.fetched("tp") == Fetched(3.0, 3.0)
    progress.observe("tp", FetchSnapshot(5, 9, polled_ms=2, silent_ms=1100), 5.1)  # silent: out while it lasts
    assert progress.fetched("tp") == Fetched(3.0, 3.0, resumed_at=5.1)
    progress.observe("tp", FetchSnapshot(5, 9, polled_ms=2, silent_ms=5000), 9.0)
    assert progress.fetched("tp") == Fetched(3.0, 3.0, resumed_at=9.0)
    progress.observe("tp", FetchSnapshot(9, 9, polled_ms=3), 9.2)  # answered again, and read to its end
    assert progress.fetched("tp") == Fetched(9.2, 9.2, resumed_at=9.2)
    progress.observe("tp", FetchSnapshot(9, 9, polled_ms=4), 9.7)
    assert progress.fetched("tp") == Fetched(9.7, 9.2, resumed_at=9.2)
    progress.forget(["tp"])
    assert progress.fetched("tp") is None


def test_a_flowing_partition_that_falls_silent_is_waited_for_longer_than_an_idle_one() -> None:
    """Audio parts were arriving, then the audio partition's leader fails over: its parts wait in the producers.
    The utterance waits stall_wait_s for them; once audio has been silent that long, new utterances get timeout_s."""
    clocks = Clocks()
    j = joiner(clocks, stall_wait_s=10.0, max_wait_s=30.0)
    j.add(part("audio", "u0", "c", 0), "a0")
    j.add(part("text", "u0", "c", 0), "t0")
    j.add(part("visual", "u0", "c", 0), "v0")  # complete: the three partitions were flowing
    clocks.step(0.5)
    j.add(part("text", "u1", "c", 500), "t1")
    j.add(part("visual", "u1", "c", 500), "v1")
    clocks.step(5)
    assert j.expire() == []  # audio silent 5.5 s: more likely stalled than done
    (joined,) = j.add(part("audio", "u1", "c", 500), "a1")  # the failover is over: a complete result
    assert isinstance(joined, Joined) and joined.complete
    clocks.step(20)  # audio idle ever since
    j.add(part("text", "u2", "c", 26_000), "t2")
    j.add(part("visual", "u2", "c", 26_000), "v2")
    clocks.step(2.1)
    (out,) = j.expire()  # text, visual and no audio: audio is required, so it is dropped after timeout_s
    assert isinstance(out, Dropped) and out.reason == Reason.INCOMPLETE
