"""The feature wire: bytes per part and the time to encode and to decode one, version 1 (base64 float32 JSON)
against version 2 (a JSON header and the raw array, float16 or float32), MOSI-shaped parts (length 50; text 768,
audio 5, visual 20). Decoding is what the worker does with each message it reads (`decode_part`: parse, check
limits, ids and dims, map the array, check it is finite); the ratios compare versions measured in the same run.

    python benchmarks/wire_codec.py     # ~1 minute; writes benchmarks/results/wire_codec.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.settings import LimitSettings  # noqa: E402
from streams.wire import Dtype, Features, WireFormat, encode_features  # noqa: E402
from streams.worker.decode import ModelProfile, Part, decode_part  # noqa: E402

DIMS = {"text": 768, "audio": 5, "visual": 20}
FRAMES = 50
WIRES: list[tuple[str, WireFormat, Dtype]] = [("v1 (JSON, base64 float32)", "v1", "float32"),
                                              ("v2 float16", "v2", "float16"), ("v2 float32", "v2", "float32")]


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call: the best of 5 rounds, each repeated for about seconds / 5."""
    fn()
    best = float("inf")
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < seconds / 5:
            fn()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def measure(seconds: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    profile, limits = ModelProfile(DIMS, {}), LimitSettings()
    rows = []
    for modality, dim in DIMS.items():
        arr = rng.standard_normal((FRAMES, dim)).astype(np.float32)
        f = Features("call-000123-u042", modality, arr, 1_800_000_000_000, call_id="call-000123", speaker="customer",
                     feature_profile="minilm-384", start_ms=12_000, end_ms=15_500)
        base: dict[str, float] = {}
        for name, wire, dtype in WIRES:
            raw = encode_features(f, wire, dtype)
            assert isinstance(decode_part(raw, modality, limits, profile), Part)
            row = {"modality": modality, "shape": [FRAMES, dim], "wire": name, "bytes": len(raw),
                   "encode_us": per_call(lambda f=f, w=wire, d=dtype: encode_features(f, w, d), seconds) * 1e6,
                   "decode_us": per_call(lambda raw=raw, m=modality: decode_part(raw, m, limits, profile), seconds) * 1e6}
            base = base or row
            row["bytes_ratio"] = row["bytes"] / base["bytes"]
            row["decode_speedup"] = base["decode_us"] / row["decode_us"]
            row["encode_speedup"] = base["encode_us"] / row["encode_us"]
            rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| part | wire | bytes | vs v1 | encode, us | encode speed-up | decode, us | decode speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['modality']} {r['shape'][0]}x{r['shape'][1]} | {r['wire']} | {r['bytes']:,} | "
                     f"{r['bytes_ratio']:.2f} | {r['encode_us']:,.1f} | {r['encode_speedup']:.1f}x | "
                     f"{r['decode_us']:,.1f} | {r['decode_speedup']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    a = p.parse_args()
    out = {"rows": measure(a.seconds), "cpu_count": os.cpu_count(), "command": " ".join(sys.argv)}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "wire_codec.json").write_text(json.dumps(out, indent=2) + "\n")
    table = render(out["rows"])
    (res / "wire_codec.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
