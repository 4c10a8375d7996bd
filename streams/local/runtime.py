"""The local profile: the embedded broker and Redis that `mmcl up` started, followed only when selected.

A command serves the configured endpoints unless MMCL_RUNTIME=local (or `mmcl --local`) selects this profile: then
it points at the embedded services recorded in the state folder, applies the client timings the embedded broker
needs, and serves the demo's model when no checkpoint is set. Nothing here ever replaces a configured endpoint
that merely does not answer: an unreachable production broker is an error, not a quiet switch to a local toy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mmcl.errors import ConfigError
from streams.kafka import ensure_topics
from streams.local import apache_kafka
from streams.local.embedded import Service, load_runtime, save_runtime, start_kafka, start_redis
from streams.settings import KafkaSettings, SecretUrl, Settings

DEMO_MODEL = "demo-model"

# Client timings for the embedded broker (Tansu). It never answers a fetch early, even with data waiting, so each hop
# costs the whole fetch wait: 50 ms here, where Kafka's default of 500 ms would add half a second per hop. A group
# join takes about half of the session timeout, so a short one keeps its rebalances quick. Apache Kafka answers a
# fetch as soon as data arrives; the production defaults in Settings are Kafka's own.
EMBEDDED_KAFKA_SETTINGS: dict[str, float | int | str] = {"session_timeout_s": 6.0, "heartbeat_interval_s": 0.3,
                                                        "fetch_max_wait_ms": 50, "broker_kind": "tansu"}


def embedded_kafka_env() -> dict[str, str]:
    """EMBEDDED_KAFKA_SETTINGS as MMCL_* variables, for a process pointed at the embedded broker by hand."""
    return {f"MMCL_KAFKA__{name.upper()}": str(value) for name, value in EMBEDDED_KAFKA_SETTINGS.items()}


def embedded_kafka(bootstrap_servers: str) -> KafkaSettings:
    """Client settings for an embedded broker at `bootstrap_servers`: its timings, everything else the defaults."""
    return KafkaSettings(bootstrap_servers=bootstrap_servers, **EMBEDDED_KAFKA_SETTINGS)


def follow_local(settings: Settings) -> Settings:
    """`settings` pointed at the embedded services `mmcl up` recorded; a ConfigError when they do not run."""
    services = load_runtime(settings.state_dir)
    missing = [name for name in ("kafka", "redis") if name not in services]
    if missing:
        raise ConfigError(f"the local profile is selected (MMCL_RUNTIME=local) but no embedded {' or '.join(missing)} "
                          f"runs for the state folder {settings.state_dir}: start them with `mmcl up`")
    # a timing set explicitly (MMCL_KAFKA__SESSION_TIMEOUT_S=...) wins over the embedded broker's; Apache Kafka
    # started by `mmcl up --broker kafka` gets the production defaults, as a real cluster would
    own = EMBEDDED_KAFKA_SETTINGS if services["kafka"].kind != "apache" else {"broker_kind": "apache"}
    timings = {k: v for k, v in own.items() if k not in settings.kafka.model_fields_set}
    update: dict[str, Any] = {
        "kafka": settings.kafka.model_copy(update={"bootstrap_servers": services["kafka"].url, **timings}),
        "redis": settings.redis.model_copy(update={"url": SecretUrl(services["redis"].url)}),
    }
    if settings.model.checkpoint is None and (settings.state_dir / DEMO_MODEL / "model.safetensors").exists():
        update["model"] = settings.model.model_copy(update={"checkpoint": settings.state_dir / DEMO_MODEL})
    return settings.model_copy(update=update)


def resolve(settings: Settings) -> Settings:
    """The settings a command runs with: as configured, or the local profile when MMCL_RUNTIME=local."""
    return follow_local(settings) if settings.runtime == "local" else settings


def describe_endpoints(settings: Settings) -> str:
    """One line naming the broker and Redis a command uses, and where they come from."""
    origin = "local profile: the embedded services of `mmcl up`" if settings.runtime == "local" else "configured"
    return f"broker {settings.kafka.bootstrap_servers}, Redis {settings.redis.url} ({origin})"


@dataclass(frozen=True)
class UpResult:
    """What `mmcl up` found and did."""

    settings: Settings  # the local profile, applied
    started: dict[str, Service]  # what this call started (empty: both were running)
    embedded: dict[str, Service]  # every embedded service now running


def up(settings: Settings, broker: Literal["tansu", "apache"] = "tansu") -> UpResult:
    """Start the embedded broker and Redis where they do not run yet, record them as the local profile, create
    the topics, and return the settings of that profile. `broker`: "tansu" (the embedded one, no Java) or "apache"
    (Apache Kafka from its jars, fetched from Maven Central the first time: Java 17 and Maven needed)."""
    running = load_runtime(settings.state_dir)
    if "kafka" in running and running["kafka"].kind != broker:
        raise ConfigError(f"a {running['kafka'].kind} broker already runs for {settings.state_dir}: "
                          f"`mmcl down` first to start {broker} instead")
    started: dict[str, Service] = {}
    if "kafka" not in running:
        started["kafka"] = start_kafka(settings.state_dir) if broker == "tansu" else \
            apache_kafka.start(settings.state_dir / "apache-kafka")
    if "redis" not in running:
        started["redis"] = start_redis(settings.state_dir)
    embedded = {**running, **started}
    if started:
        save_runtime(settings.state_dir, embedded)
    local = follow_local(settings.model_copy(update={"runtime": "local"}))
    ensure_topics(local.kafka, local.topics, max_message_bytes=local.limits.max_message_bytes)
    return UpResult(local, started, embedded)
