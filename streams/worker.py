"""`mmcl worker`: load the model, check the topics, start the Faust worker with the pipeline attached."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mmcl.config import TaskKind
from mmcl.errors import ConfigError
from mmcl.predictor import Predictor
from streams.kafka import check_copartitioned, ensure_topics
from streams.metrics import Metrics
from streams.settings import Settings

log = logging.getLogger("mmcl.worker")


def load_predictor(s: Settings) -> Predictor:
    if s.model.checkpoint is None:
        raise ConfigError("MMCL_MODEL__CHECKPOINT is not set: point it at a checkpoint directory (mmcl train --out)")
    predictor = Predictor.from_checkpoint(s.model.checkpoint, device=s.model.device)
    if predictor.cfg.task.kind is TaskKind.MULTITASK:
        raise ConfigError("the worker serves sentiment models (regression or classes); this checkpoint is multitask")
    # warm up: the first call pays for allocations and kernel choice; do not bill it to the first utterance
    predictor.predict([{"text": np.zeros((2, predictor.input_dims[0]), np.float32)}])
    return predictor


def run_worker(s: Settings, create_topics: bool = False) -> int:
    import faust

    from streams.faust_app import FaustPublisher, attach_pipeline, build_app
    from streams.http import start_http
    from streams.pipeline import Pipeline, aggregate_rule
    from streams.redis_store import ResultWriter, async_client

    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if create_topics:
        ensure_topics(s.kafka, s.topics)
    partitions = check_copartitioned(s)
    s = s.model_copy(update={"topics": s.topics.model_copy(update={"partitions": partitions})})
    predictor = load_predictor(s)
    metrics = Metrics()
    app = build_app(s)
    state: dict[str, Any] = {}

    pipeline = Pipeline(s, predictor, metrics, lambda: ResultWriter(async_client(s.redis), s.output, aggregate_rule(s)),
                        FaustPublisher(app), ack=lambda event: event.ack())

    @app.task
    async def start_pipeline() -> None:
        await pipeline.start()
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
