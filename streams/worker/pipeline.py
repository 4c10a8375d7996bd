"""The worker's core, independent of Faust: decode -> join -> inference thread -> Redis + Kafka -> ack in order.

At-least-once: a source message is acked (and so committed) only when everything derived from it is durable: its
utterance's result written to Redis and acknowledged by Kafka, or the message itself acknowledged on the dead-letter
topic. A crash re-reads whatever was not acked; the Redis script ignores results it already has.

Failures are classified (streams.errors): transient ones are retried with capped back-off while consumption pauses;
a record that can never be written is handled alone (truncated, skipped or dead-lettered, and counted) so that its
partition goes on; a sink that refuses the worker itself (credentials, permissions) stops the worker with nothing
unwritten committed. A rebalance or a shutdown forgets what is pending (its next reader re-reads it) instead of
deciding it, and gives writes in flight a bounded time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from mmcl.predictor import Predictor
from streams.errors import RecordRefused, ShuttingDown, SinkRefused
from streams.kafka import RecordLimits
from streams.messages import now_ms
from streams.metrics import Metrics
from streams.settings import WIRE_MODALITIES, PolicySettings, Settings
from streams.sinks.deadletter import OutRecord, Reason
from streams.sinks.redis_store import ResultWriter, Written
from streams.worker.acks import OrderedAcker
from streams.worker.decode import Rejection, decode_part, profile_of
from streams.worker.inference import BatchResult, InferenceThread
from streams.worker.join import Dropped, Ignored, Joiner, LiveClock, Outcome, Redelivered
from streams.worker.outputs import Outputs
from streams.worker.progress import FetchSnapshot, ReadProgress
from streams.worker.records import Publisher, Source, joined_record, predictions_of

log = logging.getLogger(__name__)
T = TypeVar("T")


class Pipeline(Outputs):
    """The worker's core: decode, join, score, write, then acknowledge in order."""

    def __init__(self, settings: Settings, predictor: Predictor, metrics: Metrics, make_writer: Callable[[], ResultWriter],
                 publisher: Publisher, ack: Callable[[Any], None], limits: RecordLimits,
                 on_fatal: Callable[[str], None] = lambda why: None, clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = now_ms,
                 fetch_state: Callable[[Iterable[tuple[str, int]]], dict[tuple[str, int], FetchSnapshot]] | None = None
                 ) -> None:
        # the writer's redis.asyncio client must be made on the loop that uses it, so it is made in start()
        self.settings, self.predictor, self.metrics, self.publisher = settings, predictor, metrics, publisher
        self.limits = limits
        self._make_writer = make_writer
        self._on_fatal = on_fatal
        self._wall_ms = wall_ms
        self.writer: ResultWriter | None = None
        self.profile = profile_of(predictor)
        self.topic_modality = {settings.topics.feature(m): m for m in WIRE_MODALITIES}
        self.label_names = list(predictor.cfg.task.label_names)
        self.acker = OrderedAcker(ack)
        self.live = LiveClock(clock)  # stands still while back-pressure or a rebalance holds the agent
        j = settings.join
        # the consumer's view of each partition (None: without one, a quiet partition is trusted to be caught up)
        self._fetch_state = fetch_state
        # an idle partition's fetches are answered once per fetch wait: twice that without an answer is an outage
        self.progress = ReadProgress(silence_s=max(1.0, 2 * settings.kafka.fetch_max_wait_ms / 1000))
        self.owned_before = False  # whether partitions were assigned to this worker before
        fetched = None if fetch_state is None else (lambda m, g: self.progress.fetched((settings.topics.feature(m), g)))
        self.reads = frozenset(predictor.modalities)  # what the join waits for: the serving model's modalities
        self.joiner = Joiner(self._required(), self._allowed, j.timeout_s, j.max_pending, j.remember_emitted,
                             self.live, count=lambda o: metrics.join_outcomes.labels(o).inc(),
                             max_clock_skew_s=j.clock_skew_s, max_wait_s=j.max_wait_s,
                             count_skew=lambda m, side: metrics.clock_skew.labels(m, side).inc(), fetched=fetched,
                             resumed=lambda: self.progress.resumed_at,
                             stall_wait_s=j.stall_wait_s)
        self._slots = asyncio.Semaphore(settings.batch.queue_size)
        self._results: asyncio.Queue[BatchResult] = asyncio.Queue()
        self._inference = InferenceThread(predictor, settings.batch.max_size, settings.batch.wait_ms / 1000, self._deliver,
                                          settings.batch.prepares_ahead(predictor.device.type))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight = 0  # utterances handed to the inference thread and not yet written
        self._idle: asyncio.Event | None = None  # set while _inflight == 0
        self.abort: asyncio.Event | None = None  # set when a shutdown's grace time is over: writes give up
        self.owned: set[tuple[str, int]] = set()
        self._revoke_commit_timeout_s = min(settings.worker.shutdown_timeout_s, settings.kafka.session_timeout_s / 2)
        self._rebalancing = False
        self.stopping = False
        self.fatal: str | None = None
        self.assigned = False
        self.redis_ok = True
        self.failing = 0  # writes being retried right now (sink and agent may both be)
        self.written = 0  # utterances written (new or re-delivered), for tests and the demo
        self._describe_model(predictor)

    def _allowed(self, role: str) -> tuple[str, ...]:
        """The modalities an utterance of `role` is joined on: those the policy allows and the model reads."""
        return tuple(m for m in self.settings.policy.allowed(role) if m in self.reads)

    def _required(self) -> tuple[str, ...]:
        """The required modalities the model reads (none: every modality it reads that the role allows)."""
        return tuple(m for m in self.settings.join.required if m in self.reads)

    def _describe_model(self, p: Predictor) -> None:
        self.metrics.model_info.info({"version": p.version, "kind": p.cfg.kind, "decoupling": p.cfg.decoupling,
                                      "device": str(p.device), "modalities": ",".join(p.modalities)})
        unread = sorted(set(WIRE_MODALITIES) - self.reads)
        if unread:
            log.info("model %s reads %s: %s parts are acknowledged unread, and no utterance waits for them",
                     p.version, ", ".join(p.modalities), ", ".join(unread))
        for role in PolicySettings.model_fields:
            if not self._allowed(role):
                log.warning("%s utterances cannot be scored: the policy allows %s, model %s reads %s", role,
                            ", ".join(self.settings.policy.allowed(role)), p.version, ", ".join(p.modalities))

    def swap(self, new: Predictor) -> None:
        """Serve `new` from the next batch on (any thread; the caller has loaded and warmed it). The join follows
        the modalities it reads from the next part on."""
        self.predictor = new
        self._inference.predictor = new
        self.profile = profile_of(new)
        self.reads = frozenset(new.modalities)
        self.joiner.required = self._required()
        self._describe_model(new)

    # lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the inference thread, the sink and the join's deadlines, on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._idle, self.abort = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self.writer = self._make_writer()
        self._inference.start()
        self._tasks = [asyncio.create_task(self._sink_loop(), name="mmcl-sink"),
                       asyncio.create_task(self._expire_loop(), name="mmcl-join-deadlines")]
        self.publish_state()

    def begin_shutdown(self) -> None:
        """Stop taking messages and stop deciding pending utterances (their parts stay unacknowledged: the next
        owner re-reads them); what is in flight may still finish."""
        if self.stopping:
            return
        self.stopping = True
        self.live.pause()  # never resumed: nothing pending may time out while the worker winds down
        for t in self._tasks[1:]:
            t.cancel()
        self.publish_state()

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the utterances in flight to be written (and so acked); then abandon the rest and
        stop. Returns whether everything in flight was written."""
        self.begin_shutdown()
        finished = True
        if self._idle is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                finished = False
                log.warning("shutdown: %d utterances in flight were not written within %g s; their offsets stay "
                            "uncommitted (the next owner re-reads them)", self._inflight, timeout_s)
        await self.stop()
        return finished

    async def stop(self) -> None:
        """Cancel the loops and stop the inference thread."""
        if self.abort is not None:
            self.abort.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await asyncio.to_thread(self._inference.stop)

    @property
    def ready(self) -> bool:
        """Whether the worker is ready: assigned, writing, not stopping."""
        return (self.assigned and self.redis_ok and not self.failing and self._loop is not None and not self.stopping
                and self.fatal is None)

    def on_assigned(self, tps: set[tuple[str, int]]) -> None:
        """Partitions assigned: remember them and let the join's clock run again."""
        if self.owned_before:  # see ReadProgress.reassigned
            self.progress.reassigned(self.live())
        self.owned, self.owned_before = set(tps), True
        self.metrics.rebalances.inc()
        self.joiner.assigned({p for _, p in tps})
        if self._rebalancing:
            self._rebalancing = False
            self.live.resume()
        self.assigned = True
        self.publish_state()

    async def on_revoked(self, tps: set[tuple[str, int]], commit: Callable[[], Awaitable[Any]]) -> None:
        """Partitions going to another owner (or coming back re-read from their commit). Utterances in flight get a
        bounded time to be written, what they finished is committed, and everything else learnt from these
        partitions is forgotten unacknowledged: deciding it now (parts are not coming, the flow is stopped) dead-
        lettered good utterances on every rebalance, and their other parts at the next owner as well."""
        if not self._rebalancing:
            self._rebalancing = True
            self.live.pause()  # until on_assigned: quiet partitions during a rebalance are not evidence
        if tps and self._idle is not None and not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.worker.shutdown_timeout_s)
            # Bounded: this runs inside the consumer's rebalance, and a commit needs the group coordinator. When the
            # coordinator was lost (a broker restart, the session expired) finding it again is the rebalance's own
            # job, so an unbounded wait here deadlocked the consumer for good. A failed or abandoned commit only
            # means more is re-read.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(commit(), self._revoke_commit_timeout_s)
        self.owned -= tps
        groups = {p for _, p in tps}
        self.joiner.forget_groups({g for g in groups if not any(tp[1] == g for tp in self.owned)})
        self.joiner.forget(lambda src: src.tp not in tps)
        self.acker.forget(set(tps))
        self.progress.forget(tps)
        self.metrics.pending_joins.set(len(self.joiner))

    # consuming -----------------------------------------------------------------------------------------------
    async def on_message(self, src: Source) -> None:
        """One message from the agent. Never raises for the stream's sake: a sink that refuses the worker stops it,
        a shutdown abandons the message unacknowledged."""
        try:
            await self._on_message(src)
        except SinkRefused as e:
            self._fail(str(e))
        except ShuttingDown:
            pass

    async def _on_message(self, src: Source) -> None:
        if self.stopping or self.fatal is not None or self._rebalancing or (self.owned and src.tp not in self.owned):
            return  # not acknowledged: whoever reads this partition next reads it again
        if not self.acker.track(src.tp, src.offset, src.handle):
            return  # this offset is already being processed (delivered twice across a rebalance)
        modality = self.topic_modality.get(src.topic, "unknown")
        self.metrics.consumed.labels(modality).inc()
        self.metrics.last_event.labels(src.topic).set(time.time())
        if modality in WIRE_MODALITIES and modality not in self.reads:
            self.metrics.parts_unused.labels(modality).inc()
            self._ack([src])
            return
        part = decode_part(src.value, modality, self.settings.limits, self.profile)
        if isinstance(part, Rejection):
            await self._dead_letter([src], part.reason, "decode", part.error)
            return
        await self._handle(self.joiner.add(part, src, group=src.partition, arrival_ms=self._wall_ms()))

    async def _handle(self, outcomes: list[Outcome]) -> None:
        for out in outcomes:
            if isinstance(out, Dropped):
                await self._drop(out)
                continue
            if isinstance(out, Ignored):
                self.metrics.policy_masked.labels(out.part.speaker, out.part.modality).inc()
                self._ack([out.token])
                continue
            if isinstance(out, Redelivered):
                self._ack([out.token])  # in offset order: after the emission it repeats is durable
                continue
            if self.stopping:
                return  # not submitted, not acked: re-read by the next owner
            self.metrics.join_wait.observe(out.wait_s)
            if not out.complete and log.isEnabledFor(logging.DEBUG):
                log.debug("%s/%s decided with %s only, after %.1f s", out.call_id, out.utterance_id,
                          ",".join(sorted(out.parts)), out.wait_s)
            if self._slots.locked():  # back-pressure: wait while the model or the sinks are behind
                self.live.pause()
                try:
                    await self._slots.acquire()
                finally:
                    self.live.resume()
            else:
                await self._slots.acquire()
            if self.stopping:
                self._slots.release()
                return
            self._inflight += 1
            assert self._idle is not None
            self._idle.clear()
            self.metrics.inflight.inc()
            self._inference.submit(out)
        self.metrics.pending_joins.set(len(self.joiner))

    async def _drop(self, out: Dropped) -> None:
        """A dropped utterance's parts go to the dead-letter topic, unless its result is already written (parts
        read again after a restart or a rebalance): those used in the result are re-deliveries, the others late."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s dropped (%s): %s", [f"{t.topic}[{t.partition}]@{t.offset}" for t in out.tokens],
                      out.reason.value, out.error)
        if out.reason is not Reason.INCOMPLETE or not out.parts:
            await self._dead_letter(list(out.tokens), out.reason, "join", out.error)
            return
        first = out.parts[0]
        assert self.writer is not None
        writer = self.writer
        try:
            have = (await self._retrying(
                "redis", lambda: writer.result_modalities([(first.call_id, first.utterance_id)]), redis_write=True))[0]
        except RecordRefused:  # e.g. WRONGTYPE on the utterance's key: no result of ours is there
            have = None
        if have is None:
            self.metrics.join_outcomes.labels("incomplete").inc()
            await self._dead_letter(list(out.tokens), out.reason, "join", out.error)
            return
        used = set(have)
        again = [src for src in out.tokens if self.topic_modality.get(src.topic) in used]
        late = [src for src in out.tokens if self.topic_modality.get(src.topic) not in used]
        self.metrics.join_outcomes.labels("redelivered").inc(len(again))
        self._ack(again)
        if late:
            self.metrics.join_outcomes.labels("late").inc(len(late))
            await self._dead_letter(late, Reason.LATE, "join", "part of an utterance whose result was written without it")

    async def _expire_loop(self) -> None:
        tick = min(0.05, self.settings.join.timeout_s / 4)
        try:
            while True:
                await asyncio.sleep(tick)
                self._observe_fetches()
                await self._handle(self.joiner.expire())
        except SinkRefused as e:
            self._fail(str(e))
        except ShuttingDown:
            pass
        except Exception as e:  # a bug of ours: stop loudly rather than leave every pending utterance undecided
            log.exception("deciding pending utterances failed")
            self._fail(f"internal error in the join's deadlines ({type(e).__name__}: {e})")

    def _observe_fetches(self) -> None:
        if self._fetch_state is None:
            return
        now = self.live()
        snapshots = self._fetch_state(self.owned)
        for tp in self.owned:
            self.progress.observe(tp, snapshots.get(tp), now)

    # results -------------------------------------------------------------------------------------------------
    def _deliver(self, result: BatchResult) -> None:  # on the inference thread
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._results.put_nowait, result)

    async def _sink_loop(self) -> None:
        while True:
            result = await self._results.get()
            n = len(result.items) + len(result.failed)
            try:
                await self._finish(result)
            except SinkRefused as e:
                self._fail(str(e))
                return  # nothing more is written; what is in flight stays unacknowledged
            except ShuttingDown:
                return
            except Exception as e:  # a bug of ours: stop loudly rather than stall with nothing written
                log.exception("writing a batch's results failed")
                self._fail(f"internal error while writing results ({type(e).__name__}: {e})")
                return
            finally:
                for _ in range(n):
                    self._slots.release()
                self._inflight -= n
                self.metrics.inflight.dec(n)
                if self._inflight == 0 and self._idle is not None:
                    self._idle.set()

    async def _finish(self, result: BatchResult) -> None:
        m = self.metrics
        for item, err in result.failed:
            await self._dead_letter(list(item.tokens), Reason.INFERENCE_ERROR, "inference", err)
        if not result.items or result.predictions is None:
            return
        m.batch_size.observe(len(result.items))
        m.inference_seconds.observe(result.seconds)
        t = now_ms()
        preds = predictions_of(result, self.label_names, t)
        written = await self._write_results(preds, t)
        written_at = time.time()
        records: list[tuple[OutRecord, str]] = []  # with the output's name, for the refusal metric
        for i, (item, p) in enumerate(zip(result.items, preds, strict=True)):
            w = written.get(i)
            if not isinstance(w, Written):
                continue
            shown = w.stored or p  # a re-delivery publishes what Redis holds, not a second opinion
            key = (p.call_id or p.utterance_id).encode()
            topics = self.settings.topics
            records.append((OutRecord(topics.predictions, key, shown.model_dump_json().encode(), []), "predictions"))
            if w.alert:
                records.append((OutRecord(self.settings.topics.alerts, key, w.alert.encode(), []), "alerts"))
            # a re-delivered utterance's joined record is written again only when it holds the same parts (the
            # topic is compacted by utterance: a partial re-join must not replace what the model first saw)
            if self.settings.trainer.keep_joined and (w.new or set(shown.modalities) == set(item.parts)):
                records.append((OutRecord(self.settings.topics.joined, p.utterance_id.encode(), joined_record(item, shown), []),
                                "joined"))
        outcomes = await self._publish([r for r, _ in records], "kafka")
        for (rec, output), o in zip(records, outcomes, strict=True):
            if isinstance(o, RecordRefused):
                m.records_refused.labels(output, o.why).inc()
                log.error("%s record for utterance %s not written (%s: %s); the result is in Redis", output,
                          rec.key.decode() if rec.key else "?", o.why, o)
        for i, (item, p) in enumerate(zip(result.items, preds, strict=True)):
            w = written.get(i)
            if isinstance(w, Written):
                if w.new:
                    m.e2e_latency.observe(max(0.0, written_at - item.event_at / 1000))
                    m.predictions.labels(p.label, p.speaker).inc()
                    if w.alert:
                        m.alerts.labels(p.speaker).inc()
                else:
                    m.duplicates_skipped.inc()
                self.written += 1
                self._ack(item.tokens)
            elif isinstance(w, RecordRefused):
                m.records_refused.labels("redis", w.why).inc()
                await self._dead_letter(list(item.tokens), Reason.UNWRITABLE, "sink", f"Redis refused the result: {w}")

    def _fail(self, why: str) -> None:
        if self.fatal is None:
            self.fatal = why
            log.error("%s; stopping (nothing unwritten was committed)", why)
            self.publish_state()
            self._on_fatal(why)

    def publish_state(self) -> None:
        """Publish readiness and the paused gauge."""
        self.metrics.paused.set(1 if self.failing else 0)
        self.metrics.ready.set(1 if self.ready else 0)

    # dead letters and acks -----------------------------------------------------------------------------------


__all__ = ["Pipeline"]
