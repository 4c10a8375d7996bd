"""What every extractor is, and the errors it raises."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmcl.errors import ConfigError, MMCLError

EXTRA = "extract"


class ExtractionError(MMCLError):
    """The input cannot be turned into features: empty, silent, corrupt, the wrong format. One line, no traceback."""


def missing_extra(what: str, module: str) -> ConfigError:
    return ConfigError(f"{what} needs the {module!r} package: pip install 'mmcl-stream[{EXTRA}]'")


@runtime_checkable
class Extractor(Protocol):
    name: str  # the feature profile id it stamps on messages, e.g. "librosa-42"
    modality: str  # text | audio | visual
    dim: int  # D of the (T, D) it returns

    def setup(self, device: str = "cpu") -> None:
        """Load models (once, from installed packages; never from the network)."""

    def extract(self, raw: Any) -> np.ndarray:
        """-> finite float32 (T, dim), or ExtractionError."""
