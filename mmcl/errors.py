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
    pass


class DataFormatError(MMCLError):
    pass


class DimensionMismatch(MMCLError):
    pass


class InvalidInput(MMCLError):
    pass


class CheckpointError(MMCLError):
    pass
