"""`mmcl trainer`: feedback labels in, better models out, never a worse one.

One loop reads the joined-features and feedback topics into the training store (offsets are committed after the
store is). Labels with no features after the grace period, and invalid labels, go to the dead-letter topic.
When `retrain_every_s` has passed (with new labels) or `retrain_after_labels` new labels arrived, a background
thread trains a candidate with the MMCL trainer, fine-tuned from the current model (or from scratch), on a
time-ordered split: the newest labels are held out. The candidate and the current model are evaluated on the same
held-out labels; the candidate is published and promoted only if it beats the current one by the margin. Every
run is recorded, whatever its outcome; a failed or losing run changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from pydantic import ValidationError

from mmcl.checkpoint import Checkpoint, load_checkpoint
from mmcl.config import MODALITIES, TrainConfig
from mmcl.data.dataset import Dataset, Split
from mmcl.data.tensors import to_tensors
from mmcl.errors import ConfigError, MMCLError
from mmcl.evaluate import evaluate
from mmcl.sequence import resample_mean
from mmcl.train import train
from streams.decode import Reason
from streams.messages import FeedbackLabel, JoinedFeatures, now_ms
from streams.models import announce
from streams.registry import Registry, RegistryError
from streams.settings import WIRE_MODALITIES, Settings, model_modality
from streams.training_store import Example, TrainingStore

log = logging.getLogger("mmcl.trainer")
LOWER_IS_BETTER = {"mae"}


class TrainerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.labels = Counter("mmcl_feedback_labels", "Feedback labels by result: received, matched, unmatched, "
                              "replaced, invalid", ["result"], registry=r)
        self.features = Counter("mmcl_trainer_joined_features", "Joined features stored", registry=r)
        self.training_set = Gauge("mmcl_training_set_size", "Labelled examples with features", registry=r)
        self.runs = Counter("mmcl_training_runs", "Retraining runs by outcome: promoted, rejected, failed",
                            ["outcome"], registry=r)
        self.run_seconds = Histogram("mmcl_training_run_seconds", "Duration of a retraining run",
                                     buckets=(1, 5, 15, 60, 300, 900, 3600, 14400), registry=r)
        self.evaluation = Gauge("mmcl_training_evaluation", "Held-out metrics of the last run",
                                ["model", "metric"], registry=r)
        self.current = Info("mmcl_trainer_model", "The current model version", registry=r)
        self.training = Gauge("mmcl_training_in_progress", "1 while a run trains", registry=r)
        self.last_check = Gauge("mmcl_trainer_last_check_timestamp_seconds",
                                "When the trainer last committed its store and checked whether a run is due", registry=r)


class SingleInstance:
    """One active trainer per state folder: a second one refuses with the holder's pid."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("a+")

    def acquire(self) -> None:
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
        self._stop.set()
        with contextlib.suppress(Exception):
            self.r.eval(self.RELEASE, 1, self.key, self.token)


def split_by_time(examples: list[Example], holdout_frac: float, valid_frac: float
                  ) -> tuple[list[Example], list[Example], list[Example]]:
    """Oldest labels train, the next ones pick the epoch, the newest are held out for the gate."""
    n = len(examples)
    n_hold = max(1, math.ceil(n * holdout_frac))
    rest = examples[: n - n_hold]
    n_valid = max(1, math.ceil(len(rest) * valid_frac))
    return rest[: len(rest) - n_valid], rest[len(rest) - n_valid:], examples[n - n_hold:]


def to_split(examples: list[Example], dims: tuple[int, int, int], seq_len: int) -> Split:
    feats, lengths = {}, {}
    for w, dim in zip(WIRE_MODALITIES, dims, strict=True):
        m = model_modality(w)
        x = np.zeros((len(examples), seq_len, dim), np.float32)
        ln = np.zeros(len(examples), np.int64)
        for i, ex in enumerate(examples):
            arr = ex.arrays.get(w)
            if arr is None or arr.shape[0] == 0:
                continue
            if arr.shape[0] > seq_len:
                arr = resample_mean(arr, seq_len)
            x[i, : arr.shape[0]], ln[i] = arr, arr.shape[0]
        feats[m], lengths[m] = x, ln
    return Split(feats, lengths, {m: "right" for m in MODALITIES}, np.array([e.label for e in examples], np.float32),
                 np.array([e.utterance_id for e in examples]))


def all_finite(ckpt: Checkpoint) -> bool:
    return all(bool(p.detach().isfinite().all()) for p in ckpt.model.parameters())


