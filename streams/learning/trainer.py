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

import logging
import math
import shutil
import threading
import time
from typing import Any

from pydantic import ValidationError

from mmcl.checkpoint import Checkpoint, load_checkpoint
from mmcl.config import TrainConfig
from mmcl.data.dataset import Dataset
from mmcl.data.tensors import to_tensors
from mmcl.errors import ConfigError, MMCLError
from mmcl.evaluate import evaluate
from mmcl.train import train
from streams.learning.follower import announce
from streams.learning.gate import LOWER_IS_BETTER, all_finite, split_by_time, to_split
from streams.learning.registry import Registry, RegistryError
from streams.learning.store import TrainingStore
from streams.learning.trainer_metrics import TrainerMetrics
from streams.messages import FeedbackLabel, now_ms
from streams.settings import Settings
from streams.sinks.deadletter import Reason
from streams.wire import read_joined

log = logging.getLogger("mmcl.trainer")


class Trainer:
    """Feedback labels in, retrained candidates out, promoted only when they beat the current model."""

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
        """Store a worker's joined features (malformed ones are logged and skipped)."""
        try:
            j, arrays = read_joined(raw)
        except ValidationError as e:
            log.warning("ignoring malformed joined features: %s", e.errors()[0]["msg"])
            return
        except ValueError as e:  # a binary record that does not add up
            log.warning("ignoring malformed joined features: %s", e)
            return
        self.store.add_features(j, arrays)
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
        unmatched: list[tuple[str, bytes, list[tuple[str, bytes]]]] = self.store.take_unmatched(self.t.match_grace_s)
        self.store.prune(self.t.feature_retention_s, self.t.max_features, self.t.max_examples)
        self.store.commit()
        self.metrics.labels.labels("unmatched").inc(len(unmatched))
        self.metrics.training_set.set(self.store.size())
        return unmatched

    @property
    def training(self) -> bool:
        """Whether a run is training now."""
        return self._thread is not None and self._thread.is_alive()

    # retraining --------------------------------------------------------------------------------------------
    def due(self, now: int | None = None) -> str | None:
        """Why a run is due now (enough new labels, or the schedule), or None."""
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
        """Start a run in a background thread."""
        self._thread = threading.Thread(target=self.run_once, args=(why,), name="mmcl-retrain", daemon=True)
        self._thread.start()
        return self._thread

    def run_once(self, why: str) -> dict[str, Any]:
        """Train a candidate, gate it on held-out labels, promote it if it wins; record the run."""
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
            return ckpt.version, ckpt
        return None, None

    def _train_and_gate(self) -> dict[str, Any]:
        examples = self.store.examples()
        cur_version, current = self._current()
        if current is None:
            raise ConfigError("no current model to fine-tune or compare with (publish one: mmcl model publish)")
        cfg = current.config
        train_ex, valid_ex, hold_ex = split_by_time(examples, self.t.holdout_frac, self.t.valid_frac)
        source = current.profile.source_lengths
        splits = {name: to_split(ex, cfg.input_dims, cfg.seq_len, source)
                  for name, ex in (("train", train_ex), ("valid", valid_ex), ("test", hold_ex))}
        meta: dict[str, Any] = {"label_kind": "score", "score_range": cfg.task.score_range,
                                "extractor_ids": dict(current.profile.extractor_ids), "source": "feedback"}
        if source is not None:  # the candidate serves as the current model does
            meta["source_lengths"] = list(source)
        ds = Dataset(splits, meta)
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
            return {**base, "outcome": "rejected", "metrics": metrics, "candidate_version": candidate.version}
        try:
            published = self.registry.publish(res.checkpoint, parent=cur_version, label_window=window,
                                              note=f"retrained on {len(examples)} labels ({metric} {m_new[metric]:.4f} vs "
                                                   f"{m_cur[metric]:.4f})")
            self.registry.promote(published.version)
            announce(self.s, published.version, published.checksum, "promote")
        except RegistryError as e:
            return {**base, "outcome": "failed", "error": str(e), "metrics": metrics}
        finally:
            shutil.rmtree(out, ignore_errors=True)
        self.metrics.current.info({"version": published.version})
        return {**base, "outcome": "promoted", "metrics": metrics, "candidate_version": published.version}

    def join(self, timeout: float | None = None) -> None:
        """Wait for a run in progress."""
        if self._thread is not None:
            self._thread.join(timeout)
