"""`mmcl demo`: the embedded broker and Redis, a model (a small one trained on synthetic data if none is given),
the worker, a simulated call center, and a live terminal view until Ctrl-C (or --duration); then a clean shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.data import Dataset, load_dataset, save_dataset
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.errors import ConfigError
from streams.local import simulate
from streams.local.embedded import RUNTIME_FILE, Service, free_port, load_runtime, port_open, save_runtime, stop_pid
from streams.local.runtime import DEMO_MODEL, up
from streams.local.simulate import SimSpec
from streams.settings import Settings
from streams.sinks.redis_store import ALERTS, FEED, call_key, sync_client

DEMO_DATA = "demo-data.npz"
DEMO_TRAINER = {"MMCL_TRAINER__RETRAIN_AFTER_LABELS": "300", "MMCL_TRAINER__MIN_EXAMPLES": "100"}
# MOSI-shaped synthetic data, smaller: the model trains in well under a minute on 2 cores
DEMO_SPEC = SynthSpec(sizes=(600, 120, 400), seed=7)


def demo_dataset(state_dir: Path) -> Dataset:
    """The demo's synthetic dataset, made once in the state folder."""
    path = state_dir / DEMO_DATA
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        save_dataset(make_synthetic(DEMO_SPEC), path)
    return load_dataset(path)


def demo_model(state_dir: Path, log: Any = print) -> Path:
    """The demo's model: trained once (quick preset, a few epochs) and kept in the state folder."""
    from mmcl.config import ModelConfig, TaskConfig, TrainConfig
    from mmcl.presets import PRESETS
    from mmcl.train import train

    target = state_dir / DEMO_MODEL
    if (target / "model.safetensors").exists():
        return target
    ds = demo_dataset(state_dir)
    log("training a small MMCL on synthetic data for the demo (once; kept in the state folder) ...")
    preset = PRESETS["quick"]
    mcfg = ModelConfig(**{**preset["model"], "input_dims": ds.dims, "seq_len": DEMO_SPEC.seq_len,
                          "decoupling": "calibrated", "task": TaskConfig()})
    # modality dropout: agents are analysed on text alone (the default policy), so the model must cope with that
    tcfg = TrainConfig(**{**preset["train"], "epochs": 4, "act_reward": False, "modality_dropout": 0.3})
    res = train(ds, mcfg, tcfg, state_dir / "demo-train", progress=False, log=lambda _m: None)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(res.checkpoint, target)
    shutil.rmtree(state_dir / "demo-train", ignore_errors=True)
    log(f"model ready: test Acc-2 {res.test.get('acc2_non0', float('nan')):.3f} after {res.epochs_run} epochs "
        f"({res.seconds:.0f} s)")
    return target


@dataclass
class Scrape:
    """The numbers the demo's view reads from the worker's and the trainer's /metrics."""

    predictions: float = 0.0
    p95_s: float | None = None
    dead_letters: float = 0.0
    model_version: str = "-"
    # from the trainer, when it runs
    labels: float = 0.0
    training_set: float = 0.0
    runs: dict[str, float] | None = None
    training: bool = False


def _samples(port: int) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return []
    return [smp for fam in text_string_to_metric_families(text) for smp in fam.samples]


def scrape(port: int, trainer_port: int | None = None) -> Scrape:
    """Read the worker's (and the trainer's) /metrics into a Scrape."""
    out = Scrape()
    buckets: list[tuple[float, float]] = []
    for smp in _samples(port):
        if smp.name == "mmcl_model_info":
            out.model_version = smp.labels.get("version", "-")
        elif smp.name == "mmcl_predictions_total":
            out.predictions += smp.value
        elif smp.name == "mmcl_dead_letters_total":
            out.dead_letters += smp.value
        elif smp.name == "mmcl_end_to_end_latency_seconds_bucket":
            buckets.append((float(smp.labels["le"]), smp.value))
    out.p95_s = histogram_quantile(0.95, buckets)
    if trainer_port is not None:
        out.runs = {}
        for smp in _samples(trainer_port):
            if smp.name == "mmcl_feedback_labels_total" and smp.labels.get("result") == "received":
                out.labels = smp.value
            elif smp.name == "mmcl_training_set_size":
                out.training_set = smp.value
            elif smp.name == "mmcl_training_runs_total":
                out.runs[smp.labels["outcome"]] = smp.value
            elif smp.name == "mmcl_training_in_progress":
                out.training = smp.value == 1
    return out


