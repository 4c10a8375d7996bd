"""Versioned models: checkpoints (safetensors + JSON + checksums) with their lineage, and which one is current.

Two backends behind one interface: a directory (the embedded default; one machine) and Redis (several machines).
A version id is the first 12 hex digits of the SHA-256 of the weights and the configuration together
(`mmcl.checkpoint.model_digest`), the same id every prediction carries. Promote and
rollback change `current` atomically (a lock and a rename; a Redis transaction) and keep a history, so rollback
returns to the version promoted before. Every read of a version checks its checksums: a corrupt entry is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmcl.checkpoint import CHECKSUMS, CONFIG, METRICS, VERSION_DIGITS, WEIGHTS, checkpoint_ids
from mmcl.errors import CheckpointError, MMCLError
from streams.messages import now_ms

FILES = (WEIGHTS, CONFIG, METRICS, CHECKSUMS)
META = "version.json"


class RegistryError(MMCLError):
    """Unknown version, nothing to roll back to, or an entry that fails its checksums."""


@dataclass(frozen=True)
class ModelVersion:
    """One published model: its version, lineage, checksum, label window and metrics."""

    version: str  # model_version: weights, config and feature profile; versions published before it existed are
    # named by the weights alone (checksum[:12])
    checksum: str  # sha256 of the weights
    created_at: int  # ms since the epoch
    parent: str | None = None
    label_window: dict[str, Any] | None = None  # e.g. {"from": ms, "to": ms, "labels": n}
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """As stored beside the weights."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        """Read back what `to_json` wrote."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Registry(Protocol):
    """Versioned models, the current one, and the history of promotions."""

    def publish(self, checkpoint: Path, parent: str | None = None, label_window: dict[str, Any] | None = None,
                note: str = "") -> ModelVersion:
        """Copy a checkpoint in as a new version (not current yet). -> its record."""

    def versions(self) -> list[ModelVersion]:
        """Every version, oldest first."""

    def get(self, version: str) -> ModelVersion:
        """One version's record; a RegistryError when there is none."""

    def fetch(self, version: str) -> Path:
        """A local directory holding the version's checkpoint, verified."""

    def current(self) -> str | None:
        """The version workers serve, or None."""

    def history(self) -> list[str]:
        """The versions promoted so far, oldest first."""

    def promote(self, version: str) -> None:
        """Make a version current, atomically."""

    def rollback(self) -> str:
        """Make the version promoted before the current one current again. -> that version."""


def _describe(checkpoint: Path, parent: str | None, label_window: dict[str, Any] | None, note: str) -> ModelVersion:
    try:
        digest, version = checkpoint_ids(checkpoint)
    except CheckpointError as e:
        raise RegistryError(f"not publishing {checkpoint}: {e}") from None
    metrics = json.loads((checkpoint / METRICS).read_text())
    return ModelVersion(version, digest, now_ms(), parent, label_window, metrics, note)


def _verify(path: Path, meta: ModelVersion) -> Path:
    try:
        digest, version = checkpoint_ids(path)
    except CheckpointError as e:
        raise RegistryError(f"version {meta.version} is corrupt: {e}") from None
    if digest != meta.checksum:
        raise RegistryError(f"version {meta.version} is corrupt: checksum mismatch (weights are not the registered ones)")
    if meta.version not in (version, digest[:VERSION_DIGITS]):
        raise RegistryError(f"version {meta.version} is corrupt: its files make version {version} (config changed)")
    return path


