"""Where the broker and Redis are: the configured ones when they answer, else the embedded ones `mmcl up` started."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from streams.embedded import Service, load_runtime, port_open, save_runtime, start_kafka, start_redis
from streams.kafka import ensure_topics
from streams.settings import SecretUrl, Settings

DEMO_MODEL = "demo-model"


def kafka_reachable(bootstrap: str) -> bool:
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        if port.isdigit() and port_open(host.strip("[]") or "127.0.0.1", int(port), 0.3):
            return True
    return False


def redis_reachable(url: str) -> bool:
    u = urlparse(url)
    if u.scheme == "unix":
        return True  # cannot probe cheaply; trust it
    return port_open(u.hostname or "127.0.0.1", u.port or 6379, 0.3)


def resolve(s: Settings) -> Settings:
    """Point unreachable endpoints at the embedded services when they run; pick the demo model if none is set."""
    services = load_runtime(s.state_dir)
    update = {}
    if "kafka" in services and not kafka_reachable(s.kafka.bootstrap_servers):
        update["kafka"] = s.kafka.model_copy(update={"bootstrap_servers": services["kafka"].url})
    if "redis" in services and not redis_reachable(s.redis.url.get_secret_value()):
        update["redis"] = s.redis.model_copy(update={"url": SecretUrl(services["redis"].url)})
    if s.model.checkpoint is None and (s.state_dir / DEMO_MODEL / "model.safetensors").exists():
        update["model"] = s.model.model_copy(update={"checkpoint": s.state_dir / DEMO_MODEL})
    return s.model_copy(update=update) if update else s


@dataclass(frozen=True)
class UpResult:
    settings: Settings
    started: dict[str, Service]  # what this call started (empty: all was running or reachable)
    embedded: dict[str, Service]  # every embedded service now running


def up(s: Settings) -> UpResult:
    """Start what is not reachable, create the topics, and return settings that point at what runs."""
    running = load_runtime(s.state_dir)
    started: dict[str, Service] = {}
    if not kafka_reachable(s.kafka.bootstrap_servers) and "kafka" not in running:
        started["kafka"] = start_kafka(s.state_dir)
    if not redis_reachable(s.redis.url.get_secret_value()) and "redis" not in running:
        started["redis"] = start_redis(s.state_dir)
    embedded = {**running, **started}
    if started:
        save_runtime(s.state_dir, embedded)
    s = resolve(s)
    ensure_topics(s.kafka, s.topics, max_message_bytes=s.limits.max_message_bytes)
    return UpResult(s, started, embedded)
