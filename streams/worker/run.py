"""`mmcl worker`: check the topics and Redis, load the model, start the Faust worker with the pipeline attached, and
stop within MMCL_WORKER__SHUTDOWN_TIMEOUT_S of SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from streams.errors import SinkRefused
from streams.kafka import (
    RecordLimits,
    check_copartitioned,
    check_outputs,
    ensure_topics,
    output_topics,
    settled_counts,
)
from streams.learning.follower import ModelFollower, initial_predictor, open_registry
from streams.metrics import Metrics
from streams.settings import Settings
from streams.worker.lag import LagGauges, LagProbe, follow_lag

log = logging.getLogger("mmcl.worker")


def run_worker(settings: Settings, create_topics: bool = False) -> int:
    """Run the worker until SIGTERM or a fatal sink error. -> the exit code."""
    from streams.health import start_http
    from streams.sinks.aggregates import aggregate_rule
    from streams.sinks.publisher import KafkaPublisher
    from streams.sinks.redis_store import ResultWriter, async_client
    from streams.worker.app import attach_pipeline, build_app, fetch_state
    from streams.worker.pipeline import Pipeline

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, limits = check_at_startup(settings, create_topics)
    registry = open_registry(settings)
    predictor = initial_predictor(settings, registry)
    metrics = Metrics()
    app = build_app(settings)
    state: dict[str, Any] = {}
    publisher = KafkaPublisher(settings.kafka, limits.producer)

    def on_fatal(why: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the same orderly shutdown as a SIGTERM from outside

    def make_writer() -> ResultWriter:
        return ResultWriter(async_client(settings.redis), settings.output, aggregate_rule(settings))

    pipeline = Pipeline(settings, predictor, metrics, make_writer, publisher, ack=lambda event: event.ack(),
                        limits=limits, on_fatal=on_fatal, fetch_state=fetch_state(app))

    follower = ModelFollower(settings, registry, lambda: pipeline.predictor, pipeline.swap,
                             lambda result: metrics.model_swaps.labels(result).inc())

    @app.task  # type: ignore[untyped-decorator]  # faust's decorators are unannotated
    async def start_pipeline() -> None:
        await pipeline.start()
        follower.start()
        state["lag"] = asyncio.create_task(follow_lag(LagProbe(settings.kafka, settings.kafka.group_id), LagGauges(metrics),
                                                      app.consumer, settings.metrics.lag_interval_s), name="mmcl-lag")
        state["http"] = await start_http(metrics, lambda: status(pipeline, app), settings.metrics.host, settings.metrics.port)
        log.info("worker up: model %s on %s, metrics on http://%s:%d/metrics", predictor.version, predictor.device,
                 settings.metrics.host, settings.metrics.port)

    async def shutdown() -> None:
        """The flow has stopped: writes in flight get the grace time, then everything of ours stops; Faust commits
        what was acknowledged after this returns."""
        t0 = time.monotonic()
        grace = settings.worker.shutdown_timeout_s
        await pipeline.drain(grace)
        follower.stop()
        lag = state.get("lag")
        if lag is not None:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await lag
        await asyncio.to_thread(publisher.close, max(0.5, grace - (time.monotonic() - t0)))
        if state.get("http") is not None:
            await state["http"].cleanup()
        log.info("stopped in %.1f s", time.monotonic() - t0)

    attach_pipeline(app, settings, pipeline, shutdown)
    code = _execute(app, settings.log_level)
    if pipeline.fatal:
        raise SinkRefused(pipeline.fatal)
    return code


def _execute(app: Any, log_level: str) -> int:
    """Run the Faust worker until SIGTERM / SIGINT, then stop cleanly. -> its exit code."""
    import faust

    worker = faust.Worker(app, loglevel=_faust_level(log_level), quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    return code if isinstance(code, int) else (0 if code is None else 1)


def check_at_startup(settings: Settings, create_topics: bool) -> tuple[Settings, RecordLimits]:
    """What must hold before the worker consumes: co-partitioned feature topics, output topics that take our records,
    and Redis credentials good for every write (a refusal is one line and exit 1). -> the settings with the feature
    topics' partition count as found, and the record limits the broker allows."""
    from streams.sinks.aggregates import aggregate_rule
    from streams.sinks.redis_store import check_access, sync_client

    if create_topics:
        ensure_topics(settings.kafka, settings.topics, max_message_bytes=settings.limits.max_message_bytes)
    # one reading for both checks, taken again while a topic just created is still reaching every broker
    features, outputs = settings.topics.features, output_topics(settings)
    counts = settled_counts(settings.kafka, (*features, *outputs), lambda c: len({c[t] for t in features}) == 1
                            and all(c[t] is not None for t in (*features, *outputs)), within_s=5.0)
    partitions = check_copartitioned(settings, counts={t: counts[t] for t in settings.topics.features})
    limits = check_outputs(settings, counts)
    settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={"partitions": partitions})})
    client = sync_client(settings.redis)
    try:
        warning = check_access(client, settings.output, aggregate_rule(settings))
    finally:
        client.close()
    if warning:
        log.warning(warning)
    return settings, limits


def status(pipeline: Any, app: Any) -> dict[str, Any]:
    """The worker's state for /healthz and /readyz."""
    from streams.worker.app import consumer_view

    try:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
    except Exception:
        assignment = []
    return {"ready": pipeline.ready, "partitions_assigned": pipeline.assigned, "redis_ok": pipeline.redis_ok,
            "pending_joins": len(pipeline.joiner), "written": pipeline.written, "stopping": pipeline.stopping,
            "fatal": pipeline.fatal, "model_version": pipeline.predictor.version, "assignment": assignment,
            "consumer": consumer_view(app)}


def _faust_level(level: str) -> str:
    return "warning" if level in ("info", "warning") else level
