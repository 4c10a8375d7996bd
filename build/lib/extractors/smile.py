"""Audio, research only: openSMILE eGeMAPSv02 low-level descriptors (25 per 10 ms frame).

The openSMILE licence does not allow commercial use. This extractor is an optional extra and in no default
profile; a call center that sells its service must not turn it on."""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.audio import SR, require_audio_packages, speech_samples
from extractors.base import ExtractionError, missing_extra


class EGeMAPSAudio:
    """Audio as openSMILE eGeMAPS low-level descriptors (non-commercial licence)."""

    name = "egemaps-25"
    modality = "audio"
    dim = 25
    frame_s = 0.01

    def __init__(self) -> None:
        self._smile: Any = None

    def setup(self, device: str = "cpu") -> None:
        if self._smile is not None:
            return
        require_audio_packages("the eGeMAPS audio extractor")  # the default's reading, resampling and checks
        try:
            import opensmile
        except ModuleNotFoundError as e:
            raise missing_extra("the eGeMAPS audio extractor", e.name or "opensmile", extra="opensmile") from None
        self._smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                      feature_level=opensmile.FeatureLevel.LowLevelDescriptors)

    def extract(self, raw: Any) -> np.ndarray:
        if self._smile is None:
            self.setup()
        y = speech_samples(raw)
        out: np.ndarray = self._smile.process_signal(y, SR).to_numpy(dtype=np.float32)
        if out.ndim != 2 or out.shape[0] == 0:
            raise ExtractionError("audio too short for eGeMAPS frames")
        if not np.isfinite(out).all():
            raise ExtractionError("audio features came out non-finite")
        return out
