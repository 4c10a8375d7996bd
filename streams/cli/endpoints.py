"""The settings a command that talks to the broker or Redis runs with, and the line that says which ones."""

from __future__ import annotations

import argparse
import sys

from streams.local.runtime import describe_endpoints, resolve
from streams.settings import Settings, load_settings


def base_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with `--local` selecting the local profile (same as MMCL_RUNTIME=local)."""
    return load_settings(runtime="local") if args.local else load_settings()


def service_settings(args: argparse.Namespace) -> Settings:
    """The effective settings of a command that uses the broker or Redis; says on stderr which ones it uses."""
    settings = resolve(base_settings(args))
    print(f"mmcl: {describe_endpoints(settings)}", file=sys.stderr)
    return settings
