"""End-to-end pipeline benchmark on a local broker and Redis: throughput and latency of the worker against a naive
consumer and against the model alone, all measured in one run on this machine, on Apache Kafka (one KRaft node from
the pinned jars, the production client settings) and on the embedded broker (Tansu, the local profile's settings).

- service: `mmcl worker` (Faust, join, batched inference thread, one Redis pipeline per batch, acked outputs).
- naive: a plain confluent-kafka consumer loop that joins in a dict, scores one utterance at a time and writes
  each result to Redis with separate commands (run as its own process, like the worker).
- model alone: the Predictor's own throughput on the same features, at the service's average batch size and at 64.

Throughput is the drain rate of a backlog (first to last result in Redis). Latency is last part produced ->
result in Redis (the feed entry's id is the Redis server's clock at the write; same machine). An offered rate is
sustained when every result arrives, results arrive at >= 97% of the offered pace, and the last one within 2 s of
the producer's end.

    python benchmarks/pipeline_throughput.py            # ~6 minutes on 2 cores; writes benchmarks/results/pipeline.*
    python benchmarks/pipeline_throughput.py --brokers kafka   # Apache Kafka alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIMS, SEQ_LEN = (768, 5, 20), 50


# --- the naive baseline (runs as `python pipeline_throughput.py naive ...`) -----------------------------------------
def naive_main(a: argparse.Namespace) -> None:
    import redis
    from confluent_kafka import Consumer

    from mmcl.predictor import Predictor
    from streams.settings import WIRE_MODALITIES, model_modality
    from streams.wire import decode_features

    predictor = Predictor.from_checkpoint(a.checkpoint, device=a.device, precision=a.precision)
    r = redis.Redis.from_url(a.redis, decode_responses=True)
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 50, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe([f"{a.prefix}.features.{m}" for m in WIRE_MODALITIES],
                on_assign=lambda *_: print("ready", flush=True))
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    while True:
        msg = c.poll(0.5)
        if msg is None or msg.error():
            continue
        head, arr = decode_features(msg.value())
        key = (head.call_id or "", head.utterance_id)
        parts = pending.setdefault(key, {})
        parts[head.modality] = arr
        if len(parts) < 3:
            continue
        del pending[key]
        out = predictor.predict([{model_modality(k): v for k, v in parts.items()}])
        score, label = float(out.scores[0]), out.labels[0]
        call, utt = key
        now = int(time.time() * 1000)
        r.hset(f"mmcl:{{{call}}}:utt:{utt}", mapping={"score": score, "label": label, "model_version": out.model_version})
        r.hincrby(f"mmcl:{{{call}}}:call", "all:count", 1)
        r.hincrbyfloat(f"mmcl:{{{call}}}:call", "all:sum", score)
        r.xadd(f"mmcl:{{{call}}}:timeline", {"utterance_id": utt, "score": score, "ts": now})
        r.xadd("mmcl:feed", {"utterance_id": utt, "call_id": call, "score": score, "ts": now})


# --- the harness ---------------------------------------------------------------------------------------------------
def default_partitions() -> int:
    from streams.settings import TopicSettings

    return TopicSettings().partitions


def make_checkpoint(path: Path) -> Path:
    import torch

    from mmcl.checkpoint import FeatureProfile, save_checkpoint
    from mmcl.config import ModelConfig
    from mmcl.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(input_dims=DIMS, seq_len=SEQ_LEN)  # the reference size: ff 2048, D 128
    return save_checkpoint(path, build_model(cfg).eval(), cfg, FeatureProfile(DIMS), {})


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    a = np.asarray(xs)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}


BROKERS = {"kafka": "Apache Kafka 4.1.0", "tansu": "Tansu (embedded)"}


class Harness:
    """One Redis for the whole run; one broker at a time (`use`)."""

    def __init__(self, state: Path, checkpoint: Path, device: str, precision: str = "auto") -> None:
        import redis

        from mmcl.data.synth import SynthSpec, make_synthetic
        from streams.local.embedded import start_redis

        self.redis_svc = start_redis(state)
        self.redis = redis.Redis.from_url(self.redis_svc.url, decode_responses=True)
        self.checkpoint, self.state, self.device, self.precision = checkpoint, state, device, precision
        self.split = make_synthetic(SynthSpec(sizes=(8, 8, 1000), seed=5)).splits["test"]
        self.kafka: Any = None
        self.broker = ""
        self.overrides: dict[str, Any] = {}  # KafkaSettings fields for every producer and worker started from now on
        self.partitions = default_partitions()  # of the topics made from now on

    def use(self, broker: str) -> None:
        """Stop the broker in use, start `broker` (kafka: Apache Kafka; tansu: the embedded one)."""
        from streams.local import apache_kafka
        from streams.local.embedded import start_kafka

        if self.kafka is not None:
            self.kafka.stop(grace_s=30)
        self.kafka = apache_kafka.start(self.state / "apache-kafka") if broker == "kafka" else start_kafka(self.state)
        self.broker = broker

    def close(self) -> None:
        if self.kafka is not None:
            self.kafka.stop(grace_s=30)
        self.redis_svc.stop()

    def kafka_settings(self) -> Any:
        """The client settings a deployment on this broker gets: production defaults on Apache Kafka, the local
        profile's on the embedded broker."""
        from streams.local.runtime import embedded_kafka
        from streams.settings import KafkaSettings

        k = embedded_kafka(self.kafka.url) if self.broker == "tansu" else KafkaSettings(bootstrap_servers=self.kafka.url)
        return k.model_copy(update=self.overrides)

    def settings(self, prefix: str) -> Any:
        from streams.settings import Settings, TopicSettings

        return Settings(kafka=self.kafka_settings(), topics=TopicSettings(prefix=prefix, partitions=self.partitions))

    def start(self, kind: str, prefix: str, wrap: list[str] | None = None, **extra_env: str) -> subprocess.Popen[str]:
        """Start a system on `prefix` and wait until it is ready; `wrap` runs the worker's Python module under a
        launcher (e.g. a profiler: [python, -m, pyinstrument, ..., -m])."""
        from streams.kafka import ensure_topics
        from streams.local.embedded import free_port
        from streams.local.runtime import embedded_kafka_env

        s = self.settings(prefix)
        ensure_topics(s.kafka, s.topics)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
        if kind == "service":
            self.port = free_port()
            env.update({"MMCL_KAFKA__BOOTSTRAP_SERVERS": self.kafka.url, "MMCL_REDIS__URL": self.redis_svc.url,
                        "MMCL_TOPICS__PREFIX": prefix, "MMCL_KAFKA__GROUP_ID": f"{prefix}-g",
                        "MMCL_MODEL__CHECKPOINT": str(self.checkpoint), "MMCL_METRICS__PORT": str(self.port),
                        "MMCL_POLICY__AGENT": '["text","audio","visual"]', "MMCL_STATE_DIR": str(self.state),
                        **(embedded_kafka_env() if self.broker == "tansu" else {}), "MMCL_MODEL__DEVICE": self.device,
                        "MMCL_MODEL__PRECISION": self.precision,
                        **{f"MMCL_KAFKA__{k.upper()}": str(v) for k, v in self.overrides.items()}})
            env.update(extra_env)
            cmd = [*(wrap or [sys.executable, "-m"]), "streams.cli", "worker"]
        else:
            cmd = [sys.executable, __file__, "naive", "--bootstrap", self.kafka.url, "--redis", self.redis_svc.url,
                   "--prefix", prefix, "--group", f"{prefix}-g", "--checkpoint", str(self.checkpoint),
                   "--device", self.device, "--precision", self.precision]
        log = (self.state / f"{kind}-{prefix}.log").open("w")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if kind == "naive" else log, stderr=log, text=True)
        self.wait_ready(kind, proc)
        return proc

    def wait_ready(self, kind: str, proc: subprocess.Popen[str]) -> None:
        if kind == "service":
            from streams.local.demo import wait_ready

            wait_ready(self.port, proc, 90)  # type: ignore[arg-type]
            return
        while proc.stdout is not None and proc.poll() is None:  # the naive loop prints "ready" once assigned
            if proc.stdout.readline().strip() == "ready":
                return
        raise SystemExit(f"naive exited with {proc.returncode}")

    def offer(self, prefix: str, run_id: str, rate: float, n: int, calls: int = 16) -> dict[str, Any]:
        """Produce n utterances at `rate`; wait for their results; latency and throughput from Redis."""
        from streams.local import simulate

        spec = simulate.SimSpec(calls=calls, rate=rate, jitter_ms=20, missing_visual=0.0, limit=n, seed=len(run_id),
                                run_id=run_id)
        t_start = time.time()
        stats = simulate.run(self.settings(prefix), self.split, spec)
        produced_end = time.time()
        deadline = time.monotonic() + max(60, n / 20)
        got: dict[str, int] = {}
        last_id = "0-0"
        while len(got) < n and time.monotonic() < deadline:
            for entry_id, f in self.redis.xrange("mmcl:feed", min=f"({last_id}" if last_id != "0-0" else "-", count=5000):
                last_id = entry_id
                if f["call_id"].startswith(run_id):
                    got[f["utterance_id"]] = int(entry_id.split("-")[0])
            time.sleep(0.05)
        lat = [(got[u] - stats.last_sent[u]) / 1000 for u in got if u in stats.last_sent]
        done_at = max(got.values()) / 1000 if got else float("nan")
        first = min(got.values()) / 1000 if got else float("nan")
        achieved = (len(got) - 1) / max(done_at - first, 1e-9)
        # kept up: every result arrived, at the offered pace (a queue that grew during the run shows as a slower
        # pace of results), and the last one soon after the producer stopped
        return {"offered": rate, "n": n, "results": len(got), "achieved": achieved,
                "sustained": len(got) == n and achieved >= 0.97 * rate and done_at - produced_end <= 2.0,
                "wall_s": done_at - t_start, **percentiles(lat)}


