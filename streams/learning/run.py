"""`mmcl trainer`: one active instance, the ingestion loop, the metrics endpoint, a clean stop on SIGTERM."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from streams.learning.ingest import consume
from streams.learning.lease import single_instance
from streams.learning.trainer import Trainer
from streams.settings import Settings

log = logging.getLogger("mmcl.trainer")


def run_trainer(settings: Settings) -> int:
    """Run the trainer until SIGTERM or a lost lease: ingest, retrain when due, serve metrics."""
    import asyncio
    import signal

    import torch

    from streams.kafka import ensure_topics
    from streams.learning.follower import open_registry

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a run trains for minutes next to workers that answer in milliseconds: fewer threads, lower priority
    torch.set_num_threads(settings.trainer.threads)
    os.nice(settings.trainer.nice)
    with single_instance(settings) as lost:
        ensure_topics(settings.kafka, settings.topics, max_message_bytes=settings.limits.max_message_bytes)
        trainer = Trainer(settings, open_registry(settings))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())

        def stop_when_lease_lost() -> None:
            lost.wait()
            stop.set()

        threading.Thread(target=stop_when_lease_lost, daemon=True).start()
        loop = asyncio.new_event_loop()
        threading.Thread(target=_serve_metrics, args=(loop, trainer, settings), daemon=True).start()
        log.info("trainer up: %d labelled examples; metrics on http://%s:%d/metrics", trainer.store.size(),
                 settings.metrics.host, settings.trainer.metrics_port)
        try:
            consume(settings, trainer, stop)
        finally:
            trainer.join(timeout=5)  # a run in progress is abandoned: it changed nothing yet
            trainer.store.close()
    return 0


def _serve_metrics(loop: Any, trainer: Trainer, settings: Settings) -> None:
    import asyncio

    from streams.health import start_http

    asyncio.set_event_loop(loop)

    def status() -> dict[str, Any]:
        return {"ready": True, "training_set": trainer.store.size(), "training": trainer.training}

    loop.run_until_complete(start_http(trainer.metrics, status, settings.metrics.host, settings.trainer.metrics_port))
    loop.run_forever()