def _rollback_state(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    hist = list(state.get("history", []))
    if len(hist) < 2:
        raise RegistryError("nothing to roll back to: fewer than two promotions in the history")
    hist.pop()
    return {"current": hist[-1], "history": hist}, hist[-1]


class DirRegistry:
    """<root>/versions/<version>/ holds the checkpoint files and version.json; <root>/state.json says what is current."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # promote / rollback from several processes: one at a time
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"current": None, "history": []}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.root / f".state.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.root / "state.json")  # readers see the old state or the new one, never half

    def publish(self, checkpoint: Path, parent: str | None = None, label_window: dict[str, Any] | None = None,
                note: str = "") -> ModelVersion:
        meta = _describe(Path(checkpoint), parent, label_window, note)
        target = self.root / "versions" / meta.version
        if (target / META).exists():
            return self.get(meta.version)  # the same model again: already there
        tmp = Path(tempfile.mkdtemp(prefix=f".{meta.version}.", dir=self.root / "versions"))
        for name in FILES:
            shutil.copy2(Path(checkpoint) / name, tmp / name)
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # published concurrently by someone else
            shutil.rmtree(tmp, ignore_errors=True)
        return meta

    def versions(self) -> list[ModelVersion]:
        out = [ModelVersion.from_json(json.loads((d / META).read_text()))
               for d in (self.root / "versions").iterdir() if (d / META).exists()]
        return sorted(out, key=lambda v: v.created_at)

    def get(self, version: str) -> ModelVersion:
        path = self.root / "versions" / version / META
        if not path.exists():
            raise RegistryError(f"no model version {version!r} in {self.root}")
        return ModelVersion.from_json(json.loads(path.read_text()))

    def fetch(self, version: str) -> Path:
        return _verify(self.root / "versions" / version, self.get(version))

    def current(self) -> str | None:
        return self._state().get("current")

    def history(self) -> list[str]:
        return list(self._state().get("history", []))

    def promote(self, version: str) -> None:
        self.fetch(version)  # refuse a corrupt entry before anyone serves it
        with self._locked():
            state = self._state()
            if state.get("current") != version:
                self._write_state({"current": version, "history": [*state.get("history", []), version]})

    def rollback(self) -> str:
        with self._locked():
            state, version = _rollback_state(self._state())
            self.fetch(version)
            self._write_state(state)
        return version


class RedisRegistry:
    """Keys under a prefix: <p>:v:<version> (hash: the files and version.json), <p>:versions (sorted set by
    creation), <p>:state (JSON: current and history; changed in WATCH/MULTI transactions)."""

    def __init__(self, client: Any, cache_dir: Path, prefix: str = "mmcl:registry") -> None:
        self.r = client  # a redis.Redis with decode_responses=False: weights are bytes
        self.cache = Path(cache_dir)
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def publish(self, checkpoint: Path, parent: str | None = None, label_window: dict[str, Any] | None = None,
                note: str = "") -> ModelVersion:
        meta = _describe(Path(checkpoint), parent, label_window, note)
        if self.r.exists(self._k("v", meta.version)):
            return self.get(meta.version)
        mapping = {name: (Path(checkpoint) / name).read_bytes() for name in FILES}
        mapping[META] = json.dumps(meta.to_json()).encode()
        with self.r.pipeline(transaction=True) as p:  # all the files or none
            p.hset(self._k("v", meta.version), mapping=mapping)
            p.zadd(self._k("versions"), {meta.version: meta.created_at})
            p.execute()
        return meta

    def versions(self) -> list[ModelVersion]:
        return [self.get(v.decode()) for v in self.r.zrange(self._k("versions"), 0, -1)]

    def get(self, version: str) -> ModelVersion:
        raw = self.r.hget(self._k("v", version), META)
        if raw is None:
            raise RegistryError(f"no model version {version!r} in Redis under {self.prefix}")
        return ModelVersion.from_json(json.loads(raw))

    def fetch(self, version: str) -> Path:
        meta = self.get(version)
        target = self.cache / version
        if not (target / META).exists():
            files = self.r.hgetall(self._k("v", version))
            self.cache.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.cache))
            for name in (*FILES, META):
                if name.encode() not in files:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise RegistryError(f"version {version} is corrupt: {name} is missing")
                (tmp / name).write_bytes(files[name.encode()])
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        try:
            return _verify(target, meta)
        except RegistryError:
            shutil.rmtree(target, ignore_errors=True)  # fetch again next time: the cache may be what broke
            raise

    def _state(self) -> dict[str, Any]:
        raw = self.r.get(self._k("state"))
        return json.loads(raw) if raw else {"current": None, "history": []}

    def current(self) -> str | None:
        return self._state().get("current")

    def history(self) -> list[str]:
        return list(self._state().get("history", []))

    def _transact(self, change: Any) -> str:
        import redis

        while True:
            with self.r.pipeline(transaction=True) as p:
                try:
                    p.watch(self._k("state"))
                    raw = p.get(self._k("state"))
                    state, version = change(json.loads(raw) if raw else {"current": None, "history": []})
                    changed: str = version
                    p.multi()
                    p.set(self._k("state"), json.dumps(state))
                    p.execute()
                    return changed
                except redis.WatchError:
                    continue  # someone else changed it between our read and write: read again

    def promote(self, version: str) -> None:
        self.fetch(version)

        def change(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
            if state.get("current") == version:
                return state, version
            return {"current": version, "history": [*state.get("history", []), version]}, version

        self._transact(change)

    def rollback(self) -> str:
        target = _rollback_state(self._state())[1]
        self.fetch(target)
        return self._transact(_rollback_state)
