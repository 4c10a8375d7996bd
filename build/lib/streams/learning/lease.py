"""One active trainer: a lock on the state folder, and with the registry in Redis a renewed lease there too."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmcl.errors import ConfigError
from streams.settings import Settings

log = logging.getLogger("mmcl.trainer")


class SingleInstance:
    """One active trainer per state folder: a second one refuses with the holder's pid."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("a+")

    def acquire(self) -> None:
        """Take the lock, or a ConfigError naming who holds it."""
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "unknown"
            raise ConfigError(f"another trainer is active on {self.path.parent} ({holder}); "
                              "only one may run: stop it first") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._f.flush()

    def release(self) -> None:
        """Let the lock go."""
        with contextlib.suppress(OSError):
            fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


class RedisLease:
    """One active trainer across machines (registry in Redis): a key held with a TTL and renewed while alive."""

    RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
    RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def __init__(self, client: Any, key: str, ttl_s: float = 30.0) -> None:
        self.r, self.key, self.ttl_ms = client, key, int(ttl_s * 1000)
        self.token = f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        self.lost = threading.Event()
        self._stop = threading.Event()

    def acquire(self) -> None:
        """Take the lease and keep renewing it, or a ConfigError naming who holds it."""
        if not self.r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            holder = self.r.get(self.key)
            holder = holder.decode() if isinstance(holder, bytes) else holder
            raise ConfigError(f"another trainer is active ({holder}); only one may run: stop it first")
        threading.Thread(target=self._renew, name="mmcl-trainer-lease", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                ok = self.r.eval(self.RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception as e:  # Redis away: the lease may lapse; say so and let the trainer stop
                log.error("cannot renew the trainer lease: %s", e)
                ok = 0
            if not ok:
                self.lost.set()
                return

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.r.eval(self.RELEASE, 1, self.key, self.token)


@contextlib.contextmanager
def single_instance(settings: Settings) -> Iterator[threading.Event]:
    """The state folder's lock, and with the registry in Redis a lease there too (trainers on other machines).
    Yields an event set if the lease is lost: the trainer must stop then."""
    lock = SingleInstance(settings.state_dir / "trainer" / "trainer.lock")
    lock.acquire()
    lease = None
    try:
        if settings.registry.backend == "redis":
            import redis

            from streams.sinks.redis_store import redis_kwargs

            url = (settings.registry.redis_url or settings.redis.url).get_secret_value()
            client = redis.Redis.from_url(url, **redis_kwargs(settings.redis))
            lease = RedisLease(client, f"{settings.registry.prefix}:trainer-lease")
            lease.acquire()
        yield lease.lost if lease else threading.Event()
    finally:
        if lease is not None:
            lease.release()
        lock.release()
