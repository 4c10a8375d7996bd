"""`mmcl extract`, `mmcl stream-call` and `mmcl extractors`: raw media to feature messages."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcl.errors import ConfigError, MMCLError
from streams.cli.endpoints import service_settings

if TYPE_CHECKING:  # the extractors pull in their models' libraries: only the commands that use them import them
    from extractors.utterance import FeatureMaker
    from streams.local.media import CallReport, Sink
    from streams.local.outcomes import OutcomeWatch, WatchedSink

CONFIRM_MARGIN_S = 10.0  # past the join's longest wait, for the worker to write what it decided
CONFIRM_HELP = ("after sending to Kafka, wait up to this long for each utterance's result or dead letter, report them, "
                "and exit 1 if any was dead-lettered; 0: do not wait (default: the join's longest wait, "
                "MMCL_JOIN__MAX_WAIT_S, plus 10 s)")


def register(commands: Any) -> None:
    """Add extract, stream-call and extractors to the `mmcl` command."""
    from extractors.options import add_extraction_options

    x = commands.add_parser("extract", help="one utterance's transcript / audio / video -> feature messages (Kafka "
                                            "or JSONL)")
    x.add_argument("--id", required=True, dest="utterance_id", help="utterance id")
    x.add_argument("--call-id")
    x.add_argument("--speaker", choices=("agent", "customer", "unknown"), default="unknown")
    x.add_argument("--start", type=float, help="seconds from the call's start")
    x.add_argument("--end", type=float)
    x.add_argument("--text", help="the transcript")
    x.add_argument("--text-file", type=Path, help="a UTF-8 file holding the transcript")
    x.add_argument("--audio", type=Path, help="a WAV/FLAC/OGG clip of the utterance")
    x.add_argument("--video", type=Path, help="a video file, a folder of frames, or one image")
    x.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 30)")
    x.add_argument("--out", type=Path, help="append the messages to this JSONL file instead of sending them to Kafka")
    x.add_argument("--confirm-s", type=float, default=None, metavar="SECONDS", help=CONFIRM_HELP)
    add_extraction_options(x)
    x.set_defaults(handler=cmd_extract)

    sc = commands.add_parser("stream-call", help="a call's utterances (manifest or folder) -> Kafka in real-time order")
    sc.add_argument("source", type=Path, help="manifest .jsonl/.csv, or a folder (with a manifest, or media by name)")
    sc.add_argument("--speed", type=float, default=1.0, help="play the call this many times faster than real time")
    sc.add_argument("--no-wait", action="store_true", help="do not wait for utterance end times: send at once")
    sc.add_argument("--call-id", help="override the manifest's call id")
    sc.add_argument("--out", type=Path, help="append the messages to this JSONL file instead of sending them to Kafka")
    sc.add_argument("--quiet", action="store_true", help="no line per message")
    sc.add_argument("--confirm-s", type=float, default=None, metavar="SECONDS", help=CONFIRM_HELP)
    add_extraction_options(sc)
    sc.set_defaults(handler=cmd_stream_call)
    commands.add_parser("extractors", help="the feature extractors and profiles, and whether each one is installed"
                        ).set_defaults(handler=cmd_extractors)


def _maker_and_sink(args: argparse.Namespace, modalities: Sequence[str]) -> tuple[FeatureMaker, Sink, tuple[str, ...]]:
    """The feature maker for the model (--checkpoint), where to send, and the modalities to extract: those the media
    has that the model reads."""
    from extractors.options import maker_from_args
    from streams.local.media import JsonlSink, KafkaSink, check_dims, model_plan

    plan = model_plan(args.checkpoint)
    unread = [m for m in modalities if m not in plan.reads]
    if unread:
        print(f"the model reads {', '.join(plan.reads)}: not extracting {', '.join(unread)}", file=sys.stderr)
    maker = maker_from_args(args, plan.extractor_ids, plan.seq_len)
    check_dims(maker, [m for m in modalities if m in plan.reads], plan.dims)
    return maker, (JsonlSink(args.out) if args.out else KafkaSink(service_settings(args))), plan.reads


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract one utterance's features and send them."""
    from pydantic import ValidationError

    from extractors.utterance import Utterance, first_error
    from streams.local.media import stream_call

    try:
        utt = Utterance(utterance_id=args.utterance_id, call_id=args.call_id, speaker=args.speaker, start=args.start,
                        end=args.end, text=args.text, text_file=args.text_file, audio=args.audio, video=args.video,
                        fps=args.fps)
    except ValidationError as e:
        where, msg = first_error(e)
        raise ConfigError(f"{'--' + where.replace('_', '-') + ': ' if where else ''}{msg}") from None
    maker, sink, reads = _maker_and_sink(args, utt.available(args.asr))
    watch = _watch(args, sink)
    try:
        report = stream_call([utt], maker, watch[1] if watch else sink, realtime=False, reads=reads)
    finally:
        maker.close()
    return _confirmed(_report(report, sink.destination), watch, args)


