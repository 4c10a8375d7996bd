"""Real media made on the spot, nothing downloaded: speech from Debian's espeak-ng, and a face (scikit-image's
astronaut) moved a little in every frame, as a video file or a folder of frames."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np


def speech(path: Path, text: str = "I am really happy with the service today", speed: int = 160) -> Path:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is not installed (scripts/test.sh installs it: apt-get install espeak-ng)"
    subprocess.run([espeak, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)
    return path


def wav(path: Path, samples: np.ndarray, sr: int = 16_000) -> Path:
    import soundfile

    soundfile.write(str(path), samples, sr)
    return path


def face_frames(n: int = 8, size: int = 256) -> list[np.ndarray]:
    """RGB uint8 frames of one face, shifted and turned a little each frame, as a talking head moves."""
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (size, size))
    out = []
    for i in range(n):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), 2.0 * np.sin(i / 2), 1.0)
        m[:, 2] += (3 * np.sin(i / 3), 2 * np.cos(i / 4))
        out.append(cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT))
    return out


def face_video(path: Path, n: int = 24, fps: float = 24.0, size: int = 256) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert writer.isOpened(), "OpenCV cannot write mp4v video here"
    for frame in face_frames(n, size):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def frames_dir(path: Path, n: int = 8, size: int = 256) -> Path:
    import cv2

    path.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(face_frames(n, size)):
        cv2.imwrite(str(path / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return path


LINES = [
    ("agent", "Thank you for calling, how can I help you today"),
    ("customer", "My internet has been down for three days and I am furious"),
    ("agent", "I am sorry to hear that, let me fix it right now"),
    ("customer", "Great, thank you so much, that works perfectly"),
]


def call_folder(root: Path, call_id: str = "call-1", lines: list[tuple[str, str]] | None = None,
                video_every: int = 2, labels: list[float] | None = None, gap: float = 0.3) -> Path:
    """A call as a folder with manifest.jsonl: speech per utterance, a face video on every `video_every`-th one,
    times laid end to end from the clips' real durations."""
    import soundfile

    root.mkdir(parents=True, exist_ok=True)
    rows, t = [], 0.0
    for i, (speaker, text) in enumerate(lines or LINES):
        uid = f"{call_id}-u{i}"
        audio = speech(root / f"{uid}.wav", text)
        dur = soundfile.info(str(audio)).duration
        row = {"utterance_id": uid, "call_id": call_id, "speaker": speaker, "start": round(t, 3),
               "end": round(t + dur, 3), "text": text, "audio": audio.name}
        if video_every and (i + 1) % video_every == 0:
            row["video"] = face_video(root / f"{uid}.mp4", n=12, fps=12.0).name
        if labels is not None:
            row["label"] = labels[i]
        rows.append(row)
        t += dur + gap
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
