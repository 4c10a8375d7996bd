"""`mmcl worker`: load the model, check the topics, start the Faust worker with the pipeline attached."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams.kafka import check_copartitioned, ensure_topics
from streams.lag import LagGauges, LagProbe, follow_lag
from streams.metrics import Metrics
from streams.models import ModelFollower, initial_predictor, open_registry
from streams.settings import Settings

log = logging.getLogger("mmcl.worker")


def run_worker(s: Settings, create_topics: bool = False) -> int:
    import faust

    from streams.faust_app import attach_pipeline, build_app
    from streams.http import start_http
    from streams.pipeline import Pipeline, aggregate_rule
    from streams.publisher import KafkaPublisher
    from streams.redis_store import ResultWriter, async_client

    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if create_topics:
        ensure_topics(s.kafka, s.topics, max_message_bytes=s.limits.max_message_bytes)
    partitions = check_copartitioned(s)
    s = s.model_copy(update={"topics": s.topics.model_copy(update={"partitions": partitions})})
    registry = open_registry(s)
    predictor = initial_predictor(s, registry)
    metrics = Metrics()
    app = build_app(s)
    state: dict[str, Any] = {}

    pipeline = Pipeline(s, predictor, metrics, lambda: ResultWriter(async_client(s.redis), s.output, aggregate_rule(s)),
                        KafkaPublisher(s.kafka), ack=lambda event: event.ack())

    follower = ModelFollower(s, registry, lambda: pipeline.predictor, pipeline.swap,
                             lambda result: metrics.model_swaps.labels(result).inc())

    @app.task
    async def start_pipeline() -> None:
        await pipeline.start()
        follower.start()
        state["lag"] = asyncio.create_task(follow_lag(LagProbe(s.kafka, s.kafka.group_id), LagGauges(metrics),
                                                      app.consumer, s.metrics.lag_interval_s), name="mmcl-lag")
        state["http"] = await start_http(metrics, lambda: status(pipeline, app), s.metrics.host, s.metrics.port)
        log.info("worker up: model %s on %s, metrics on http://%s:%d/metrics", predictor.version, predictor.device,
                 s.metrics.host, s.metrics.port)

    attach_pipeline(app, s, pipeline)
    worker = faust.Worker(app, loglevel=_faust_level(s.log_level), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # runs until SIGTERM / SIGINT, then stops cleanly
    return 0


def status(pipeline: Any, app: Any) -> dict[str, Any]:
    try:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
    except Exception:
        assignment = []
    return {"ready": pipeline.ready, "partitions_assigned": pipeline.assigned, "redis_ok": pipeline.redis_ok,
            "pending_joins": len(pipeline.joiner), "written": pipeline.written,
            "model_version": pipeline.predictor.version, "assignment": assignment}


def _faust_level(level: str) -> str:
    return "warning" if level in ("info", "warning") else level