def histogram_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: linear inside the bucket that holds the q-th observation."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, prev_le, prev_n = quantile * buckets[-1][1], 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
    return prev_le


def trainer_line(sc: Scrape) -> str:
    """The view's line about the trainer, or '' when none runs."""
    if sc.runs is None:
        return ""
    runs = ", ".join(f"{k} {int(v)}" for k, v in sorted(sc.runs.items())) or "none yet"
    return (f"   trainer: {int(sc.labels)} labels, {int(sc.training_set)} in the training set, runs: {runs}"
            + ("   (training now)" if sc.training else ""))


def render(settings: Settings, client: Any, sc: Scrape, rate: float, sent: int, elapsed: float) -> str:
    """One screen of the demo's view: calls, latest sentiment per speaker, alerts, throughput."""
    feed = client.xrevrange(FEED, count=400)
    latest: dict[str, dict[str, tuple[float, str]]] = {}
    for _, e in feed:
        latest.setdefault(e["call_id"], {}).setdefault(e["speaker"], (float(e["score"]), e["label"]))
    lines = [f"mmcl demo  {elapsed:6.0f} s   sent {sent} utterances   results {int(sc.predictions)}   "
             f"{rate:5.1f} utt/s   p95 latency {'-' if sc.p95_s is None else f'{sc.p95_s * 1000:.0f} ms'}   "
             f"dead letters {int(sc.dead_letters)}", f"model {sc.model_version}{trainer_line(sc)}", "",
             f"{'call':<22s} {'agent':>16s} {'customer':>16s} {'customer ewma':>14s} {'shift':>7s}  alert"]
    for call_id in list(latest)[:10]:
        agg = client.hgetall(call_key(call_id))
        cells = []
        for role in ("agent", "customer"):
            v = latest[call_id].get(role)
            cells.append(f"{v[0]:+5.2f} {v[1]:<9s}" if v else f"{'':16s}")
        ewma = agg.get("customer:ewma")
        shift = agg.get("customer:shift")
        lines.append(f"{call_id:<22s} {cells[0]:>16s} {cells[1]:>16s} "
                     f"{(f'{float(ewma):+.2f}' if ewma else ''):>14s} {(f'{float(shift):+.2f}' if shift else ''):>7s}  "
                     f"{'NEGATIVE' if agg.get('customer:alert') == '1' else ''}")
    alerts = client.xrevrange(ALERTS, count=3)
    lines += ["", "latest alerts:" if alerts else "no alerts yet"]
    for _, a in alerts:
        al = json.loads(a["alert"])
        lines.append(f"  {al['call_id']} {al['speaker']}: {al['rule']} (mean {al['mean_score']:+.2f})")
    return "\n".join(lines)


@dataclass(frozen=True)
class DemoOptions:
    """What `mmcl demo` was asked for."""

    spec: SimSpec  # the simulated call center
    checkpoint: Path | None = None  # the model to serve (default: the demo's own, trained once)
    duration_s: float | None = None  # stop after this long (default: at Ctrl-C)
    keep: bool = False  # leave the embedded broker and Redis running afterwards
    trainer: bool = True  # run the trainer beside the worker


@dataclass
class _Running:
    """What the demo started, so that it can stop all of it."""

    started: dict[str, Service] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    producer: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    """The whole demo; stops everything it started, also on Ctrl-C or an error."""
    t_start = time.monotonic()
    print("starting the embedded broker and Redis where needed ...")
    res = up(settings)
    settings = res.settings
    running = _Running(started=dict(res.started))
    try:
        checkpoint = options.checkpoint or demo_model(settings.state_dir)
        port = settings.metrics.port if not port_open("127.0.0.1", settings.metrics.port, 0.2) else free_port()
        # the children follow the local profile `up` just recorded
        env = {**os.environ, "MMCL_RUNTIME": "local", "MMCL_MODEL__CHECKPOINT": str(checkpoint),
               "MMCL_METRICS__PORT": str(port), "MMCL_STATE_DIR": str(settings.state_dir)}
        worker, log_path = _spawn_logged(settings, "worker", env, running)
        print(f"worker starting (log {log_path}) ...")
        wait_ready(port, worker, 90)
        trainer_port = _start_trainer(settings, env, running) if options.trainer else None
        stats_box: dict[str, Any] = {}
        split = demo_dataset(settings.state_dir).splits["test"]

        def produce() -> None:
            stats_box["stats"] = simulate.run(settings, split, options.spec, running.stop,
                                              on_progress=lambda st: stats_box.update(live=st))

        running.producer = threading.Thread(target=produce, name="mmcl-demo-producer", daemon=True)
        running.producer.start()
        view = LiveView(settings, port, trainer_port, lambda: stats_box.get("live", simulate.SimStats()).utterances)
        view.run(options.duration_s, worker)
        if worker.poll() is not None:
            raise ConfigError(f"the worker exited with code {worker.returncode}; see {log_path}")
        view.summary()
        return 0
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        _stop_all(settings, running, options.keep)
        print(f"demo stopped after {time.monotonic() - t_start:.0f} s"
              + (" (broker and Redis left running: mmcl down)" if options.keep and running.started else ""))


