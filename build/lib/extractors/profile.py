"""Feature profiles: which extractor makes each modality. Every message carries its extractor's name as
`feature_profile`, a checkpoint records the names it was trained on, and the worker dead-letters a message whose
name differs from the loaded model's (`profile_mismatch`)."""

from __future__ import annotations

from collections.abc import Mapping

from extractors.registry import EXTRACTORS
from mmcl.config import WIRE_MODALITIES, by_model, by_wire
from mmcl.errors import ConfigError

PROFILES: dict[str, dict[str, str]] = {
    # permissive licences only (Apache-2.0, ISC, MIT)
    "default": {"text": "minilm-384", "audio": "librosa-42", "visual": "mediapipe-fer-19"},
    # word vectors instead of a transformer: loads in a second, 0.1 ms per utterance (PDDL)
    "light": {"text": "glove-50", "audio": "librosa-42", "visual": "mediapipe-fer-19"},
    # eGeMAPS audio: the openSMILE licence forbids commercial use, so this is never a default
    "research": {"text": "minilm-384", "audio": "egemaps-25", "visual": "mediapipe-fer-19"},
}


def resolve(profile: str = "default", overrides: Mapping[str, str] | None = None,
            model_ids: Mapping[str, str] | None = None) -> dict[str, str]:
    """-> wire modality -> extractor name. A model's recorded extractors (checkpoint `extractor_ids`, keyed by model or
    wire modality) win over the named profile, and explicit overrides win over both."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown feature profile {profile!r}; valid: {', '.join(sorted(PROFILES))}")
    out = dict(PROFILES[profile])
    out.update(by_wire(model_ids or {}))
    for wire, name in (overrides or {}).items():
        if wire not in WIRE_MODALITIES:
            raise ConfigError(f"unknown modality {wire!r}; valid: {', '.join(WIRE_MODALITIES)}")
        out[wire] = name
    for wire, name in out.items():
        if name not in EXTRACTORS:
            raise ConfigError(f"unknown extractor {name!r} for {wire}; valid: {', '.join(sorted(EXTRACTORS))}")
    return out


def checkpoint_ids(chosen: Mapping[str, str]) -> dict[str, str]:
    """wire modality -> name, as a checkpoint records it (keyed by the model's modality names)."""
    return by_model(chosen)
