"""The worker's side of the registry: which model to serve at start, and following promotions (hot swap)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmcl.config import MODALITIES, TaskKind
from mmcl.errors import ConfigError, MMCLError
from mmcl.predictor import Predictor
from streams.learning.registry import DirRegistry, RedisRegistry, Registry, RegistryError
from streams.messages import ModelAnnouncement, now_ms
from streams.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


def open_registry(settings: Settings) -> Registry:
    """The model registry the settings point to (a folder, or Redis)."""
    r = settings.registry
    if r.backend == "redis":
        import redis

        from streams.sinks.redis_store import redis_kwargs

        kw = {**redis_kwargs(settings.redis), "decode_responses": False}
        client = redis.Redis.from_url((r.redis_url or settings.redis.url).get_secret_value(), **kw)
        return RedisRegistry(client, settings.state_dir / "registry-cache", r.prefix)
    return DirRegistry(r.path or settings.state_dir / "registry")


def load_predictor(path: Path, model: ModelSettings, version: str | None = None) -> Predictor:
    """Load a checkpoint to serve on the configured device and precision; refuse a model the worker cannot serve.
    `version`: the registry's name for it, which predictions then carry (a version published before versions
    covered the configuration is named by its weights alone)."""
    try:
        predictor = Predictor.from_checkpoint(path, device=model.device, precision=model.precision)
    except ValueError as e:  # a precision this device or model cannot run
        raise ConfigError(f"MMCL_MODEL__PRECISION={model.precision}: {e}") from None
    if version is not None:
        predictor.version = version
    if predictor.cfg.task.kind is TaskKind.MULTITASK:
        raise ConfigError("the worker serves sentiment models (regression or classes); this checkpoint is multitask")
    # warm up: the first call pays for allocations and kernel choice; do not bill it to the first utterance
    first = predictor.cfg.used.index(True)
    predictor.predict([{MODALITIES[first]: np.zeros((2, predictor.input_dims[first]), np.float32)}])
    return predictor


def initial_predictor(settings: Settings, registry: Registry | None) -> Predictor:
    """The registry's current version if it has one, else MMCL_MODEL__CHECKPOINT."""
    if registry is not None:
        try:
            version = registry.current()
        except Exception as e:  # a registry that cannot be read is reported, not fatal if a checkpoint is set
            if settings.model.checkpoint is None:
                raise ConfigError(f"cannot read the model registry: {e}") from None
            log.warning("cannot read the model registry (%s); serving %s", e, settings.model.checkpoint)
            version = None
        if version is not None:
            return load_predictor(registry.fetch(version), settings.model, version)
    if settings.model.checkpoint is None:
        raise ConfigError("no model: the registry has no current version and MMCL_MODEL__CHECKPOINT is not set "
                          "(mmcl model publish CHECKPOINT --promote, or set MMCL_MODEL__CHECKPOINT)")
    return load_predictor(settings.model.checkpoint, settings.model)


class ModelFollower:
    """Follows the registry's `current`: woken by announcements on the model-updates topic, and every poll_s.

    A new version is fetched (checksums verified), loaded and warmed on this thread, then handed to `swap`, which
    puts it in place between batches. A version that fails to load, fails its checksums or eats other features is
    refused: the old model keeps serving, and the refusal is counted.
    """

    def __init__(self, s: Settings, registry: Registry, serving: Callable[[], Predictor],
                 swap: Callable[[Predictor], None], count: Callable[[str], None]) -> None:
        self.s, self.registry, self.serving, self.swap, self.count = s, registry, serving, swap, count
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refused: set[str] = set()
        self._threads = [threading.Thread(target=self._run, name="mmcl-model-follower", daemon=True),
                         threading.Thread(target=self._listen, name="mmcl-model-updates", daemon=True)]

    def start(self) -> None:
        """Start following promotions in a background thread."""
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop following and wait for the thread."""
        self._stop.set()
        self._wake.set()

    def check(self) -> str | None:
        """Swap to the registry's current version if it is not the one serving; returns the outcome."""
        try:
            version = self.registry.current()
        except Exception as e:  # the registry is down: keep serving, try again later
            log.warning("cannot read the model registry: %s", e)
            return None
        old = self.serving()
        if version is None or version == old.version or version in self._refused:
            return None
        try:
            path = self.registry.fetch(version)
            new = load_predictor(path, self.s.model, version)
        except RegistryError as e:
            return self._refuse(version, "checksum_mismatch" if "corrupt" in str(e) else "load_failed", e)
        except (MMCLError, OSError, RuntimeError, ValueError) as e:
            return self._refuse(version, "load_failed", e)
        if new.input_dims != old.input_dims or new.cfg.seq_len != old.cfg.seq_len:
            return self._refuse(version, "profile_mismatch", ValueError(
                f"dims {new.input_dims} / length {new.cfg.seq_len}, serving {old.input_dims} / {old.cfg.seq_len}"))
        self.swap(new)
        self.count("ok")
        log.info("model %s -> %s", old.version, new.version)
        return "ok"

    def _refuse(self, version: str, result: str, e: Exception) -> str:
        self._refused.add(version)  # not retried until a new promotion names another version
        self.count(result)
        log.error("refusing model %s (%s): %s; still serving %s", version, result, e, self.serving().version)
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.s.registry.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()

    def _listen(self) -> None:
        """Every worker must hear every announcement: a group of its own, read from the start (they are few)."""
        from confluent_kafka import Consumer, KafkaException

        from streams.kafka import consumer_config

        conf = consumer_config(self.s.kafka, f"{self.s.kafka.group_id}-models-{uuid.uuid4().hex[:8]}")
        try:
            c = Consumer(conf)
            c.subscribe([self.s.topics.model_updates])
        except KafkaException as e:
            log.error("cannot follow %s: %s (polling the registry every %g s instead)",
                      self.s.topics.model_updates, e, self.s.registry.poll_s)
            return
        try:
            while not self._stop.is_set():
                msg = c.poll(0.5)
                if msg is None or msg.error():
                    continue
                try:
                    ModelAnnouncement.model_validate_json(msg.value() or b"")
                except ValueError:
                    log.warning("ignoring a malformed announcement on %s", self.s.topics.model_updates)
                    continue
                self._wake.set()
        finally:
            c.close()


def announce(settings: Settings, version: str, checksum: str, action: str) -> None:
    """Tell every worker to re-read the registry (promote / rollback)."""
    from confluent_kafka import Producer

    from streams.kafka import producer_config

    msg = ModelAnnouncement(version=version, checksum=checksum, action=action,
                            announced_at=now_ms())
    p = Producer(producer_config(settings.kafka))
    p.produce(settings.topics.model_updates, msg.model_dump_json().encode(), key=b"mmcl")
    if p.flush(15) != 0:
        raise ConfigError(f"could not announce {version} on {settings.topics.model_updates} "
                          f"(broker {settings.kafka.bootstrap_servers})")


__all__ = ["ModelFollower", "Registry", "announce", "initial_predictor", "load_predictor", "open_registry"]
