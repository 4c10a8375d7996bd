"""The `mmcl` command's parser and entry point. Errors print one line, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from mmcl.errors import MMCLError
from streams.cli import media, registry, service, simulation, training
from streams.settings import unknown_env_names

EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    """The whole `mmcl` command: every subcommand sets `handler`, the function that runs it."""
    parser = argparse.ArgumentParser(prog="mmcl", description="MMCL multimodal sentiment on Kafka: model tools and the "
                                                              "streaming service.")
    parser.add_argument("--local", action="store_true",
                        help="use the embedded broker and Redis that `mmcl up` started (same as MMCL_RUNTIME=local)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_commands in (training.register, service.register, registry.register, simulation.register, media.register):
        add_commands(commands)
    return parser


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; every expected failure is one line on stderr and exit code 1, Ctrl-C is 130."""
    try:
        return int(handler(args))
    except MMCLError as e:
        print(f"mmcl: error: {e}", file=sys.stderr)
    except ValidationError as e:
        err = e.errors()[0]
        print(f"mmcl: error: invalid option {'.'.join(map(str, err['loc'])) or ''}: {err['msg']}", file=sys.stderr)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"mmcl: error: {e.strerror}: {e.filename}", file=sys.stderr)
    except KeyboardInterrupt:
        print("mmcl: interrupted", file=sys.stderr)
        return training.EXIT_INTERRUPTED
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """The `mmcl` console script."""
    args = build_parser().parse_args(argv)
    for name in unknown_env_names():
        print(f"warning: {name} is not a setting and is ignored (docs/streaming.md lists them)", file=sys.stderr)
    return run_handler(args.handler, args)
