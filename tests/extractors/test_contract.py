"""Contract tests generated from the extractor registry, on real media made here (speech from espeak-ng), plus
alignment and the registry's errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extractors import registry
from extractors.align import to_length, word_align
from extractors.base import ExtractionError, Extractor
from mmcl.errors import ConfigError
from tests.media import face_video, speech, wav


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _blank_png(path: Path) -> Path:
    import cv2

    cv2.imwrite(str(path), np.full((240, 320, 3), 127, np.uint8))
    return path


# per modality: a valid input, and invalid ones with the words their error must contain
VALID: dict[str, Callable[[Path], Any]] = {
    "text": lambda d: "I am really happy with the service today",
    "audio": lambda d: speech(d / "speech.wav"),
    "visual": lambda d: face_video(d / "face.mp4", n=8, fps=8.0),
}
INVALID: dict[str, list[tuple[str, Callable[[Path], Any], str]]] = {
    "text": [
        ("an empty transcript", lambda d: "", "empty transcript"),
        ("a blank transcript", lambda d: " \n\t ", "empty transcript"),
        ("a binary file", lambda d: _file(d / "t.txt", bytes(range(256))), "not UTF-8 text"),
        ("a missing file", lambda d: d / "nowhere.txt", "no transcript file"),
        ("not text at all", lambda d: 42, "must be text"),
    ],
    "audio": [
        ("zero-length audio", lambda d: wav(d / "empty.wav", np.zeros(0, np.float32)), "empty audio"),
        ("silent audio", lambda d: wav(d / "silent.wav", np.zeros(16_000, np.float32)), "silent audio"),
        ("a text file", lambda d: _file(d / "notes.wav", b"not audio"), "not readable audio"),
        ("a missing file", lambda d: d / "nowhere.wav", "no audio file"),
        ("a click", lambda d: wav(d / "click.wav", np.ones(200, np.float32) * 0.5), "too short"),
    ],
    "visual": [
        ("a frame with no face", lambda d: _blank_png(d / "wall.png"), "no face found in 1 frame"),
        ("a non-image file", lambda d: _file(d / "face.png", b"not an image"), "not a readable image"),
        ("a non-video file", lambda d: _file(d / "clip.mp4", b"not a video"), "not a readable video"),
        ("an empty folder", lambda d: (d / "frames").mkdir() or d / "frames", "no frames"),
        ("a missing path", lambda d: d / "nowhere.mp4", "no image or video"),
        ("a grey array", lambda d: np.zeros((10, 10), np.uint8), "expected an (H, W, 3) uint8"),
    ],
}


@pytest.fixture(scope="module")
def extractors() -> dict[str, Extractor]:
    out = {}
    for name in registry.names():
        ext = registry.create(name)
        ext.setup("cpu")
        out[name] = ext
    return out


@pytest.mark.parametrize("name", registry.names())
def test_valid_input_gives_finite_float32_of_the_declared_dim(name: str, extractors: dict[str, Extractor],
                                                               tmp_path: Path) -> None:
    ext = extractors[name]
    assert isinstance(ext, Extractor) and ext.name == name
    out = ext.extract(VALID[ext.modality](tmp_path))
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == ext.dim and out.shape[0] > 0
    assert np.isfinite(out).all()


@pytest.mark.parametrize(("name", "case"), [(n, i) for n in registry.names()
                                            for i in range(len(INVALID[registry.create(n).modality]))])
def test_bad_input_is_a_clear_error(name: str, case: int, extractors: dict[str, Extractor], tmp_path: Path) -> None:
    ext = extractors[name]
    what, make, words = INVALID[ext.modality][case]
    with pytest.raises(ExtractionError) as e:
        ext.extract(make(tmp_path))
    assert words in str(e.value) and "\n" not in str(e.value), what


def test_audio_frames_are_10_ms(extractors: dict[str, Extractor], tmp_path: Path) -> None:
    import soundfile

    path = speech(tmp_path / "s.wav")
    info = soundfile.info(str(path))
    out = extractors["librosa-42"].extract(path)
    assert abs(out.shape[0] - (info.duration * 100 + 1)) <= 2
    tone = np.sin(2 * np.pi * 200 * np.arange(16_000) / 16_000).astype(np.float32) * 0.5
    f0 = np.exp(extractors["librosa-42"].extract((tone, 16_000))[:, -1])
    assert abs(float(np.median(f0)) - 200) < 5  # the last column is log-F0


def test_registry_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown extractor 'nope'; valid: egemaps-25, glove-50, librosa-42, "):
        registry.create("nope")

    def no_librosa(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'librosa'", name="librosa")

    monkeypatch.setattr(registry.importlib, "import_module", no_librosa)
    with pytest.raises(ConfigError, match=r"needs the 'librosa' package: pip install 'mmcl-stream\[extract\]'"):
        registry.create("librosa-42")


def test_alignment() -> None:
    frames = np.arange(20, dtype=np.float32).reshape(10, 2)
    assert to_length(frames, 20).shape == (10, 2)  # shorter: kept, not padded with invented frames
    np.testing.assert_allclose(to_length(frames, 5)[:, 0], [1, 5, 9, 13, 17])
    words = [(0.0, 0.03), (0.03, 0.031), (0.05, 1.0)]  # 10 ms frames
    out = word_align(frames, 0.01, words)
    np.testing.assert_allclose(out[:, 0], [2.0, 6.0, 14.0])  # frames 0-2, the one nearest 30.5 ms, frames 5-9
    with pytest.raises(ExtractionError, match="no words"):
        word_align(frames, 0.01, [])
    with pytest.raises(ExtractionError, match="ends before"):
        word_align(frames, 0.01, [(0.5, 0.1)])
