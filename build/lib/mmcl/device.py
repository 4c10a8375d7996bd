"""Choosing the torch device: "auto" is CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from mmcl.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` -> CUDA when present, else CPU; a named device is checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev
