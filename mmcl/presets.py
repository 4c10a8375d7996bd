"""Named training presets. `reference` is the published configuration; `quick` is sized for 2 CPU cores."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The reference values of MMCL.md: D=128, h=4, ff 2048, batch 128, lr 3e-4, up to 200 epochs.
    "reference": {"model": {}, "train": {}},
    # Measured in docs/benchmarks.md: the feed-forward width dominates CPU time (2048 -> 256 is ~3x faster per
    # epoch); a larger learning rate and smaller batches reach the plateau in ~15 epochs instead of ~100.
    "quick": {
        "model": {"ff_dim": 256},
        "train": {"epochs": 15, "batch_size": 64, "lr": 1e-3, "early_stop_patience": 6},
    },
}
