"""Utterances as users have them (a transcript, an audio clip, a video or a folder of frames, who spoke and when),
the manifests that list them, and the FeatureMaker that turns one into aligned per-modality features."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from extractors import registry
from extractors.align import to_length, word_align
from extractors.asr import Word
from extractors.base import ExtractionError, Extractor
from extractors.visual import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from mmcl.errors import ConfigError

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Align = Literal["resample", "words", "none"]
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


class Utterance(BaseModel):
    """One manifest row. Media paths are relative to the manifest's folder; times are seconds from the call's start;
    `words` (optional) are [word, start, end] in seconds from the utterance's start, as ASR gives them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    utterance_id: Id
    call_id: Id | None = None
    speaker: Literal["agent", "customer", "unknown"] = "unknown"
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, ge=0)
    text: str | None = None
    text_file: Path | None = None
    audio: Path | None = None
    video: Path | None = Field(None, description="a video file, a folder of frames, or one image")
    fps: float | None = Field(None, gt=0, description="frame rate of a folder of frames (default 30)")
    words: list[tuple[str, float, float]] | None = None
    label: float | None = Field(None, description="sentiment score, for `mmcl data build`")
    split: Literal["train", "valid", "test"] | None = Field(None, description="for `mmcl data build`: a fixed split")

    @model_validator(mode="after")
    def _has_media(self) -> Utterance:
        if self.text is None and self.text_file is None and self.audio is None and self.video is None:
            raise ValueError("no text, text_file, audio or video")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def rooted(self, root: Path) -> Utterance:
        """The utterance with relative media paths resolved against `root`."""
        fix = {k: root / v for k in ("text_file", "audio", "video") if (v := getattr(self, k)) is not None
               and not v.is_absolute()}
        return self.model_copy(update=fix)

    def available(self, asr: bool) -> list[str]:
        """The wire modalities this utterance can give (text from speech when ASR is on)."""
        out = []
        if self.text is not None or self.text_file is not None or (asr and self.audio is not None):
            out.append("text")
        if self.audio is not None:
            out.append("audio")
        if self.video is not None:
            out.append("visual")
        return out

    @property
    def start_ms(self) -> int | None:
        """The start in ms from the call's start, if known."""
        return None if self.start is None else round(self.start * 1000)

    @property
    def end_ms(self) -> int | None:
        """The end in ms from the call's start, if known."""
        return None if self.end is None else round(self.end * 1000)


def first_error(error: ValidationError) -> tuple[str, str]:
    """(dotted field, message) of a validation error's first problem, for one-line errors."""
    err = error.errors(include_url=False, include_input=False)[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, ")


def read_manifest(path: Path) -> list[Utterance]:
    """A .jsonl or .csv manifest, or a folder holding manifest.jsonl / manifest.csv, or a folder of media named by
    utterance (`u1.txt`, `u1.wav`, `u1.mp4` or a frames folder `u1/`), taken in name order. Errors name the row."""
    if path.is_dir():
        for name in ("manifest.jsonl", "manifest.csv"):
            if (path / name).is_file():
                return read_manifest(path / name)
        return _from_folder(path)
    if not path.is_file():
        raise ConfigError(f"no manifest at {path}")
    rows: Iterable[tuple[int, Mapping[str, Any]]]
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(i, {k: v for k, v in r.items() if v not in ("", None)}) for i, r in enumerate(csv.DictReader(f), 2)]
    else:
        raise ConfigError(f"{path.name}: a manifest is .jsonl or .csv")
    out, seen, lines = [], set(), []
    for line, row in rows:
        try:
            utt = Utterance.model_validate(dict(row)).rooted(path.parent)
        except ValidationError as e:
            where, msg = first_error(e)
            raise ConfigError(f"{path.name} line {line}: {where + ': ' if where else ''}{msg}") from None
        if utt.utterance_id in seen:
            raise ConfigError(f"{path.name} line {line}: utterance_id {utt.utterance_id!r} appears twice")
        seen.add(utt.utterance_id)
        out.append(utt)
        lines.append(line)
    if not out:
        raise ConfigError(f"{path.name} lists no utterances")
    _check_splits(path.name, out, lines)
    return out


def _check_splits(name: str, utts: list[Utterance], lines: list[int]) -> None:
    """A `split` column is all or nothing, and a call lies in one split: its utterances share a speaker and a topic,
    so a model tested on half a call it trained on would look better than it is."""
    if all(u.split is None for u in utts):
        return
    calls: dict[str, str] = {}
    for utt, line in zip(utts, lines, strict=True):
        if utt.split is None:
            raise ConfigError(f"{name} line {line}: no split (other rows have one: give every row a split, or none)")
        if utt.call_id is None:
            continue
        first = calls.setdefault(utt.call_id, utt.split)
        if first != utt.split:
            raise ConfigError(f"{name} line {line}: call {utt.call_id!r} is in {first} and {utt.split}: a call "
                              "lies in one split")


def _jsonl_rows(path: Path) -> list[tuple[int, Mapping[str, Any]]]:
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path.name} line {i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path.name} line {i}: expected an object")
        rows.append((i, row))
    return rows


