"""The extraction options shared by `mmcl extract`, `mmcl stream-call` and `mmcl data build`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from extractors.profile import PROFILES, resolve
from mmcl.errors import ConfigError

if TYPE_CHECKING:
    from extractors.utterance import FeatureMaker


def add_extraction_options(parser: argparse.ArgumentParser, for_model: bool = True) -> None:
    """Add the options that choose extractors, alignment and the model to follow."""
    g = parser.add_argument_group("features")
    g.add_argument("--profile", default="default", choices=sorted(PROFILES),
                   help="extractor set (default: permissive licences; research: openSMILE audio, non-commercial)")
    g.add_argument("--extractor", action="append", default=[], metavar="MODALITY=NAME",
                   help="use this extractor for one modality (see `mmcl extractors`)")
    if for_model:
        g.add_argument("--checkpoint", type=Path,
                       help="make features for this model: its recorded extractors, sequence length and dims")
    g.add_argument("--seq-len", type=int, help="resample each modality to this many steps (default 50, or the model's)")
    g.add_argument("--align", choices=("resample", "words", "none"), default="resample",
                   help="resample to --seq-len, average frames inside each ASR word, or send every frame")
    g.add_argument("--asr", action="store_true",
                   help="transcribe audio that comes without a transcript (faster-whisper tiny.en; extra 'asr')")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the extractors that can use it")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """MODALITY=NAME items -> {modality: extractor name}."""
    out = {}
    for item in items:
        mod, sep, name = item.partition("=")
        if not sep or not mod or not name:
            raise ConfigError(f"--extractor takes MODALITY=NAME, got {item!r}")
        out[mod] = name
    return out


def maker_from_args(args: argparse.Namespace, model_ids: dict[str, str] | None = None,
                    model_seq_len: int | None = None) -> FeatureMaker:
    """The FeatureMaker the extraction options describe."""
    from extractors.utterance import FeatureMaker

    chosen = resolve(args.profile, parse_overrides(args.extractor), model_ids)
    seq_len = args.seq_len or model_seq_len or 50
    if seq_len < 1:
        raise ConfigError("--seq-len must be at least 1")
    return FeatureMaker(chosen, seq_len=seq_len, align=args.align, asr=args.asr, device=args.device)
