"""Audio: librosa frame features at 16 kHz with a 10 ms hop: 13 MFCC + deltas + delta-deltas, RMS, zero-crossing
rate and log-F0 (YIN; pYIN is ~100x slower) = 42 values per frame. ISC-licensed; nothing to download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import ExtractionError, missing_extra

SR, HOP, WIN = 16_000, 160, 400  # 16 kHz, 10 ms hop, 25 ms window
MIN_SECONDS = 0.1
SILENCE = 1e-4  # peak amplitude below this (-80 dBFS) is no signal


def require_audio_packages(what: str) -> None:
    """Reading and resampling need soundfile and librosa (the `extract` extra)."""
    try:
        import librosa  # noqa: F401
        import soundfile  # noqa: F401
    except ModuleNotFoundError as e:
        raise missing_extra(what, e.name or "librosa") from None


def load_audio(raw: Any) -> np.ndarray:
    """A WAV/FLAC/OGG path, or (samples, sample_rate) -> mono float32 at 16 kHz."""
    import librosa
    import soundfile

    if isinstance(raw, tuple):
        samples, sr = np.asarray(raw[0], dtype=np.float32), int(raw[1])
    else:
        path = Path(raw)
        if not path.is_file():
            raise ExtractionError(f"no audio file at {path}")
        try:
            samples, sr = soundfile.read(str(path), dtype="float32", always_2d=False)
        except (RuntimeError, soundfile.LibsndfileError) as e:
            raise ExtractionError(f"{path.name} is not readable audio ({str(e).splitlines()[0]})") from None
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise ExtractionError("empty audio: no samples")
    if not np.isfinite(samples).all():
        raise ExtractionError("audio contains NaN or Inf")
    if sr != SR:
        samples = librosa.resample(samples, orig_sr=sr, target_sr=SR)
    return samples.astype(np.float32)


def speech_samples(raw: Any) -> np.ndarray:
    """load_audio(), then refuse clips too short or too quiet to carry speech."""
    y = load_audio(raw)
    if y.size < MIN_SECONDS * SR:
        raise ExtractionError(f"audio too short: {y.size / SR:.3f} s (at least {MIN_SECONDS} s)")
    if float(np.max(np.abs(y))) < SILENCE:
        raise ExtractionError("silent audio: no signal above -80 dBFS")
    return y


class LibrosaAudio:
    """Audio features at 10 ms: MFCCs, deltas, energy, zero crossings and pitch (librosa)."""

    name = "librosa-42"
    modality = "audio"
    dim = 42
    frame_s = HOP / SR

    def __init__(self) -> None:
        self._warm = False

    def setup(self, device: str = "cpu") -> None:
        require_audio_packages("the audio extractor")
        if not self._warm:
            # librosa's numba kernels compile on first use (~15 s in a fresh environment): pay that here, not on
            # the first utterance of a live call
            noise = np.random.default_rng(0).normal(0, 0.1, SR // 2).astype(np.float32)
            self.extract((noise, SR))
            self._warm = True

    def extract(self, raw: Any) -> np.ndarray:
        import librosa

        y = speech_samples(raw)
        mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=13, n_fft=WIN, hop_length=HOP)
        width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))  # an odd width the clip is long enough for
        d1 = librosa.feature.delta(mfcc, width=width)
        d2 = librosa.feature.delta(mfcc, width=width, order=2)
        rms = librosa.feature.rms(y=y, frame_length=WIN, hop_length=HOP)
        zcr = librosa.feature.zero_crossing_rate(y, frame_length=WIN, hop_length=HOP)
        f0 = librosa.yin(y, fmin=65.0, fmax=400.0, sr=SR, frame_length=1024, hop_length=HOP)
        n = min(mfcc.shape[1], rms.shape[1], zcr.shape[1], f0.shape[0])
        feats = np.vstack([mfcc[:, :n], d1[:, :n], d2[:, :n], rms[:, :n], zcr[:, :n], np.log(f0[None, :n])])
        out = feats.T.astype(np.float32)
        if not np.isfinite(out).all():
            raise ExtractionError("audio features came out non-finite")
        return out
