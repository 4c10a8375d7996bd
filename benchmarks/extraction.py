"""Feature extraction from raw media: time per 5 s utterance per modality and extractor (and per second of audio /
per video frame), peak memory of each extractor in a fresh process, and media -> result-in-Redis latency through
the running worker.

Baselines in the same run: every time is also given as a real-time factor (media seconds / extraction seconds),
and each optional extractor relative to the default one of its modality.

    python benchmarks/extraction.py                 # ~3 minutes on 2 cores; writes benchmarks/results/extraction.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECONDS = 5.0
FPS = 30.0  # the camera's rate; the extractor thins it to 15
TEXT = "Honestly I have been waiting for two weeks and nobody has called me back about the broken router"
DEFAULTS = {"text": "minilm-384", "audio": "librosa-42", "visual": "mediapipe-fer-19"}
MODALITY = {"(imports only)": "-", "minilm-384": "text", "glove-50": "text", "librosa-42": "audio", "egemaps-25": "audio",
            "mediapipe-fer-19": "visual", "whisper-tiny.en": "asr"}


def make_media(folder: Path) -> dict[str, Path]:
    """A 5 s utterance: espeak-ng speech cut or padded to exactly 5 s, and 5 s of a moving face at 30 fps."""
    import soundfile

    from tests.media import face_video, speech

    raw = speech(folder / "raw.wav", TEXT)
    y, sr = soundfile.read(str(raw), dtype="float32")
    n = int(SECONDS * sr)
    y = np.pad(y, (0, max(0, n - len(y))))[:n]
    soundfile.write(str(folder / "u.wav"), y, sr)
    face_video(folder / "u.mp4", n=int(SECONDS * FPS), fps=FPS, size=480)
    return {"audio": folder / "u.wav", "video": folder / "u.mp4"}


def one(name: str, media: dict[str, Path], reps: int) -> dict[str, Any]:
    """Runs in its own process, so that peak memory is this extractor's alone."""
    t = time.perf_counter()
    if name == "(imports only)":  # the floor every extractor's process pays: Python, numpy, torch (mmcl imports it)
        import extractors.registry  # noqa: F401
        import mmcl.errors  # noqa: F401

        run = lambda: np.zeros((1, 1))  # noqa: E731
    elif name == "whisper-tiny.en":
        from extractors.asr import WhisperASR

        ext: Any = WhisperASR()
        ext.setup()
        run = lambda: ext.words(media["audio"])  # noqa: E731
    else:
        from extractors import registry

        ext = registry.create(name)
        ext.setup()
        raw = {"text": TEXT, "audio": media["audio"], "visual": media["video"]}[MODALITY[name]]
        run = lambda: ext.extract(raw)  # noqa: E731
    setup_s = time.perf_counter() - t
    out = run()  # the first call (caches, kernels) is not counted
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    shape = list(out.shape) if hasattr(out, "shape") else [len(out), "words"]
    return {"name": name, "modality": MODALITY[name], "setup_s": setup_s, "median_s": float(np.median(times)),
            "p95_s": float(np.percentile(times, 95)), "shape": shape,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def end_to_end(media: dict[str, Path], n: int) -> dict[str, Any]:
    """Utterance ends (its media complete) -> its result in Redis, through `mmcl worker`; the three modalities are
    extracted in parallel, as `mmcl stream-call` does."""
    import redis
    import torch

    from extractors.profile import resolve
    from extractors.utterance import FeatureMaker, Utterance
    from mmcl.checkpoint import FeatureProfile, save_checkpoint
    from mmcl.config import ModelConfig
    from mmcl.model import build_model
    from streams.kafka import ensure_topics
    from streams.local.demo import wait_ready
    from streams.local.embedded import free_port, start_kafka, start_redis
    from streams.local.media import KafkaSink, stream_call
    from streams.local.runtime import embedded_kafka, embedded_kafka_env
    from streams.settings import Settings, TopicSettings
    from streams.sinks.redis_store import FEED, utt_key

    state = Path(tempfile.mkdtemp(prefix="mmcl-bench-extract-"))
    kafka, redis_svc = start_kafka(state), start_redis(state)
    worker = None
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(input_dims=(384, 42, 19))  # the reference size otherwise (feed-forward 2048, D 128, L 50)
        ckpt = save_checkpoint(state / "ckpt", build_model(cfg).eval(), cfg,
                               FeatureProfile(cfg.input_dims, {"text": "minilm-384", "audio": "librosa-42",
                                                               "vision": "mediapipe-fer-19"}), {})
        prefix = f"x{uuid.uuid4().hex[:6]}"
        s = Settings(kafka=embedded_kafka(kafka.url), topics=TopicSettings(prefix=prefix))
        ensure_topics(s.kafka, s.topics)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
        env.update({"MMCL_KAFKA__BOOTSTRAP_SERVERS": kafka.url, "MMCL_REDIS__URL": redis_svc.url,
                    "MMCL_TOPICS__PREFIX": prefix, "MMCL_KAFKA__GROUP_ID": f"{prefix}-g", "MMCL_STATE_DIR": str(state),
                    "MMCL_MODEL__CHECKPOINT": str(ckpt), "MMCL_METRICS__PORT": str(port), **embedded_kafka_env()})
        with (state / "worker.log").open("w") as log:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        wait_ready(port, worker, 90)  # type: ignore[arg-type]
        r = redis.Redis.from_url(redis_svc.url, decode_responses=True)
        maker = FeatureMaker(resolve("default"), seq_len=cfg.seq_len)
        maker.setup(["text", "audio", "visual"])
        sink = KafkaSink(s)  # its close() only flushes: one producer serves every utterance
        rows = []
        for i in range(n + 1):  # the first one warms the worker's path, not counted
            utt = Utterance(utterance_id=f"u{i}", call_id=f"{prefix}-c", speaker="customer", text=TEXT,
                            audio=media["audio"], video=media["video"])
            last = (r.xrevrange(FEED, count=1) or [("0-0", {})])[0][0]
            t0 = time.time()
            report = stream_call([utt], maker, sink, realtime=False)
            extracted = time.time()
            key = utt_key(f"{prefix}-c", utt.utterance_id)
            deadline = time.monotonic() + 30
            while not r.exists(key) and time.monotonic() < deadline:  # woken by the worker's feed entry
                for _, entries in r.xread({FEED: last}, block=1000) or []:
                    last = entries[-1][0]
            done = time.time()
            if not r.exists(key):
                raise SystemExit(f"no result for {utt.utterance_id} (worker log: {state / 'worker.log'})")
            if i:
                rows.append({"total_s": done - t0, "extract_s": extracted - t0,
                             "pipeline_ms": float(r.hget(key, "latency_ms") or "nan"),
                             "slowest": max(report.extract_ms, key=lambda m: max(report.extract_ms[m] or [0]))})
        maker.close()
        return {"n": n, "median_total_s": float(np.median([x["total_s"] for x in rows])),
                "p95_total_s": float(np.percentile([x["total_s"] for x in rows], 95)),
                "median_extract_s": float(np.median([x["extract_s"] for x in rows])),
                "median_pipeline_ms": float(np.median([x["pipeline_ms"] for x in rows])),
                "slowest_modality": max({x["slowest"] for x in rows}, key=[x["slowest"] for x in rows].count)}
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        kafka.stop()
        redis_svc.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--e2e", type=int, default=10, help="utterances through the worker")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: one extractor, in this process
    p.add_argument("--media", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.only:
        media = {"audio": a.media / "u.wav", "video": a.media / "u.mp4"}
        print(json.dumps(one(a.only, media, a.reps)))
        return
    folder = Path(tempfile.mkdtemp(prefix="mmcl-media-"))
    media = make_media(folder)
    import cv2

    cap = cv2.VideoCapture(str(media["video"]))
    frames_in, fps_in = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    results = []
    for name in MODALITY:
        r = subprocess.run([sys.executable, __file__, "--only", name, "--media", str(folder), "--reps", str(a.reps)],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            print(f"{name}: failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    by = {x["name"]: x for x in results}
    print(f"\nper 5 s utterance ({frames_in} video frames at {fps_in:.0f} fps, thinned to 15 fps), 2 CPU cores, "
          f"median of {a.reps}")
    print(f"{'extractor':<18}{'modality':<9}{'setup s':>8}{'ms/utt':>9}{'unit cost':>18}{'x real time':>12}"
          f"{'vs default':>11}{'peak RSS MB':>12}  output")
    for x in results:
        ms = x["median_s"] * 1000
        unit = {"audio": f"{ms / SECONDS:.1f} ms/s audio", "asr": f"{ms / SECONDS:.1f} ms/s audio",
                "visual": f"{ms / (SECONDS * 15):.2f} ms/frame", "text": f"{ms / len(TEXT.split()):.3f} ms/word",
                "-": "-"}
        base = by.get(DEFAULTS.get(x["modality"], ""))
        rel = f"{x['median_s'] / base['median_s']:.2f}x" if base else "-"
        if x["modality"] == "-":
            print(f"{x['name']:<18}{'-':<9}{x['setup_s']:>8.1f}{'-':>9}{'-':>18}{'-':>12}{'-':>11}"
                  f"{x['peak_rss_mb']:>12.0f}")
            continue
        print(f"{x['name']:<18}{x['modality']:<9}{x['setup_s']:>8.1f}{ms:>9.2f}{unit[x['modality']]:>18}"
              f"{SECONDS / x['median_s']:>12.0f}{rel:>11}{x['peak_rss_mb']:>12.0f}  {x['shape']}")
    e2e = end_to_end(media, a.e2e)
    print(f"\nmedia -> result in Redis, 5 s utterance, default profile, modalities in parallel, n={e2e['n']}:")
    print(f"  total median {e2e['median_total_s'] * 1000:.0f} ms (p95 {e2e['p95_total_s'] * 1000:.0f} ms) = "
          f"{e2e['median_total_s'] / SECONDS:.2f} of the utterance's length; extraction "
          f"{e2e['median_extract_s'] * 1000:.0f} ms (slowest: {e2e['slowest_modality']}); last message -> Redis "
          f"{e2e['median_pipeline_ms']:.0f} ms")
    out = ROOT / "benchmarks" / "results" / "extraction.json"
    out.write_text(json.dumps({"extractors": results, "end_to_end": e2e, "seconds": SECONDS}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
