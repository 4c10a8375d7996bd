"""`mmcl demo`: the embedded broker and Redis, a model (a small one trained on synthetic data if none is given),
the worker, a simulated call center, and a live terminal view until Ctrl-C (or --duration); then a clean shutdown."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcl.data import Dataset, load_dataset, save_dataset
from mmcl.data.synth import SynthSpec, make_synthetic
from mmcl.errors import ConfigError
from streams.embedded import free_port, port_open, stop_pid
from streams.redis_store import ALERTS, FEED, call_key, sync_client
from streams.runtime import DEMO_MODEL, up
from streams.settings import Settings

DEMO_DATA = "demo-data.npz"
DEMO_TRAINER = {"MMCL_TRAINER__RETRAIN_AFTER_LABELS": "300", "MMCL_TRAINER__MIN_EXAMPLES": "100"}
# MOSI-shaped synthetic data, smaller: the model trains in well under a minute on 2 cores
DEMO_SPEC = SynthSpec(sizes=(600, 120, 400), seed=7)


def demo_dataset(state_dir: Path) -> Dataset:
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


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: linear inside the bucket that holds the q-th observation."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, prev_le, prev_n = q * buckets[-1][1], 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
    return prev_le


def trainer_line(sc: Scrape) -> str:
    if sc.runs is None:
        return ""
    runs = ", ".join(f"{k} {int(v)}" for k, v in sorted(sc.runs.items())) or "none yet"
    return (f"   trainer: {int(sc.labels)} labels, {int(sc.training_set)} in the training set, runs: {runs}"
            + ("   (training now)" if sc.training else ""))


def render(s: Settings, client: Any, sc: Scrape, rate: float, sent: int, elapsed: float) -> str:
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


def run_demo(s: Settings, a: argparse.Namespace) -> int:
    from streams import simulate
    from streams.cli import sim_spec

    t_start = time.monotonic()
    print("starting the embedded broker and Redis where needed ...")
    res = up(s)
    s = res.settings
    started = dict(res.started)
    worker: subprocess.Popen[bytes] | None = None
    trainer: subprocess.Popen[bytes] | None = None
    trainer_port: int | None = None
    stop = threading.Event()
    producer: threading.Thread | None = None
    try:
        checkpoint = a.checkpoint or demo_model(s.state_dir)
        split = demo_dataset(s.state_dir).splits["test"]
        port = s.metrics.port if not port_open("127.0.0.1", s.metrics.port, 0.2) else free_port()
        env = {**os.environ, "MMCL_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
               "MMCL_REDIS__URL": s.redis.url.get_secret_value(), "MMCL_MODEL__CHECKPOINT": str(checkpoint),
               "MMCL_METRICS__PORT": str(port),
               "MMCL_STATE_DIR": str(s.state_dir)}
        log_path = s.state_dir / "logs" / "worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as logf:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=logf,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        print(f"worker starting (log {log_path}) ...")
        wait_ready(port, worker, 90)
        if not a.no_trainer:
            trainer_port = free_port()
            tenv = {**env, "MMCL_TRAINER__METRICS_PORT": str(trainer_port), "MMCL_TRAINER__EPOCHS": "4",
                    "MMCL_TRAINER__ACT_REWARD": "false", "MMCL_TRAINER__MATCH_GRACE_S": "30",
                    **{k: v for k, v in DEMO_TRAINER.items() if k not in os.environ}}
            tlog = s.state_dir / "logs" / "trainer.log"
            with tlog.open("ab") as logf:
                trainer = subprocess.Popen([sys.executable, "-m", "streams.cli", "trainer"], env=tenv, stdout=logf,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            print(f"trainer starting (log {tlog}): retrains after {tenv['MMCL_TRAINER__RETRAIN_AFTER_LABELS']} labels")
        if a.limit is None:
            a.limit = 10**9  # the split's utterances over and over (new ids each time) until Ctrl-C / --duration
        spec = dataclasses.replace(sim_spec(a, run_id=f"d{int(time.time()) % 100000}-"), record_sent=False)
        stats_box: dict[str, Any] = {}
        sim_stats = simulate.SimStats()

        def produce() -> None:
            stats_box["stats"] = simulate.run(s, split, spec, stop, on_progress=lambda st: stats_box.update(live=st))

        producer = threading.Thread(target=produce, name="mmcl-demo-producer", daemon=True)
        producer.start()
        client = sync_client(s.redis)
        tty = sys.stdout.isatty()
        t0, last_pred, last_t, last_print, rate = time.monotonic(), 0.0, time.monotonic(), 0.0, 0.0
        end = t0 + a.duration if a.duration else None
        while (end is None or time.monotonic() < end) and worker.poll() is None:
            time.sleep(1.0)
            sc, now = scrape(port, trainer_port), time.monotonic()
            rate = (sc.predictions - last_pred) / max(now - last_t, 1e-6)
            last_pred, last_t = sc.predictions, now
            sent = stats_box.get("live", sim_stats).utterances
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + render(s, client, sc, rate, sent, now - t0) + "\n\nCtrl-C to stop\n")
                sys.stdout.flush()
            elif now - last_print >= 5:
                last_print = now
                print(f"{now - t0:5.0f} s: sent {sent}, results {int(sc.predictions)}, {rate:.1f} utt/s, p95 "
                      f"{'-' if sc.p95_s is None else f'{sc.p95_s * 1000:.0f} ms'}", flush=True)
        if worker.poll() is not None:
            raise ConfigError(f"the worker exited with code {worker.returncode}; see {log_path}")
        sc = scrape(port, trainer_port)
        if not tty:  # a log has no live view: leave one snapshot of it
            print("\n" + render(s, client, sc, rate, stats_box.get("live", sim_stats).utterances, time.monotonic() - t0))
        print(f"\nresults: {int(sc.predictions)} predictions, p95 latency "
              f"{'-' if sc.p95_s is None else f'{sc.p95_s * 1000:.0f} ms'}; metrics were on http://127.0.0.1:{port}/metrics")
        return 0
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        stop.set()
        if producer is not None:
            producer.join(30)
        for proc in (trainer, worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if not a.keep:
            for svc in started.values():
                stop_pid(svc.pid)
            if started:
                from streams.embedded import RUNTIME_FILE, load_runtime, save_runtime

                left = {k: v for k, v in load_runtime(s.state_dir).items() if k not in started}
                if left:
                    save_runtime(s.state_dir, left)
                else:
                    (s.state_dir / RUNTIME_FILE).unlink(missing_ok=True)
        print(f"demo stopped after {time.monotonic() - t_start:.0f} s" + (" (broker and Redis left running: mmcl down)"
                                                                          if a.keep and started else ""))


def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
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