def broker_hop(h: Harness, rate: float, seconds: float, size: int) -> dict[str, float]:
    """The broker alone: confluent-kafka producer -> consumer, messages of the text parts' size, three
    topics, the same utterance rate. Its latency tail is a floor under every system's."""
    import threading

    from confluent_kafka import Consumer, Producer

    from streams.kafka import ensure_topics, producer_config

    s = h.settings(f"hop{uuid.uuid4().hex[:6]}")
    ensure_topics(s.kafka, s.topics)
    c = Consumer({"bootstrap.servers": h.kafka.url, "group.id": f"hop-{uuid.uuid4().hex}", "auto.offset.reset": "latest",
                  "fetch.wait.max.ms": 50, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    ready = threading.Event()
    c.subscribe(list(s.topics.features), on_assign=lambda *_: ready.set())
    lat: list[float] = []
    n = int(rate * seconds)
    done, all_in = threading.Event(), threading.Event()

    def consume() -> None:
        while not done.is_set():
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                lat.append(time.time() - float(m.value()[:20].decode()))
                if len(lat) >= 3 * n:
                    all_in.set()

    t = threading.Thread(target=consume)
    t.start()
    if not ready.wait(60):
        done.set()
        t.join()
        c.close()
        raise RuntimeError("the hop consumer got no partitions in 60 s")
    p = Producer(producer_config(s.kafka))
    pad = b" " * size
    t0 = time.monotonic()
    for i in range(n):
        while time.monotonic() - t0 < i / rate:
            time.sleep(0.001)
        for topic in s.topics.features:
            p.produce(topic, f"{time.time():<20.6f}".encode() + pad, key=f"call{i % 16}".encode())
        p.poll(0)
    p.flush(10)
    all_in.wait(10)  # what has not arrived by then is counted as lost
    done.set()
    t.join()
    c.close()
    return {"offered": rate, "n": n, "received": len(lat) // 3, **percentiles(lat)}


def model_alone(checkpoint: Path, split: Any, batch: int, device: str, precision: Any = "auto",
                seconds: float = 6.0) -> float:
    from mmcl.predictor import Predictor
    from streams.settings import WIRE_MODALITIES, model_modality

    p = Predictor.from_checkpoint(checkpoint, device=device, precision=precision)
    utts = []
    for j in range(batch):
        u = {}
        for w in WIRE_MODALITIES:
            m = model_modality(w)
            u[m] = split.features[m][j][: int(split.lengths[m][j])] if split.pad_side.get(m) != "left" else \
                split.features[m][j][-int(split.lengths[m][j]):]
        utts.append(u)
    p.predict(utts)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.predict(utts)
        n += batch
    return n / (time.perf_counter() - t0)


def scrape_batch(port: int) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    vals = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return vals.get("mmcl_batch_size_sum", 0) / max(vals.get("mmcl_batch_size_count", 1), 1)


def measure_system(h: Harness, a: argparse.Namespace, kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Drain rate, then the offered rates, then 80% of the highest sustained one, for one system on h's broker."""
    prefix = f"b{kind[0]}{uuid.uuid4().hex[:6]}"
    run = f"{h.broker}-{kind}"  # the call ids of this system on this broker: Redis is shared by the whole run
    proc = h.start(kind, prefix)
    try:
        h.offer(prefix, f"{run}-warm-", 50, 50)
        cap = h.offer(prefix, f"{run}-drain-", 5000, a.backlog)["achieved"]
        out: dict[str, Any] = {"drain_throughput": cap}
        if kind == "service":
            out["avg_batch"] = scrape_batch(h.port)
        print(f"{h.broker} {kind}: drains {cap:.0f} utt/s", flush=True)
        highest = 0.0
        for frac in a.fractions:
            rate = max(5.0, round(cap * frac))
            row = {"broker": h.broker, "system": kind,
                   **h.offer(prefix, f"{run}-r{int(rate)}-", rate, max(40, int(rate * a.seconds)))}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if row["sustained"]:
                highest = max(highest, rate)
        rate80 = max(5.0, round(0.8 * highest))
        at80 = h.offer(prefix, f"{run}-at80-", rate80, max(40, int(rate80 * a.seconds)))
        out.update({"highest_sustained": highest, "at80": at80})
        print(f"{h.broker} {kind}: highest sustained {highest:.0f} utt/s; at {rate80:.0f}: p99 {at80['p99'] * 1000:.0f} ms",
              flush=True)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def run(a: argparse.Namespace) -> None:
    from streams.local.simulate import Planned, encode

    tmp = Path(tempfile.mkdtemp(prefix="mmcl-bench-"))
    ckpt = make_checkpoint(tmp / "ckpt")
    h = Harness(tmp, ckpt, a.device, a.precision)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"brokers": {}}
    text_size = len(encode(Planned(0, "u", "c", "customer", "text", h.split.features["text"][0]), 0))
    try:
        for broker in a.brokers:
            h.use(broker)
            per: dict[str, Any] = {kind: measure_system(h, a, kind, rows) for kind in ("service", "naive")}
            rate80 = per["service"]["at80"]["offered"]
            per["broker_hop"] = {"message_bytes": text_size, **broker_hop(h, rate80, a.seconds, text_size)}
            summary["brokers"][broker] = per
        batches = [per["service"]["avg_batch"] for per in summary["brokers"].values()]
        avg = max(1, round(sum(batches) / len(batches)))
        summary["model_alone"] = {"batch": avg, "throughput": model_alone(ckpt, h.split, avg, a.device, a.precision),
                                  "throughput_b64": model_alone(ckpt, h.split, 64, a.device, a.precision)}
    finally:
        h.close()
    out = {"rows": rows, "summary": summary, "cpu_count": os.cpu_count(), "device": a.device, "precision": a.precision,
           "command": " ".join(sys.argv)}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{a.results_name}.json").write_text(json.dumps(out, indent=2) + "\n")
    table = render(out)
    (res / f"{a.results_name}.md").write_text(table)
    print(table)


def latency_cells(r: dict[str, Any]) -> str:
    """A measured rate's table cells: sustained, p50, p95, p99 (ms)."""
    return (f"{'yes' if r['sustained'] else 'no'} | {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} | "
            f"{r['p99'] * 1000:.0f} |")


def render(out: dict[str, Any]) -> str:
    s, ma = out["summary"], out["summary"]["model_alone"]
    lines = ["| broker | system | offered utt/s | achieved utt/s | sustained | p50 ms | p95 ms | p99 ms |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in out["rows"]:
        lines.append(f"| {BROKERS[r['broker']]} | {r['system']} | {r['offered']:.0f} | {r['achieved']:.0f} | "
                     + latency_cells(r))
    lines += ["", "| broker | system | drain utt/s | highest sustained utt/s | p99 at 80% of it, ms | "
              "drain / model alone |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for broker, per in s["brokers"].items():
        for kind in ("service", "naive"):
            v = per[kind]
            lines.append(f"| {BROKERS[broker]} | {kind} | {v['drain_throughput']:.0f} | {v['highest_sustained']:.0f} | "
                         f"{v['at80']['p99'] * 1000:.0f} (at {v['at80']['offered']:.0f}/s) | "
                         f"{v['drain_throughput'] / ma['throughput']:.2f} |")
    lines += ["", f"model alone: {ma['throughput']:.0f} utt/s at batch {ma['batch']} (the services' average batch), "
              f"{ma['throughput_b64']:.0f} at batch 64", ""]
    for broker, per in s["brokers"].items():
        hop, sv, nv = per["broker_hop"], per["service"], per["naive"]
        lines.append(f"- {BROKERS[broker]}: the broker alone at {hop['offered']:.0f} utt/s (3 messages each, "
                     f"{hop['message_bytes'] / 1000:.0f} kB text parts): p50 {hop['p50'] * 1000:.0f} ms, "
                     f"p95 {hop['p95'] * 1000:.0f} ms, p99 {hop['p99'] * 1000:.0f} ms; service / naive drain "
                     f"{sv['drain_throughput'] / nv['drain_throughput']:.2f}x; service average batch {sv['avg_batch']:.1f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    n = sub.add_parser("naive")
    for opt in ("bootstrap", "redis", "prefix", "group", "checkpoint"):
        n.add_argument(f"--{opt}", required=True)
    n.add_argument("--device", default="cpu")
    n.add_argument("--precision", default="auto")
    p.add_argument("--device", default="cpu", help="the model's device in every system (cpu, cuda)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                   help="the model's arithmetic in every system (MMCL_MODEL__PRECISION; auto: int8 on a CPU with VNNI)")
    p.add_argument("--results-name", default="pipeline", help="benchmarks/results/<name>.json and .md")
    p.add_argument("--brokers", nargs="+", choices=sorted(BROKERS), default=["kafka", "tansu"],
                   help="the brokers to measure on, one after the other in this run")
    p.add_argument("--backlog", type=int, default=1500, help="utterances for the drain measurement")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each offered-rate run")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="offered rates as fractions of each system's drain throughput")
    a = p.parse_args()
    if a.cmd == "naive":
        naive_main(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
