"""The extractors, by name: an explicit table, imported only when asked for (their packages are an extra)."""

from __future__ import annotations

import importlib
from typing import Any

from extractors.base import Extractor, missing_extra
from mmcl.errors import ConfigError

# name -> "module:Class". The name is the feature profile id stamped on every message it makes.
EXTRACTORS: dict[str, str] = {
    "minilm-384": "extractors.text:MiniLMText",
    "librosa-42": "extractors.audio:LibrosaAudio",
    "mediapipe-fer-19": "extractors.visual:MediaPipeFace",
    "glove-50": "extractors.glove:GloveText",  # extra: glove
    "egemaps-25": "extractors.smile:EGeMAPSAudio",  # extra: opensmile (non-commercial licence)
}


def names() -> list[str]:
    """Every registered extractor name."""
    return sorted(EXTRACTORS)


def extractor_dim(name: str) -> int:
    """The feature dim a registered extractor makes, without creating it (its module imports no model library)."""
    return int(_class(name).dim)


def create(name: str) -> Extractor:
    """A new instance of a registered extractor (its libraries are imported here, not before)."""
    extractor: Extractor = _class(name)()
    return extractor


def _class(name: str) -> Any:
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {name!r}; valid: {', '.join(names())}")
    module, _, cls = EXTRACTORS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise missing_extra(f"extractor {name!r}", e.name or str(e)) from None
    return getattr(mod, cls)
