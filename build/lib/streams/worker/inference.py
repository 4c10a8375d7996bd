"""One inference thread per device, fed by a queue: the event loop hands joined utterances over and never waits on
the model. Results go back to the loop through a callback (call_soon_threadsafe)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

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


class InferenceThread:
    """Runs the model on micro-batches in a thread of its own, so the event loop never waits on it."""

    def __init__(self, predictor: Predictor, max_size: int, wait_s: float,
                 deliver: Callable[[BatchResult], None]) -> None:
        self.predictor = predictor
        self.max_size, self.wait_s = max_size, wait_s
        self.deliver = deliver  # called on this thread; must hand over to the loop itself
        self.queue: queue.Queue[object] = queue.Queue()  # bounded by the caller's in-flight slots
        self._thread = threading.Thread(target=self._run, name="mmcl-inference", daemon=True)

    def start(self) -> None:
        """Start the model thread."""
        self._thread.start()

    def submit(self, item: Joined) -> None:
        """Queue an utterance for the next batch."""
        self.queue.put(item)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in progress and stop the thread."""
        self.queue.put(STOP)
        if self._thread.ident is not None:  # a shutdown can come before the start
            self._thread.join(timeout)

    def _run(self) -> None:
        while (batch := collect_batch(self.queue, self.max_size, self.wait_s)) is not None:
            self.deliver(self.run_batch(batch))

    def run_batch(self, items: Sequence[Joined]) -> BatchResult:
        """Score a batch; if the batch fails, each item alone, so one bad item fails alone."""
        predictor = self.predictor  # one model per batch: a hot swap takes effect at the next one
        t0 = time.perf_counter()
        try:
            return BatchResult(items, predictor.predict(model_inputs(items)), [], time.perf_counter() - t0)
        except Exception as e:
            log.warning("batch of %d failed (%s); retrying one by one", len(items), e)
        good, failed = [], []
        for item in items:
            try:
                predictor.predict(model_inputs([item]))
                good.append(item)
            except Exception as e:
                failed.append((item, f"{type(e).__name__}: {e}"[:300]))
        preds = predictor.predict(model_inputs(good)) if good else None
        return BatchResult(good, preds, failed, time.perf_counter() - t0)
