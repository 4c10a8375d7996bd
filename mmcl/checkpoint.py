"""Checkpoints: a directory of model.safetensors + config.json + metrics.json + checksums.sha256. No pickle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mmcl.config import MODALITIES, ModelConfig
from mmcl.errors import CheckpointError
from mmcl.model import build_model

FORMAT_VERSION = 1
WEIGHTS, CONFIG, METRICS, CHECKSUMS = "model.safetensors", "config.json", "metrics.json", "checksums.sha256"
# config.json: the modalities the model reads (its use_modalities). Its presence also marks a checkpoint written since
# MMCL honours use_modalities: an older MMCL checkpoint read all three, whatever its config recorded.
MODALITIES_KEY = "modalities"


@dataclass(frozen=True)
class FeatureProfile:
    """Which features a model eats: dims per modality and the extractor that made each (e.g. 'bert-base-768')."""

    dims: tuple[int, int, int]
    extractor_ids: dict[str, str] = field(default_factory=dict)
    # per modality, the length the training data's sequences were fitted to before the model's own fitting (the
    # dataset's): serving fits a longer sequence to it first, so an utterance scores online as it did offline.
    # None: checkpoints written before this was recorded, which fit straight to the model's length.
    source_lengths: tuple[int, int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """As stored in the checkpoint's config JSON."""
        out: dict[str, Any] = {"dims": list(self.dims), "extractor_ids": dict(self.extractor_ids)}
        if self.source_lengths is not None:
            out["source_lengths"] = list(self.source_lengths)
        return out


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model, its config, its feature profile and its checksum."""

    model: nn.Module
    config: ModelConfig
    profile: FeatureProfile
    metrics: dict[str, Any]
    path: Path
    checksum: str  # sha256 of the weights file
    version: str  # what a prediction names the model by: `model_version` of these weights, config and profile


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    path: str | Path, model: nn.Module, cfg: ModelConfig, profile: FeatureProfile, metrics: dict[str, Any]
) -> Path:
    """Write to a temporary sibling, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        config = {"format_version": FORMAT_VERSION, "model": cfg.model_dump(mode="json"), "feature_profile": profile.to_json(),
                  MODALITIES_KEY: list(cfg.use_modalities)}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
        lines = [f"{_sha256(tmp / name)}  {name}" for name in (WEIGHTS, CONFIG, METRICS)]
        (tmp / CHECKSUMS).write_text("\n".join(lines) + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def verify_checksums(path: Path) -> str:
    """Check every file listed; returns the weights' sha256."""
    sums = path / CHECKSUMS
    if not sums.is_file():
        raise CheckpointError(f"{path}: missing {CHECKSUMS}")
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name.strip()] = digest.strip()
    for name in (WEIGHTS, CONFIG, METRICS):
        f = path / name
        if name not in listed or not f.is_file():
            raise CheckpointError(f"{path}: missing {name}")
        if _sha256(f) != listed[name]:
            raise CheckpointError(f"{path}: checksum mismatch for {name} (file changed or corrupted)")
    return listed[WEIGHTS]


VERSION_DIGITS = 12  # a version is this many hex digits of `model_digest`


def model_digest(weights_sha256: str, config: dict[str, Any]) -> str:
    """sha256 of everything that decides a score: the weights' digest and the configuration (architecture, task,
    modalities read, feature profile) as canonical JSON. Two checkpoints with the same weights but another sequence
    length, task or feature profile differ; the format version is left out, since it decides no score."""
    described = {k: v for k, v in config.items() if k != "format_version"}
    canonical = json.dumps({"weights": weights_sha256, "config": described}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def checkpoint_ids(path: str | Path) -> tuple[str, str]:
    """A checkpoint's weights sha256 and its version, with its checksums verified once."""
    path = Path(path)
    weights = verify_checksums(path)
    return weights, model_digest(weights, _read_config(path))[:VERSION_DIGITS]


def model_version(path: str | Path) -> str:
    """A checkpoint's version (checksums verified): the first VERSION_DIGITS hex digits of its `model_digest`."""
    return checkpoint_ids(path)[1]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (safetensors weights + JSON config), verifying its checksums."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    digest = verify_checksums(path)
    config = _read_config(path)
    profile, cfg = _parse_config(path, config)
    try:
        metrics = json.loads((path / METRICS).read_text())
        model = build_model(cfg)
        state = load_file(str(path / WEIGHTS), device=str(device))
        model.load_state_dict(state, strict=True)
    except (ValidationError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    model.to(device).eval()
    version = model_digest(digest, config)[:VERSION_DIGITS]
    return Checkpoint(model, cfg, profile, metrics, path, digest, version)


def read_profile(path: str | Path) -> tuple[FeatureProfile, ModelConfig]:
    """The features a checkpoint eats and its model config, without loading the weights (producers use this too)."""
    path = Path(path)
    return _parse_config(path, _read_config(path))


def _read_config(path: Path) -> dict[str, Any]:
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"no checkpoint at {path} (no {CONFIG})")
    try:
        config = json.loads((path / CONFIG).read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable {CONFIG} ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: unreadable {CONFIG} (not a JSON object)")
    return config


def _parse_config(path: Path, config: dict[str, Any]) -> tuple[FeatureProfile, ModelConfig]:
    try:
        if config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: unsupported checkpoint format {config.get('format_version')}")
        prof = config["feature_profile"]
        source = prof.get("source_lengths")
        if source is not None and (len(source) != 3 or not all(isinstance(n, int) and n > 0 for n in source)):
            raise ValueError(f"source_lengths must be three positive integers, not {source!r}")
        model = dict(config["model"])
        if MODALITIES_KEY not in config and model.get("kind", "mmcl") == "mmcl":
            model["use_modalities"] = MODALITIES  # MMCL read all three whatever its config said before this was written
        model.setdefault("unpaired", "mean")  # what every model did before the setting existed
        return (FeatureProfile(tuple(prof["dims"]), dict(prof.get("extractor_ids", {})),
                               None if source is None else (source[0], source[1], source[2])),
                ModelConfig.model_validate(model))
    except (ValidationError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
