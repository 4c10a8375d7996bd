"""One inference thread per device, fed by a queue: the event loop hands joined utterances over and never waits on
the model. Results go back to the loop through a callback (call_soon_threadsafe).

With `prepare_ahead` (the default on CUDA), a second thread forms and prepares the next batch (validation, fitting,
copies into pinned memory) while the model thread runs the current one on the device: on a GPU the host's share of
a batch is otherwise time the device sits idle. On a CPU both would compete for the same cores."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mmcl.batch_inputs import BatchInputs
from mmcl.predictor import PredictionBatch, Predictor
from streams.settings import model_modality
from streams.worker.batching import STOP, collect_batch
from streams.worker.join import Joined

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """A batch's predictions, and the items that failed alone."""

    items: Sequence[Joined]  # the ones predicted, in the order of the predictions
    predictions: PredictionBatch | None  # None when no item could be predicted
    failed: list[tuple[Joined, str]]  # items the model refused, with the error
    seconds: float


def model_inputs(items: Sequence[Joined]) -> list[dict[str, np.ndarray]]:
    """Joined utterances as the predictor's inputs (model modality names)."""
    return [{model_modality(m): p.array for m, p in it.parts.items()} for it in items]


@dataclass(frozen=True)
class Prepared:
    """A batch formed and fitted ahead, by the predictor it was fitted for (a hot swap may replace it meanwhile)."""

    items: list[Joined]
    predictor: Predictor
    inputs: BatchInputs | None  # None when the batch as a whole failed its preparation...
    error: str = ""  # ...and why


class InferenceThread:
    """Runs the model on micro-batches in a thread of its own, so the event loop never waits on it."""

    def __init__(self, predictor: Predictor, max_size: int, wait_s: float,
                 deliver: Callable[[BatchResult], None], prepare_ahead: bool = False) -> None:
        self.predictor = predictor
        self.max_size, self.wait_s = max_size, wait_s
        self.deliver = deliver  # called on this thread; must hand over to the loop itself
        self.queue: queue.Queue[object] = queue.Queue()  # bounded by the caller's in-flight slots
        self._thread = threading.Thread(target=self._run, name="mmcl-inference", daemon=True)
        # one prepared batch waits while the model runs another: enough to hide the preparation, and no more
        # utterances held back from a batch than that
        self._prepared: queue.Queue[object] = queue.Queue(maxsize=1)
        self._preparer = (threading.Thread(target=self._prepare_loop, name="mmcl-prepare", daemon=True)
                          if prepare_ahead else None)

    @property
    def prepares_ahead(self) -> bool:
        """Whether a second thread prepares the next batch while the model runs."""
        return self._preparer is not None

    def start(self) -> None:
        """Start the model thread (and the preparing one)."""
        if self._preparer is not None:
            self._preparer.start()
        self._thread.start()

    def submit(self, item: Joined) -> None:
        """Queue an utterance for the next batch."""
        self.queue.put(item)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches in progress and stop the threads."""
        self.queue.put(STOP)
        deadline = time.monotonic() + timeout
        for thread in (self._preparer, self._thread):
            if thread is not None and thread.ident is not None:  # a shutdown can come before the start
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        if self._preparer is None:
            while (batch := collect_batch(self.queue, self.max_size, self.wait_s)) is not None:
                self.deliver(self.run_batch(batch))
            return
        while isinstance(job := self._prepared.get(), Prepared):
            predictor = self.predictor
            if job.predictor is not predictor:  # fitted for a model since swapped out, whose dims may differ
                self.deliver(self.run_batch(job.items, predictor=predictor))
            elif job.inputs is None:
                self.deliver(self._one_by_one(job.items, predictor, time.perf_counter(), job.error))
            else:
                self.deliver(self.run_batch(job.items, job.inputs, predictor))

    def _prepare_loop(self) -> None:
        try:
            while (batch := collect_batch(self.queue, self.max_size, self.wait_s)) is not None:
                predictor = self.predictor
                try:
                    job = Prepared(batch, predictor, predictor.prepare(model_inputs(batch)))
                except Exception as e:  # the model thread scores the items one by one, and names the bad ones
                    job = Prepared(batch, predictor, None, str(e))
                self._prepared.put(job)
        finally:
            self._prepared.put(STOP)

    def run_batch(self, items: Sequence[Joined], inputs: BatchInputs | None = None,
                  predictor: Predictor | None = None) -> BatchResult:
        """Score a batch (from `inputs` when `predictor` prepared it ahead); if the batch fails, each item alone, so
        one bad item fails alone."""
        predictor = predictor or self.predictor  # one model per batch: a hot swap takes effect at the next one
        t0 = time.perf_counter()
        try:
            preds = (predictor.predict_prepared(inputs) if inputs is not None
                     else predictor.predict(model_inputs(items)))
            return BatchResult(items, preds, [], time.perf_counter() - t0)
        except Exception as e:
            return self._one_by_one(items, predictor, t0, str(e))

    @staticmethod
    def _one_by_one(items: Sequence[Joined], predictor: Predictor, t0: float, error: str) -> BatchResult:
        log.warning("batch of %d failed (%s); retrying one by one", len(items), error)
        good, failed = [], []
        for item in items:
            try:
                predictor.predict(model_inputs([item]))
                good.append(item)
            except Exception as e:
                failed.append((item, f"{type(e).__name__}: {e}"[:300]))
        preds = predictor.predict(model_inputs(good)) if good else None
        return BatchResult(good, preds, failed, time.perf_counter() - t0)
