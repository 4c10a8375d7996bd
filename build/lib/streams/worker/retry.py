"""Retrying a write: capped exponential back-off that pauses consumption and gives way to shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from streams.errors import ServiceError, ShuttingDown, SinkRefused, TransientError
from streams.metrics import Metrics
from streams.settings import Settings
from streams.worker.join import LiveClock

log = logging.getLogger("streams.worker.pipeline")


class RetryHost(Protocol):
    """What a retry reads and changes in the pipeline it belongs to."""

    settings: Settings
    metrics: Metrics
    live: LiveClock
    failing: int  # writes being retried right now
    redis_ok: bool
    abort: asyncio.Event | None  # set when a shutdown's grace time is over

    def publish_state(self) -> None:
        """Publish readiness and the paused gauge."""


class Retry:
    """One write's retries: back-off doubling from RETRY_INITIAL_S to RETRY_MAX_S; while it fails, consumption
    pauses (no slot frees), readiness is off and the join's clock stands still."""

    def __init__(self, pipeline: RetryHost, what: str, redis_write: bool = False) -> None:
        self.p, self.what, self.redis_write = pipeline, what, redis_write
        self.delay = pipeline.settings.redis.retry_initial_s
        self.failing = False

    async def __aenter__(self) -> Retry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.failing:
            self.p.failing -= 1
            self.p.live.resume()
            self.p.publish_state()

    async def failed(self, error: ServiceError) -> None:
        """Count a failed attempt, pause consumption, and wait the back-off (or raise ShuttingDown)."""
        p = self.p
        (p.metrics.redis_errors if self.redis_write else p.metrics.kafka_errors).inc()
        if not self.failing:  # the agent is about to stall on this: parts not arriving is not news
            self.failing = True
            p.failing += 1
            p.live.pause()
        if self.redis_write:
            p.redis_ok = False
        p.publish_state()
        log.warning("%s write failed (%s); retrying in %.2f s", self.what, error, self.delay)
        assert p.abort is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.abort.wait(), self.delay)
        if p.abort.is_set():
            raise ShuttingDown(f"the worker is stopping; {self.what} write abandoned")
        self.delay = min(self.delay * 2, p.settings.redis.retry_max_s)


def settle(todo: list[int], outcomes: Sequence[Any], into: Any) -> tuple[list[int], TransientError | None]:
    """One attempt's per-record outcomes: a sink that refused us is raised; transient failures are returned to be
    tried again (with the first of them); the rest, written or refused for good, are stored in `into` by index."""
    again, first = [], None
    for i, o in zip(todo, outcomes, strict=True):
        if isinstance(o, SinkRefused):
            raise o
        if isinstance(o, TransientError):
            again.append(i)
            first = first or o
        else:
            into[i] = o
    return again, first
