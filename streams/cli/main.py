"""The `mmcl` command: the model tools of mmcl.cli plus the service: up, down, worker, produce, demo, results,
config show, schemas export. Errors print one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmcl import cli as model_cli
from mmcl.errors import ConfigError, MMCLError
from streams.settings import Settings, load_settings, masked, unknown_env_names

if TYPE_CHECKING:  # the simulator pulls in numpy and the dataset code: only the commands that use it import it
    from extractors.utterance import FeatureMaker
    from streams.media import CallReport, Sink
    from streams.simulate import SimSpec


def build_parser() -> argparse.ArgumentParser:
    p = model_cli.build_parser()
    p.description = "MMCL multimodal sentiment on Kafka: model tools and the streaming service."
    sub = next(a for a in p._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))

    sub.add_parser("up", help="start the embedded broker and Redis where the configured ones do not answer")
    sub.add_parser("down", help="stop what `mmcl up` started")
    w = sub.add_parser("worker", help="run the streaming worker against the configured broker and Redis")
    w.add_argument("--create-topics", action="store_true", help="create missing topics first (default: they must exist)")

    sub.add_parser("trainer", help="learn from feedback labels: retrain, gate, promote (one active instance)")
    pr = sub.add_parser("produce", help="publish a dataset split as a simulated call center")
    pr.add_argument("--data", type=Path, help="dataset file (.npz, or a public .pkl); default: the demo's synthetic set")
    pr.add_argument("--split", default="test")
    _sim_options(pr)

    d = sub.add_parser("demo", help="everything at once: up, a model, the worker, a simulated call center, live view")
    d.add_argument("--checkpoint", type=Path, help="model to serve (default: train a small one on synthetic data)")
    d.add_argument("--keep", action="store_true", help="leave the embedded broker and Redis running afterwards")
    d.add_argument("--no-trainer", action="store_true", help="do not run the trainer (it learns from the labels)")
    _sim_options(d, duration=True)

    r = sub.add_parser("results", help="a call's aggregates and timeline from Redis (no CALL_ID: the latest results)")
    r.add_argument("call_id", nargs="?")
    r.add_argument("--last", type=int, default=20)
    r.add_argument("--json", action="store_true")

    m = sub.add_parser("model", help="the model registry").add_subparsers(dest="model_command", required=True)
    m.add_parser("list", help="every version, oldest first; * marks the current one")
    sh = m.add_parser("show", help="one version's lineage, label window and metrics")
    sh.add_argument("version", nargs="?", help="default: the current one")
    pb = m.add_parser("publish", help="add a checkpoint directory as a version")
    pb.add_argument("checkpoint", type=Path)
    pb.add_argument("--parent", help="the version it was trained from")
    pb.add_argument("--note", default="")
    pb.add_argument("--promote", action="store_true", help="and make it current")
    pm = m.add_parser("promote", help="make a version current (atomic) and tell the workers")
    pm.add_argument("version")
    m.add_parser("rollback", help="back to the version promoted before the current one, and tell the workers")
    m.add_parser("demo", help="train the demo's small model on synthetic data and publish it; promote it when the "
                              "registry has no current version (the compose stack's demo profile)")
    tp = sub.add_parser("topics", help="the Kafka topics").add_subparsers(dest="topics_command", required=True)
    tp.add_parser("create", help="create the missing topics with their partitions, retention and compaction "
                                 "(the deployment's init step); report the ones that exist")

    from extractors.options import add_extraction_options

    x = sub.add_parser("extract", help="one utterance's transcript / audio / video -> feature messages (Kafka or JSONL)")
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
    add_extraction_options(x)

    sc_ = sub.add_parser("stream-call", help="a call's utterances (manifest or folder) -> Kafka in real-time order")
    sc_.add_argument("source", type=Path, help="manifest .jsonl/.csv, or a folder (with a manifest, or media by name)")
    sc_.add_argument("--speed", type=float, default=1.0, help="play the call this many times faster than real time")
    sc_.add_argument("--no-wait", action="store_true", help="do not wait for utterance end times: send at once")
    sc_.add_argument("--call-id", help="override the manifest's call id")
    sc_.add_argument("--out", type=Path, help="append the messages to this JSONL file instead of sending them to Kafka")
    sc_.add_argument("--quiet", action="store_true", help="no line per message")
    add_extraction_options(sc_)
    sub.add_parser("extractors", help="the feature extractors and profiles, and whether each one is installed")

    c = sub.add_parser("config", help="settings").add_subparsers(dest="config_command", required=True)
    c.add_parser("show", help="print the effective settings (secrets masked)")
    sc = sub.add_parser("schemas", help="message JSON Schemas").add_subparsers(dest="schemas_command", required=True)
    ex = sc.add_parser("export", help="write one JSON Schema per wire message")
    ex.add_argument("--out", type=Path, default=Path("docs/schemas"))
    return p


def _sim_options(p: argparse.ArgumentParser, duration: bool = False) -> None:
    p.add_argument("--calls", type=int, default=8, help="concurrent calls")
    p.add_argument("--rate", type=float, default=20.0, help="utterances per second")
    p.add_argument("--jitter-ms", type=float, default=300.0, help="parts of an utterance leave up to this far apart")
    p.add_argument("--missing-visual", type=float, default=0.1, help="share of utterances without a visual part")
    p.add_argument("--limit", type=int, help="stop after this many utterances")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-share", type=float, default=0.3 if duration else 0.0,
                   help="share of utterances that get a feedback label later (the dataset's score), for the trainer")
    p.add_argument("--label-delay", type=float, default=3.0, help="seconds from an utterance to its label")


def settings() -> Settings:
    from streams.runtime import resolve

    return resolve(load_settings())


def cmd_up(a: argparse.Namespace) -> int:
    from streams.runtime import up

    res = up(load_settings())
    s = res.settings
    for name, svc in res.embedded.items():
        print(f"{name}: embedded, {svc.url} (pid {svc.pid}, log {svc.log})" + ("" if name in res.started else " [already up]"))
    if "kafka" not in res.embedded:
        print(f"kafka: {s.kafka.bootstrap_servers} (configured, reachable)")
    if "redis" not in res.embedded:
        print(f"redis: {masked(s)['redis']['url']} (configured, reachable)")
    print(f"topics: {', '.join(s.topics.all)}")
    print("every mmcl command finds these by itself; other programs can use:")
    print(f"  export MMCL_KAFKA__BOOTSTRAP_SERVERS={s.kafka.bootstrap_servers}")
    print(f"  export MMCL_REDIS__URL={masked(s)['redis']['url']}")
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    from streams.embedded import stop_runtime

    stopped = stop_runtime(load_settings().state_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(settings(), create_topics=a.create_topics)


def sim_spec(a: argparse.Namespace, run_id: str = "") -> SimSpec:
    from streams.simulate import SimSpec

    for name in ("calls", "rate"):
        if getattr(a, name) <= 0:
            raise ConfigError(f"--{name} must be positive")
    for name in ("missing_visual", "label_share"):
        if not 0 <= getattr(a, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1")
    return SimSpec(calls=a.calls, rate=a.rate, jitter_ms=a.jitter_ms, missing_visual=a.missing_visual, limit=a.limit,
                   duration_s=a.duration, seed=a.seed, run_id=run_id, label_share=a.label_share,
                   label_delay_s=a.label_delay)


def cmd_trainer(a: argparse.Namespace) -> int:
    from streams.trainer import run_trainer

    return run_trainer(settings())


def cmd_produce(a: argparse.Namespace) -> int:
    import time

    from streams import simulate
    from streams.demo import demo_dataset

    s = settings()
    ds = model_cli.load_any(a.data) if a.data else demo_dataset(s.state_dir)
    if a.split not in ds.splits:
        raise ConfigError(f"split {a.split!r} is not in the dataset (has {', '.join(ds.splits)})")
    spec = sim_spec(a, run_id=f"r{int(time.time()) % 100000}-")
    stop = threading.Event()
    try:
        stats = simulate.run(s, ds.splits[a.split], spec, stop)
    except KeyboardInterrupt:
        stop.set()
        raise
    print(f"sent {stats.utterances} utterances ({stats.messages} messages, {len(stats.calls)} calls, "
          f"{stats.skipped_visual} without visual, {stats.labels} labels, {stats.errors} errors) to "
          f"{s.kafka.bootstrap_servers}")
    return 1 if stats.errors else 0


def cmd_demo(a: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(load_settings(), a)


def cmd_results(a: argparse.Namespace) -> int:
    from streams.redis_store import FEED, read_call, sync_client

    s = settings()
    client = sync_client(s.redis)
    if a.call_id:
        out = read_call(client, a.call_id, a.last)
        if not out["aggregates"]:
            raise ConfigError(f"no results for call {a.call_id!r} in Redis at {masked(s)['redis']['url']}")
    else:
        out = {"latest": [dict(f, id=i) for i, f in client.xrevrange(FEED, count=a.last)]}
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    if a.call_id:
        agg = out["aggregates"]
        print(f"call {a.call_id}: {agg.get('all:count')} utterances, mean {float(agg.get('all:mean', 0)):+.2f}, "
              f"ewma {float(agg.get('all:ewma', 0)):+.2f}")
        for role in ("agent", "customer", "unknown"):
            if f"{role}:count" in agg:
                print(f"  {role:8s} n={agg[f'{role}:count']:>4s} mean={float(agg[f'{role}:mean']):+.2f} "
                      f"ewma={float(agg[f'{role}:ewma']):+.2f} shift={float(agg[f'{role}:shift']):+.2f} "
                      f"alert={'yes' if agg.get(f'{role}:alert') == '1' else 'no'}")
        rows = out["timeline"]
    else:
        rows = out["latest"]
    for e in rows:
        print(f"  {e.get('call_id', a.call_id or ''):>16s} {e['utterance_id']:>24s} {e['speaker']:8s} "
              f"{float(e['score']):+.2f} {e['label']:8s} model {e['model_version']}")
    return 0


def cmd_model(a: argparse.Namespace) -> int:
    from streams.models import announce, open_registry

    s = settings()
    reg = open_registry(s)
    cmd = a.model_command
    if cmd == "list":
        current = reg.current()
        for v in reg.versions():
            print(f"{'*' if v.version == current else ' '} {v.version}  created {_iso(v.created_at)}  "
                  f"parent {v.parent or '-'}  {v.note}")
        return 0
    if cmd == "show":
        version = a.version or reg.current()
        if version is None:
            raise ConfigError("the registry has no current version")
        info = reg.get(version).to_json()
        info["current"] = version == reg.current()
        print(json.dumps(info, indent=2))
        return 0
    if cmd == "demo":
        from streams.demo import demo_model

        a.checkpoint, a.parent, a.note = demo_model(s.state_dir), None, "demo model (synthetic data)"
        current = reg.current()
        a.promote = current is None
        if current is not None:
            print(f"the registry's current version is {current}: publishing the demo model without promoting it")
        cmd = "publish"
    if cmd == "publish":
        v = reg.publish(a.checkpoint, parent=a.parent, note=a.note)
        print(f"published {v.version}")
        if not a.promote:
            return 0
        a.version = v.version
        cmd = "promote"
    if cmd == "promote":
        reg.promote(a.version)
        version, action = a.version, "promote"
    else:
        version, action = reg.rollback(), "rollback"
    announce(s, version, reg.get(version).checksum, action)
    done = {"promote": "promoted", "rollback": "rolled back"}[action]
    print(f"current: {version} ({done}; workers told on {s.topics.model_updates})")
    return 0


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_topics(a: argparse.Namespace) -> int:
    from streams.kafka import check_copartitioned, ensure_topics, topic_specs

    s = settings()
    specs = topic_specs(s.topics, s.limits.max_message_bytes)
    found = ensure_topics(s.kafka, s.topics, max_message_bytes=s.limits.max_message_bytes)
    counts = {name: n if n is not None else specs[name].partitions for name, n in found.items()}
    for name, spec in specs.items():
        created = found[name] is None
        conf = " ".join(f"{k}={v}" for k, v in spec.config.items()) if created else ""
        note = "" if counts[name] == spec.partitions else f" (has {counts[name]}, configured {spec.partitions})"
        print(f"{'created' if created else 'exists':<8} {name}  partitions={counts[name]}{note}  {conf}".rstrip())
    # the join cannot run on feature topics with different counts: say so now
    check_copartitioned(s, counts={t: counts[t] for t in s.topics.features})
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    print(json.dumps(masked(settings()), indent=2))
    return 0


def cmd_schemas(a: argparse.Namespace) -> int:
    from streams.schemas import export

    for path in export(a.out):
        print(f"wrote {path}")
    return 0


def _maker_and_sink(a: argparse.Namespace, modalities: Sequence[str]) -> tuple[FeatureMaker, Sink]:
    from extractors.options import maker_from_args
    from streams.media import JsonlSink, KafkaSink, check_dims, model_plan

    ids, seq_len, dims = model_plan(a.checkpoint)
    maker = maker_from_args(a, ids, seq_len)
    check_dims(maker, modalities, dims)
    return maker, (JsonlSink(a.out) if a.out else KafkaSink(settings()))


def cmd_extract(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from extractors.utterance import Utterance, first_error
    from streams.media import stream_call

    try:
        utt = Utterance(utterance_id=a.utterance_id, call_id=a.call_id, speaker=a.speaker, start=a.start, end=a.end,
                        text=a.text, text_file=a.text_file, audio=a.audio, video=a.video, fps=a.fps)
    except ValidationError as e:
        where, msg = first_error(e)
        raise ConfigError(f"{'--' + where.replace('_', '-') + ': ' if where else ''}{msg}") from None
    maker, sink = _maker_and_sink(a, utt.available(a.asr))
    try:
        report = stream_call([utt], maker, sink, realtime=False)
    finally:
        maker.close()
    return _report(report, sink.destination)


def cmd_stream_call(a: argparse.Namespace) -> int:
    from extractors.utterance import read_manifest
    from streams.media import stream_call

    if a.speed <= 0:
        raise ConfigError("--speed must be positive")
    utts = read_manifest(a.source)
    maker, sink = _maker_and_sink(a, sorted({m for u in utts for m in u.available(a.asr)}))
    stop = threading.Event()
    try:
        report = stream_call(utts, maker, sink, speed=a.speed, realtime=not a.no_wait, call_id=a.call_id, stop=stop,
                             log=None if a.quiet else print)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        maker.close()
    return _report(report, sink.destination)


def _report(report: CallReport, where: str) -> int:
    sent = ", ".join(f"{n} {m}" for m, n in report.sent.items() if n)
    print(f"sent {sent or 'nothing'} to {where}; {len(report.failed)} skipped, {report.undelivered} undelivered")
    for utt, m, why in report.failed:
        print(f"  {utt} {m}: {why}", file=sys.stderr)
    return 1 if report.failed or report.undelivered else 0


def cmd_extractors(a: argparse.Namespace) -> int:
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


HANDLERS = {**model_cli.HANDLERS, "up": cmd_up, "down": cmd_down, "worker": cmd_worker, "trainer": cmd_trainer,
            "extract": cmd_extract, "stream-call": cmd_stream_call, "extractors": cmd_extractors,
            "produce": cmd_produce, "demo": cmd_demo, "results": cmd_results, "model": cmd_model, "topics": cmd_topics,
            "config": cmd_config, "schemas": cmd_schemas}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in unknown_env_names():
        print(f"warning: {name} is not a setting and is ignored (docs/streaming.md lists them)", file=sys.stderr)
    return model_cli.run_handler(HANDLERS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