def cmd_stream_call(args: argparse.Namespace) -> int:
    """Extract a call's utterances and send them in real-time order."""
    from extractors.utterance import read_manifest
    from streams.local.media import stream_call

    if args.speed <= 0:
        raise ConfigError("--speed must be positive")
    utts = read_manifest(args.source)
    maker, sink, reads = _maker_and_sink(args, sorted({m for u in utts for m in u.available(args.asr)}))
    stop = threading.Event()
    watch = _watch(args, sink)
    try:
        report = stream_call(utts, maker, watch[1] if watch else sink, speed=args.speed, realtime=not args.no_wait,
                             call_id=args.call_id, stop=stop, log=None if args.quiet else print, reads=reads)
    except KeyboardInterrupt:
        stop.set()
        if watch:
            watch[0].close()
        raise
    finally:
        maker.close()
    return _confirmed(_report(report, sink.destination), watch, args)


def _watch(args: argparse.Namespace, sink: Any) -> tuple[OutcomeWatch, WatchedSink] | None:
    """For messages sent to Kafka: a watch on what becomes of them, started before the first is sent."""
    from streams.local.media import KafkaSink
    from streams.local.outcomes import OutcomeWatch, WatchedSink

    if args.confirm_s is not None and args.confirm_s < 0:
        raise ConfigError("--confirm-s must be 0 (do not wait) or more")
    if not isinstance(sink, KafkaSink) or args.confirm_s == 0:
        return None
    try:
        watch = OutcomeWatch(service_settings(args), warn=lambda line: print(line, file=sys.stderr))
    except Exception as e:  # Redis or the dead-letter topic unreachable: send anyway, unconfirmed
        print(f"not watching what becomes of the utterances: {e}", file=sys.stderr)
        return None
    return watch, WatchedSink(sink, watch)


def _confirmed(code: int, watch: tuple[OutcomeWatch, WatchedSink] | None, args: argparse.Namespace) -> int:
    """Wait for the sent utterances' outcomes and report them. -> the exit code, 1 if any was dead-lettered."""
    from streams.local.outcomes import report_outcomes

    if watch is None:
        return code
    wait_s = args.confirm_s if args.confirm_s is not None else service_settings(args).join.max_wait_s + CONFIRM_MARGIN_S
    outcomes = watch[0].wait(wait_s)
    return max(code, report_outcomes(outcomes, wait_s, watch[0].count))


def _report(report: CallReport, where: str) -> int:
    sent = ", ".join(f"{n} {m}" for m, n in report.sent.items() if n)
    print(f"sent {sent or 'nothing'} to {where}; {len(report.failed)} skipped, {report.undelivered} undelivered")
    for utt, m, why in report.failed:
        print(f"  {utt} {m}: {why}", file=sys.stderr)
    return 1 if report.failed or report.undelivered else 0


def cmd_extractors(args: argparse.Namespace) -> int:
    """List the extractors, whether each is ready, and the profiles."""
    from extractors.profile import PROFILES
    from extractors.registry import EXTRACTORS, create

    print(f"{'extractor':<18} {'modality':<8} {'dim':>4}  status")
    for name in sorted(EXTRACTORS):
        ext = create(name)
        try:
            ext.setup("cpu")
            status = "ready"
        except MMCLError as e:
            status = str(e)
        print(f"{name:<18} {ext.modality:<8} {ext.dim:>4}  {status}")
    for prof, chosen in sorted(PROFILES.items()):
        print(f"profile {prof}: " + ", ".join(f"{m}={n}" for m, n in chosen.items()))
    return 0
