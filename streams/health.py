"""/metrics (Prometheus), /healthz (alive: the event loop answers) and /readyz (serving: model loaded, partitions
assigned, Redis writable) on the configured address."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

PATHS = ("/metrics", "/healthz", "/readyz")  # what the deployment's probes and scrapers may ask for


class Exposed(Protocol):
    """Metrics in a registry of their own (the worker's, the trainer's)."""

    registry: CollectorRegistry


async def start_http(metrics: Exposed, status: Callable[[], dict[str, Any]], host: str, port: int) -> web.AppRunner:
    """Serve /metrics, /healthz and /readyz on host:port; -> the running aiohttp runner."""
    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"alive": True, **status()})

    async def ready(_: web.Request) -> web.Response:
        st = status()
        return web.Response(status=200 if st.get("ready") else 503, text=json.dumps(st),
                            content_type="application/json")

    app = web.Application()
    app.add_routes([web.get(path, view) for path, view in zip(PATHS, (metrics_view, health, ready), strict=True)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
