"""What every extractor is, and the errors it raises."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmcl.errors import ConfigError, MMCLError

EXTRA = "extract"


class ExtractionError(MMCLError):
    """The input cannot be turned into features: empty, silent, corrupt, the wrong format. One line, no traceback."""


def missing_extra(what: str, module: str, extra: str = EXTRA) -> ConfigError:
    """The error for a missing optional package, with the command that installs it."""
    return ConfigError(f"{what} needs the {module!r} package: {install_hint(extra)}")


def install_hint(extra: str = EXTRA) -> str:
    """mediapipe (numpy<2 pin) and fer (tensorflow, an old torch) declare requirements we must not take, so they go
    in without their dependencies; the extra brings what they really need."""
    hint = f"pip install 'mmcl-stream[{extra}]'"
    return hint + f" && pip install --no-deps {' '.join(NO_DEPS)}" if extra == EXTRA else hint


NO_DEPS = ("mediapipe==0.10.21", "fer==25.10.3")


@runtime_checkable
class Extractor(Protocol):
    """What every extractor provides: its modality, dim and name, setup, and extract."""

    name: str  # the feature profile id it stamps on messages, e.g. "librosa-42"
    modality: str  # text | audio | visual
    dim: int  # D of the (T, D) it returns

    def setup(self, device: str = "cpu") -> None:
        """Load models (once, from installed packages; never from the network)."""

    def extract(self, raw: Any) -> np.ndarray:
        """-> finite float32 (T, dim), or ExtractionError."""