class Trainer:
    def __init__(self, s: Settings, registry: Registry, metrics: TrainerMetrics | None = None) -> None:
        self.s, self.registry = s, registry
        self.t = s.trainer
        self.home = s.state_dir / "trainer"
        self.store = TrainingStore(self.home / "training.sqlite")
        self.metrics = metrics or TrainerMetrics()
        self._thread: threading.Thread | None = None
        self.metrics.training_set.set(self.store.size())
        if self.store.get_meta("last_run_at") is None:  # the schedule counts from the trainer's first start
            self.store.set_meta("last_run_at", now_ms())
            self.store.commit()

    # ingestion ---------------------------------------------------------------------------------------------
    def on_joined(self, raw: bytes) -> None:
        try:
            j = JoinedFeatures.model_validate_json(raw)
        except ValidationError as e:
            log.warning("ignoring malformed joined features: %s", e.errors()[0]["msg"])
            return
        self.store.add_features(j)
        self.metrics.features.inc()
        if self.store.has_label(j.utterance_id):
            self.metrics.labels.labels("matched").inc()

    def on_label(self, raw: bytes, headers: list[tuple[str, bytes]]) -> tuple[Reason, str] | None:
        """Store a label; returns a dead-letter (reason, error) for an invalid one."""
        self.metrics.labels.labels("received").inc()
        try:
            lab = FeedbackLabel.model_validate_json(raw)
        except ValidationError as e:
            err = e.errors(include_url=False, include_input=False)[0]
            self.metrics.labels.labels("invalid").inc()
            return Reason.INVALID_LABEL, f"{'.'.join(map(str, err['loc']))}: {err['msg']}"[:300]
        if self.store.add_label(lab, raw, headers):
            self.metrics.labels.labels("replaced").inc()
        if self.store.matched(lab.utterance_id):
            self.metrics.labels.labels("matched").inc()
        return None

    def housekeeping(self) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
        """Commit, bound the store, and return the labels whose features never came (to dead-letter)."""
        unmatched = self.store.take_unmatched(self.t.match_grace_s)
        self.store.prune(self.t.feature_retention_s, self.t.max_features, self.t.max_examples)
        self.store.commit()
        self.metrics.labels.labels("unmatched").inc(len(unmatched))
        self.metrics.training_set.set(self.store.size())
        return unmatched

    @property
    def training(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # retraining --------------------------------------------------------------------------------------------
    def due(self, now: int | None = None) -> str | None:
        if self.training:
            return None
        now = now or now_ms()
        if self.store.size() < self.t.min_examples:
            return None
        last_seen = int(self.store.get_meta("last_run_received", 0))
        new = self.store.new_since(last_seen)
        if new >= self.t.retrain_after_labels:
            return f"{new} new labels"
        last_run = int(self.store.get_meta("last_run_at", 0))
        if new and now - last_run >= self.t.retrain_every_s * 1000:
            return f"schedule ({new} new labels)"
        return None

    def start_run(self, why: str) -> threading.Thread:
        self._thread = threading.Thread(target=self.run_once, args=(why,), name="mmcl-retrain", daemon=True)
        self._thread.start()
        return self._thread

    def run_once(self, why: str) -> dict[str, Any]:
        started = now_ms()
        t0 = time.monotonic()
        self.metrics.training.set(1)
        # the labels this run sees: a restart or a failure does not make it see them as new again
        seen = self.store.last_received()
        run: dict[str, Any] = {"started_at": started, "reason": why}
        try:
            run.update(self._train_and_gate())
        except (MMCLError, RuntimeError, ValueError, OSError) as e:
            log.exception("retraining failed")
            run.update(outcome="failed", error=f"{type(e).__name__}: {e}"[:500])
        finally:
            self.metrics.training.set(0)
        run["finished_at"] = now_ms()
        if "error" in run:
            run.setdefault("metrics", {})["error"] = run["error"]
        self.store.set_meta("last_run_received", seen)
        self.store.set_meta("last_run_at", run["finished_at"])
        self.store.record_run(run)
        self.metrics.runs.labels(run["outcome"]).inc()
        self.metrics.run_seconds.observe(time.monotonic() - t0)
        log.info("run %s: %s (%s)", run["outcome"], run.get("candidate_version") or "-", why)
        return run

    def _current(self) -> tuple[str | None, Checkpoint | None]:
        version = self.registry.current()
        if version is not None:
            return version, load_checkpoint(self.registry.fetch(version))
        if self.s.model.checkpoint is not None:
            ckpt = load_checkpoint(self.s.model.checkpoint)
            return ckpt.checksum[:12], ckpt
        return None, None

    def _train_and_gate(self) -> dict[str, Any]:
        examples = self.store.examples()
        cur_version, current = self._current()
        if current is None:
            raise ConfigError("no current model to fine-tune or compare with (publish one: mmcl model publish)")
        cfg = current.config
        train_ex, valid_ex, hold_ex = split_by_time(examples, self.t.holdout_frac, self.t.valid_frac)
        splits = {name: to_split(ex, cfg.input_dims, cfg.seq_len)
                  for name, ex in (("train", train_ex), ("valid", valid_ex), ("test", hold_ex))}
        ds = Dataset(splits, {"label_kind": "score", "score_range": cfg.task.score_range,
                              "extractor_ids": dict(current.profile.extractor_ids), "source": "feedback"})
        window = {"from": examples[0].labeled_at, "to": examples[-1].labeled_at, "labels": len(examples),
                  "holdout_from": hold_ex[0].labeled_at}
        out = self.home / "runs" / time.strftime("%Y%m%d-%H%M%S")
        tcfg = TrainConfig(epochs=self.t.epochs, lr=self.t.lr, batch_size=self.t.batch_size, act_reward=self.t.act_reward,
                           early_stop_patience=max(2, self.t.epochs // 3))
        init = current.model.state_dict() if self.t.fine_tune else None
        res = train(ds, cfg, tcfg, out, progress=False, log=lambda m: log.debug(m), device=self.t.device,
                    init_state=init)
        candidate = load_checkpoint(res.checkpoint)
        base = {"current_version": cur_version, "examples": len(examples), "holdout": len(hold_ex),
                "window_from": window["from"], "window_to": window["to"]}
        if not all_finite(candidate):
            shutil.rmtree(out, ignore_errors=True)
            return {**base, "outcome": "failed", "error": "the candidate has non-finite weights"}
        held = to_tensors(splits["test"], cfg)
        m_cur = evaluate(current.model, held, cfg.task).metrics
        m_new = evaluate(candidate.model, held, cfg.task).metrics
        metric = self.t.gate_metric
        for name, values in (("current", m_cur), ("candidate", m_new)):
            for k, v in values.items():
                self.metrics.evaluation.labels(name, k).set(v)
        gain = (m_cur[metric] - m_new[metric]) if metric in LOWER_IS_BETTER else (m_new[metric] - m_cur[metric])
        metrics = {"gate_metric": metric, "gain": gain, "margin": self.t.gate_margin, "current": m_cur,
                   "candidate": m_new}
        if not (math.isfinite(gain) and gain > self.t.gate_margin):
            shutil.rmtree(out, ignore_errors=True)
            return {**base, "outcome": "rejected", "metrics": metrics, "candidate_version": candidate.checksum[:12]}
        try:
            v = self.registry.publish(res.checkpoint, parent=cur_version, label_window=window,
                                      note=f"retrained on {len(examples)} labels ({metric} {m_new[metric]:.4f} vs "
                                           f"{m_cur[metric]:.4f})")
            self.registry.promote(v.version)
            announce(self.s, v.version, v.checksum, "promote")
        except RegistryError as e:
            return {**base, "outcome": "failed", "error": str(e), "metrics": metrics}
        finally:
            shutil.rmtree(out, ignore_errors=True)
        self.metrics.current.info({"version": v.version})
        return {**base, "outcome": "promoted", "metrics": metrics, "candidate_version": v.version}

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def consume(s: Settings, trainer: Trainer, stop: threading.Event) -> None:
    """The ingestion loop: joined features and labels into the store; offsets committed after the store."""
    from confluent_kafka import Consumer, KafkaException, Producer

    from streams.deadletter import Origin, dead_letter
    from streams.kafka import consumer_config, producer_config, record_limits

    limit = record_limits(s.limits.max_message_bytes).dead_letter
    c = Consumer(consumer_config(s.kafka, s.trainer.group_id))
    p = Producer(producer_config(s.kafka, max_record_bytes=limit))

    def send_dead_letter(key: bytes | None, raw: bytes, headers: list[tuple[str, bytes]], origin: Origin, reason: Reason,
                         error: str) -> None:
        rec, _ = dead_letter(s.topics.dlq, key, raw, headers, origin, reason.value, "feedback", error, limit)
        p.produce(rec.topic, rec.value, key=rec.key, headers=rec.headers)

    c.subscribe([s.topics.joined, s.topics.feedback])
    last_house = time.monotonic()
    dirty = False
    try:
        while not stop.is_set():
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                headers = list(msg.headers() or [])
                if msg.topic() == s.topics.joined:
                    trainer.on_joined(msg.value() or b"")
                else:
                    src_headers = [*headers, ("mmcl.source_topic", msg.topic().encode()),
                                   ("mmcl.source_partition", str(msg.partition()).encode()),
                                   ("mmcl.source_offset", str(msg.offset()).encode())]
                    bad = trainer.on_label(msg.value() or b"", src_headers)
                    if bad is not None:
                        send_dead_letter(msg.key(), msg.value() or b"", headers,
                                         Origin(msg.topic(), msg.partition(), msg.offset()), *bad)
                dirty = True
            if time.monotonic() - last_house >= 1.0:
                last_house = time.monotonic()
                for _utt, raw, hdrs in trainer.housekeeping():
                    base = [h for h in hdrs if not h[0].startswith("mmcl.source_")]
                    info = {k: v.decode() for k, v in hdrs if k.startswith("mmcl.source_")}
                    origin = Origin(info.get("mmcl.source_topic", s.topics.feedback),
                                    int(info.get("mmcl.source_partition", -1)), int(info.get("mmcl.source_offset", -1)))
                    send_dead_letter(None, raw, base, origin, Reason.UNMATCHED,
                                     f"no joined features within {s.trainer.match_grace_s:g} s (never seen, or expired)")
                if p.flush(30) != 0:
                    raise ConfigError("could not write to the dead-letter topic")
                if dirty:
                    with contextlib.suppress(KafkaException):  # nothing consumed since the last commit
                        c.commit(asynchronous=False)
                    dirty = False
                why = trainer.due()
                if why:
                    log.info("retraining: %s", why)
                    trainer.start_run(why)
                trainer.metrics.last_check.set(time.time())
    finally:
        c.close()


@contextlib.contextmanager
def single_instance(s: Settings) -> Iterator[threading.Event]:
    """The state folder's lock, and with the registry in Redis a lease there too (trainers on other machines).
    Yields an event set if the lease is lost: the trainer must stop then."""
    lock = SingleInstance(s.state_dir / "trainer" / "trainer.lock")
    lock.acquire()
    lease = None
    try:
        if s.registry.backend == "redis":
            import redis

            from streams.redis_store import redis_kwargs

            client = redis.Redis.from_url((s.registry.redis_url or s.redis.url).get_secret_value(), **redis_kwargs(s.redis))
            lease = RedisLease(client, f"{s.registry.prefix}:trainer-lease")
            lease.acquire()
        yield lease.lost if lease else threading.Event()
    finally:
        if lease is not None:
            lease.release()
        lock.release()


def run_trainer(s: Settings) -> int:
    import asyncio
    import signal

    import torch

    from streams.kafka import ensure_topics
    from streams.models import open_registry

    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a run trains for minutes next to workers that answer in milliseconds: fewer threads, lower priority
    torch.set_num_threads(s.trainer.threads)
    os.nice(s.trainer.nice)
    with single_instance(s) as lost:
        ensure_topics(s.kafka, s.topics, max_message_bytes=s.limits.max_message_bytes)
        trainer = Trainer(s, open_registry(s))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        threading.Thread(target=lambda: (lost.wait(), stop.set()), daemon=True).start()
        loop = asyncio.new_event_loop()
        threading.Thread(target=_serve_metrics, args=(loop, trainer, s), daemon=True).start()
        log.info("trainer up: %d labelled examples; metrics on http://%s:%d/metrics", trainer.store.size(),
                 s.metrics.host, s.trainer.metrics_port)
        try:
            consume(s, trainer, stop)
        finally:
            trainer.join(timeout=5)  # a run in progress is abandoned: it changed nothing yet
            trainer.store.close()
    return 0


def _serve_metrics(loop: Any, trainer: Trainer, s: Settings) -> None:
    import asyncio

    from streams.http import start_http

    asyncio.set_event_loop(loop)

    def status() -> dict[str, Any]:
        return {"ready": True, "training_set": trainer.store.size(), "training": trainer.training}

    loop.run_until_complete(start_http(trainer.metrics, status, s.metrics.host, s.trainer.metrics_port))  # type: ignore[arg-type]
    loop.run_forever()
