"""`mmcl up | down | worker | trainer | topics | results | config | schemas`: running the service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, cast

from mmcl.errors import ConfigError
from streams.cli.endpoints import base_settings, service_settings
from streams.settings import masked


def register(commands: Any) -> None:
    """Add the service's commands to the `mmcl` command."""
    up = commands.add_parser("up", help="start the embedded broker and Redis (the local profile: select it with --local)")
    up.add_argument("--broker", choices=("tansu", "kafka"), default="tansu",
                    help="tansu: the embedded broker (default, no Java); kafka: Apache Kafka 4.1.0 from its jars "
                         "(Java 17 and Maven; the jars are fetched from Maven Central once)")
    up.set_defaults(handler=cmd_up)
    commands.add_parser("down", help="stop what `mmcl up` started").set_defaults(handler=cmd_down)
    worker = commands.add_parser("worker", help="run the streaming worker against the configured broker and Redis")
    worker.add_argument("--create-topics", action="store_true",
                        help="create missing topics first (default: they must exist)")
    worker.set_defaults(handler=cmd_worker)
    commands.add_parser("trainer", help="learn from feedback labels: retrain, gate, promote (one active instance)"
                        ).set_defaults(handler=cmd_trainer)

    results = commands.add_parser("results", help="a call's aggregates and timeline from Redis (no CALL_ID: the "
                                                  "latest results)")
    results.add_argument("call_id", nargs="?")
    results.add_argument("--last", type=int, default=20)
    results.add_argument("--json", action="store_true")
    results.set_defaults(handler=cmd_results)

    topics = commands.add_parser("topics", help="the Kafka topics")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True)
    topics_commands.add_parser("create", help="create the missing topics with their partitions, retention and "
                                              "compaction (the deployment's init step); report the ones that exist"
                               ).set_defaults(handler=cmd_topics_create)

    config = commands.add_parser("config", help="settings").add_subparsers(dest="config_command", required=True)
    config.add_parser("show", help="print the effective settings (secrets masked)").set_defaults(handler=cmd_config_show)
    schemas = commands.add_parser("schemas", help="message JSON Schemas").add_subparsers(dest="schemas_command",
                                                                                       required=True)
    export = schemas.add_parser("export", help="write one JSON Schema per wire message")
    export.add_argument("--out", type=Path, default=Path("docs/schemas"))
    export.set_defaults(handler=cmd_schemas_export)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded broker and Redis (where they do not run yet) and create the topics."""
    from streams.local.runtime import up

    res = up(base_settings(args), broker="apache" if args.broker == "kafka" else "tansu")
    settings = res.settings
    for name, svc in res.embedded.items():
        what = "Apache Kafka" if svc.kind == "apache" else "embedded"
        print(f"{name}: {what}, {svc.url} (pid {svc.pid}, log {svc.log})"
              + ("" if name in res.started else " [already up]"))
    print(f"topics: {', '.join(settings.topics.all)}")
    print("mmcl commands use these with `mmcl --local ...` or MMCL_RUNTIME=local (otherwise: the configured ones);")
    print("other programs can use:")
    print(f"  export MMCL_KAFKA__BOOTSTRAP_SERVERS={settings.kafka.bootstrap_servers}")
    print(f"  export MMCL_REDIS__URL={masked(settings)['redis']['url']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop what `mmcl up` started."""
    from streams.local.embedded import stop_runtime

    stopped = stop_runtime(base_settings(args).state_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the streaming worker until SIGTERM / Ctrl-C."""
    from streams.worker.run import run_worker

    return run_worker(service_settings(args), create_topics=args.create_topics)


def cmd_trainer(args: argparse.Namespace) -> int:
    """Run the trainer until SIGTERM / Ctrl-C."""
    from streams.learning.run import run_trainer

    return run_trainer(service_settings(args))


def cmd_results(args: argparse.Namespace) -> int:
    """Print a call's aggregates and timeline, or the latest results."""
    from streams.sinks.redis_store import FEED, read_call, sync_client

    settings = service_settings(args)
    client = sync_client(settings.redis)
    if args.call_id:
        out = read_call(client, args.call_id, args.last)
        if not out["aggregates"]:
            raise ConfigError(f"no results for call {args.call_id!r} in Redis at {settings.redis.url}")
    else:
        # a sync client answers synchronously; redis-py's stubs type both clients' replies as one union
        latest = cast("list[tuple[str, dict[str, str]]]", client.xrevrange(FEED, count=args.last))
        out = {"latest": [dict(fields, id=entry_id) for entry_id, fields in latest]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if args.call_id:
        _print_aggregates(args.call_id, out["aggregates"])
    for e in out["timeline"] if args.call_id else out["latest"]:
        print(f"  {e.get('call_id', args.call_id or ''):>16s} {e['utterance_id']:>24s} {e['speaker']:8s} "
              f"{float(e['score']):+.2f} {e['label']:8s} model {e['model_version']}")
    return 0


def _print_aggregates(call_id: str, agg: dict[str, str]) -> None:
    print(f"call {call_id}: {agg.get('all:count')} utterances, mean {float(agg.get('all:mean', 0)):+.2f}, "
          f"ewma {float(agg.get('all:ewma', 0)):+.2f}")
    for role in ("agent", "customer", "unknown"):
        if f"{role}:count" in agg:
            print(f"  {role:8s} n={agg[f'{role}:count']:>4s} mean={float(agg[f'{role}:mean']):+.2f} "
                  f"ewma={float(agg[f'{role}:ewma']):+.2f} shift={float(agg[f'{role}:shift']):+.2f} "
                  f"alert={'yes' if agg.get(f'{role}:alert') == '1' else 'no'}")


def cmd_topics_create(args: argparse.Namespace) -> int:
    """Create the missing topics; report the ones that exist."""
    from streams.kafka import check_copartitioned, ensure_topics, topic_specs

    settings = service_settings(args)
    specs = topic_specs(settings.topics, settings.limits.max_message_bytes)
    found = ensure_topics(settings.kafka, settings.topics, max_message_bytes=settings.limits.max_message_bytes)
    counts = {name: n if n is not None else specs[name].partitions for name, n in found.items()}
    for name, spec in specs.items():
        created = found[name] is None
        conf = " ".join(f"{k}={v}" for k, v in spec.config.items()) if created else ""
        note = "" if counts[name] == spec.partitions else f" (has {counts[name]}, configured {spec.partitions})"
        print(f"{'created' if created else 'exists':<8} {name}  partitions={counts[name]}{note}  {conf}".rstrip())
    # the join cannot run on feature topics with different counts: say so now
    check_copartitioned(settings, counts={t: counts[t] for t in settings.topics.features})
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective settings, secrets masked."""
    print(json.dumps(masked(service_settings(args)), indent=2))
    return 0


def cmd_schemas_export(args: argparse.Namespace) -> int:
    """Write one JSON Schema per wire message."""
    from streams.schemas import export

    for path in export(args.out):
        print(f"wrote {path}")
    return 0