def _from_folder(folder: Path) -> list[Utterance]:
    by_stem: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.iterdir()):
        stem, suffix = p.stem, p.suffix.lower()
        if p.is_dir() and any(c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir()):
            by_stem.setdefault(p.name, {})["video"] = p
        elif suffix == ".txt":
            by_stem.setdefault(stem, {})["text_file"] = p
        elif suffix in AUDIO_SUFFIXES:
            by_stem.setdefault(stem, {})["audio"] = p
        elif suffix in VIDEO_SUFFIXES:
            by_stem.setdefault(stem, {})["video"] = p
    if not by_stem:
        raise ConfigError(f"{folder} has no manifest and no utterance media (.txt, .wav, .mp4, frame folders)")
    try:
        return [Utterance(utterance_id=stem, call_id=folder.name, **media) for stem, media in by_stem.items()]
    except ValidationError as e:
        raise ConfigError(f"{folder}: {first_error(e)[1]}") from None


@dataclass
class Extracted:
    """One utterance's features by modality, and the modalities that failed."""

    modality: str
    features: np.ndarray  # (T, D) float32, aligned
    extractor: str  # the feature profile id stamped on the message


class FeatureMaker:
    """Turns utterances into aligned features with one extractor per modality. Each extractor is used by one thread
    at a time (MediaPipe's tracker and the LiteRT interpreter are not thread-safe), so the three modalities of an
    utterance can run in parallel."""

    def __init__(self, chosen: Mapping[str, str], seq_len: int | None = 50, align: Align = "resample",
                 asr: bool = False, device: str = "cpu") -> None:
        if align == "resample" and (seq_len is None or seq_len < 1):
            raise ConfigError("resampling needs a sequence length >= 1")
        self.chosen = dict(chosen)
        self.seq_len, self.align, self.use_asr, self.device = seq_len, align, asr or align == "words", device
        self._extractors: dict[str, Extractor] = {}
        self._locks = {m: threading.Lock() for m in ("text", "audio", "visual", "asr")}
        self._asr: Any = None
        self._words: dict[str, list[Word]] = {}

    def setup(self, modalities: Iterable[str]) -> None:
        """Load each needed model once, up front: loading MiniLM takes seconds, a first utterance should not."""
        for m in modalities:
            self._extractor(m)
        if self.use_asr:
            self._recogniser()

    def _extractor(self, modality: str) -> Extractor:
        if modality not in self._extractors:
            ext = registry.create(self.chosen[modality])
            if ext.modality != modality:
                raise ConfigError(f"extractor {ext.name!r} makes {ext.modality} features, not {modality}")
            ext.setup(self.device)
            self._extractors[modality] = ext
        return self._extractors[modality]

    def _recogniser(self) -> Any:
        if self._asr is None:
            from extractors.asr import WhisperASR

            self._asr = WhisperASR()
            self._asr.setup(self.device)
        return self._asr

    def words(self, utt: Utterance) -> list[Word]:
        """Word timestamps: the manifest's, or speech-to-text on the audio (once per utterance)."""
        if utt.words:
            return [Word(w, s, e) for w, s, e in utt.words]
        if utt.utterance_id not in self._words:
            if utt.audio is None:
                raise ExtractionError("word alignment needs word timestamps or audio to recognise them from")
            with self._locks["asr"]:
                self._words[utt.utterance_id] = self._recogniser().words(utt.audio)
        return self._words[utt.utterance_id]

    def extract(self, utt: Utterance, modality: str) -> Extracted:
        """Extract one modality of an utterance, aligned and resampled as the model needs."""
        ext = self._extractor(modality)
        with self._locks[modality]:
            if self.align == "words":
                feats = self._word_aligned(utt, modality, ext)
            else:
                feats = self._raw(utt, modality, ext)
                if self.align == "resample":
                    assert self.seq_len is not None
                    feats = to_length(feats, self.seq_len)
        return Extracted(modality, np.ascontiguousarray(feats, dtype=np.float32), ext.name)

    def _raw(self, utt: Utterance, modality: str, ext: Extractor) -> np.ndarray:
        if modality == "text":
            if utt.text is not None:
                return ext.extract(utt.text)
            if utt.text_file is not None:
                return ext.extract(utt.text_file)
            return ext.extract(" ".join(w.text for w in self.words(utt)))
        if modality == "audio":
            if utt.audio is None:
                raise ExtractionError("no audio")
            return ext.extract(utt.audio)
        if utt.video is None:
            raise ExtractionError("no video")
        return ext.extract_timed(utt.video, utt.fps)[0] if hasattr(ext, "extract_timed") else ext.extract(utt.video)

    def _word_aligned(self, utt: Utterance, modality: str, ext: Any) -> np.ndarray:
        words = self.words(utt)
        spans = [(w.start, w.end) for w in words]
        if modality == "text":
            words_out: np.ndarray = ext.extract_words([w.text for w in words])
            return words_out
        if modality == "audio":
            assert utt.audio is not None
            return word_align(ext.extract(utt.audio), float(getattr(ext, "frame_s", 0.01)), spans)
        assert utt.video is not None
        frames, times = ext.extract_timed(utt.video, utt.fps)
        return word_align(frames, times, spans)

    def close(self) -> None:
        """Release the extractors' models."""
        for ext in self._extractors.values():
            close = getattr(ext, "close", None)
            if close is not None:
                close()