def _spawn_logged(settings: Settings, command: str, env: dict[str, str],
                  running: _Running) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = settings.state_dir / "logs" / f"{command}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", command], env=env, stdout=logf,  # noqa: S603
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    running.processes.append(proc)
    return proc, log_path


def _start_trainer(settings: Settings, env: dict[str, str], running: _Running) -> int:
    """Start the trainer with the demo's quick settings. -> its metrics port."""
    trainer_port = free_port()
    tenv = {**env, "MMCL_TRAINER__METRICS_PORT": str(trainer_port), "MMCL_TRAINER__EPOCHS": "4",
            "MMCL_TRAINER__ACT_REWARD": "false", "MMCL_TRAINER__MATCH_GRACE_S": "30",
            **{k: v for k, v in DEMO_TRAINER.items() if k not in os.environ}}
    _, log_path = _spawn_logged(settings, "trainer", tenv, running)
    print(f"trainer starting (log {log_path}): retrains after {tenv['MMCL_TRAINER__RETRAIN_AFTER_LABELS']} labels")
    return trainer_port


def _stop_all(settings: Settings, running: _Running, keep: bool) -> None:
    running.stop.set()
    if running.producer is not None:
        running.producer.join(30)
    for proc in reversed(running.processes):  # the trainer first, then the worker
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    if keep or not running.started:
        return
    for svc in running.started.values():
        stop_pid(svc.pid)
    left = {k: v for k, v in load_runtime(settings.state_dir).items() if k not in running.started}
    if left:
        save_runtime(settings.state_dir, left)
    else:
        (settings.state_dir / RUNTIME_FILE).unlink(missing_ok=True)


class LiveView:
    """The demo's terminal view, refreshed every second from Redis and the worker's and trainer's /metrics."""

    def __init__(self, settings: Settings, port: int, trainer_port: int | None, sent: Callable[[], int]) -> None:
        self.settings, self.port, self.trainer_port, self.sent = settings, port, trainer_port, sent
        self.client = sync_client(settings.redis)
        self.t0 = time.monotonic()
        self.rate = 0.0

    def run(self, duration_s: float | None, worker: subprocess.Popen[bytes]) -> None:
        """Refresh until `duration_s` passes or the worker exits."""
        tty = sys.stdout.isatty()
        last_pred, last_t, last_print = 0.0, time.monotonic(), 0.0
        end = self.t0 + duration_s if duration_s else None
        while (end is None or time.monotonic() < end) and worker.poll() is None:
            time.sleep(1.0)
            sc, now = scrape(self.port, self.trainer_port), time.monotonic()
            self.rate = (sc.predictions - last_pred) / max(now - last_t, 1e-6)
            last_pred, last_t = sc.predictions, now
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + self.render(sc, now) + "\n\nCtrl-C to stop\n")
                sys.stdout.flush()
            elif now - last_print >= 5:
                last_print = now
                print(f"{now - self.t0:5.0f} s: sent {self.sent()}, results {int(sc.predictions)}, {self.rate:.1f} "
                      f"utt/s, p95 {_ms(sc.p95_s)}", flush=True)

    def render(self, sc: Scrape, now: float) -> str:
        """One screen of the view."""
        return render(self.settings, self.client, sc, self.rate, self.sent(), now - self.t0)

    def summary(self) -> None:
        """The last numbers (and, in a log that had no live view, one snapshot of it)."""
        sc = scrape(self.port, self.trainer_port)
        if not sys.stdout.isatty():
            print("\n" + self.render(sc, time.monotonic()))
        print(f"\nresults: {int(sc.predictions)} predictions, p95 latency {_ms(sc.p95_s)}; metrics were on "
              f"http://127.0.0.1:{self.port}/metrics")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    """Wait until the worker's /readyz answers 200; a ConfigError when it exits or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ConfigError(f"the worker exited with code {proc.returncode} before it was ready")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise ConfigError(f"the worker was not ready within {deadline_s:g} s")
