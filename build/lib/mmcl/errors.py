"""Errors raised by the `mmcl` package.

    MMCLError                 base: the CLI prints its message as one line and exits non-zero
    ├── ConfigError           an option or config value that cannot work
    ├── DataFormatError       a file that is not one of the layouts we read, or is damaged
    ├── DimensionMismatch     features whose dims differ from what the model was built for
    ├── InvalidInput          features the predictor cannot use (NaN / Inf, no modality, a bad mask)
    └── CheckpointError       a checkpoint directory that is missing files or fails its checksum
"""

from __future__ import annotations


class MMCLError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(MMCLError):
    """A setting, option or argument is invalid."""

    pass


class DataFormatError(MMCLError):
    """A dataset file cannot be read as any known layout."""

    pass


class DimensionMismatch(MMCLError):
    """Features do not have the dims the model was trained on."""

    pass


class InvalidInput(MMCLError):
    """An input to the model is malformed (shape, non-finite values, missing modalities)."""

    pass


class CheckpointError(MMCLError):
    """A checkpoint is missing, corrupt or of an unsupported format."""

    pass
