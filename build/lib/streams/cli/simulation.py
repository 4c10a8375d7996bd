"""`mmcl produce` (a simulated call center) and `mmcl demo` (everything at once, on the embedded runtime)."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcl.errors import ConfigError
from streams.cli.endpoints import base_settings, service_settings

if TYPE_CHECKING:  # the simulator pulls in numpy and the dataset code: only the commands that use it import it
    from streams.local.simulate import SimSpec


def register(commands: Any) -> None:
    """Add produce and demo to the `mmcl` command."""
    produce = commands.add_parser("produce", help="publish a dataset split as a simulated call center")
    produce.add_argument("--data", type=Path,
                         help="dataset file (.npz, or a public .pkl); default: the demo's synthetic set")
    produce.add_argument("--split", default="test")
    _sim_options(produce)
    produce.set_defaults(handler=cmd_produce)

    demo = commands.add_parser("demo", help="everything at once: up, a model, the worker, a simulated call center, "
                                            "live view")
    demo.add_argument("--checkpoint", type=Path, help="model to serve (default: train a small one on synthetic data)")
    demo.add_argument("--keep", action="store_true", help="leave the embedded broker and Redis running afterwards")
    demo.add_argument("--no-trainer", action="store_true", help="do not run the trainer (it learns from the labels)")
    _sim_options(demo, duration=True)
    demo.set_defaults(handler=cmd_demo)


def _sim_options(parser: argparse.ArgumentParser, duration: bool = False) -> None:
    parser.add_argument("--calls", type=int, default=8, help="concurrent calls")
    parser.add_argument("--rate", type=float, default=20.0, help="utterances per second")
    parser.add_argument("--jitter-ms", type=float, default=300.0,
                        help="parts of an utterance leave up to this far apart")
    parser.add_argument("--missing-visual", type=float, default=0.1, help="share of utterances without a visual part")
    parser.add_argument("--limit", type=int, help="stop after this many utterances")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-share", type=float, default=0.3 if duration else 0.0,
                        help="share of utterances that get a feedback label later (the dataset's score), for the "
                             "trainer")
    parser.add_argument("--label-delay", type=float, default=3.0, help="seconds from an utterance to its label")


def sim_spec(args: argparse.Namespace, run_id: str = "", endless: bool = False) -> SimSpec:
    """The simulation the options ask for; `endless`: without --limit, replay the split until stopped."""
    from streams.local.simulate import SimSpec

    for name in ("calls", "rate"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be positive")
    for name in ("missing_visual", "label_share"):
        if not 0 <= getattr(args, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1")
    # endless: the split's utterances over and over (new ids each time) until Ctrl-C / --duration
    limit = 10**9 if endless and args.limit is None else args.limit
    return SimSpec(calls=args.calls, rate=args.rate, jitter_ms=args.jitter_ms, missing_visual=args.missing_visual,
                   limit=limit, duration_s=args.duration, seed=args.seed, run_id=run_id, label_share=args.label_share,
                   label_delay_s=args.label_delay, record_sent=not endless)


def cmd_produce(args: argparse.Namespace) -> int:
    """Publish a dataset split as a simulated call center."""
    from streams.cli.training import load_any
    from streams.local import simulate
    from streams.local.demo import demo_dataset

    settings = service_settings(args)
    ds = load_any(args.data) if args.data else demo_dataset(settings.state_dir)
    if args.split not in ds.splits:
        raise ConfigError(f"split {args.split!r} is not in the dataset (has {', '.join(ds.splits)})")
    spec = sim_spec(args, run_id=f"r{int(time.time()) % 100000}-")
    stop = threading.Event()
    try:
        stats = simulate.run(settings, ds.splits[args.split], spec, stop)
    except KeyboardInterrupt:
        stop.set()
        raise
    print(f"sent {stats.utterances} utterances ({stats.messages} messages, {len(stats.calls)} calls, "
          f"{stats.skipped_visual} without visual, {stats.labels} labels, {stats.errors} errors) to "
          f"{settings.kafka.bootstrap_servers}")
    return 1 if stats.errors else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo: the embedded runtime, a model, the worker, the trainer, a simulated call center, a live view."""
    from streams.local.demo import DemoOptions, run_demo

    spec = sim_spec(args, run_id=f"d{int(time.time()) % 100000}-", endless=True)
    return run_demo(base_settings(args), DemoOptions(spec, args.checkpoint, args.duration, args.keep,
                                                     trainer=not args.no_trainer))
