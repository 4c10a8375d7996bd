"""`mmcl train --help` shows every default, and docs/model.md's table of them says the same."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from streams.cli.main import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs" / "model.md"


def train_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = commands.choices["train"]
    return parser


def help_defaults() -> dict[str, str]:
    """Each option's default as its help text gives it."""
    out = {}
    for action in train_parser()._actions:
        text = (action.help or "").replace("%(default)s", str(action.default))  # as argparse prints it
        found = re.search(r"\(default: ([^)]*)\)$", text)
        if found and action.option_strings:
            out[action.option_strings[-1]] = found.group(1)
    return out


def test_every_option_that_takes_a_value_shows_its_default() -> None:
    shown = help_defaults()
    valued = [a.option_strings[-1] for a in train_parser()._actions
              if a.option_strings and a.nargs != 0 and a.option_strings[-1] not in ("--data", "--extractor-id")]
    assert sorted(valued) == sorted(shown)
    assert shown["--preset"] == "quick" and shown["--decoupling"] == "paper"


def test_docs_list_the_defaults_help_shows() -> None:
    section = DOCS.read_text().split("## Training defaults")[1].split("\n## ")[0]
    documented = dict(re.findall(r"^\| `(--[a-z-]+)` \| ([^|]+?) \|", section, flags=re.M))
    shown = help_defaults()
    for option in ("--task", "--modalities"):  # said in words in help; the table leaves them to it
        shown.pop(option)
    assert documented == shown
