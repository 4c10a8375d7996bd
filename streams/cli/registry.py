"""`mmcl model list | show | publish | promote | rollback | demo`: the versioned model registry."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcl.errors import ConfigError
from streams.cli.endpoints import service_settings
from streams.settings import Settings

if TYPE_CHECKING:  # the registry pulls in torch: only the commands that use it import it
    from streams.learning.registry import Registry


def register(commands: Any) -> None:
    """Add `mmcl model ...` to the `mmcl` command."""
    model = commands.add_parser("model", help="the model registry").add_subparsers(dest="model_command", required=True)
    model.add_parser("list", help="every version, oldest first; * marks the current one").set_defaults(handler=cmd_list)
    show = model.add_parser("show", help="one version's lineage, label window, metrics and what it reads")
    show.add_argument("version", nargs="?", help="default: the current one")
    show.set_defaults(handler=cmd_show)
    publish = model.add_parser("publish", help="add a checkpoint directory as a version")
    publish.add_argument("checkpoint", type=Path)
    publish.add_argument("--parent", help="the version it was trained from")
    publish.add_argument("--note", default="")
    publish.add_argument("--promote", action="store_true", help="and make it current")
    publish.set_defaults(handler=cmd_publish)
    promote = model.add_parser("promote", help="make a version current (atomic) and tell the workers")
    promote.add_argument("version")
    promote.set_defaults(handler=cmd_promote)
    model.add_parser("rollback", help="back to the version promoted before the current one, and tell the workers"
                     ).set_defaults(handler=cmd_rollback)
    model.add_parser("demo", help="train the demo's small model on synthetic data and publish it; promote it when the "
                                  "registry has no current version (the compose stack's demo profile)"
                     ).set_defaults(handler=cmd_demo)


def _open(args: argparse.Namespace) -> tuple[Settings, Registry]:
    from streams.learning.follower import open_registry

    settings = service_settings(args)
    return settings, open_registry(settings)


def cmd_list(args: argparse.Namespace) -> int:
    """Print every version, oldest first."""
    _, registry = _open(args)
    current = registry.current()
    for v in registry.versions():
        print(f"{'*' if v.version == current else ' '} {v.version}  created {_iso(v.created_at)}  "
              f"parent {v.parent or '-'}  {v.note}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one version's record as JSON."""
    _, registry = _open(args)
    version = args.version or registry.current()
    if version is None:
        raise ConfigError("the registry has no current version")
    from mmcl.checkpoint import read_profile

    info = registry.get(version).to_json()
    info["current"] = version == registry.current()
    cfg = read_profile(registry.fetch(version))[1]
    info["model"] = {"kind": cfg.kind, "task": cfg.task.kind.value, "seq_len": cfg.seq_len,
                     "modalities": list(cfg.wire_modalities)}
    print(json.dumps(info, indent=2))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a checkpoint as a version (and promote it with --promote)."""
    settings, registry = _open(args)
    publish(settings, registry, args.checkpoint, args.parent, args.note, args.promote)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a version current and tell the workers."""
    settings, registry = _open(args)
    registry.promote(args.version)
    _announce(settings, registry, args.version, "promote")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Go back to the version promoted before the current one and tell the workers."""
    settings, registry = _open(args)
    _announce(settings, registry, registry.rollback(), "rollback")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Publish the demo's model; promote it only when the registry has no current version."""
    from streams.local.demo import demo_model

    settings, registry = _open(args)
    checkpoint = demo_model(settings.state_dir)
    current = registry.current()
    if current is not None:
        print(f"the registry's current version is {current}: publishing the demo model without promoting it")
    publish(settings, registry, checkpoint, None, "demo model (synthetic data)", promote=current is None)
    return 0


def publish(settings: Settings, registry: Registry, checkpoint: Path, parent: str | None, note: str,
            promote: bool) -> str:
    """Publish `checkpoint` as a new version; promote it and tell the workers when asked. -> the version."""
    version = registry.publish(checkpoint, parent=parent, note=note).version
    print(f"published {version}")
    if promote:
        registry.promote(version)
        _announce(settings, registry, version, "promote")
    return version


def _announce(settings: Settings, registry: Registry, version: str, action: str) -> None:
    from streams.learning.follower import announce

    announce(settings, version, registry.get(version).checksum, action)
    done = {"promote": "promoted", "rollback": "rolled back"}[action]
    print(f"current: {version} ({done}; workers told on {settings.topics.model_updates})")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
