"""Workers joining, dying and restarting under a live stream dead-letter nothing: a rebalance or a restart forgets
what was pending (its next reader re-reads it) instead of deciding it, and a part whose utterance already has its
result is a re-delivery, not a dead letter (which raised MMCLDeadLettersSustained on every restart)."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from streams.kafka import ensure_topics
from streams.local import simulate

from .conftest import Stack, covering_run_id, quick_kafka, wait_for
from .test_delivery import assert_delivered_once_without_dead_letters, feed_in_background


@pytest.mark.timeout(240)  # workers join, die and come back one by one
def test_workers_joining_dying_and_restarting_dead_letter_nothing(stack: Stack) -> None:
    st = Stack(stack.kafka, stack.redis_svc, stack.checkpoint, stack.state_dir, f"{stack.prefix}rb")
    ensure_topics(quick_kafka(stack.kafka.url), st.topics)
    try:
        first = st.start_worker()
        # every utterance complete (no missing visual): any dead letter or incomplete join is a bug
        spec = simulate.SimSpec(calls=8, rate=40, jitter_ms=400, missing_visual=0.0, limit=4000, seed=21,
                                run_id=covering_run_id(f"{st.prefix}-", 8, st.topics.partitions))
        finish = feed_in_background(st, spec, open_ended=True)  # until the restarted worker has results

        def written(n: int, *workers: Any) -> Any:
            base = sum(w.status().get("written", 0) for w in workers)
            return lambda: sum(w.status().get("written", 0) for w in workers) >= base + n

        wait_for(written(80, first), 30, "results from the first worker")
        second = st.start_worker()  # joins mid-stream: a rebalance
        wait_for(lambda: len(second.status().get("assignment", [])) > 0, 30, "the second worker's partitions")
        wait_for(written(60, first, second), 30, "results from both")
        second.stop(signal.SIGKILL)  # dies: the first takes its partitions over after the session timeout
        wait_for(lambda: len(first.status().get("assignment", [])) == 12, 30, "the first worker owning all again")
        wait_for(written(60, first), 30, "results after the take-over")
        first.stop()  # a restart: SIGTERM, then a new worker
        third = st.start_worker()
        wait_for(written(60, third), 30, "results after the restart")
        stats = finish(90)
        assert stats.utterances < spec.limit  # the stream ran through every step
        # before: every rebalance and restart dead-lettered good parts
        assert_delivered_once_without_dead_letters(st, spec, stats)
        assert third.metric("mmcl_join_outcomes_total", outcome="incomplete") == 0
        assert third.metric("mmcl_dead_letters_total") == 0
    finally:
        for w in st.workers:
            w.stop()
